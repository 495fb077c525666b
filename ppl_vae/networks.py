"""Small building blocks shared by the generative side (``ppl_vae.models``) and the inference side
(``ppl_vae.guides``): the MLP, the convolutional and residual networks for images, and the choice between
them (``network="auto"``, :func:`resolve_network`).

The convolutional networks adapt to the image: a ``(C, H, W)`` example (any ``H, W >= 4``, square or not,
any number of channels) is halved in size by stride-2 convolutions as long as both sides stay at least 4
pixels (:func:`conv_geometry`); the decoder mirrors the encoder and crops its output to exactly
``H x W``. Every network accepts any leading batch dimensions ``(...)`` (particles, enumerated labels,
examples).

No normalization layers: batch statistics would make q(z | x) and p(x | z) of one example depend on the
other examples of its batch and on train/eval mode, which the importance-sampled evaluation and the
Pyro programs' contract (one example's density is a function of that example) do not allow.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ppl_vae.errors import ConfigError


def mlp(in_features: int, hidden_dims: Sequence[int], out_features: int) -> nn.Sequential:
    """A multilayer perceptron ``in_features -> hidden_dims... -> out_features``.

    ReLU between layers, no activation on the output. With ``hidden_dims=()`` it is a single linear
    layer (the decoder of probabilistic PCA). Acts on the last dimension: input ``(..., in_features)``,
    output ``(..., out_features)``.
    """
    layers: list[nn.Module] = []
    width = in_features
    for hidden in hidden_dims:
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


#: The networks a VAE can be built with (``VAE(network=...)``, ``--network``).
NETWORKS = ("mlp", "conv", "resnet")
#: What ``network`` accepts: a network, or ``"auto"`` (:func:`resolve_network`).
NETWORK_CHOICES = ("auto", *NETWORKS)
#: Smallest image side a convolutional network takes, and the side below which it stops halving.
MIN_SIDE = 4
#: ``"auto"`` picks a convolutional network for images with at least this many pixels (16 x 16), and
#: for images with more than one channel (colour) whatever their size.
AUTO_MIN_PIXELS = 256
BASE_CHANNELS = 32  # channels after the first halving; doubled at every further one ...
MAX_CHANNELS = 256  # ... up to this


def is_image_shape(data_shape: Sequence[int]) -> bool:
    """Whether ``data_shape`` is ``(C, H, W)`` with ``H, W >= 4``: data a convolutional network takes."""
    shape = tuple(int(s) for s in data_shape)
    return len(shape) == 3 and shape[0] >= 1 and min(shape[1:]) >= MIN_SIDE


def resolve_network(network: str, data_shape: Sequence[int]) -> str:
    """The network to build for data of ``data_shape``: ``network`` itself, or for ``"auto"`` ``"conv"``
    on images of at least 16 x 16 pixels or with more than one channel and ``"mlp"`` otherwise (the 8 x 8
    digits, tables). Raises :class:`ConfigError` (one line) for an unknown name, or a convolutional
    network asked for data that are not images."""
    if not isinstance(network, str) or network not in NETWORK_CHOICES:
        raise ConfigError(f"unknown network {network!r}; choose one of: {', '.join(NETWORK_CHOICES)}")
    shape = tuple(int(s) for s in data_shape)
    image = is_image_shape(shape)
    if network == "auto":
        return "conv" if image and (shape[1] * shape[2] >= AUTO_MIN_PIXELS or shape[0] > 1) else "mlp"
    if network != "mlp" and not image:
        raise ConfigError(
            f"the {network} network needs images of shape (C, H, W) with H and W >= {MIN_SIDE}, but the data "
            f"have shape {shape}; use --network mlp (network='mlp') for tables and vectors"
        )
    return network


@dataclass(frozen=True)
class ConvGeometry:
    """How a convolutional network fits an image ``(in_channels, height, width)``.

    ``channels[i]`` and ``sizes[i]`` are the channels and the ``(h, w)`` after stage ``i`` of the encoder.
    With ``downsample`` every stage is a stride-2 convolution (``h -> ceil(h / 2)``); an image too small to
    halve (a side below 8) gets one stride-1 stage instead."""

    in_channels: int
    height: int
    width: int
    channels: tuple[int, ...]
    sizes: tuple[tuple[int, int], ...]
    downsample: bool

    @property
    def features(self) -> int:
        """Numbers in the encoder's last feature map (what its fully connected part sees)."""
        h, w = self.sizes[-1]
        return self.channels[-1] * h * w


def conv_geometry(data_shape: Sequence[int], channels: Sequence[int] | None = None) -> ConvGeometry:
    """The stages of a convolutional network for images ``data_shape = (C, H, W)``.

    Halves both sides (rounding up) while both stay >= 4: 8 x 8 -> 4 x 4; 28 x 28 -> 14, 7, 4;
    32 x 32 -> 16, 8, 4; 12 x 20 -> 6 x 10. ``channels`` (one per stage) defaults to 32, 64, 128, 256, 256,
    ...; giving fewer channels than possible halvings stops earlier (a larger last feature map), more is
    a ``ValueError``."""
    if not is_image_shape(data_shape):
        raise ValueError(f"a convolutional network needs images (C, H, W) with H, W >= {MIN_SIDE}, got {data_shape}")
    c, height, width = (int(s) for s in data_shape)
    sizes, h, w = [], height, width
    while min(-(-h // 2), -(-w // 2)) >= MIN_SIDE:
        h, w = -(-h // 2), -(-w // 2)
        sizes.append((h, w))
    downsample = bool(sizes)
    possible = sizes or [(height, width)]
    if channels is None:
        channels = [min(BASE_CHANNELS * 2**i, MAX_CHANNELS) for i in range(len(possible))]
    channels = tuple(int(ch) for ch in channels)
    if not channels or len(channels) > len(possible) or min(channels) < 1:
        raise ValueError(
            f"channels {list(channels)}: images of {height} x {width} take 1 to {len(possible)} stages, one "
            "positive channel count each"
        )
    return ConvGeometry(c, height, width, channels, tuple(possible[: len(channels)]), downsample)


class ResidualBlock(nn.Module):
    """``x + conv1x1(relu(conv3x3(x)))`` at a fixed number of channels and size. The 1x1 convolution
    starts at zero, so the block starts as the identity (a deep stack trains like a shallow one)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.mix = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.mix.weight)
        nn.init.zeros_(self.mix.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mix(torch.relu(self.conv(x)))


class ConvEncoder(nn.Module):
    """``x (..., C, H, W) -> (..., out_features)``: convolutions, then fully connected layers.

    Stage ``i`` is a 3 x 3 convolution with stride 2 (``ceil`` halving) to ``channels[i]`` channels and a
    ReLU (see :func:`conv_geometry`; default channels 32, 64, 128, 256, ...); with ``residual`` each stage
    adds a :class:`ResidualBlock` and a ReLU (the ResNet variant). The last feature map is flattened and
    passed through ``mlp(features + extra_features, hidden_dims, out_features)``: ``hidden_dims`` are the
    widths of the fully connected layers, as for the MLP encoder.

    ``extra_features > 0``: each example arrives flattened with a vector appended, ``(..., C*H*W + extra)``
    (what a structured prior's guide sees: ``x`` joined with a one-hot label or covariates, see
    :func:`ppl_vae.models.structured.join`); the image part goes through the convolutions and the vector
    joins the flattened feature map before the fully connected layers.
    """

    def __init__(
        self,
        data_shape: Sequence[int],
        hidden_dims: Sequence[int],
        out_features: int,
        *,
        extra_features: int = 0,
        residual: bool = False,
        channels: Sequence[int] | None = None,
    ):
        super().__init__()
        self.data_shape = tuple(int(s) for s in data_shape)
        self.extra_features = int(extra_features)
        geometry = conv_geometry(self.data_shape, channels)
        layers: list[nn.Module] = []
        width = geometry.in_channels
        for ch in geometry.channels:
            layers += [nn.Conv2d(width, ch, 3, stride=2 if geometry.downsample else 1, padding=1), nn.ReLU()]
            if residual:
                layers += [ResidualBlock(ch), nn.ReLU()]
            width = ch
        self.trunk = nn.Sequential(*layers)
        self.head = mlp(geometry.features + self.extra_features, hidden_dims, out_features)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one example this encoder reads: ``data_shape``, or ``(D + extra_features,)``."""
        if self.extra_features:
            return (math.prod(self.data_shape) + self.extra_features,)
        return self.data_shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = math.prod(self.data_shape)
        if self.extra_features:  # (..., D + extra): the image, flattened, then the appended vector
            lead = x.shape[:-1]
            images, extra = x[..., :d], x[..., d:]
            extra = extra.reshape(math.prod(lead), self.extra_features)
        else:
            lead = x.shape[: x.dim() - 3]
            images = x
            if tuple(x.shape[-3:]) != self.data_shape:
                raise ValueError(
                    f"expected examples of shape {self.data_shape}, got a tensor of shape {tuple(x.shape)}"
                )
        features = self.trunk(images.reshape((math.prod(lead),) + self.data_shape)).flatten(1)  # (n, features)
        if self.extra_features:
            features = torch.cat([features, extra], -1)
        return self.head(features).reshape(lead + (-1,))


class ConvDecoder(nn.Module):
    """``z (..., code_dim) -> params (..., k * C * H * W)``, in the layout the likelihoods read
    (``(..., k, C, H, W)`` flattened; ``k = params_per_feature``).

    Mirrors :class:`ConvEncoder` for the same image size: ``mlp(code_dim, hidden_dims, features)`` and a
    ReLU make the encoder's last feature map; then one 4 x 4 transposed convolution with stride 2 per stage
    (doubling each side; ReLU between), the last one to ``k * C`` channels, and a centred crop to exactly
    ``H x W`` (the doubling overshoots odd sizes: 28 -> 4, 8, 16, 32 -> 28). An image too small to halve
    gets a 3 x 3 convolution instead. With ``residual`` a :class:`ResidualBlock` precedes every stage.
    """

    def __init__(
        self,
        code_dim: int,
        hidden_dims: Sequence[int],
        data_shape: Sequence[int],
        params_per_feature: int = 1,
        *,
        residual: bool = False,
        channels: Sequence[int] | None = None,
    ):
        super().__init__()
        self.data_shape = tuple(int(s) for s in data_shape)
        self.code_dim = int(code_dim)
        geometry = conv_geometry(self.data_shape, channels)
        self.start = (geometry.channels[-1], *geometry.sizes[-1])  # the first feature map (c, h, w)
        self.stem = nn.Sequential(mlp(self.code_dim, hidden_dims, geometry.features), nn.ReLU())
        layers: list[nn.Module] = []
        outputs = (int(params_per_feature) * geometry.in_channels, *geometry.channels[:-1])
        for i in reversed(range(len(geometry.channels))):
            if residual:
                layers += [ResidualBlock(geometry.channels[i]), nn.ReLU()]
            if geometry.downsample:
                layers.append(nn.ConvTranspose2d(geometry.channels[i], outputs[i], 4, stride=2, padding=1))
            else:
                layers.append(nn.Conv2d(geometry.channels[i], outputs[i], 3, padding=1))
            if i:
                layers.append(nn.ReLU())
        self.body = nn.Sequential(*layers)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one input: ``(code_dim,)``."""
        return (self.code_dim,)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        lead, n = z.shape[:-1], math.prod(z.shape[:-1])
        maps = self.stem(z.reshape(n, self.code_dim)).reshape((n,) + self.start)
        out = self.body(maps)  # (n, k * C, H', W') with H' >= H, W' >= W
        height, width = self.data_shape[1:]
        top, left = (out.shape[-2] - height) // 2, (out.shape[-1] - width) // 2
        out = out[..., top : top + height, left : left + width]
        return out.reshape(lead + (-1,))  # (k*C, H, W) flattened: feature j*D + i is parameter j of feature i


@dataclass(frozen=True)
class Work:
    """What one example costs in a network: ``multiply_adds`` of its weighted layers (convolutions and
    linear layers) and ``activations``, the numbers those layers output."""

    parameters: int
    multiply_adds: int
    activations: int


def measure(module: nn.Module, input_shape: Sequence[int]) -> Work:
    """:class:`Work` of one example of shape ``input_shape`` through ``module``, counted by running it on
    PyTorch's meta device: shapes only, no arithmetic, nothing allocated (``module`` may itself live on
    the meta device, e.g. built under ``with torch.device("meta")`` to size a network before building it)."""
    from torch.func import functional_call  # only here: most imports of this module never measure

    meta = {
        name: torch.empty_like(t, device="meta")
        for name, t in list(module.named_parameters()) + list(module.named_buffers())
    }
    counts = {"multiply_adds": 0, "activations": 0}

    def count(layer, inputs, output):
        if isinstance(layer, nn.ConvTranspose2d):
            per_input = layer.out_channels // layer.groups * math.prod(layer.kernel_size)
            counts["multiply_adds"] += inputs[0].numel() * per_input
        elif isinstance(layer, nn.Conv2d):
            counts["multiply_adds"] += output.numel() * layer.in_channels // layer.groups * math.prod(layer.kernel_size)
        else:
            counts["multiply_adds"] += output.numel() * layer.in_features
        counts["activations"] += output.numel()

    weighted = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)
    hooks = [m.register_forward_hook(count) for m in module.modules() if isinstance(m, weighted)]
    try:
        functional_call(module, meta, (torch.empty((1, *input_shape), device="meta"),))
    finally:
        for hook in hooks:
            hook.remove()
    return Work(sum(p.numel() for p in module.parameters()), counts["multiply_adds"], counts["activations"])
