"""The diagonal Normal family, amortized: q(z | x) = N(loc(x), diag(scale(x)^2))."""

from __future__ import annotations

from collections.abc import Sequence

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import nn

from ppl_vae.guides.encoders import encoder_network


class DiagonalNormal(nn.Module):
    """Amortized diagonal Normal posterior.

    The encoder network maps ``x (N, *data_shape)`` to ``2 * latent_dim`` numbers: the loc μ(x) and
    the log-scale log σ(x) of the seed conversation. ``forward(x)`` returns q(z | x) with batch shape
    ``(N,)`` and event shape ``(latent_dim,)``; ``z = loc + scale * eps`` is its reparameterized sample.
    """

    support = constraints.real_vector

    def __init__(self, encoder: nn.Module, latent_dim: int):
        super().__init__()
        self.encoder = encoder
        self.latent_dim = latent_dim

    @classmethod
    def build(
        cls,
        data_shape: Sequence[int],
        latent_dim: int,
        hidden_dims: Sequence[int],
        *,
        network: str = "mlp",
        extra_features: int = 0,
    ) -> DiagonalNormal:
        """The family on an encoder with ``2 * latent_dim`` outputs (:func:`~ppl_vae.guides.encoders.encoder_network`:
        ``network`` is ``"mlp"``, ``"conv"`` or ``"resnet"``; ``extra_features`` numbers appended to each
        flattened example, for a structured prior's q(z | x, label))."""
        encoder = encoder_network(network, data_shape, hidden_dims, 2 * latent_dim, extra_features=extra_features)
        return cls(encoder, latent_dim)

    @classmethod
    def mlp(cls, data_shape: Sequence[int], latent_dim: int, hidden_dims: Sequence[int]) -> DiagonalNormal:
        """The default: an :class:`~ppl_vae.guides.encoders.MLPEncoder` with ``2 * latent_dim`` outputs."""
        return cls.build(data_shape, latent_dim, hidden_dims)

    def loc_scale(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """μ(x) and σ(x), each ``(N, latent_dim)``."""
        loc, log_scale = self.encoder(x).split(self.latent_dim, dim=-1)
        return loc, log_scale.exp()

    def forward(self, x: torch.Tensor) -> dist.Distribution:
        loc, scale = self.loc_scale(x)
        return dist.Normal(loc, scale).to_event(1)
