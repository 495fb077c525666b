"""The deterministic encoder: q(z | x) = Delta(f(x)), a point mass at the encoder's output."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import nn

from ppl_vae.guides.encoders import EncodedFamily


class PointMass(EncodedFamily, nn.Module):
    """Amortized point mass: ``forward(x)`` returns ``Delta(f(x), event_dim=1)`` with batch shape ``(N,)`` and
    event shape ``(latent_dim,)``, where the encoder f maps ``x (N, *data_shape)`` to ``(N, latent_dim)``.

    Its "draw" (``sample``/``rsample``) is f(x) itself, differentiable in the encoder's parameters, and its
    log-density at that draw is 0, so with ``Trace_ELBO`` the objective is log p(x | z) + log p(z) at
    z = f(x) (MAP-style amortized inference; with the KL part scaled to 0, e.g. ``beta=0``, exactly an
    autoencoder). ``mean`` is f(x) and ``stddev`` is 0. It is not a density on R^d: importance-weighted
    bounds (IWAE, ``evaluate``'s log-likelihood) computed with it are not bounds on log p(x).
    """

    support = constraints.real_vector

    def __init__(self, encoder: nn.Module, latent_dim: int):
        super().__init__()
        self.encoder = encoder
        self.latent_dim = int(latent_dim)

    @staticmethod
    def num_outputs(latent_dim: int) -> int:
        """Encoder outputs: ``d``."""
        return latent_dim

    def forward(self, x: torch.Tensor) -> dist.Distribution:
        return dist.Delta(self.encoder(x), event_dim=1)
