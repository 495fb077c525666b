"""The amortization gap: how much of the gap between log p(x) and the ELBO the encoder's amortization costs."""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceEnum_ELBO

from ppl_vae.errors import ConfigError
from ppl_vae.infer.enumeration import enumerated_sites
from ppl_vae.infer.evaluate import EvalResult, evaluate, global_sites, max_plate_nesting
from ppl_vae.results import Result
from ppl_vae.rng import seeded
from ppl_vae.validation import Bound, check_number


class _LocalGuide:
    """Per-observation diagonal Normal guide (non-amortized), started from the encoder's output.

    ``loc`` and ``log_scale`` are plain leaf tensors ``(N, latent_dim)`` held by this object, never
    ``pyro.param`` sites: nothing about them goes through Pyro's global param store. Global latents of
    the model, if any, are drawn from the amortized guide's own global sites (``global_guide``, a copy
    of the guide that exposes only those sites), so that both guides share q(globals)."""

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor, latent_site: str = "z", global_guide=None):
        self.loc = loc.detach().clone().requires_grad_(True)
        self.log_scale = scale.detach().log().clone().requires_grad_(True)
        self.latent_site = latent_site
        self.global_guide = global_guide

    def __call__(self, x, **kwargs):
        if self.global_guide is not None:
            self.global_guide(x, **kwargs)
        with pyro.plate("data", x.shape[0]):
            return pyro.sample(self.latent_site, dist.Normal(self.loc, self.log_scale.exp()).to_event(1))


@dataclass(frozen=True)
class AmortizationGap(Result):
    """log p(x) - ELBO split into the approximation and the amortization gap; every figure a mean over
    the examples, per example in nats, with its Monte Carlo standard error (``*_se``).

    Attributes:
        elbo_amortized, elbo_amortized_se: the ELBO of the encoder's q(z | x).
        elbo_local, elbo_local_se: the ELBO of the refined per-example guide.
        log_likelihood, log_likelihood_se: log p(x) by importance sampling from the refined guide.
        amortization_gap, amortization_gap_se: ``elbo_local - elbo_amortized``.
        approximation_gap, approximation_gap_se: ``log_likelihood - elbo_local``.
        num_steps: refinement steps; num_examples: N.
    """

    elbo_amortized: float
    elbo_amortized_se: float
    elbo_local: float
    elbo_local_se: float
    log_likelihood: float
    log_likelihood_se: float
    amortization_gap: float
    amortization_gap_se: float
    approximation_gap: float
    approximation_gap_se: float
    num_steps: int
    num_examples: int


def amortization_gap(
    model,
    guide,
    data: torch.Tensor,
    *,
    posterior=None,
    num_steps: int = 500,
    lr: float = 1e-2,
    num_particles: int = 1000,
    seed: int = 0,
    latent_site: str = "z",
) -> AmortizationGap:
    """Split log p(x) - ELBO into the approximation gap and the amortization gap (Cremer et al. 2018).

    A non-amortized diagonal Normal guide, one (loc, scale) per observation started from the encoder's
    q(z | x), is refined for ``num_steps`` steps of ``torch.optim.Adam`` on a differentiable ELBO
    (``Trace_ELBO`` with 16 vectorized draws), with gradients taken with respect to the local (loc,
    log scale) only: the model's parameters are held fixed. The local parameters are plain tensors, not
    ``pyro.param`` sites, and everything runs in a private copy of Pyro's param store
    (``ParamStoreDict.scope``), so the store is left exactly as it was found and repeated calls on the
    same or equal data give the same answer (identical for the same ``seed``). Then, per example in nats
    with Monte Carlo standard errors (see :class:`AmortizationGap`):

    * ``elbo_amortized``: the ELBO of the encoder's q(z | x);
    * ``elbo_local``: the ELBO of the refined local guide (the best of the family, up to optimization);
    * ``log_likelihood``: log p(x) by importance sampling with ``num_particles`` draws from the local guide;
    * ``amortization_gap = elbo_local - elbo_amortized`` and
      ``approximation_gap = log_likelihood - elbo_local``.

    With global latents (sites the guide draws outside the data plate) both guides share the amortized
    guide's q(globals), and the figures are per example given q(globals) (see
    :class:`ppl_vae.infer.evaluate.EvalResult`).

    ``posterior(x)`` must return the encoder's q(z | x) as a diagonal Normal (``vae.posterior``).
    Discrete sites the model enumerates (``mixture:K`` with q(z | x)) are summed out in the refinement and
    in both scores; a model whose guide for z needs a label (q(z | x, y)) has no ``posterior`` and is
    refused with a one-line :class:`ConfigError`.
    Meant for chosen observations (tens to hundreds): all of them are refined and scored together.
    """
    if posterior is None:
        raise ConfigError("amortization_gap needs posterior=vae.posterior (the encoder's q(z | x)) to start from")
    check_number(num_steps, "num_steps", Bound(int, 0, 1_000_000))
    check_number(lr, "lr")
    store = pyro.get_param_store()
    # A private copy of the param store: the same tensors (the model sees its trained parameters), and
    # whatever the programs register while we run them is dropped on the way out.
    with store.scope(state=store.get_state()):
        local = _local_guide(guide, data, posterior, latent_site)
        enumerated = bool(enumerated_sites(model, guide, data[:1]))
        with seeded(seed, data.device):
            nesting = max_plate_nesting(model, guide, data[:1])
            _refine(model, local, data, nesting=nesting, num_steps=num_steps, lr=lr, enumerated=enumerated)
        amortized = evaluate(SimpleNamespace(model=model, guide=guide), data, num_particles=num_particles, seed=seed)
        # The local guide holds one (loc, scale) per observation: evaluate it on all of them at once.
        refined = evaluate(
            SimpleNamespace(model=model, guide=local),
            data,
            num_particles=num_particles,
            seed=seed,
            batch_size=data.shape[0],
        )
    return _gap_result(amortized, refined, num_steps)


def _local_guide(guide, data: torch.Tensor, posterior, latent_site: str) -> _LocalGuide:
    """The per-observation guide started from the encoder's q(z | x), sharing the guide's global sites."""
    with torch.no_grad():
        q = posterior(data)
    base = q.base_dist if hasattr(q, "base_dist") else q
    if not isinstance(base, torch.distributions.Normal):
        raise ConfigError(f"amortization_gap refines a diagonal Normal guide; this encoder gives {type(base).__name__}")
    globals_ = global_sites(guide, data[:1])
    global_guide = poutine.block(guide, expose=globals_) if globals_ else None
    return _LocalGuide(base.loc, base.scale, latent_site=latent_site, global_guide=global_guide)


def _refine(
    model, local: _LocalGuide, data: torch.Tensor, *, nesting: int, num_steps: int, lr: float, enumerated: bool = False
) -> None:
    """``num_steps`` Adam steps on the local (loc, log scale) only; the model's parameters get no gradient.
    A model with enumerated discrete sites (a mixture's component) has them summed out (``TraceEnum_ELBO``)."""
    # Several vectorized draws per step: less gradient noise, so the refinement gets close to the optimum.
    objective = TraceEnum_ELBO if enumerated else Trace_ELBO
    elbo = objective(num_particles=16, vectorize_particles=True, max_plate_nesting=nesting)
    params = [local.loc, local.log_scale]
    optimizer = torch.optim.Adam(params, lr=lr)
    for _ in range(num_steps):
        loss = elbo.differentiable_loss(model, local, data)
        grads = torch.autograd.grad(loss, params)
        for p, g in zip(params, grads):
            p.grad = g
        optimizer.step()
    local.loc.requires_grad_(False)
    local.log_scale.requires_grad_(False)


def _gap_result(amortized: EvalResult, refined: EvalResult, num_steps: int) -> AmortizationGap:
    return AmortizationGap(
        elbo_amortized=amortized.elbo,
        elbo_amortized_se=amortized.elbo_se,
        elbo_local=refined.elbo,
        elbo_local_se=refined.elbo_se,
        log_likelihood=refined.log_likelihood,
        log_likelihood_se=refined.log_likelihood_se,
        amortization_gap=refined.elbo - amortized.elbo,
        amortization_gap_se=math.hypot(refined.elbo_se, amortized.elbo_se),
        approximation_gap=refined.log_likelihood - refined.elbo,
        approximation_gap_se=math.hypot(refined.log_likelihood_se, refined.elbo_se),
        num_steps=num_steps,
        num_examples=refined.num_examples,
    )
