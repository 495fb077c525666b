"""Why the reparameterization trick: the spread of ELBO gradient estimators, measured.

The guide's parameters φ enter the ELBO through the distribution we sample from,
``ELBO(φ) = E_{z ~ q_φ}[f_φ(z)]`` with ``f_φ(z) = log p(x, z) - log q_φ(z)``. A sample of z is a number,
not a function of φ, so "sample z, then differentiate" gives no gradient for the sampling itself. Two
unbiased estimators of ``∇_φ ELBO`` fix that; this module measures how noisy each one is, for the same
model, guide and data:

``"reparam"`` (pathwise, the reparameterization trick; Pyro's default for a guide site whose
    distribution has ``rsample``): draw ``ε ~ N(0, I)``, set ``z = μ_φ + σ_φ ⊙ ε`` and differentiate
    ``f_φ(z)`` through z. Pyro: :class:`~pyro.infer.Trace_ELBO` with the guide unchanged.
``"score"`` (score function, REINFORCE, likelihood ratio): ``∇_φ ELBO = E_q[∇_φ log q_φ(z) · f_φ(z)]``
    (the term ``E_q[∇_φ log q_φ(z)]`` is zero and dropped). z is treated as a constant; only the density
    is differentiated. Pyro: :class:`~pyro.infer.Trace_ELBO` after the guide's latent site is made
    non-reparameterized (``has_rsample`` set to False on a copy of its distribution), so Pyro builds the
    surrogate ``log q(z) · f(z).detach()``. The cost ``f`` of each example is summed down to the
    ``pyro.plate`` it sits in, so an example's score only multiplies its own cost; no baseline.
``"score-loo"``: the score function with a leave-one-out baseline (Kool, van Hoof & Welling 2019;
    the control variate of VIMCO, Mnih & Rezende 2016): K particles z_1..z_K ~ q_φ(z | x) are drawn for
    each example and the estimate is ``(1/K) Σ_k ∇_φ log q_φ(z_k) · (f(z_k) − b_k)`` with
    ``b_k = (1/(K−1)) Σ_{j≠k} f(z_j)``, the mean learning signal of the *other* particles of the same
    example. ``b_k`` does not depend on ``z_k``, so the estimator is unbiased; it needs no state, no
    warm-up and nothing a training run would not have (every step can draw K particles). **Cost: K
    particles per step** (K evaluations of the model and guide, vectorized in one pass), so its variance
    is compared both with the one-particle reparameterized estimator (``variance_ratio``) and with the
    reparameterized estimator averaged over as many particles (``variance_ratio_equal_particles``,
    whose variance is the one-particle variance divided by K). Pyro: the same traces as
    :class:`~pyro.infer.Trace_ELBO` with ``num_particles=K, vectorize_particles=True`` (the learning
    signal of each example summed down to its ``pyro.plate``), with ``b_k`` subtracted in the surrogate.

Every estimator returns the gradient of the Pyro loss (−ELBO summed over the batch; one particle, or the
mean over the K particles for ``"score-loo"``) with respect to the given parameters. Variances are over
``num_repeats`` independent draws, each a fresh evaluation with no state carried from one to the next.

(An earlier version offered a decaying-average baseline warmed up on the very batch being measured and
then kept across the repeats: an oracle no training run has, whose variance said nothing about what a
baseline achieves in training. It was removed.)
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions.util import is_identically_zero
from pyro.infer import Trace_ELBO
from pyro.infer.util import MultiFrameTensor
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

from ppl_vae.errors import ConfigError
from ppl_vae.infer.evaluate import max_plate_nesting
from ppl_vae.results import Result
from ppl_vae.rng import isolated, seeded
from ppl_vae.validation import Bound, check_number

ESTIMATORS = ("reparam", "score", "score-loo")


DESCRIPTIONS = {
    "reparam": "pathwise: z = mu + sigma * eps, differentiate through z (Trace_ELBO, rsample); 1 particle",
    "score": "score function: grad log q(z) * (log p(x,z) - log q(z)), no baseline (Trace_ELBO, has_rsample=False); "
    "1 particle",
    "score-loo": "score function with a leave-one-out baseline: K particles per example, each particle's baseline "
    "the mean learning signal of the other K-1 (unbiased, no state); costs K particles per step",
}


#: Particles per step of the leave-one-out estimator, by default.
DEFAULT_LOO_PARTICLES = 8


# -- making a site non-reparameterized -------------------------------------------------------------


def score_only(fn: dist.Distribution) -> dist.Distribution:
    """A copy of ``fn`` whose draws are detached (``has_rsample`` False), so Pyro's ELBOs use the
    score-function estimator for it. Wrappers (``Independent``, masked, transformed) are copied down to
    the base distribution, whose flag they report; the guide's own object is left unchanged."""
    fn = copy.copy(fn)
    try:
        fn.has_rsample_(False)
    except AttributeError:  # a wrapper whose has_rsample is a read-only view of its base
        base = getattr(fn, "base_dist", None)
        if base is None:
            raise ConfigError(
                f"cannot make a {type(fn).__name__} non-reparameterized; use a Pyro distribution (or a wrapper of one)"
            ) from None
        fn.base_dist = score_only(base)
    if fn.has_rsample:
        raise ConfigError(
            f"could not switch off rsample for a {type(fn).__name__}; use a Pyro distribution (or a wrapper of one)"
        )
    return fn


class _ScoreFunction(Messenger):
    """Handler: make the named latent sample sites non-reparameterized."""

    def __init__(self, sites: Sequence[str]):
        super().__init__()
        self.sites = set(sites)

    def _pyro_sample(self, msg):
        if msg["name"] in self.sites and not msg["is_observed"]:
            msg["fn"] = score_only(msg["fn"])


def loo_loss(
    model, guide, x, sites: Sequence[str], num_particles: int, *, nesting: int | None = None, **model_kwargs
) -> torch.Tensor:
    """A differentiable surrogate loss whose gradient is the leave-one-out score-function estimate of
    ``∇(−ELBO)`` (summed over the batch, averaged over ``num_particles`` = K particles per example).

    Draws K particles of every latent site in one vectorized pass (a ``pyro.plate`` of size K left of the
    model's plates), makes ``sites`` non-reparameterized and builds, like ``Trace_ELBO``,
    ``−(1/K) [Σ log p − Σ (guide entropy terms) + Σ_sites Σ log q(z_k) · (c_k − b_k)]`` where ``c_k`` is
    the detached learning signal log p(x, z_k) − log q(z_k) summed down to the site's plates (one per
    example for a site in the data plate) and ``b_k = (Σ_j c_j − c_k) / (K − 1)``, the mean over the
    other particles. Stateless: nothing but these K particles of this batch is used."""
    check_number(num_particles, "num_particles of the leave-one-out baseline", Bound(int, 2, 100_000))
    if nesting is None:
        nesting = max_plate_nesting(model, guide, x, **model_kwargs)
    particle_dim = -(nesting + 1)

    def vectorized(fn):
        def wrapped(*args, **kwargs):
            with pyro.plate("_loo_particles", num_particles, dim=particle_dim):
                return fn(*args, **kwargs)

        return wrapped

    # The score-only switch sits outside the particle plate, so it applies to the broadcast distribution.
    guide_trace = poutine.trace(_ScoreFunction(sites)(vectorized(guide))).get_trace(x, **model_kwargs)
    model_trace = poutine.trace(poutine.replay(vectorized(model), trace=guide_trace)).get_trace(x, **model_kwargs)
    model_trace.compute_log_prob()
    guide_trace.compute_score_parts()
    surrogate = 0.0
    for site in model_trace.nodes.values():
        if site["type"] == "sample" and not site_is_subsample(site):
            surrogate = surrogate + site["log_prob_sum"]
    signal = MultiFrameTensor()
    for name, site in model_trace.nodes.items():
        if site["type"] == "sample" and not site_is_subsample(site):
            term = site["log_prob"]
            if not site["is_observed"]:
                term = term - guide_trace.nodes[name]["log_prob"]
            signal.add((site["cond_indep_stack"], term.detach()))
    for name, site in guide_trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        _, score, entropy = site["score_parts"]
        if not is_identically_zero(entropy):
            surrogate = surrogate - entropy.sum()
        if name in sites:
            if site["fn"].has_rsample:
                raise RuntimeError(f"site {name!r} is still reparameterized under the score-function handler")
            c = signal.sum_to(site["cond_indep_stack"])
            if not isinstance(c, torch.Tensor) or c.dim() < -particle_dim or c.shape[particle_dim] != num_particles:
                raise ConfigError(
                    f"the learning signal of site {name!r} has no particle dimension; "
                    "put its sample statement inside the model's plates"
                )
            baseline = (c.sum(particle_dim, keepdim=True) - c) / (num_particles - 1)
            surrogate = surrogate + (score * (c - baseline)).sum()
    return -surrogate / num_particles


# -- the measurement -------------------------------------------------------------------------------


def _check_sites(guide, x, sites, guide_kwargs) -> None:
    with poutine.block(), isolated(x.device):
        trace = poutine.trace(guide).get_trace(x, **guide_kwargs)
    latent = {n: s for n, s in trace.nodes.items() if s["type"] == "sample" and not s["is_observed"]}
    for name in sites:
        if name not in latent:
            raise ConfigError(
                f"the guide has no latent sample site {name!r}; its latent sites are: {', '.join(latent) or 'none'}"
            )
        if not getattr(latent[name]["fn"], "has_rsample", False):
            raise ConfigError(
                f"the guide's site {name!r} ({type(latent[name]['fn']).__name__}) has no rsample, so "
                "there is no reparameterized estimator to compare with"
            )


def _draw_gradients(loss_fn: Callable[[], torch.Tensor], params, num_repeats) -> torch.Tensor:
    """``(num_repeats, P)`` flattened gradients of ``loss_fn()`` w.r.t. ``params``, one fresh loss
    evaluation each (``torch.autograd.grad``: the ``.grad`` of ``params`` is not touched)."""
    rows = []
    for _ in range(num_repeats):
        loss = loss_fn()
        grads = torch.autograd.grad(loss, params, allow_unused=True) if loss.requires_grad else [None] * len(params)
        rows.append(
            torch.cat(
                [(torch.zeros_like(p) if g is None else g).detach().reshape(-1).double() for p, g in zip(params, grads)]
            )
        )
    return torch.stack(rows)


def _summarize(grads: torch.Tensor) -> dict:
    """Mean, per-coordinate variance, total variance and their Monte Carlo standard errors."""
    r = grads.shape[0]
    mean = grads.mean(0)
    var = grads.var(0, correction=1)
    # Total variance = E||g - E g||^2; its s.e. from the spread of the per-draw squared distances
    # (accounts for correlations between coordinates).
    sq = ((grads - mean) ** 2).sum(1) * (r / (r - 1))
    total = float(var.sum())
    return {
        "mean": mean.float(),
        "mean_se": (var / r).sqrt().float(),
        "variance": var.float(),
        "total_variance": total,
        "total_variance_se": float(sq.std() / math.sqrt(r)),
        "mean_variance": total / grads.shape[1],
    }


@dataclass(frozen=True)
class EstimatorVariance(Result):
    """The spread of one gradient estimator over independent draws (see :func:`gradient_variance`).

    Attributes:
        mean: ``(P,)`` flattened mean gradient; mean_se: ``(P,)`` its per-coordinate Monte Carlo s.e.
        variance: ``(P,)`` per-coordinate variance of one draw.
        total_variance, total_variance_se: the sum over coordinates, with its s.e.; mean_variance: total / P.
        particles: particles per step (the estimator's cost); description: one line; seconds: wall time.
        variance_ratio, variance_ratio_se: total variance over the one-particle reparameterized one (delta
            method s.e.), None without ``"reparam"``.
        variance_ratio_equal_particles, variance_ratio_equal_particles_se: total variance over the
            reparameterized one averaged over as many particles (``variance_ratio * particles``).
        agreement_rms_z: root mean square over coordinates of (mean - reparam mean) / combined s.e.:
            about 1 when both are unbiased.
    """

    mean: torch.Tensor = field(repr=False)
    mean_se: torch.Tensor = field(repr=False)
    variance: torch.Tensor = field(repr=False)
    total_variance: float
    total_variance_se: float
    mean_variance: float
    particles: int
    description: str
    seconds: float
    variance_ratio: float | None = None
    variance_ratio_se: float | None = None
    variance_ratio_equal_particles: float | None = None
    variance_ratio_equal_particles_se: float | None = None
    agreement_rms_z: float | None = None

    def summary(self) -> dict:
        """The numbers without the per-coordinate tensors (the mean gradient's norm instead)."""
        return {
            "description": self.description,
            "total_variance": self.total_variance,
            "total_variance_se": self.total_variance_se,
            "mean_variance": self.mean_variance,
            "particles": self.particles,
            "variance_ratio": self.variance_ratio,
            "variance_ratio_se": self.variance_ratio_se,
            "variance_ratio_equal_particles": self.variance_ratio_equal_particles,
            "variance_ratio_equal_particles_se": self.variance_ratio_equal_particles_se,
            "agreement_rms_z": self.agreement_rms_z,
            "mean_gradient_norm": float(self.mean.norm()),
            "seconds": self.seconds,
        }


@dataclass(frozen=True)
class GradientVariance(Result):
    """Gradient estimators of the ELBO loss compared on one batch (see :func:`gradient_variance`).

    Attributes:
        num_repeats: independent draws per estimator; num_params: P; batch_size: examples in ``x``.
        seed, loo_particles: as given; loss: what was differentiated (one line).
        estimators: ``{name: EstimatorVariance}`` in the order asked for.
    """

    num_repeats: int
    num_params: int
    batch_size: int
    seed: int
    loo_particles: int
    loss: str
    estimators: dict

    def summary(self) -> dict:
        """The JSON-friendly part (no per-coordinate tensors)."""
        out = {k: v for k, v in self.items() if k != "estimators"}
        out["estimators"] = {name: r.summary() for name, r in self.estimators.items()}
        return out


def gradient_variance(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    params: Sequence[torch.Tensor],
    *,
    num_repeats: int = 200,
    estimators: Sequence[str] = ESTIMATORS,
    seed: int = 0,
    sites: Sequence[str] = ("z",),
    loo_particles: int = DEFAULT_LOO_PARTICLES,
    model_kwargs: dict | None = None,
) -> GradientVariance:
    """Mean and variance of the gradient of the ELBO loss w.r.t. ``params`` under several estimators.

    Args:
        model, guide: Pyro programs taking ``x`` (e.g. ``vae.model``, ``vae.guide``).
        x: the batch, passed to both.
        params: the tensors to differentiate (e.g. ``list(vae.encoder.parameters())``); leaf tensors
            that the guide uses. Their ``.grad`` is left as it was.
        num_repeats: independent gradient draws per estimator, at least 2; every draw is a fresh
            evaluation on ``x`` (no warm-up, no state carried between draws).
        estimators: any of ``"reparam"``, ``"score"``, ``"score-loo"`` (see the module docstring).
        seed: the draws use their own random stream (the global one is left as it was).
        sites: the guide's latent sites made non-reparameterized for the score estimators; each must
            have ``rsample``.
        loo_particles: K, the particles per example (and per step) of ``"score-loo"``, at least 2.
        model_kwargs: keyword arguments for both programs (e.g. ``{"beta": 0.5}``).

    Returns a :class:`GradientVariance`: ``num_repeats``, ``num_params``, ``batch_size``, ``loss`` (what
    was differentiated) and ``estimators``, per name an :class:`EstimatorVariance` with ``particles`` (per
    step: its cost), ``mean`` (flattened mean gradient, ``(P,)``), ``mean_se`` (its per-coordinate Monte
    Carlo s.e.), ``variance`` (per coordinate), ``total_variance`` (sum over coordinates) with
    ``total_variance_se``, ``mean_variance`` (total / P), ``variance_ratio`` (total variance over the
    one-particle reparameterized one, None without ``"reparam"``) with ``variance_ratio_se`` (delta
    method), ``variance_ratio_equal_particles`` (total variance over the reparameterized one averaged over
    as many particles, i.e. ``variance_ratio * particles``) with its s.e., ``agreement_rms_z`` (root mean
    square over coordinates of (mean − reparam mean) / combined s.e.: about 1 when both are unbiased),
    ``description``, ``seconds``.
    """
    estimators = tuple(estimators)
    unknown = [e for e in estimators if e not in ESTIMATORS]
    if unknown or not estimators:
        raise ConfigError(f"unknown estimator(s) {unknown or '(none given)'}; choose from: {', '.join(ESTIMATORS)}")
    check_number(num_repeats, "num_repeats (a variance needs two draws)", Bound(int, 2, 1_000_000))
    check_number(
        loo_particles, "loo_particles (a leave-one-out baseline needs another particle)", Bound(int, 2, 100_000)
    )
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ConfigError("no parameters to differentiate (none given, or none requires grad)")
    model_kwargs = dict(model_kwargs or {})
    sites = tuple(sites)
    _check_sites(guide, x, sites, model_kwargs)
    measured = {}
    for k, name in enumerate(estimators):
        with seeded(seed + 1000 * k, x.device):
            loss_fn, particles = _loss_function(name, model, guide, x, sites, loo_particles, model_kwargs)
            started = time.perf_counter()
            grads = _draw_gradients(loss_fn, params, num_repeats)
        measured[name] = {
            **_summarize(grads),
            "particles": particles,
            "description": DESCRIPTIONS[name],
            "seconds": round(time.perf_counter() - started, 3),
        }
    return GradientVariance(
        num_repeats=num_repeats,
        num_params=int(sum(p.numel() for p in params)),
        batch_size=int(x.shape[0]),
        seed=seed,
        loo_particles=loo_particles,
        loss="-ELBO summed over the batch (Pyro's loss): one particle for reparam and score, the mean over "
        f"{loo_particles} particles for score-loo; gradient w.r.t. the given parameters",
        estimators={
            name: EstimatorVariance(**r, **_against_reparam(name, r, measured.get("reparam")))
            for name, r in measured.items()
        },
    )


def _loss_function(
    name: str, model, guide, x, sites: tuple, loo_particles: int, model_kwargs: dict
) -> tuple[Callable[[], torch.Tensor], int]:
    """``(loss_fn, particles)``: a fresh differentiable loss of estimator ``name`` per call, and its
    particles per step."""
    if name == "reparam":

        def loss_fn():
            return Trace_ELBO().differentiable_loss(model, guide, x, **model_kwargs)

        return loss_fn, 1
    if name == "score":
        score_guide = _ScoreFunction(sites)(guide)

        def loss_fn():
            return Trace_ELBO().differentiable_loss(model, score_guide, x, **model_kwargs)

        return loss_fn, 1
    nesting = max_plate_nesting(model, guide, x, **model_kwargs)

    def loss_fn():
        return loo_loss(model, guide, x, sites, loo_particles, nesting=nesting, **model_kwargs)

    return loss_fn, loo_particles


def _against_reparam(name: str, r: dict, ref: dict | None) -> dict:
    """The ratios and agreement of :class:`EstimatorVariance` for the summary ``r`` of estimator ``name``
    against the reparameterized one ``ref`` (none when there is no usable reference)."""
    if ref is None or ref["total_variance"] <= 0:
        return {}
    ratio = r["total_variance"] / ref["total_variance"]
    if name == "reparam":
        return {
            "variance_ratio": ratio,
            "variance_ratio_se": 0.0,
            "agreement_rms_z": 0.0,
            "variance_ratio_equal_particles": 1.0,
            "variance_ratio_equal_particles_se": 0.0,
        }
    ratio_se = ratio * math.sqrt(
        (r["total_variance_se"] / r["total_variance"]) ** 2 + (ref["total_variance_se"] / ref["total_variance"]) ** 2
    )
    se = (r["mean_se"] ** 2 + ref["mean_se"] ** 2).sqrt().clamp_min(1e-30)
    return {
        "variance_ratio": ratio,
        "variance_ratio_se": ratio_se,
        "variance_ratio_equal_particles": ratio * r["particles"],
        "variance_ratio_equal_particles_se": ratio_se * r["particles"],
        "agreement_rms_z": float((((r["mean"] - ref["mean"]) / se) ** 2).mean().sqrt()),
    }


def summary(result: GradientVariance) -> dict:
    """The JSON-friendly part of a :func:`gradient_variance` result (no per-coordinate tensors):
    ``result.summary()``."""
    return result.summary()


# -- a 1-D example with a closed form ----------------------------------------------------------------


@dataclass
class GaussianToy:
    """``model``: z_i ~ N(0, 1), x_i ~ N(z_i, 1); ``guide``: z_i ~ N(loc_i, exp(log_scale_i)^2).
    ``exact(params)`` is the exact gradient of the loss (−ELBO summed over i) w.r.t. ``(loc, log_scale)``,
    flattened like :func:`gradient_variance`'s ``mean``: d/d loc_i = 2 loc_i − x_i,
    d/d log_scale_i = 2 σ_i² − 1 (from E_q[(x−z)²/2 + z²/2] = ((x−μ)² + μ² + 2σ²)/2 and entropy log σ)."""

    x: torch.Tensor
    loc: torch.Tensor
    log_scale: torch.Tensor

    @property
    def params(self) -> list[torch.Tensor]:
        return [self.loc, self.log_scale]

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(self.loc, self.log_scale.exp()))

    def exact(self) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([2 * self.loc - self.x, 2 * (2 * self.log_scale).exp() - 1]).float()


def gaussian_toy(x, loc, scale=1.0) -> GaussianToy:
    """The :class:`GaussianToy` for observations ``x`` and guide ``N(loc, scale^2)`` (broadcast)."""
    x = torch.as_tensor(x, dtype=torch.float32).reshape(-1)
    loc = torch.as_tensor(loc, dtype=torch.float32).expand_as(x).clone().requires_grad_(True)
    log_scale = torch.as_tensor(scale, dtype=torch.float32).log().expand_as(x).clone().requires_grad_(True)
    return GaussianToy(x, loc, log_scale)
