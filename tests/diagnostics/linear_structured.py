"""Structured VAEs with exact references: linear Gaussian decoders whose posteriors the guide families
represent exactly, and the exact posterior of the mixture of PPCA (tests/mixture_ppca.py).

Semi-supervised (M2): y ~ Uniform(K), z ~ N(0, I), x | y, z ~ N(W z + B_y + b, sigma^2 I), so
p(x | y) = N(mu_y, Sigma) with mu_y = B_y + b and Sigma = W W^T + sigma^2 I (shared by the classes), and
p(y | x) = softmax_y(mu_y^T Sigma^-1 x - mu_y^T Sigma^-1 mu_y / 2) is a linear classifier;
p(z | x, y) = N(P^-1 W^T (x - mu_y) / sigma^2, P^-1) with P = I + W^T W / sigma^2, diagonal because the
columns of W are orthogonal: a linear q(z | x, y) on [x, onehot(y)] with a constant scale is exact.

Conditional: z | c ~ N(loc_c, s^2 I), x | z, c ~ N(W z + B_c + b, sigma^2 I); p(x | c) is Gaussian and
p(z | x, c) = N(P^-1 (loc_c / s^2 + W^T (x - B_c - b) / sigma^2), P^-1), P = I / s^2 + W^T W / sigma^2:
again linear in [x, onehot(c)] with a constant (diagonal) covariance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from torch.distributions import MultivariateNormal

from ppl_vae import VAE
from ppl_vae.models import Gaussian
from ppl_vae.models.structured import Conditional, SemiSupervised

D, LATENT, K, SIGMA = 4, 2, 3, 0.5


def _orthogonal_columns(g: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(D, LATENT, generator=g, dtype=torch.float64))
    return q * torch.tensor([1.5, 0.8], dtype=torch.float64)  # W^T W = diag(2.25, 0.64)


@dataclass
class Linear:
    vae: VAE
    W: torch.Tensor  # (D, d)
    B: torch.Tensor  # (D, K) class offsets
    b: torch.Tensor  # (D,)
    locs: torch.Tensor  # (K, d) prior means (zeros for M2)
    s: float  # prior scale of z

    @property
    def precision(self) -> torch.Tensor:
        """P, the posterior precision of z given x and the class (diagonal)."""
        return torch.eye(LATENT, dtype=torch.float64) / self.s**2 + self.W.T @ self.W / SIGMA**2

    def class_means(self) -> torch.Tensor:
        """``(K, D)`` E[x | class]."""
        return (self.W @ self.locs.T + self.B).T + self.b

    def marginal_cov(self) -> torch.Tensor:
        return self.s**2 * self.W @ self.W.T + SIGMA**2 * torch.eye(D, dtype=torch.float64)

    def log_p_x_given_class(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, K)`` log p(x | class k)."""
        cov = self.marginal_cov()
        return torch.stack([MultivariateNormal(mu, cov).log_prob(x) for mu in self.class_means()], -1)

    def posterior(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact p(z | x, c): mean ``(N, d)`` and sd ``(d,)``."""
        cov = torch.linalg.inv(self.precision)
        resid = x - self.B.T[c] - self.b
        mean = (cov @ (self.locs[c] / self.s**2 + resid @ self.W / SIGMA**2).T).T
        return mean, cov.diagonal().sqrt()

    def simulate(self, n: int, g: torch.Generator, c: torch.Tensor | None = None):
        """``(c, z, x)``: classes (uniform unless given), latents and data from the model."""
        if c is None:
            c = torch.randint(0, K, (n,), generator=g)
        z = self.locs[c] + self.s * torch.randn(n, LATENT, generator=g, dtype=torch.float64)
        x = z @ self.W.T + self.B.T[c] + self.b + SIGMA * torch.randn(n, D, generator=g, dtype=torch.float64)
        return c, z, x


def _set_exact_encoder(m: Linear) -> None:
    """q(z | x, class) = the exact posterior: loc = A x + a_class, A = P^-1 W^T / sigma^2."""
    cov = torch.linalg.inv(m.precision)
    A = cov @ m.W.T / SIGMA**2  # (d, D)
    per_class = cov @ m.locs.T / m.s**2 - A @ m.B  # (d, K)
    layer = m.vae.encoder.encoder.net[0]
    with torch.no_grad():
        layer.weight.zero_()
        layer.weight[:LATENT, :D] = A
        layer.weight[:LATENT, D:] = per_class
        layer.bias[:LATENT] = -A @ m.b
        layer.bias[LATENT:] = 0.5 * torch.log(cov.diagonal())


def _set_decoder(m: Linear) -> None:
    with torch.no_grad():
        m.vae.decoder.net[0].weight.copy_(torch.cat([m.W, m.B], 1))
        m.vae.decoder.net[0].bias.copy_(m.b)


def make_semi_supervised(seed: int = 0, sharpen: float = 1.0) -> Linear:
    """M2 with the exact q(z | x, y) and, for ``sharpen=1``, the exact classifier q(y | x) = p(y | x);
    ``sharpen`` multiplies the classifier's logits (3: q proportional to p^3, over-confident)."""
    g = torch.Generator().manual_seed(seed)
    W, B, b = _orthogonal_columns(g), 1.2 * torch.randn(D, K, generator=g, dtype=torch.float64), torch.zeros(D)
    pyro.set_rng_seed(seed)
    prior = SemiSupervised(LATENT, K, data_shape=(D,), hidden_dims=(), alpha=0.0)
    vae = VAE((D,), LATENT, (), prior=prior, likelihood=Gaussian((D,), scale=SIGMA, learn_scale=False)).double()
    m = Linear(vae, W, B, b.double(), torch.zeros(K, LATENT, dtype=torch.float64), 1.0)
    _set_decoder(m)
    _set_exact_encoder(m)
    precision = torch.linalg.inv(m.marginal_cov())
    mu = m.class_means()  # (K, D)
    with torch.no_grad():
        prior.classifier[0].weight.copy_(sharpen * mu @ precision)
        prior.classifier[0].bias.copy_(sharpen * -0.5 * ((mu @ precision) * mu).sum(1))
    return m


def semi_supervised_exact(m: Linear, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact log p(x) ``(N,)`` and p(y | x) ``(N, K)`` of M2 (uniform p(y))."""
    joint = m.log_p_x_given_class(x) - math.log(K)
    return torch.logsumexp(joint, -1), torch.softmax(joint, -1)


def make_conditional(seed: int = 0) -> Linear:
    """The conditional VAE with the exact guide q(z | x, c) = p(z | x, c)."""
    g = torch.Generator().manual_seed(seed)
    W, B, b = _orthogonal_columns(g), torch.randn(D, K, generator=g, dtype=torch.float64), torch.zeros(D)
    locs = torch.tensor([[1.0, 0.0], [-1.0, 0.5], [0.0, -1.0]], dtype=torch.float64)
    s = 0.8
    pyro.set_rng_seed(seed)
    prior = Conditional(LATENT, K, data_shape=(D,))
    vae = VAE((D,), LATENT, (), prior=prior, likelihood=Gaussian((D,), scale=SIGMA, learn_scale=False)).double()
    with torch.no_grad():
        prior.locs.copy_(locs)
        prior.log_scales.fill_(math.log(s))
    m = Linear(vae, W, B, b.double(), locs, s)
    _set_decoder(m)
    _set_exact_encoder(m)
    return m


def mixture_posterior(m, x: torch.Tensor):
    """The exact posterior of the mixture of PPCA (tests/mixture_ppca.py): per component y the Gaussian
    p(z | x, y) = N(m_y(x), S_y), S_y = (diag(1 / s_y^2) + W^T W / sigma^2)^-1, m_y = S_y (mu_y / s_y^2 +
    W^T (x - b) / sigma^2). Returns ``(mean, sd, responsibilities, means, covs)``: the mixture's mean
    sum_y p(y | x) m_y ``(N, d)`` and marginal sd ``(N, d)``, p(y | x) ``(N, K)``, m_y ``(N, K, d)`` and
    S_y ``(K, d, d)``."""
    r = m.responsibilities(x)
    covs = torch.stack([torch.linalg.inv(torch.diag(1 / s**2) + m.W.T @ m.W / m.sigma**2) for s in m.s])
    means = torch.stack(
        [(covs[k] @ (m.mu[k] / m.s[k] ** 2 + (x - m.b) @ m.W / m.sigma**2).T).T for k in range(len(m.s))], 1
    )
    mean = (r[..., None] * means).sum(1)
    second = (r[..., None, None] * (covs[None] + means[..., :, None] * means[..., None, :])).sum(1)
    sd = (second.diagonal(dim1=-2, dim2=-1) - mean**2).sqrt()
    return mean, sd, r, means, covs


def exact_mixture_guide(m, scale: float = 1.0):
    """A plain Pyro guide drawing y ~ p(y | x) and z ~ N(m_y(x), scale^2 S_y): the exact posterior of the
    mixture of PPCA for ``scale=1`` (a too narrow one below 1)."""

    def guide(x, num_samples=None, c=None):
        _, _, r, means, covs = mixture_posterior(m, x)
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.Categorical(r))  # (N,), or (draws, N) under a vectorized plate
            loc = means[torch.arange(x.shape[0]), y]
            return pyro.sample("z", dist.MultivariateNormal(loc, scale**2 * covs[y]))

    return guide
