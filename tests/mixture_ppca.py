"""A mixture of probabilistic PCA written as a VAE with an enumerated component: exact references.

p(y) = Categorical(pi), p(z | y) = N(mu_y, diag s_y^2), p(x | z) = N(W z + b, sigma^2 I)
=>  p(x | y) = N(W mu_y + b, W diag(s_y^2) W^T + sigma^2 I), p(x) = sum_y pi_y p(x | y) and
p(y | x) = pi_y p(x | y) / p(x): a mixture of PPCA with exact log p(x) and exact responsibilities.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.distributions import MultivariateNormal

from ppl_vae import VAE
from ppl_vae.models import Gaussian, MixturePrior


@dataclass
class MixturePPCA:
    vae: VAE
    W: torch.Tensor  # (D, d)
    b: torch.Tensor  # (D,)
    sigma: float
    log_pi: torch.Tensor  # (K,)
    mu: torch.Tensor  # (K, d)
    s: torch.Tensor  # (K, d)

    def log_joint_y(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, K)`` log pi_y + log p(x | y)."""
        D = self.W.shape[0]
        out = []
        for k in range(self.mu.shape[0]):
            cov = self.W @ torch.diag(self.s[k] ** 2) @ self.W.T + self.sigma**2 * torch.eye(D, dtype=self.W.dtype)
            out.append(self.log_pi[k] + MultivariateNormal(self.W @ self.mu[k] + self.b, cov).log_prob(x))
        return torch.stack(out, -1)

    def log_marginal(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log p(x), ``(N,)``."""
        return torch.logsumexp(self.log_joint_y(x), -1)

    def responsibilities(self, x: torch.Tensor) -> torch.Tensor:
        """Exact p(y | x), ``(N, K)``."""
        return torch.softmax(self.log_joint_y(x), -1)

    def data(self, n: int, generator: torch.Generator) -> torch.Tensor:
        y = torch.multinomial(self.log_pi.exp(), n, replacement=True, generator=generator)
        z = self.mu[y] + self.s[y] * torch.randn(n, self.mu.shape[1], generator=generator, dtype=self.W.dtype)
        noise = torch.randn(n, self.W.shape[0], generator=generator, dtype=self.W.dtype)
        return z @ self.W.T + self.b + self.sigma * noise


def make_mixture_ppca(amortized_y: bool = False, D: int = 4, d: int = 2, K: int = 3, seed: int = 0) -> MixturePPCA:
    """A mixture of PPCA as a ``ppl_vae.VAE`` (float64) with a non-uniform, non-standard prior: weights
    0.5/0.3/0.2, component means around +-1 and scales 0.6-1.0. The guide is a linear q(z | x) (or, with
    ``amortized_y``, a linear classifier q(y | x) and q(z | x, y)), left at its random initialisation
    until :func:`set_wide_guide`."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(D, d, generator=g, dtype=torch.float64)
    b = torch.randn(D, generator=g, dtype=torch.float64)
    log_pi = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)[:K].log()
    mu = torch.tensor([[1.0, 0.0], [-1.0, 0.5], [0.0, -1.0]], dtype=torch.float64)[:K, :d]
    s = torch.tensor([[0.6, 0.8], [1.0, 0.7], [0.8, 0.9]], dtype=torch.float64)[:K, :d]
    sigma = 0.5
    torch.manual_seed(seed)
    prior = MixturePrior(d, K, amortized_y=amortized_y, data_shape=(D,), hidden_dims=())
    vae = VAE((D,), d, hidden_dims=(), prior=prior, likelihood=Gaussian((D,), scale=sigma, learn_scale=False))
    vae = vae.double()
    with torch.no_grad():
        vae.decoder.net[0].weight.copy_(W)
        vae.decoder.net[0].bias.copy_(b)
        prior.logits.copy_(log_pi)
        prior.locs.copy_(mu)
        prior.log_scales.copy_(s.log())
    return MixturePPCA(vae=vae, W=W, b=b, sigma=sigma, log_pi=log_pi, mu=mu, s=s)


def set_linear_guide(m: MixturePPCA, loc_weight, loc_bias, log_scale, class_logits=None) -> None:
    """Set the linear guide: loc(x[, y]) = loc_weight @ [x, onehot(y)] + loc_bias, a constant log-scale,
    and (amortized y) constant classifier logits."""
    layer = m.vae.encoder.encoder.net[0]
    d = m.W.shape[1]
    with torch.no_grad():
        layer.weight.zero_()
        layer.weight[:d] = loc_weight
        layer.bias[:d] = loc_bias
        layer.bias[d:] = log_scale
        if class_logits is not None:
            m.vae.prior.classifier[0].weight.zero_()
            m.vae.prior.classifier[0].bias.copy_(class_logits)


def set_wide_guide(m: MixturePPCA) -> None:
    """q(z | x) = the posterior of one Gaussian fitted to the prior's mixture, widened 1.5x: a guide whose
    importance weights are well behaved, so log p(x) converges fast."""
    pi = m.log_pi.exp()
    mean = (pi[:, None] * m.mu).sum(0)
    var = (pi[:, None] * (m.s**2 + m.mu**2)).sum(0) - mean**2
    # Posterior of N(mean, diag var) prior under x = W z + b + noise: precision P, loc = P^-1 (...)
    precision = torch.diag(1 / var) + m.W.T @ m.W / m.sigma**2
    cov = torch.linalg.inv(precision)
    A = cov @ m.W.T / m.sigma**2  # (d, D)
    a = cov @ (mean / var) - A @ m.b
    extra = m.vae.encoder.encoder.net[0].in_features - m.W.shape[0]
    weight = torch.cat([A, torch.zeros(A.shape[0], extra, dtype=A.dtype)], 1)
    set_linear_guide(m, weight, a, (1.5 * cov.diagonal().sqrt()).log(), class_logits=None)
