"""The deterministic encoder: q(z | x) = Delta(f(x)), a point mass at the encoder's output."""

from __future__ import annotations

from collections.abc import Sequence

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import nn

from ppl_vae.guides.encoders import encoder_network


class PointMass(nn.Module):
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

    @classmethod
    def build(
        cls,
        data_shape: Sequence[int],
        latent_dim: int,
        hidden_dims: Sequence[int],
        *,
        network: str = "mlp",
        extra_features: int = 0,
    ) -> PointMass:
        """The family on an encoder with ``latent_dim`` outputs (``network`` and ``extra_features`` as in
        :func:`~ppl_vae.guides.encoders.encoder_network`)."""
        return cls(
            encoder_network(network, data_shape, hidden_dims, latent_dim, extra_features=extra_features), latent_dim
        )

    @classmethod
    def mlp(cls, data_shape: Sequence[int], latent_dim: int, hidden_dims: Sequence[int]) -> PointMass:
        """The default: an :class:`~ppl_vae.guides.encoders.MLPEncoder` with ``latent_dim`` outputs."""
        return cls.build(data_shape, latent_dim, hidden_dims)

    def forward(self, x: torch.Tensor) -> dist.Distribution:
        return dist.Delta(self.encoder(x), event_dim=1)
