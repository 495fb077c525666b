"""KL(q(z | x) || p(z)) to the model's own prior, per example and per dimension, and active units
(Burda et al. 2016)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pyro.distributions as dist
import torch

from ppl_vae.errors import ConfigError
from ppl_vae.infer.evaluate import COLLAPSE_NATS
from ppl_vae.infer.labels import OBSERVED_ROLES
from ppl_vae.results import Result
from ppl_vae.rng import seeded
from ppl_vae.validation import BOUNDS, Bound, check_number


def is_point_mass(q) -> bool:
    """Whether a guide distribution is a point mass (``Delta``, possibly ``Independent``): no KL exists."""
    base = q.base_dist if isinstance(q, dist.Independent) else q
    return isinstance(base, dist.Delta)


#: Draws of z per example (or of the prior's global latents) for Monte Carlo KL estimates.
KL_NUM_SAMPLES = 64


#: A model whose total KL(q(z|x) || p(z)) is below this many nats per example counts as collapsed.
COLLAPSE_KL_NATS = COLLAPSE_NATS  # see ppl_vae.infer.evaluate.COLLAPSE_NATS


def _unwrap_independent(d) -> tuple:
    """``(base, reinterpreted_ndims)`` of (nested) ``Independent`` wrappers; ``(d, 0)`` otherwise."""
    ndims = 0
    while isinstance(d, torch.distributions.Independent):
        ndims += d.reinterpreted_batch_ndims
        d = d.base_dist
    return d, ndims


def _univariate_per_coordinate(d) -> bool:
    """True when ``d`` (event shape ``(latent_dim,)``) is a product of univariate distributions, one per
    coordinate: ``Independent(univariate, 1)``."""
    base, ndims = _unwrap_independent(d)
    return ndims == 1 and base.event_shape == torch.Size()


def _prior_draws(vae, num_global: int) -> list:
    """p(z) as a list of distributions: ``[vae.prior_distribution()]``, or for a prior with global latents
    (``vae.has_global_latents``) ``num_global`` distributions p(z | globals), the globals drawn from their
    guide (what :func:`ppl_vae.evaluate` scores against)."""
    from pyro import poutine

    if not callable(getattr(vae, "prior_distribution", None)):
        raise ConfigError(f"the KL to the prior needs vae.prior_distribution(); {type(vae).__name__} has none")
    role = getattr(vae, "label_role", "none")
    if role in OBSERVED_ROLES:
        kind = "class" if role == "covariate" else "group"
        raise ConfigError(
            f"the KL to the prior needs p(z), and this model's prior is p(z | c): it depends on each example's {kind}"
        )
    with poutine.block():
        if getattr(vae, "has_global_latents", False):
            draws = []
            for _ in range(num_global):
                globals_trace = poutine.trace(vae.prior.global_guide).get_trace()
                draws.append(poutine.replay(vae.prior_distribution, trace=globals_trace)())
            return draws
        return [vae.prior_distribution()]


def _kl_rows(posteriors: list, prior, num_samples: int, per_dimension: bool) -> tuple[torch.Tensor, bool]:
    """KL(q || prior) summed over the examples of every ``q`` in ``posteriors``.

    Returns ``(rows, exact)``: ``rows`` is ``(S, latent_dim)`` per coordinate (``per_dimension``) or
    ``(S,)`` for the whole vector, one row per Monte Carlo draw of z (S = ``num_samples``), or a single
    row (S = 1) when ``exact`` (closed form / a KL registered with ``torch.distributions``)."""

    def exact_kl(q):
        if per_dimension:
            return torch.distributions.kl_divergence(_unwrap_independent(q)[0], _unwrap_independent(prior)[0])
        return torch.distributions.kl_divergence(q, prior)

    try:
        total = sum(
            exact_kl(q).double().reshape(-1, *(q.event_shape if per_dimension else ())).sum(0) for q in posteriors
        )
        return total[None], True
    except NotImplementedError:
        pass
    total = 0.0
    for q in posteriors:
        if per_dimension:
            qb, pb = _unwrap_independent(q)[0], _unwrap_independent(prior)[0]
            z = qb.sample(torch.Size([num_samples]))  # (S, n, d)
            terms = qb.log_prob(z) - pb.log_prob(z)  # (S, n, d)
        else:
            z = q.sample(torch.Size([num_samples]))  # (S, n, d)
            terms = q.log_prob(z) - prior.log_prob(z)  # (S, n)
        total = total + terms.double().reshape(num_samples, -1, *terms.shape[2:]).sum(1)
    return total, False


@dataclass(frozen=True)
class KLToPrior(Result):
    """KL(q(z | x) || p(z)) to a model's own prior, per example in nats, averaged over the examples.

    Attributes:
        total: the whole KL (the rate), or None for a point-mass guide (infinite KL to a density).
        total_se: its Monte Carlo standard error for these examples (0 when exact).
        per_dimension: ``(latent_dim,)`` per-coordinate KLs summing to ``total``, or None where the KL
            does not split over coordinates; ``per_dimension_se`` their Monte Carlo standard errors.
        per_dimension_note: why ``per_dimension`` is None (one line), else None.
        exact: True when the KL is in closed form (no Monte Carlo error).
        method: how it was computed (one line); prior: the prior's class name.
    """

    total: float | None = None
    total_se: float | None = None
    per_dimension: torch.Tensor | None = field(default=None, repr=False)
    per_dimension_se: torch.Tensor | None = field(default=None, repr=False)
    per_dimension_note: str | None = None
    exact: bool = False
    method: str | None = None
    prior: str | None = None


@torch.no_grad()
def kl_to_prior(
    vae, x: torch.Tensor, *, num_samples: int = KL_NUM_SAMPLES, seed: int | None = 0, chunk_size: int = 1024
) -> KLToPrior:
    """KL(q(z | x) || p(z)) to the VAE's own prior (``vae.prior_distribution()``), per example in nats,
    averaged over the examples ``x (N, *data_shape)``, split per latent dimension where the split exists.

    How, by case:

    * q and p both products of univariate distributions over the coordinates (e.g. the diagonal Normal
      guide with the ``normal``, ``learned-normal``, ``laplace``, ``student-t`` or ``hierarchical`` prior):
      the KL is the sum of per-coordinate KLs. Each is exact when ``torch.distributions`` knows the pair
      (Normal to Normal is the closed form ``log(s_p / s_q) + (s_q^2 + (m_q - m_p)^2) / (2 s_p^2) - 1/2``,
      for any prior loc and scale, learned or not; Normal to Laplace is registered too), otherwise a
      Monte Carlo average of ``log q(z_j | x) - log p(z_j)`` over ``num_samples`` draws per example.
    * otherwise (a mixture, VampPrior or flow prior, a full-rank or manifold guide): there is no
      per-dimension split of the KL; ``per_dimension`` is None and ``per_dimension_note`` says why. The
      total is the registered KL when one exists, else a Monte Carlo estimate.
    * a prior with global latents (``hierarchical``): p(z | globals) with the globals drawn from their
      guide, ``num_samples`` draws (the KL given the globals exact when it can be), as
      :func:`ppl_vae.evaluate` does; the result is a Monte Carlo average over the globals.
    * a point-mass guide (``delta``): the KL to a density is infinite; ``total`` is None.

    Returns a :class:`KLToPrior`: ``total`` (nats per example, or None) with ``total_se`` (Monte Carlo
    standard error for these examples, 0 when exact), ``per_dimension`` (``(latent_dim,)`` tensor summing
    to ``total``, or None) with ``per_dimension_se``, ``per_dimension_note`` (why it is None, else None),
    ``exact``, ``method`` (one line) and ``prior`` (the prior's class name). ``seed`` fixes the Monte
    Carlo draws (the global random state is left alone); ``chunk_size`` examples are encoded at a time.
    """
    check_number(
        num_samples, "num_samples (a standard error needs two draws)", Bound(int, 2, BOUNDS["num_samples"].high)
    )
    check_number(chunk_size, "chunk_size", BOUNDS["batch_size"])
    n = x.shape[0]
    if n < 1:
        raise ConfigError("the KL to the prior needs at least one example")
    posteriors = [vae.posterior(chunk) for chunk in x.split(chunk_size)]
    if is_point_mass(posteriors[0]):
        return KLToPrior(
            method="none: a point-mass guide has infinite KL to a density",
            per_dimension_note="the guide is a point mass (delta): its KL to a density is infinite",
        )
    globals_ = bool(getattr(vae, "has_global_latents", False))
    with seeded(seed, x.device):
        priors = _prior_draws(vae, num_samples)
        per_dimension = _univariate_per_coordinate(posteriors[0]) and _univariate_per_coordinate(priors[0])
        if globals_:  # one draw of the globals (and of z, if needed) per row
            pieces = [_kl_rows(posteriors, p, 1, per_dimension) for p in priors]
            rows, exact_given = torch.cat([r for r, _ in pieces]), pieces[0][1]
            exact = False
        else:
            rows, exact = _kl_rows(posteriors, priors[0], num_samples, per_dimension)
            exact_given = exact
    how = (
        "closed form / torch.distributions.kl_divergence"
        if exact_given
        else f"Monte Carlo, {num_samples} draws of z per example"
    )
    if globals_:
        how += f", averaged over {num_samples} draws of the prior's global latents from their guide"
    method = ("per coordinate, " if per_dimension else "whole vector, ") + how
    return _kl_result(rows / n, posteriors[0], priors[0], per_dimension, exact=exact, method=method)


def _kl_result(rows: torch.Tensor, q, prior, per_dimension: bool, *, exact: bool, method: str) -> KLToPrior:
    """The :class:`KLToPrior` of ``rows``: ``(S, latent_dim)`` (``per_dimension``) or ``(S,)`` draws of the
    KL averaged over the examples; their mean is the estimate and their spread its Monte Carlo error."""
    estimate = rows.mean(0)
    se = rows.std(0) / math.sqrt(rows.shape[0]) if rows.shape[0] > 1 else torch.zeros_like(estimate)
    common = {"exact": exact, "method": method, "prior": _prior_name(prior)}
    if per_dimension:
        total_rows = rows.sum(-1)
        total_se = float(total_rows.std() / math.sqrt(len(total_rows))) if len(total_rows) > 1 else 0.0
        return KLToPrior(
            total=float(estimate.sum()),
            total_se=total_se,
            per_dimension=estimate.float(),
            per_dimension_se=se.float(),
            **common,
        )
    why = []
    if not _univariate_per_coordinate(q):
        why.append(f"the guide's q(z|x) ({type(_unwrap_independent(q)[0]).__name__}) is not a product over coordinates")
    if not _univariate_per_coordinate(prior):
        why.append(f"the prior ({type(_unwrap_independent(prior)[0]).__name__}) is not a product over coordinates")
    note = "no per-dimension split: " + " and ".join(why) + "; only the total KL is reported"
    return KLToPrior(total=float(estimate), total_se=float(se), per_dimension_note=note, **common)


def _prior_name(prior) -> str:
    if not isinstance(prior, dist.Independent):
        return type(prior).__name__
    return f"{type(_unwrap_independent(prior)[0]).__name__} (independent per coordinate)"


@torch.no_grad()
def kl_per_dimension(
    vae, x: torch.Tensor, *, num_samples: int = KL_NUM_SAMPLES, seed: int | None = 0
) -> torch.Tensor | None:
    """KL(q(z_j | x) || p(z_j)) per latent dimension j to the VAE's own prior, averaged over the examples
    ``x (N, *data_shape)``: a ``(latent_dim,)`` tensor in nats that sums to the rate. See
    :func:`kl_to_prior` for how each case is computed (closed form for a diagonal Normal guide and a
    diagonal Normal prior with any loc and scale; a registered KL; or Monte Carlo).

    Returns None for a point-mass guide (``delta``), whose KL to a density is infinite. Raises
    :class:`~ppl_vae.errors.ConfigError` when the KL has no per-dimension split (a prior or guide that is
    not a product over coordinates); :func:`kl_to_prior` then still gives the total.
    """
    kl = kl_to_prior(vae, x, num_samples=num_samples, seed=seed)
    if kl.total is None:
        return None
    if kl.per_dimension is None:
        raise ConfigError(
            f"KL per dimension is unavailable: {kl.per_dimension_note}; use "
            "ppl_vae.diagnostics.kl.kl_to_prior for the total"
        )
    return kl.per_dimension


@torch.no_grad()
def activity(vae, x: torch.Tensor) -> torch.Tensor:
    """Cov_x(E_q[z_j | x]): the variance over examples ``x (N, *data_shape)`` of each coordinate of the
    posterior mean, ``(latent_dim,)``. Needs only ``vae.encode(x) -> (mean, sd)``."""
    mean = vae.encode(x)[0]
    return mean.var(0)


def active_units(vae, x: torch.Tensor, threshold: float = 0.01) -> int:
    """Number of active latent units (Burda et al., 2016): dimensions j with Cov_x(E_q[z_j | x]) >
    ``threshold``; a dimension the encoder ignores (posterior collapse) is inactive."""
    return int((activity(vae, x) > threshold).sum())
