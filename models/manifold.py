"""Latent spaces other than R^d: the unit hypersphere S^(d-1) and the probability simplex.

Distributions (Pyro ``TorchDistribution`` subclasses, event shape ``(d,)``):

* :class:`PowerSpherical` ``(loc, concentration)`` — the power spherical distribution of De Cao & Aziz
  (2020, "The Power Spherical distribution"), a reparameterizable alternative to the von Mises–Fisher
  distribution on ``S^(d-1) = {z in R^d : |z| = 1}``.
* :class:`HypersphericalUniform` ``(dim)`` — the uniform distribution on ``S^(dim-1)``.

Priors (``nn.Module`` whose ``forward()`` returns the distribution, as ``ppl_vae.models.priors`` asks):

* :class:`SphereUniform` ``(latent_dim)`` — p(z) uniform on ``S^(latent_dim-1)``; support ``sphere``.
* :class:`DirichletPrior` ``(latent_dim, concentration=1.0)`` — p(z) = Dirichlet(concentration * 1);
  support ``simplex``.

The sphere constraint is ``pyro.distributions.constraints.sphere`` (``torch.distributions.constraints``
has none); ``pyro.distributions.constraints`` re-exports every torch constraint as the same object,
so ``constraints.simplex`` and ``constraints.real_vector`` here are torch's.

A KL divergence ``KL(PowerSpherical || HypersphericalUniform)`` is registered with
``torch.distributions.kl`` (closed form, for ``TraceMeanField_ELBO``).
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.distributions.torch_distribution import TorchDistribution
from torch import nn
from torch.distributions import register_kl


def log_sphere_area(dim: int) -> float:
    """log of the surface area of the unit sphere ``S^(dim-1)`` in ``R^dim``: ``log(2 pi^(d/2) / Gamma(d/2))``."""
    return math.log(2.0) + 0.5 * dim * math.log(math.pi) - math.lgamma(0.5 * dim)


def _householder(y: torch.Tensor, loc: torch.Tensor) -> torch.Tensor:
    """Apply the Householder reflection H = I - 2 u u^T, u = (e1 - loc) / |e1 - loc|, that maps e1 to
    ``loc`` (a unit vector), to ``y (..., d)``. Where ``loc`` is (numerically) e1 the map is the identity."""
    e1 = torch.zeros_like(loc)
    e1[..., 0] = 1.0
    diff = e1 - loc
    norm = torch.linalg.vector_norm(diff, dim=-1, keepdim=True)
    tiny = torch.finfo(loc.dtype).eps
    u = torch.where(norm > tiny, diff / norm.clamp_min(tiny), torch.zeros_like(diff))
    return y - 2.0 * (y * u).sum(-1, keepdim=True) * u


class PowerSpherical(TorchDistribution):
    r"""The power spherical distribution on the unit sphere ``S^(d-1)`` (De Cao & Aziz, 2020).

    Density with respect to the surface measure of ``S^(d-1)``:

    .. math::  p(z; \mu, \kappa) = (1 + \mu^\top z)^\kappa / C(\kappa, d), \qquad
               C(\kappa, d) = 2^{\alpha + \beta} \pi^\beta \Gamma(\alpha) / \Gamma(\alpha + \beta),

    with :math:`\alpha = (d - 1)/2 + \kappa` and :math:`\beta = (d - 1)/2`.

    *Normalizer.* Write a point of the sphere as :math:`z = t\mu + \sqrt{1 - t^2}\, v` with
    :math:`t = \mu^\top z \in [-1, 1]` and :math:`v` on the unit sphere :math:`S^{d-2}` orthogonal to
    :math:`\mu`; the surface measure is :math:`(1 - t^2)^{(d-3)/2}\, dt\, dv`. Hence

    .. math::  C = |S^{d-2}| \int_{-1}^{1} (1 + t)^{\kappa + (d-3)/2} (1 - t)^{(d-3)/2}\, dt
                 = \frac{2\pi^\beta}{\Gamma(\beta)} \cdot 2^{\alpha + \beta - 1} B(\alpha, \beta)
                 = 2^{\alpha+\beta} \pi^\beta \frac{\Gamma(\alpha)}{\Gamma(\alpha+\beta)},

    using :math:`t = 2s - 1` in the integral. At :math:`\kappa = 0` this is the sphere's area
    :math:`2\pi^{d/2}/\Gamma(d/2)` (Legendre duplication), i.e. the uniform distribution.

    *Sampling* (reparameterized) follows the same decomposition: the marginal of :math:`t` has density
    proportional to :math:`(1+t)^{\alpha-1}(1-t)^{\beta-1}`, so :math:`(t + 1)/2 \sim \mathrm{Beta}(\alpha,
    \beta)` (implicitly reparameterized by torch); :math:`v` is uniform on :math:`S^{d-2}` (a normalized
    Gaussian, independent of the parameters); :math:`y = (t, \sqrt{1 - t^2}\, v)` is a draw for
    :math:`\mu = e_1`, and the Householder reflection that maps :math:`e_1` to :math:`\mu` gives the draw.

    Args:
        loc: mean direction μ, ``(..., d)`` with unit norm, ``d >= 2``.
        concentration: κ >= 0, ``(...)``; κ = 0 is the uniform distribution.

    Batch shape: the broadcast of ``loc.shape[:-1]`` and ``concentration.shape``; event shape ``(d,)``.
    """

    arg_constraints = {"loc": constraints.sphere, "concentration": constraints.nonnegative}
    support = constraints.sphere
    has_rsample = True

    def __init__(self, loc: torch.Tensor, concentration, validate_args=None):
        if not isinstance(concentration, torch.Tensor):
            concentration = torch.as_tensor(concentration, dtype=loc.dtype, device=loc.device)
        if loc.dim() < 1 or loc.shape[-1] < 2:
            raise ValueError(f"PowerSpherical needs loc of shape (..., d) with d >= 2, got {tuple(loc.shape)}")
        batch_shape = torch.broadcast_shapes(loc.shape[:-1], concentration.shape)
        event_shape = loc.shape[-1:]
        self.loc = loc.expand(batch_shape + event_shape)
        self.concentration = concentration.expand(batch_shape)
        super().__init__(batch_shape, event_shape, validate_args=validate_args)

    @property
    def dim(self) -> int:
        return self.event_shape[0]

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(PowerSpherical, _instance)
        batch_shape = torch.Size(batch_shape)
        new.loc = self.loc.expand(batch_shape + self.event_shape)
        new.concentration = self.concentration.expand(batch_shape)
        super(PowerSpherical, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def _alpha_beta(self) -> tuple[torch.Tensor, torch.Tensor]:
        beta = torch.full_like(self.concentration, 0.5 * (self.dim - 1))
        return beta + self.concentration, beta

    def rsample(self, sample_shape=torch.Size()) -> torch.Tensor:
        sample_shape = torch.Size(sample_shape)
        alpha, beta = self._alpha_beta()
        s = torch.distributions.Beta(alpha, beta, validate_args=False).rsample(sample_shape)  # (*S, *B)
        t = 2.0 * s - 1.0
        # sqrt(1 - t^2) = 2 sqrt(s (1 - s)); clamped so that s == 1 in floating point gives no NaN gradient
        radius = 2.0 * (s * (1.0 - s)).clamp_min(torch.finfo(s.dtype).tiny).sqrt()
        v = torch.randn(sample_shape + self.batch_shape + (self.dim - 1,), dtype=self.loc.dtype, device=self.loc.device)
        v = v / torch.linalg.vector_norm(v, dim=-1, keepdim=True)
        y = torch.cat([t.unsqueeze(-1), radius.unsqueeze(-1) * v], dim=-1)  # a draw for loc = e1
        return _householder(y, self.loc)

    def log_normalizer(self) -> torch.Tensor:
        """log C(κ, d), batch shape."""
        alpha, beta = self._alpha_beta()
        log_c = (alpha + beta) * math.log(2.0) + beta * math.log(math.pi)
        return log_c + torch.lgamma(alpha) - torch.lgamma(alpha + beta)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        cos = (self.loc * value).sum(-1)
        # xlogy: 0 * log 0 = 0 (κ = 0 at the antipode); clamp: 1 + cos >= 0 up to rounding
        return torch.xlogy(self.concentration, (1.0 + cos).clamp_min(0.0)) - self.log_normalizer()

    def entropy(self) -> torch.Tensor:
        """H = log C - κ E[log(1 + t)], with E[log(1 + t)] = log 2 + ψ(α) - ψ(α + β)."""
        alpha, beta = self._alpha_beta()
        mean_log = math.log(2.0) + torch.digamma(alpha) - torch.digamma(alpha + beta)
        return self.log_normalizer() - self.concentration * mean_log

    @property
    def mean(self) -> torch.Tensor:
        """E[z] = E[t] μ with E[t] = κ / (κ + d - 1)."""
        return self._mean_t().unsqueeze(-1) * self.loc

    @property
    def variance(self) -> torch.Tensor:
        """Coordinate-wise variance: Cov z = H diag(Var t, c, ..., c) H with c = (1 - E[t^2]) / (d - 1) and
        H e1 = μ, so Var z_i = c + (Var t - c) μ_i^2."""
        alpha, beta = self._alpha_beta()
        total = alpha + beta
        var_t = 4.0 * alpha * beta / (total.square() * (total + 1.0))
        c = (1.0 - var_t - self._mean_t().square()) / (self.dim - 1)
        return c.unsqueeze(-1) + (var_t - c).unsqueeze(-1) * self.loc.square()

    def _mean_t(self) -> torch.Tensor:
        return self.concentration / (self.concentration + (self.dim - 1))


class HypersphericalUniform(TorchDistribution):
    """The uniform distribution on the unit sphere ``S^(dim-1)``: density ``1 / |S^(dim-1)|`` with respect to
    the surface measure (``log_prob = -log_sphere_area(dim)``), draws are normalized standard Gaussians.

    Event shape ``(dim,)``; batch shape ``batch_shape``; ``dtype``/``device`` of draws and log-densities.
    """

    arg_constraints = {}
    support = constraints.sphere
    has_rsample = True  # draws do not depend on any parameter

    def __init__(self, dim: int, batch_shape=torch.Size(), *, dtype=None, device=None, validate_args=None):
        if int(dim) < 2:
            raise ValueError(f"the sphere S^(d-1) needs d >= 2, got d = {dim}")
        self._dtype = dtype if dtype is not None else torch.get_default_dtype()
        self._device = torch.device(device) if device is not None else torch.device("cpu")
        super().__init__(torch.Size(batch_shape), torch.Size([int(dim)]), validate_args=validate_args)

    @property
    def dim(self) -> int:
        return self.event_shape[0]

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(HypersphericalUniform, _instance)
        new._dtype, new._device = self._dtype, self._device
        super(HypersphericalUniform, new).__init__(torch.Size(batch_shape), self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def rsample(self, sample_shape=torch.Size()) -> torch.Tensor:
        z = torch.randn(self._extended_shape(sample_shape), dtype=self._dtype, device=self._device)
        return z / torch.linalg.vector_norm(z, dim=-1, keepdim=True)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        shape = torch.broadcast_shapes(value.shape[:-1], self.batch_shape)
        return torch.full(shape, -log_sphere_area(self.dim), dtype=value.dtype, device=value.device)

    def entropy(self) -> torch.Tensor:
        return torch.full(self.batch_shape, log_sphere_area(self.dim), dtype=self._dtype, device=self._device)

    @property
    def mean(self) -> torch.Tensor:
        return torch.zeros(self.batch_shape + self.event_shape, dtype=self._dtype, device=self._device)

    @property
    def variance(self) -> torch.Tensor:
        return torch.full(self.batch_shape + self.event_shape, 1.0 / self.dim, dtype=self._dtype, device=self._device)


@register_kl(PowerSpherical, HypersphericalUniform)
def _kl_power_spherical_uniform(p: PowerSpherical, q: HypersphericalUniform) -> torch.Tensor:
    """KL(p || uniform) = -H(p) + log |S^(d-1)|."""
    if p.event_shape != q.event_shape:
        raise ValueError(f"KL between distributions on spheres of different dimensions: {p.dim}, {q.dim}")
    kl = log_sphere_area(p.dim) - p.entropy()
    return kl.expand(torch.broadcast_shapes(p.batch_shape, q.batch_shape))


class SphereUniform(nn.Module):
    """p(z) uniform on the unit sphere ``S^(latent_dim-1)``: ``forward()`` returns a
    :class:`HypersphericalUniform` with event shape ``(latent_dim,)``. No learnable parameters; a
    non-persistent buffer carries dtype and device (``.to()``, ``.double()`` work, ``state_dict()`` is empty).
    Pair it with a sphere guide (``power-spherical``). Needs ``latent_dim >= 2``.
    """

    support = constraints.sphere

    def __init__(self, latent_dim: int):
        super().__init__()
        if int(latent_dim) < 2:
            raise ValueError(f"a sphere latent needs latent_dim >= 2 (S^(d-1) in R^d), got {latent_dim}")
        self.latent_dim = int(latent_dim)
        self.register_buffer("_like", torch.zeros(()), persistent=False)

    def forward(self) -> dist.Distribution:
        return HypersphericalUniform(self.latent_dim, dtype=self._like.dtype, device=self._like.device)


class DirichletPrior(nn.Module):
    """p(z) = Dirichlet(concentration * 1) on the probability simplex in ``R^latent_dim`` (event shape
    ``(latent_dim,)``); ``concentration=1`` is uniform on the simplex. The concentration vector is a buffer
    (no learnable parameters). Pair it with a simplex guide (``dirichlet``). Needs ``latent_dim >= 2``.
    """

    support = constraints.simplex

    def __init__(self, latent_dim: int, concentration: float = 1.0):
        super().__init__()
        if int(latent_dim) < 2:
            raise ValueError(f"a simplex latent needs latent_dim >= 2, got {latent_dim}")
        if not concentration > 0:
            raise ValueError(f"the Dirichlet concentration must be positive, got {concentration}")
        self.latent_dim = int(latent_dim)
        self.register_buffer("concentration", torch.full((self.latent_dim,), float(concentration)))

    def forward(self) -> dist.Distribution:
        return dist.Dirichlet(self.concentration)
