"""Decoders: networks from a latent draw ``z`` to the parameters of the likelihood.

Every decoder maps ``z (..., code_dim)`` to ``params (..., params_per_feature * prod(data_shape))``, the
flat layout the likelihoods read as ``(..., params_per_feature, *data_shape)``. :class:`MLPDecoder` is an
MLP; :class:`~ppl_vae.networks.ConvDecoder` (re-exported here) builds images with transposed
convolutions. :func:`decoder_network` builds either by name. Any ``nn.Module`` with that signature works
as a VAE's decoder (``VAE(..., decoder=module)``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ppl_vae.networks import NETWORKS, ConvDecoder, mlp


class MLPDecoder(nn.Module):
    """``z (..., latent_dim) -> params (..., out_features)`` through an MLP.

    ``out_features`` is ``likelihood.params_per_feature * prod(data_shape)``; the likelihood reshapes.
    With ``hidden_dims=()`` the decoder is affine, ``W z + b`` (probabilistic PCA).
    """

    def __init__(self, latent_dim: int, hidden_dims: Sequence[int], out_features: int):
        super().__init__()
        self.net = mlp(latent_dim, hidden_dims, out_features)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


def decoder_network(
    network: str,
    code_dim: int,
    hidden_dims: Sequence[int],
    data_shape: Sequence[int],
    params_per_feature: int = 1,
) -> nn.Module:
    """The decoder ``z (..., code_dim) -> (..., params_per_feature * prod(data_shape))`` by network name:
    ``"mlp"`` (:class:`MLPDecoder`), ``"conv"`` or ``"resnet"`` (:class:`~ppl_vae.networks.ConvDecoder`,
    plain or with residual blocks; needs images ``(C, H, W)``). ``hidden_dims``: the fully connected
    widths from ``z`` on (a VAE passes its encoder's widths reversed)."""
    if network not in NETWORKS:
        raise ValueError(f"unknown network {network!r}; choose one of: {', '.join(NETWORKS)}")
    if network == "mlp":
        return MLPDecoder(code_dim, hidden_dims, params_per_feature * math.prod(data_shape))
    return ConvDecoder(code_dim, hidden_dims, data_shape, params_per_feature, residual=network == "resnet")
