"""The full-rank Gaussian family, amortized: q(z | x) = N(loc(x), L(x) L(x)^T)."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import nn

from ppl_vae.guides.encoders import EncodedFamily


class FullRankNormal(EncodedFamily, nn.Module):
    """Amortized multivariate Normal posterior with a full covariance.

    The encoder maps ``x (N, *data_shape)`` to ``2 * d + d (d - 1) / 2`` numbers (``d = latent_dim``), in
    this order: the loc μ(x) ``(N, d)``; the log of the diagonal of the Cholesky factor L(x) ``(N, d)``
    (diagonal = ``exp``, as the log-scale of the ``normal`` family: with zero off-diagonal entries this
    family *is* the diagonal one); the ``d (d - 1) / 2`` strictly-lower entries of L(x), row by row
    (``torch.tril_indices(d, d, -1)`` order), unconstrained.

    ``forward(x)`` returns ``MultivariateNormal(loc, scale_tril=L)``: batch shape ``(N,)``, event shape
    ``(d,)``, covariance ``L L^T``, reparameterized draws ``loc + L eps``.
    """

    support = constraints.real_vector

    def __init__(self, encoder: nn.Module, latent_dim: int):
        super().__init__()
        self.encoder = encoder
        self.latent_dim = int(latent_dim)
        rows, cols = torch.tril_indices(self.latent_dim, self.latent_dim, offset=-1)
        self.register_buffer("_rows", rows, persistent=False)
        self.register_buffer("_cols", cols, persistent=False)

    @staticmethod
    def num_outputs(latent_dim: int) -> int:
        """Encoder outputs needed: ``2 d + d (d - 1) / 2``."""
        return 2 * latent_dim + latent_dim * (latent_dim - 1) // 2

    def loc_scale_tril(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """μ(x) ``(N, d)`` and the lower-triangular L(x) ``(N, d, d)`` with positive diagonal."""
        d = self.latent_dim
        loc, log_diag, lower = self.encoder(x).split([d, d, d * (d - 1) // 2], dim=-1)
        scale_tril = torch.diag_embed(log_diag.exp())
        scale_tril[..., self._rows, self._cols] = lower
        return loc, scale_tril

    def forward(self, x: torch.Tensor) -> dist.Distribution:
        loc, scale_tril = self.loc_scale_tril(x)
        return dist.MultivariateNormal(loc, scale_tril=scale_tril)
