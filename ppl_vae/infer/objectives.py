"""Which priors, guides, likelihoods and objectives work together — checked before training.

Each check raises :class:`ConfigError` with one line saying why the combination cannot work and what
to use instead. They look at the actual programs (one trace of the model and guide on one example),
so they apply to user-built components too.
"""

from __future__ import annotations

import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from torch.distributions import kl_divergence

from ppl_vae.errors import ConfigError
from ppl_vae.infer.enumeration import is_enumerated
from ppl_vae.models.priors import support_contains, support_name
from ppl_vae.vae import GUIDE_FOR_SUPPORT

#: Objectives by CLI name, one line each for ``ppl-vae list``.
OBJECTIVES = {
    "auto": "per latent site the analytic KL where torch registers one, Monte Carlo otherwise (default)",
    "trace": "Trace_ELBO: Monte Carlo KL at every latent site, for every prior and guide",
    "meanfield": "TraceMeanField_ELBO, strict: refused unless every latent site has an analytic KL",
    "iwae": "importance-weighted bound (RenyiELBO, alpha=0) with --particles K draws, vectorized",
}


def resolve_binarize(binarize: str, likelihood) -> str:
    """``"auto"`` -> ``"dynamic"`` for binary likelihoods, ``"none"`` for the others; check the rest."""
    kind = getattr(likelihood, "data_kind", "binary")
    if binarize == "auto":
        return "dynamic" if kind == "binary" else "none"
    if kind != "binary" and binarize != "none":
        name = getattr(likelihood, "name", type(likelihood).__name__)
        raise ConfigError(
            f"the {name} likelihood models {kind} data, so binarizing ({binarize}) would discard what "
            "it models; use --binarize none (or auto)"
        )
    return binarize


def to_likelihood_space(x: torch.Tensor, likelihood) -> torch.Tensor:
    """Data in the form a likelihood scores: 8-bit likelihoods get grey levels rounded to k/255
    (after any resizing); everything else passes unchanged (binarization is separate)."""
    if getattr(likelihood, "data_kind", None) == "8bit":
        return torch.round(x * 255) / 255
    return x


def _traces(vae, x, side: dict):
    # Own random stream: checking a combination must not change what training draws afterwards.
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type=x.device.type), torch.no_grad(), poutine.block():
        guide_trace = poutine.trace(vae.guide).get_trace(x, **side)
        model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x, **side)
    return model_trace, guide_trace


#: How an objective estimates the KL part of the ELBO at one latent site (values of :func:`check_compatible`);
#: ``"enumerated"``: a discrete site summed out exactly (``TraceEnum_ELBO``).
ANALYTIC, MONTE_CARLO, IMPORTANCE, ENUMERATED = "analytic", "monte-carlo", "importance-weighted", "enumerated"


def has_analytic_kl(guide_fn, prior_fn) -> bool:
    """True when ``torch.distributions.kl_divergence(guide_fn, prior_fn)`` has a registered closed form."""
    try:
        kl_divergence(guide_fn, prior_fn)
    except NotImplementedError:
        return False
    return True


def check_compatible(
    vae, x: torch.Tensor, *, elbo: str = "auto", num_particles: int = 1, beta: float = 1.0, c=None
) -> dict[str, str]:
    """Refuse combinations that cannot work, on a trace of ``vae`` at the examples ``x`` (one is enough).

    Returns, for every latent site (in the guide's order), how ``elbo`` estimates its KL part:
    ``"analytic"`` (``auto`` and ``meanfield`` where torch registers a closed form for the guide/prior
    pair, as ``TraceMeanField_ELBO`` computes it), ``"monte-carlo"`` (log q(z) − log p(z) at the draw:
    ``trace``, and ``auto`` where no closed form is registered) or ``"importance-weighted"`` (``iwae``,
    which has no separate KL term); ``"enumerated"`` for a discrete site marked
    ``infer={"enumerate": "parallel"}``, summed out exactly by ``TraceEnum_ELBO`` (the continuous sites
    of such a model get ``"monte-carlo"``: ``TraceEnum_ELBO`` has no analytic KL). ``c``: per-example
    labels for the programs (structured priors).
    """
    if elbo not in OBJECTIVES:
        raise ConfigError(f"unknown objective {elbo!r}; choose one of: {', '.join(OBJECTIVES)}")
    if num_particles < 1:
        raise ConfigError(f"the number of particles must be at least 1, got {num_particles}")
    if not beta >= 0:  # NaN too
        raise ConfigError(f"beta must be a non-negative number, got {beta}")
    model_trace, guide_trace = _traces(vae, x, {} if c is None else {"c": c})
    enumerated = [n for t in (guide_trace, model_trace) for n, site in t.nodes.items() if is_enumerated(site)]
    if enumerated:
        _check_enumerable(vae, elbo, beta, enumerated[0])
    terms: dict[str, str] = {name: ENUMERATED for name in dict.fromkeys(enumerated)}
    for name, guide_site in guide_trace.nodes.items():
        if guide_site["type"] != "sample" or site_is_subsample(guide_site) or name not in model_trace.nodes:
            continue
        model_site = model_trace.nodes[name]
        p_space, q_space = support_name(model_site["fn"].support), support_name(guide_site["fn"].support)
        if not support_contains(p_space, q_space):
            better = GUIDE_FOR_SUPPORT.get(p_space, "a guide on the same space")
            raise ConfigError(
                f"the prior of {name!r} lives on the {p_space} but the guide draws {q_space} values, so "
                f"log p(z) is undefined at the guide's draws; use --guide {better}"
            )
        log_p = model_site["fn"].log_prob(guide_site["value"])
        if not bool(torch.isfinite(log_p).all()):
            raise ConfigError(
                f"the prior's log-density at {name!r} is not finite at the guide's draws "
                f"({type(guide_site['fn']).__name__} guide); a prior built from the guide (vamp) needs a "
                "guide with a density: use --guide normal"
            )
        if name in terms:
            continue
        analytic = (
            elbo in ("auto", "meanfield") and not enumerated and has_analytic_kl(guide_site["fn"], model_site["fn"])
        )
        if elbo == "meanfield" and not analytic:
            raise ConfigError(
                f"meanfield needs an analytic KL between {type(guide_site['fn']).__name__} (guide) and "
                f"{type(model_site['fn']).__name__} (prior) at site {name!r}, and none is registered; "
                "use --elbo auto (analytic where registered, Monte Carlo elsewhere) or --elbo trace"
            )
        terms[name] = IMPORTANCE if elbo == "iwae" else ANALYTIC if analytic else MONTE_CARLO
    terms = {name: terms[name] for name in sorted(terms, key=lambda n: n not in guide_trace.nodes)}
    if elbo == "iwae":
        if getattr(vae, "has_global_latents", False):
            raise ConfigError(
                "the iwae objective needs every latent inside the data plate, but this prior has global "
                "latents (Pyro's RenyiELBO would give one bound for the whole batch); use --elbo auto"
            )
        if beta != 1.0:
            raise ConfigError(
                "beta scales the KL of an ELBO; the iwae bound has no separate KL term; use --beta 1 "
                "with iwae, or --elbo auto with beta"
            )
    return terms


def _check_enumerable(vae, elbo: str, beta: float, site: str) -> None:
    """Refuse what ``TraceEnum_ELBO`` cannot do with the enumerated discrete ``site``."""
    if elbo in ("meanfield", "iwae"):
        raise ConfigError(
            f"the discrete site {site!r} is summed out by enumeration (TraceEnum_ELBO), which {elbo} cannot "
            "do; use --elbo auto"
        )
    if beta != 1.0:
        raise ConfigError(
            f"beta and KL schedules weight a KL, and a model whose discrete site {site!r} is summed out by "
            "enumeration has none to weight; use --beta 1 without --kl-schedule"
        )
    if getattr(vae, "has_global_latents", False):
        raise ConfigError(
            f"enumerating the discrete site {site!r} together with global latents is not supported; "
            "use a prior without global latents"
        )
