"""Encoders: networks from an observation ``x`` to the parameters of q(z | x).

:class:`MLPEncoder` flattens each example; :class:`~ppl_vae.networks.ConvEncoder` (also re-exported here)
keeps images as images. :func:`encoder_network` builds either by name; every guide family calls it, so
each family works on top of every network.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ppl_vae.networks import NETWORKS, ConvEncoder, mlp


class MLPEncoder(nn.Module):
    """``x (..., *data_shape) -> (..., out_features)``: flattens each example, then an MLP."""

    def __init__(self, data_shape: Sequence[int], hidden_dims: Sequence[int], out_features: int):
        super().__init__()
        self.data_shape = tuple(data_shape)
        self.net = mlp(math.prod(self.data_shape), hidden_dims, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(x.shape[: x.dim() - len(self.data_shape)] + (-1,))  # (..., *data_shape) -> (..., D)
        return self.net(flat)


def encoder_network(
    network: str,
    data_shape: Sequence[int],
    hidden_dims: Sequence[int],
    out_features: int,
    *,
    extra_features: int = 0,
) -> nn.Module:
    """The encoder ``x -> (..., out_features)`` of a guide family, by network name.

    ``network``: ``"mlp"`` (:class:`MLPEncoder`), ``"conv"`` or ``"resnet"``
    (:class:`~ppl_vae.networks.ConvEncoder`, plain or with residual blocks; needs images ``(C, H, W)``).
    ``extra_features``: each example arrives flattened with that many numbers appended,
    ``(..., prod(data_shape) + extra_features)`` (a structured prior's q(z | x, label)); the MLP reads the
    whole vector, the convolutional encoders read the image part as an image and join the rest after
    their convolutions.
    """
    if network not in NETWORKS:
        raise ValueError(f"unknown network {network!r}; choose one of: {', '.join(NETWORKS)}")
    if network == "mlp":
        shape = (math.prod(data_shape) + extra_features,) if extra_features else tuple(data_shape)
        return MLPEncoder(shape, hidden_dims, out_features)
    return ConvEncoder(
        data_shape, hidden_dims, out_features, extra_features=extra_features, residual=network == "resnet"
    )


class EncodedFamily:
    """What every variational family built on one encoder shares: :meth:`build` makes the encoder with
    :meth:`num_outputs` outputs (:func:`encoder_network`, any network) and calls ``cls(encoder, latent_dim)``.
    A family subclasses it next to ``nn.Module`` and defines ``num_outputs``."""

    @staticmethod
    def num_outputs(latent_dim: int) -> int:
        """Encoder outputs the family reads for a latent of ``latent_dim`` dimensions."""
        raise NotImplementedError

    @classmethod
    def build(
        cls,
        data_shape: Sequence[int],
        latent_dim: int,
        hidden_dims: Sequence[int],
        *,
        network: str = "mlp",
        extra_features: int = 0,
    ):
        """The family on an encoder with :meth:`num_outputs` outputs: ``network`` is ``"mlp"``, ``"conv"`` or
        ``"resnet"``; ``extra_features`` numbers are appended to each flattened example (a structured
        prior's q(z | x, label)); see :func:`encoder_network`."""
        outputs = cls.num_outputs(latent_dim)
        return cls(
            encoder_network(network, data_shape, hidden_dims, outputs, extra_features=extra_features), latent_dim
        )

    @classmethod
    def mlp(cls, data_shape: Sequence[int], latent_dim: int, hidden_dims: Sequence[int]):
        """The family on an :class:`MLPEncoder` (:meth:`build` with ``network="mlp"``)."""
        return cls.build(data_shape, latent_dim, hidden_dims)
