"""Probabilistic PCA as a VAE: a linear-Gaussian decoder with exact marginal and posterior.

p(z) = N(0, I_d), p(x | z) = N(W z + b, sigma^2 I_D)  =>  p(x) = N(b, W W^T + sigma^2 I) and
p(z | x) = N(M^-1 W^T (x - b), sigma^2 M^-1) with M = W^T W + sigma^2 I. With orthogonal columns of W,
M is diagonal and the exact posterior lies in the diagonal Normal family, so a linear encoder can
represent it exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.distributions import MultivariateNormal

from ppl_vae import VAE
from ppl_vae.models import Gaussian


@dataclass
class PPCA:
    vae: VAE
    W: torch.Tensor  # (D, d)
    b: torch.Tensor  # (D,)
    sigma: float

    def log_marginal(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log p(x), ``(N,)``."""
        D = self.W.shape[0]
        cov = self.W @ self.W.T + self.sigma**2 * torch.eye(D, dtype=self.W.dtype)
        return MultivariateNormal(self.b, covariance_matrix=cov).log_prob(x)

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact posterior mean ``(N, d)`` and standard deviation ``(d,)``."""
        m_diag = (self.W**2).sum(0) + self.sigma**2  # M = W^T W + sigma^2 I is diagonal
        loc = (x - self.b) @ self.W / m_diag
        scale = (self.sigma**2 / m_diag).sqrt()
        return loc, scale

    def set_guide(self, loc_shift: float = 0.0, scale_factor: float = 1.0) -> None:
        """Make the linear encoder output the exact posterior (optionally shifted / widened)."""
        m_diag = (self.W**2).sum(0) + self.sigma**2
        A = self.W.T / m_diag[:, None]  # (d, D): loc = A (x - b)
        _, scale = self.posterior(self.b[None])
        layer = self.vae.encoder.encoder.net[0]
        d = self.W.shape[1]
        with torch.no_grad():
            layer.weight.zero_()
            layer.bias.zero_()
            layer.weight[:d] = A
            layer.bias[:d] = -A @ self.b + loc_shift
            layer.bias[d:] = (scale * scale_factor).log()

    def data(self, n: int, generator: torch.Generator) -> torch.Tensor:
        d = self.W.shape[1]
        z = torch.randn(n, d, generator=generator, dtype=self.W.dtype)
        noise = torch.randn(n, self.W.shape[0], generator=generator, dtype=self.W.dtype)
        return z @ self.W.T + self.b + self.sigma * noise


def make_ppca(D: int = 6, d: int = 2, sigma: float = 0.5, seed: int = 0) -> PPCA:
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))
    W = Q[:, :d] * torch.tensor([2.0, 1.0, 0.7, 0.5][:d], dtype=torch.float64)  # orthogonal columns
    b = torch.randn(D, generator=g, dtype=torch.float64)
    vae = VAE((D,), d, hidden_dims=(), likelihood=Gaussian((D,), scale=sigma, learn_scale=False)).double()
    with torch.no_grad():
        vae.decoder.net[0].weight.copy_(W)
        vae.decoder.net[0].bias.copy_(b)
    return PPCA(vae=vae, W=W, b=b, sigma=sigma)


def plain_pyro_pair(ppca: PPCA, loc_shift: float = 0.0, scale_factor: float = 1.0):
    """The same PPCA written as two plain Pyro functions, no ``ppl_vae.VAE`` and no nn.Module: a model
    ``model(x, num_samples=None)`` and an exact-posterior guide (optionally shifted / rescaled)."""
    import pyro
    import pyro.distributions as dist

    W, b, sigma = ppca.W, ppca.b, ppca.sigma
    d = W.shape[1]

    def model(x, num_samples=None):
        n = x.shape[0] if x is not None else num_samples
        with pyro.plate("data", n):
            z = pyro.sample("z", dist.Normal(torch.zeros(d, dtype=W.dtype), 1.0).to_event(1))
            return pyro.sample("x", dist.Normal(z @ W.T + b, sigma).to_event(1), obs=x)

    def guide(x, num_samples=None):
        loc, scale = ppca.posterior(x)
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("z", dist.Normal(loc + loc_shift, scale * scale_factor).to_event(1))

    return model, guide
