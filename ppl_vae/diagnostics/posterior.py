"""The guide against references for p(z | x): PSIS k-hat and importance-sampled log p(x), the posterior as
ArviZ InferenceData, and NUTS on p(z | x) with the decoder fixed.

Its ArviZ calls are in :mod:`ppl_vae.diagnostics.arviz_bridge.posterior`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from pyro.infer import Predictive

from ppl_vae.diagnostics.arviz_bridge import posterior as bridge
from ppl_vae.diagnostics.classification import class_probabilities, guide_class_probabilities
from ppl_vae.diagnostics.programs import has_discrete_sites, label_kwargs, local_guide_sites, rows
from ppl_vae.infer.enumeration import enumerated_sites
from ppl_vae.infer.evaluate import (
    DEFAULT_MAX_ELEMENTS,
    chunk_sizes,
    global_values,
    iwae_log_likelihood,
    log_weight_chunk,
    max_plate_nesting,
)
from ppl_vae.results import NOT_IN_DICT, Result
from ppl_vae.rng import reseed, seeded
from ppl_vae.validation import BOUNDS, Bound, check_number


@torch.no_grad()
def importance_log_ratios(
    model,
    guide,
    data: torch.Tensor,
    num_samples: int = 1000,
    *,
    batch_size: int | None = None,
    seed: int | None = None,
    c: torch.Tensor | None = None,
) -> torch.Tensor:
    """log p(x_n, z_s) - log q(z_s | x_n) for S draws from the guide per observation: ``(S, N)``
    float64. Chunked over observations and draws so that memory stays bounded.

    Discrete sites marked for enumeration are summed exactly inside every ratio
    (:func:`ppl_vae.infer.enumeration.enumerated_log_weights`): the ratio of draw s is then
    log sum_y p(x_n, y, z_s) / q(z_s | x_n, ...), still unbiased for p(x_n) once exponentiated. ``c``:
    ``(N,)`` per-example labels for programs that take them (a conditional model's classes)."""
    check_number(num_samples, "num_samples", Bound(int, 2, BOUNDS["num_samples"].high))
    side = label_kwargs(model, guide, c, data.shape[0], "PSIS")
    with seeded(seed, data.device):
        nesting = max_plate_nesting(model, guide, data[:1], **rows(side, 0, 1))
        enumerated = enumerated_sites(model, guide, data[:1], **rows(side, 0, 1))
        values = math.prod(size for _, size in enumerated.values())  # each enumerated value costs a pass
        batch, per_pass = chunk_sizes(data, num_samples, batch_size, max(1, DEFAULT_MAX_ELEMENTS // values))
        chunks = [
            log_weight_chunk(
                model,
                guide,
                data[i : i + batch],
                num_samples,
                per_pass,
                nesting,
                enumerated=bool(enumerated),
                **rows(side, i, i + batch),
            ).log_weight
            for i in range(0, data.shape[0], batch)
        ]
    return torch.cat(chunks, dim=1).double().cpu()


@dataclass(frozen=True)
class PSISResult(Result):
    """Pareto-smoothed importance sampling diagnostics of a guide as a proposal for p(z | x).

    Attributes:
        log_ratios: ``(S, N)`` log p(x_n, z_s) - log q(z_s | x_n); recompute anything from these.
        khat: ``(N,)`` Pareto shape estimate per observation (ArviZ ``psislw``). Below 0.5 the
            importance estimate is reliable; above 0.7 (or the sample-size threshold) it is not.
            ``-inf`` where all S weights are equal (to 1e-6 relative): the guide is the exact posterior.
        log_likelihood: mean over observations of the importance-sampled log p(x_n), nats.
        log_likelihood_se: its Monte Carlo standard error (delta method; optimistic where k-hat is high).
        per_example: ``(N,)`` arrays ``log_likelihood`` and ``log_likelihood_se``.
        fraction_above: share of observations with k-hat above 0.5, 0.7 and the sample-size-aware
            threshold ``min(1 - 1/log10(S), 0.7)`` (keys ``"0.5"``, ``"0.7"``, ``"sample_size"``).
        sample_size_threshold: that threshold for this S.
        worst: up to 10 ``(index, khat)`` pairs, highest k-hat first.
    """

    log_ratios: torch.Tensor = field(repr=False)
    khat: np.ndarray = field(repr=False)
    log_likelihood: float
    log_likelihood_se: float
    fraction_above: dict
    sample_size_threshold: float
    worst: list
    per_example: dict = field(repr=False, default_factory=dict)


def psis(
    model,
    guide,
    data: torch.Tensor,
    *,
    num_samples: int = 1000,
    batch_size: int | None = None,
    seed: int | None = None,
    c: torch.Tensor | None = None,
) -> PSISResult:
    """Per-observation PSIS k-hat of the guide and the importance-sampled log p(x).

    Args:
        model, guide: Pyro programs taking ``(x)``; every per-example site inside ``pyro.plate("data")``.
        data: ``(N, ...)`` observations in the form the likelihood scores (binarized for Bernoulli).
        num_samples: S draws from the guide per observation.
        c: ``(N,)`` per-example labels, for programs that take them (required by a conditional model).

    With enumerated discrete sites (``mixture:K``, ``semi-supervised:K``) each ratio sums them exactly
    (:func:`importance_log_ratios`): k-hat then judges the guide's continuous part, q(z | x, ...), as a
    proposal for p(z | x) with the discrete sites marginalized.
    """
    log_ratios = importance_log_ratios(model, guide, data, num_samples, batch_size=batch_size, seed=seed, c=c)
    khat = bridge.pareto_khat(log_ratios.T.numpy())  # (N, S) -> (N,); degenerate fits handled below
    # Equal weights (the exact posterior as proposal) leave the Pareto fit undefined and ArviZ returns
    # inf or nan; the proposal is perfect there, so report -inf.
    spread = (log_ratios.max(0).values - log_ratios.min(0).values).numpy()
    khat = np.where(spread < 1e-6 * np.maximum(1.0, np.abs(log_ratios.mean(0).numpy())), -np.inf, khat)
    s = log_ratios.shape[0]
    per_example, per_example_var = iwae_log_likelihood(log_ratios)
    threshold = min(1 - 1 / math.log10(s), 0.7)
    order = np.argsort(-khat)[:10]
    return PSISResult(
        log_ratios=log_ratios,
        khat=khat,
        log_likelihood=per_example.mean().item(),
        log_likelihood_se=(per_example_var.sum().sqrt() / len(per_example)).item(),
        fraction_above={
            "0.5": float(np.mean(khat > 0.5)),
            "0.7": float(np.mean(khat > 0.7)),
            "sample_size": float(np.mean(khat > threshold)),
        },
        sample_size_threshold=threshold,
        worst=[(int(i), float(khat[i])) for i in order],
        per_example={"log_likelihood": per_example.numpy(), "log_likelihood_se": per_example_var.sqrt().numpy()},
    )


@torch.no_grad()
def to_inference_data(
    model,
    guide,
    data: torch.Tensor,
    *,
    num_samples: int = 100,
    seed: int | None = None,
    latent_site: str = "z",
    observed_site: str = "x",
    c: torch.Tensor | None = None,
    class_site: str = "y",
    class_particles: int = 100,
):
    """An ArviZ ``InferenceData`` of the amortized posterior and the model's predictions.

    Groups (one chain, ``num_samples`` draws):

    * ``posterior``: ``z`` drawn from the guide for every observation, dims (chain, draw, obs, latent_dim),
      and every other latent site the guide draws per example (a semi-supervised guide's class ``y``,
      dims (chain, draw, obs));
    * ``posterior_predictive``: ``x`` drawn from p(x | z) at those draws (reconstructions);
    * ``log_likelihood``: pointwise log p(x_n | z_s), dims (chain, draw, obs);
    * ``prior`` and ``prior_predictive``: z ~ p(z) and x ~ p(x | z) from the model run generatively
      (``model(None, num_samples=N)``), so they have the same dims;
    * ``observed_data``: the data;
    * ``class_posterior`` (models with an enumerated discrete ``class_site``, e.g. ``mixture:K``,
      ``semi-supervised:K``): ``y``, each example's posterior class probabilities p(y | x), dims
      (obs, y_class), by self-normalized importance sampling with y summed exactly
      (:func:`ppl_vae.diagnostics.classification.class_probabilities`, ``class_particles`` draws per
      estimate), ``y_se`` their Monte Carlo standard errors, and ``q_y``, the guide's amortized
      q(y | x), when the guide draws y.

    Every latent site the guide draws per example is held at the guide's draw where the model is
    replayed (a semi-supervised guide's y as well as z), so ``log_likelihood`` and
    ``posterior_predictive`` are those of p(x | z, y). ``c``: ``(N,)`` per-example labels for programs
    that take them (required by a conditional model; its prior draws are then p(z | c)).
    """
    check_number(num_samples, "num_samples")
    n = data.shape[0]
    side = label_kwargs(model, guide, c, n, "the InferenceData")
    with seeded(seed, data.device):
        local = local_guide_sites(guide, data, **side)  # all of data: a guide may hold per-example parameters
        draws = Predictive(guide, num_samples=num_samples, return_sites=local)(data, **side)
        z = draws[latent_site]  # (S, N, d)
        # log p(x_n | z_s): replay the model's observed site at each posterior draw of the guide's sites.
        log_lik = _pointwise_log_likelihood(model, data, draws, observed_site, side)  # (S, N)
        prior = Predictive(model, num_samples=num_samples, return_sites=[latent_site, observed_site])(
            None, num_samples=n, **side
        )
        predictive = Predictive(model, posterior_samples=draws, return_sites=[observed_site])(
            None, num_samples=n, **side
        )
        classes = _class_group(model, guide, data, class_site, class_particles, side)

    def arr(t):
        return t.detach().cpu().numpy()[None]  # add the chain dim

    d = z.shape[-1]
    x_dims = [f"{observed_site}_dim_{i}" for i in range(data.dim() - 1)]
    dims = {latent_site: ["obs", "latent_dim"], observed_site: ["obs", *x_dims]}
    for name, value in draws.items():  # the guide's other local sites, e.g. a semi-supervised class y
        if name != latent_site:
            dims[name] = ["obs", *(f"{name}_dim_{i}" for i in range(value.dim() - 2))]
    coords = {"obs": np.arange(n), "latent_dim": np.arange(d)}
    idata = bridge.inference_data(
        posterior={name: arr(value) for name, value in draws.items()},
        posterior_predictive={observed_site: arr(predictive[observed_site])},
        log_likelihood={observed_site: arr(log_lik)},
        prior={latent_site: arr(prior[latent_site])},
        prior_predictive={observed_site: arr(prior[observed_site])},
        observed_data={observed_site: data.detach().cpu().numpy()},
        dims={**dims},
        coords=coords,
    )
    if classes:
        idata.add_groups({"class_posterior": _class_dataset(classes, class_site)})
    return idata


def _class_group(model, guide, data, class_site: str, num_particles: int, side: dict) -> dict:
    """``{name: (N, K) array}`` of the ``class_posterior`` group: ``y`` and ``y_se`` (p(y | x) and its
    s.e.), and ``q_y`` (the guide's q(y | x)) when the guide draws y; empty without an enumerated y."""
    if class_site not in enumerated_sites(model, guide, data, **side):
        return {}
    estimate = class_probabilities(
        model, guide, data, num_particles=num_particles, site=class_site, seed=None, c=side.get("c")
    )
    out = {class_site: estimate.probabilities.numpy(), f"{class_site}_se": estimate.standard_error.numpy()}
    q = guide_class_probabilities(guide, data, site=class_site, c=side.get("c"))
    if q is not None:
        out[f"q_{class_site}"] = q.numpy()
    return out


def _class_dataset(classes: dict, class_site: str):
    """The ``class_posterior`` group as a Dataset with dims (obs, <site>_class) and no chain or draw."""
    first = next(iter(classes.values()))
    class_dim = f"{class_site}_class"
    return bridge.dataset(
        classes,
        coords={"obs": np.arange(first.shape[0]), class_dim: np.arange(first.shape[1])},
        dims=dict.fromkeys(classes, ["obs", class_dim]),
    )


def _pointwise_log_likelihood(model, data, draws: dict, observed_site: str, side: dict) -> torch.Tensor:
    from pyro import poutine

    out = []
    for s in range(next(iter(draws.values())).shape[0]):
        conditioned = poutine.condition(model, data={name: value[s] for name, value in draws.items()})
        trace = poutine.trace(conditioned).get_trace(data, **side)
        site = trace.nodes[observed_site]
        out.append(site["fn"].log_prob(site["value"]))
    return torch.stack(out)  # (S, N)


# ---------------------------------------------------------------------------------------------------
# NUTS reference posteriors


@dataclass(frozen=True)
class NUTSResult(Result):
    """NUTS on p(z | x) (decoder fixed) for chosen observations, against the guide's q(z | x).

    Attributes:
        samples: ``(chains, draws, obs, latent_dim)`` NUTS draws of z.
        guide_samples: ``(draws, obs, latent_dim)`` draws of z from the guide.
        nuts_mean, nuts_sd, guide_mean, guide_sd: ``(obs, latent_dim)``.
        standardized_mean_error: ``(guide_mean - nuts_mean) / nuts_sd``; absolute values above ~0.5 mean the
            guide is off-centre by a sizeable fraction of the posterior's width.
        sd_ratio: ``guide_sd / nuts_sd``: below 1 an under-dispersed (over-confident) guide.
        rhat, ess_bulk, ess_tail: ``(obs, latent_dim)`` from ArviZ (rank-normalized R-hat, ESS).
        max_rhat, min_ess_bulk: the worst of each; trust the comparison when R-hat < 1.01 and ESS > 400.
        global_values: values of global latents held fixed (one guide draw), if the model has any.
        inference_data: ArviZ InferenceData of the NUTS draws (``posterior``) and the sampler's stats
            (not in :meth:`to_dict`).
    """

    samples: np.ndarray = field(repr=False)
    guide_samples: np.ndarray = field(repr=False)
    nuts_mean: np.ndarray = field(repr=False)
    nuts_sd: np.ndarray = field(repr=False)
    guide_mean: np.ndarray = field(repr=False)
    guide_sd: np.ndarray = field(repr=False)
    standardized_mean_error: np.ndarray = field(repr=False)
    sd_ratio: np.ndarray = field(repr=False)
    rhat: np.ndarray = field(repr=False)
    ess_bulk: np.ndarray = field(repr=False)
    ess_tail: np.ndarray = field(repr=False)
    max_rhat: float
    min_ess_bulk: float
    divergences: int
    global_values: dict = field(repr=False, default_factory=dict)
    inference_data: object = field(repr=False, default=None, metadata=NOT_IN_DICT)

    def summary(self) -> dict:
        """JSON-ready numbers: per observation and overall."""
        return {
            "max_rhat": self.max_rhat,
            "min_ess_bulk": self.min_ess_bulk,
            "divergences": self.divergences,
            "max_abs_standardized_mean_error": float(np.abs(self.standardized_mean_error).max()),
            "median_sd_ratio": float(np.median(self.sd_ratio)),
            "sd_ratio_range": [float(self.sd_ratio.min()), float(self.sd_ratio.max())],
            "per_observation": [
                {
                    "standardized_mean_error": self.standardized_mean_error[i].tolist(),
                    "sd_ratio": self.sd_ratio[i].tolist(),
                    "rhat": self.rhat[i].tolist(),
                    "ess_bulk": self.ess_bulk[i].tolist(),
                }
                for i in range(self.sd_ratio.shape[0])
            ],
        }


def nuts_reference(
    model,
    guide,
    x: torch.Tensor,
    *,
    num_chains: int = 4,
    num_warmup: int = 300,
    num_samples: int = 500,
    guide_samples: int = 2000,
    latent_site: str = "z",
    seed: int = 0,
    progress: bool = False,
    c: torch.Tensor | None = None,
) -> NUTSResult:
    """A gold-standard posterior for chosen observations: NUTS on p(z | x) with the model's parameters
    (decoder, likelihood scale, learned prior) fixed at their current values, compared with the guide.

    Args:
        model, guide: Pyro programs taking ``(x)``; per-example sites inside ``pyro.plate("data")``.
        x: ``(N, ...)`` the observations (tens at most: all are sampled jointly, one block of z each).
        num_chains: independent chains (run one after another, each started from a prior draw, so the
            starts are over-dispersed and R-hat means something). At least 4 is the usual advice.
        num_warmup, num_samples: per chain.
        guide_samples: draws from the guide for its mean and sd.

    Global latents (a sample site the guide draws outside the data plate, such as the scale of a
    hierarchical prior) are held at one draw from their guide, so NUTS targets p(z | x, globals).

    Discrete latent sites (a mixture's component y, a semi-supervised model's class) are summed out
    exactly by Pyro's enumeration inside the potential energy, so NUTS targets the marginal p(z | x) =
    sum_y p(y | x) p(z | x, y); each chain then starts from one joint prior draw of the model (y, then
    z), so that z has its own shape rather than one per enumerated value. The guide's draws are of its
    marginal q(z | x) as well (y drawn, not enumerated). ``c``: ``(N,)`` per-example labels for programs
    that take them (required by a conditional model, whose posterior is then p(z | x, c)).
    """
    from pyro import poutine
    from pyro.infer import MCMC, NUTS

    check_number(num_chains, "num_chains (R-hat compares chains)", Bound(int, 2))
    check_number(num_samples, "num_samples", Bound(int, 10, BOUNDS["num_samples"].high))
    check_number(num_warmup, "num_warmup", Bound(int, 0, BOUNDS["num_samples"].high))
    check_number(guide_samples, "guide_samples", Bound(int, 2, BOUNDS["num_samples"].high))
    side = label_kwargs(model, guide, c, x.shape[0], "NUTS")
    with seeded(seed, x.device):
        globals_ = global_values(guide, x, **side)
        # Parameters are read from the param store as constants; no gradient flows into them.
        target = poutine.condition(model, data=globals_) if globals_ else model
        chains, divergences = [], 0
        nesting = max_plate_nesting(model, guide, x[:1], **rows(side, 0, 1))
        discrete = has_discrete_sites(target, x, **side)
        for chain in range(num_chains):
            reseed(seed * 1000 + chain, x.device)
            kernel = NUTS(target, init_strategy=_chain_start(target, x, side, discrete), max_plate_nesting=nesting)
            mcmc = MCMC(
                kernel, num_samples=num_samples, warmup_steps=num_warmup, num_chains=1, disable_progbar=not progress
            )
            mcmc.run(x, **side)
            chains.append(mcmc.get_samples()[latent_site].detach())
            divergences += int(sum(len(v) for v in mcmc.diagnostics()["divergences"].values()))
        samples = torch.stack(chains).double().cpu()  # (C, S, N, d)
        with torch.no_grad():
            draws = Predictive(guide, num_samples=guide_samples, return_sites=[latent_site])(x, **side)[latent_site]
    draws = draws.double().cpu().reshape(guide_samples, *samples.shape[2:])  # (S, N, d)
    return _nuts_result(samples, draws, divergences, globals_, latent_site)


def _chain_start(target, x: torch.Tensor, side: dict, discrete: bool):
    """The initialization of a chain: a prior draw of every latent site. Without discrete sites that is
    Pyro's ``init_to_sample``; with them, NUTS enumerates the discrete sites while it initializes, so a
    continuous site drawn given an enumerated one would get one value per enumerated value: the start is
    then one joint draw of the model run without enumeration (discrete and continuous sites sampled)."""
    from pyro import poutine
    from pyro.infer.autoguide.initialization import init_to_sample, init_to_value
    from pyro.poutine.util import site_is_subsample

    if not discrete:
        return init_to_sample
    with torch.no_grad(), poutine.block():
        trace = poutine.trace(target).get_trace(x, **side)
    values = {
        name: site["value"].detach()
        for name, site in trace.nodes.items()
        if site["type"] == "sample"
        and not site["is_observed"]
        and not site_is_subsample(site)
        and not site["fn"].has_enumerate_support
    }
    return init_to_value(values=values)


def _nuts_result(
    samples: torch.Tensor, draws: torch.Tensor, divergences: int, globals_: dict, latent_site: str
) -> NUTSResult:
    """NUTS draws ``(C, S, N, d)`` against guide draws ``(S', N, d)``, with ArviZ's R-hat and ESS."""
    nuts_mean, nuts_sd = samples.mean((0, 1)), samples.std((0, 1))
    guide_mean, guide_sd = draws.mean(0), draws.std(0)
    rhat, ess_bulk, ess_tail, idata = bridge.rhat_ess(samples.numpy(), latent_site)
    return NUTSResult(
        samples=samples.numpy(),
        guide_samples=draws.numpy(),
        nuts_mean=nuts_mean.numpy(),
        nuts_sd=nuts_sd.numpy(),
        guide_mean=guide_mean.numpy(),
        guide_sd=guide_sd.numpy(),
        standardized_mean_error=((guide_mean - nuts_mean) / nuts_sd).numpy(),
        sd_ratio=(guide_sd / nuts_sd).numpy(),
        rhat=rhat,
        ess_bulk=ess_bulk,
        ess_tail=ess_tail,
        max_rhat=float(np.max(rhat)),
        min_ess_bulk=float(np.min(ess_bulk)),
        divergences=divergences,
        global_values={k: v.cpu().tolist() for k, v in globals_.items()},
        inference_data=idata,
    )
