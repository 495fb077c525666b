"""A hand-written PyTorch convolutional VAE, the reference for ppl_vae's ``network="conv"``.

Same math as :mod:`benchmarks.reference_vae` (Bernoulli pixels, standard Normal prior, diagonal Normal
guide, the single-draw negative ELBO of Pyro's ``Trace_ELBO`` scaled by num_data / batch), with
convolutional networks of the same layout as ppl_vae's conv encoder and decoder, written here
independently:

    encoder: per stage Conv2d(3x3, stride 2, padding 1) + ReLU, the last map flattened, then
             Linear layers hidden... -> 2L  (loc, log_scale)
    decoder: Linear layers L -> hidden reversed -> last map's size, ReLU, then per stage
             ConvTranspose2d(4x4, stride 2, padding 1) (ReLU between), a centred crop to H x W

Nothing here imports ppl_vae.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from benchmarks.reference_vae import ReferenceVAE


def stage_sizes(height: int, width: int, min_side: int = 4) -> list[tuple[int, int]]:
    """Sides after each stride-2 stage (rounding up), while both stay >= ``min_side``."""
    sizes = []
    while min(-(-height // 2), -(-width // 2)) >= min_side:
        height, width = -(-height // 2), -(-width // 2)
        sizes.append((height, width))
    return sizes


def _linear_stack(widths: list[int]) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return layers[:-1]


class ConvReferenceVAE(ReferenceVAE):
    """``data_shape = (C, H, W)``; ``channels``: one per stride-2 stage (default 32, 64, 128, ...)."""

    def __init__(self, data_shape, latent_dim, hidden, channels=None):
        nn.Module.__init__(self)
        self.latent_dim = latent_dim
        self.data_shape = tuple(data_shape)
        c, h, w = self.data_shape
        sizes = stage_sizes(h, w)
        channels = list(channels or [min(32 * 2**i, 256) for i in range(len(sizes))])
        self.start = (channels[-1], *sizes[len(channels) - 1])
        features = math.prod(self.start)
        trunk: list[nn.Module] = []
        width = c
        for ch in channels:
            trunk += [nn.Conv2d(width, ch, 3, stride=2, padding=1), nn.ReLU()]
            width = ch
        self.trunk = nn.Sequential(*trunk)
        self.head = nn.Sequential(*_linear_stack([features, *hidden, 2 * latent_dim]))
        self.stem = nn.Sequential(*_linear_stack([latent_dim, *reversed(hidden), features]), nn.ReLU())
        outputs = [c, *channels[:-1]]
        body: list[nn.Module] = []
        for i in reversed(range(len(channels))):
            body.append(nn.ConvTranspose2d(channels[i], outputs[i], 4, stride=2, padding=1))
            if i:
                body.append(nn.ReLU())
        self.body = nn.Sequential(*body)

    def encoder(self, x):  # called by ReferenceVAE.encode on x.flatten(1)
        images = x.reshape((x.shape[0],) + self.data_shape)
        return self.head(self.trunk(images).flatten(1))

    def decoder(self, z):
        lead = z.shape[:-1]
        maps = self.stem(z.reshape(-1, self.latent_dim)).reshape((-1,) + self.start)
        out = self.body(maps)
        h, w = self.data_shape[1:]
        top, left = (out.shape[-2] - h) // 2, (out.shape[-1] - w) // 2
        return out[..., top : top + h, left : left + w].reshape(lead + (-1,))

    def weighted_layers(self) -> list[nn.Module]:
        """Convolutions and linear layers in the order ppl_vae creates them (encoder, then decoder)."""
        kinds = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)
        return [
            m for part in (self.trunk, self.head, self.stem, self.body) for m in part.modules() if isinstance(m, kinds)
        ]


def copy_conv_weights(source_layers, target_layers) -> None:
    """Copy weights and biases layer by layer (shapes must match)."""
    assert [m.weight.shape for m in source_layers] == [m.weight.shape for m in target_layers], "architectures differ"
    with torch.no_grad():
        for src, dst in zip(source_layers, target_layers):
            dst.weight.copy_(src.weight)
            dst.bias.copy_(src.bias)
