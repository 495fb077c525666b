"""The diagonal Normal family, amortized: q(z | x) = N(loc(x), diag(scale(x)^2))."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import nn

from ppl_vae.guides.encoders import EncodedFamily


class DiagonalNormal(EncodedFamily, nn.Module):
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

    @staticmethod
    def num_outputs(latent_dim: int) -> int:
        """Encoder outputs: ``2 * d``."""
        return 2 * latent_dim

    def loc_scale(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """μ(x) and σ(x), each ``(N, latent_dim)``."""
        loc, log_scale = self.encoder(x).split(self.latent_dim, dim=-1)
        return loc, log_scale.exp()

    def forward(self, x: torch.Tensor) -> dist.Distribution:
        loc, scale = self.loc_scale(x)
        return dist.Normal(loc, scale).to_event(1)
