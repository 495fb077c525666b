"""Priors p(z) over the latent site ``"z"``.

A prior is anything the model can turn into a Pyro distribution with event shape ``(latent_dim,)``:
either such a distribution itself, or an ``nn.Module`` whose ``forward()`` (no arguments) returns one.
A module is the way to give a prior learnable parameters or buffers that follow ``.to(device)``.
No subclassing of anything in this package is needed.

A prior module may also have **global latent variables** (the ``hierarchical`` prior): its
``forward()`` then draws them with ``pyro.sample`` before returning p(z | globals), and it provides a
``global_guide()`` that draws the same sites from their (non-amortized) variational posterior. The
model calls ``forward()`` and the guide calls ``global_guide()``, both outside the data plate.

Registry: ``PRIORS[name](latent_dim, data_shape=..., guide=...)`` returns a module; ``guide`` is the
amortized guide (only the VampPrior uses it).
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from pyro.distributions import constraints
from torch import nn
from torch.nn.functional import softplus


class StandardNormal(nn.Module):
    """p(z) = N(0, I) with event shape ``(latent_dim,)``; no learnable parameters."""

    def __init__(self, latent_dim: int):
        super().__init__()
        self.latent_dim = latent_dim
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))

    def forward(self) -> dist.Distribution:
        return dist.Normal(self.loc, self.scale).to_event(1)


class LearnedNormal(nn.Module):
    """p(z) = N(m, diag(s^2)) with learnable m and log s (initialised at N(0, I))."""

    def __init__(self, latent_dim: int):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(latent_dim))
        self.log_scale = nn.Parameter(torch.zeros(latent_dim))

    def forward(self) -> dist.Distribution:
        return dist.Normal(self.loc, self.log_scale.exp()).to_event(1)


class StandardLaplace(nn.Module):
    """p(z) = prod_j Laplace(0, 1/sqrt(2)): heavier tails than N(0, I) at the same unit variance."""

    def __init__(self, latent_dim: int):
        super().__init__()
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.full((latent_dim,), 2**-0.5))

    def forward(self) -> dist.Distribution:
        return dist.Laplace(self.loc, self.scale).to_event(1)


class StudentT(nn.Module):
    """p(z) = prod_j StudentT(nu, 0, 1) with one learnable number of degrees of freedom nu > 0
    (``nu = softplus(raw)``, initialised at ``df``)."""

    def __init__(self, latent_dim: int, df: float = 5.0):
        super().__init__()
        self.raw_df = nn.Parameter(torch.tensor(math.log(math.expm1(df))))
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))

    @property
    def df(self) -> torch.Tensor:
        return softplus(self.raw_df)

    def forward(self) -> dist.Distribution:
        return dist.StudentT(self.df, self.loc, self.scale).to_event(1)


class MixtureOfGaussians(nn.Module):
    """p(z) = sum_k w_k N(m_k, diag(s_k^2)) with learnable weights (logits), locs and log-scales.

    Locs start at small random values so that the components can separate.
    """

    def __init__(self, latent_dim: int, num_components: int = 10):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(num_components))
        self.locs = nn.Parameter(0.5 * torch.randn(num_components, latent_dim))
        self.log_scales = nn.Parameter(torch.zeros(num_components, latent_dim))

    def forward(self) -> dist.Distribution:
        components = dist.Normal(self.locs, self.log_scales.exp()).to_event(1)  # batch (K,), event (d,)
        return dist.MixtureSameFamily(dist.Categorical(logits=self.logits), components)


class VampPrior(nn.Module):
    """VampPrior (Tomczak & Welling 2018): p(z) = (1/K) sum_k q(z | u_k) at K learned pseudo-inputs.

    The guide is passed in explicitly and held *by reference*, not as a submodule: its parameters
    belong to the guide (registered once in Pyro's param store), the prior owns only the
    pseudo-inputs, stored as logits so that ``u_k = sigmoid(logits)`` stay in [0, 1] like the data.
    """

    def __init__(self, latent_dim: int, data_shape, guide, num_components: int = 50):
        super().__init__()
        if guide is None:
            raise ValueError("the VampPrior needs the guide (the encoder) to be passed in")
        self._guide = [guide]  # a list hides it from nn.Module registration
        self.latent_dim = latent_dim
        self.pseudo_logits = nn.Parameter(0.1 * torch.randn(num_components, *data_shape))

    @property
    def pseudo_inputs(self) -> torch.Tensor:
        return torch.sigmoid(self.pseudo_logits)

    def forward(self) -> dist.Distribution:
        components = self._guide[0](self.pseudo_inputs)  # batch (K,), event (d,)
        mixing = dist.Categorical(logits=torch.zeros(components.batch_shape[-1], device=self.pseudo_logits.device))
        return dist.MixtureSameFamily(mixing, components)


class Hierarchical(nn.Module):
    """A prior with a hyperprior whose scale is inferred, not point-estimated::

        Model:  tau_j ~ HalfCauchy(1) (or LogNormal(0, 1)), j = 1..d   — one global latent site "tau"
                z_n | tau ~ N(0, diag(tau^2))                          — inside the data plate
        Guide:  q(tau) = LogNormal(m, s), non-amortized, learnable m and s (global_guide).

    Sampling the VAE after training draws tau from q(tau): generation from the posterior predictive.
    """

    def __init__(self, latent_dim: int, hyperprior: str = "half-cauchy"):
        super().__init__()
        if hyperprior not in ("half-cauchy", "log-normal"):
            raise ValueError(f"unknown hyperprior {hyperprior!r}; use half-cauchy or log-normal")
        self.hyperprior = hyperprior
        self.register_buffer("ones", torch.ones(latent_dim))
        self.q_loc = nn.Parameter(torch.zeros(latent_dim))
        self.q_log_scale = nn.Parameter(torch.full((latent_dim,), -2.0))

    def hyperprior_distribution(self) -> dist.Distribution:
        if self.hyperprior == "half-cauchy":
            return dist.HalfCauchy(self.ones).to_event(1)
        return dist.LogNormal(0 * self.ones, self.ones).to_event(1)

    def forward(self) -> dist.Distribution:
        tau = pyro.sample("tau", self.hyperprior_distribution())  # global: outside the data plate
        return dist.Normal(torch.zeros_like(tau), tau).to_event(1)

    def global_guide(self) -> torch.Tensor:
        return pyro.sample("tau", dist.LogNormal(self.q_loc, self.q_log_scale.exp()).to_event(1))


class FlowPrior(nn.Module):
    """p(z): N(0, I) pushed through learnable affine coupling layers (``pyro.distributions.transforms``),
    with a fixed permutation between layers. Exact, fast log-density in both directions."""

    def __init__(self, latent_dim: int, num_layers: int = 2, hidden: int = 32):
        super().__init__()
        if latent_dim < 2:
            raise ValueError("the flow prior needs latent_dim >= 2 (coupling layers split z in two)")
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))
        self.layers = nn.ModuleList(
            T.affine_coupling(latent_dim, hidden_dims=[hidden, hidden]) for _ in range(num_layers)
        )
        self.register_buffer("permutation", torch.arange(latent_dim - 1, -1, -1))

    def forward(self) -> dist.Distribution:
        transforms = []
        for i, layer in enumerate(self.layers):
            if i:
                transforms.append(T.Permute(self.permutation))
            transforms.append(layer)
        return dist.TransformedDistribution(dist.Normal(self.loc, self.scale).to_event(1), transforms)


def _manifold(name):
    def build(latent_dim, **_):
        from ppl_vae.models import manifold  # a sibling module, imported when a manifold prior is built

        return getattr(manifold, name)(latent_dim)

    return build


def _structured(name):
    def build(latent_dim, *, option=None, **context):
        from ppl_vae.models import structured  # a sibling module, imported when a structured prior is built

        return structured.build_structured(name, option, latent_dim, **context)

    return build


#: Priors by CLI name; each factory takes ``latent_dim`` and keyword context (``data_shape``, ``guide``,
#: ``hidden_dims``; ``option``, the text after a colon, for the structured priors ``mixture:K``, ...).
PRIORS = {
    "normal": lambda latent_dim, **_: StandardNormal(latent_dim),
    "learned-normal": lambda latent_dim, **_: LearnedNormal(latent_dim),
    "laplace": lambda latent_dim, **_: StandardLaplace(latent_dim),
    "student-t": lambda latent_dim, **_: StudentT(latent_dim),
    "mog": lambda latent_dim, **_: MixtureOfGaussians(latent_dim),
    "vamp": lambda latent_dim, *, data_shape, guide, **_: VampPrior(latent_dim, data_shape, guide),
    "hierarchical": lambda latent_dim, **_: Hierarchical(latent_dim),
    "flow": lambda latent_dim, **_: FlowPrior(latent_dim),
    "sphere": _manifold("SphereUniform"),
    "dirichlet": _manifold("DirichletPrior"),
    "mixture": _structured("mixture"),
    "semi-supervised": _structured("semi-supervised"),
    "conditional": _structured("conditional"),
    "covariates": _structured("covariates"),
    "groups": _structured("groups"),
}

#: One line per prior for ``ppl-vae list``.
PRIOR_DESCRIPTIONS = {
    "normal": "N(0, I), the standard VAE prior",
    "learned-normal": "N(m, diag s^2) with learnable m, s",
    "laplace": "independent Laplace(0, 1/sqrt 2): unit variance, heavier tails",
    "student-t": "independent Student-t(nu, 0, 1) with learnable degrees of freedom",
    "mog": "mixture of 10 diagonal Gaussians, learnable weights, locs and scales",
    "vamp": "VampPrior: mixture of q(z|u_k) at 50 learned pseudo-inputs",
    "hierarchical": "z ~ N(0, diag tau^2), tau ~ HalfCauchy(1) inferred by a LogNormal global guide",
    "flow": "N(0, I) through two learnable affine coupling layers",
    "sphere": "uniform on the unit hypersphere S^(d-1) (needs a sphere guide: power-spherical)",
    "dirichlet": "Dirichlet(1): uniform on the simplex (needs a simplex guide: dirichlet)",
    "mixture": "mixture:K, y ~ Categorical(pi), z | y ~ N(loc_y, scale_y), y summed out by enumeration",
    "semi-supervised": "M2 (--labelled N): label y observed for some examples, enumerated for the rest",
    "conditional": "conditional VAE (--condition-on label): p(z | c) learned per class, decoder p(x | z, c)",
    "covariates": "covariates:M (--condition-on COLUMNS of a table): p(z | c) and p(x | z, c) on real covariates",
    "groups": "groups:G (--groups COLUMN): z ~ N(mu_group, tau^2), mu_g ~ N(0, I), tau inferred",
}


def support_name(support) -> str:
    """The space a latent lives in: ``"real"``, ``"positive"``, ``"unit_interval"``, ``"sphere"``,
    ``"simplex"``, or the constraint's class name for anything else."""
    while hasattr(support, "base_constraint"):  # independent(...), mixtures of one family
        support = support.base_constraint
    if support is constraints.real:
        return "real"
    if isinstance(support, (constraints.greater_than, constraints.greater_than_eq)) and float(support.lower_bound) == 0:
        return "positive"
    if support is constraints.unit_interval:
        return "unit_interval"
    for name in ("sphere", "simplex"):
        if type(support) is type(getattr(constraints, name)):
            return name
    return type(support).__name__.lstrip("_")


def support_contains(prior_space: str, guide_space: str) -> bool:
    """Whether a guide on ``guide_space`` gives draws where a prior on ``prior_space`` has a density
    (same base measure, guide support inside the prior's)."""
    if prior_space == guide_space:
        return True
    euclidean = {"real": {"positive", "unit_interval"}, "positive": {"unit_interval"}}
    return guide_space in euclidean.get(prior_space, set())
