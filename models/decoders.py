"""Decoders: networks from a latent draw ``z`` to the parameters of the likelihood."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ppl_vae.networks import mlp


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
