"""Posterior diagnostics for any Pyro model/guide pair that follows the site/plate contract.

Every ArviZ call of the project lives in this module, so that a move from ArviZ 0.x (InferenceData)
to 1.x touches one file. Functions take ``(model, guide, data)`` and return numbers and arrays;
files and figures are for the caller.

* :func:`to_inference_data`: the amortized posterior, predictions and pointwise log-likelihood as ArviZ
  InferenceData;
* :func:`psis`: per-observation Pareto k-hat of the guide as an importance proposal, and the
  importance-sampled log p(x) with its Monte Carlo error;
* :func:`nuts_reference`: NUTS on p(z | x) with the decoder fixed, against the guide (R-hat, ESS,
  standardized mean error, sd ratio);
* :func:`sbc`: simulation-based calibration of the guide, a uniformity test and dispersion flags;
* :func:`amortization_gap` and :func:`collapse_report`.

``ppl-vae diagnose`` (:mod:`ppl_vae.diagnose`) runs them all on a run folder.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from pyro.infer import Predictive

from ppl_vae.errors import ConfigError
from ppl_vae.evaluate import COLLAPSE_NATS, chunk_sizes, log_weight_chunk, max_plate_nesting


def _arviz():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)      # ArviZ 0.23 announces its 1.0 refactor on import
        import arviz

    return arviz


def _seeded(seed, device):
    if seed is None:
        return contextlib.nullcontext()
    fork = torch.random.fork_rng(devices=[device] if device.type == "cuda" else [], device_type=device.type)

    @contextlib.contextmanager
    def context():
        with fork:
            torch.manual_seed(seed)
            yield

    return context()


@torch.no_grad()
def importance_log_ratios(model, guide, data: torch.Tensor, num_samples: int = 1000, *,
                          batch_size: int | None = None, seed: int | None = None) -> torch.Tensor:
    """log p(x_n, z_s) - log q(z_s | x_n) for S draws from the guide per observation: ``(S, N)``
    float64. Chunked over observations and draws so that memory stays bounded."""
    if num_samples < 2:
        raise ConfigError(f"num_samples must be at least 2, got {num_samples}")
    with _seeded(seed, data.device):
        nesting = max_plate_nesting(model, guide, data[:1])
        batch, per_pass = chunk_sizes(data, num_samples, batch_size)
        chunks = [log_weight_chunk(model, guide, data[i:i + batch], num_samples, per_pass, nesting)["log_weight"]
                  for i in range(0, data.shape[0], batch)]
    return torch.cat(chunks, dim=1).double().cpu()


@dataclass(frozen=True)
class PSISResult:
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


def psis(model, guide, data: torch.Tensor, *, num_samples: int = 1000, batch_size: int | None = None,
         seed: int | None = None) -> PSISResult:
    """Per-observation PSIS k-hat of the guide and the importance-sampled log p(x).

    Args:
        model, guide: Pyro programs taking ``(x)``; every per-example site inside ``pyro.plate("data")``.
        data: ``(N, ...)`` observations in the form the likelihood scores (binarized for Bernoulli).
        num_samples: S draws from the guide per observation.
    """
    log_ratios = importance_log_ratios(model, guide, data, num_samples, batch_size=batch_size, seed=seed)
    with np.errstate(invalid="ignore", divide="ignore"):     # degenerate fits: handled below
        _, khat = _arviz().psislw(log_ratios.T.numpy().copy())                # (N, S) -> (N,)
    khat = np.asarray(khat, dtype=float)
    # Equal weights (the exact posterior as proposal) leave the Pareto fit undefined and ArviZ returns
    # inf or nan; the proposal is perfect there, so report -inf.
    spread = (log_ratios.max(0).values - log_ratios.min(0).values).numpy()
    khat = np.where(spread < 1e-6 * np.maximum(1.0, np.abs(log_ratios.mean(0).numpy())), -np.inf, khat)
    s = log_ratios.shape[0]
    per_example = torch.logsumexp(log_ratios, 0) - math.log(s)
    w = (log_ratios - log_ratios.max(0).values).exp()
    per_example_var = w.var(0) / (s * w.mean(0) ** 2)
    threshold = min(1 - 1 / math.log10(s), 0.7)
    order = np.argsort(-khat)[:10]
    return PSISResult(
        log_ratios=log_ratios,
        khat=khat,
        log_likelihood=per_example.mean().item(),
        log_likelihood_se=(per_example_var.sum().sqrt() / len(per_example)).item(),
        fraction_above={"0.5": float(np.mean(khat > 0.5)), "0.7": float(np.mean(khat > 0.7)),
                        "sample_size": float(np.mean(khat > threshold))},
        sample_size_threshold=threshold,
        worst=[(int(i), float(khat[i])) for i in order],
        per_example={"log_likelihood": per_example.numpy(), "log_likelihood_se": per_example_var.sqrt().numpy()},
    )


@torch.no_grad()
def to_inference_data(model, guide, data: torch.Tensor, *, num_samples: int = 100, seed: int | None = None,
                      latent_site: str = "z", observed_site: str = "x"):
    """An ArviZ ``InferenceData`` of the amortized posterior and the model's predictions.

    Groups (one chain, ``num_samples`` draws):

    * ``posterior``: ``z`` drawn from the guide for every observation, dims (chain, draw, obs, latent_dim);
    * ``posterior_predictive``: ``x`` drawn from p(x | z) at those draws (reconstructions);
    * ``log_likelihood``: pointwise log p(x_n | z_s), dims (chain, draw, obs);
    * ``prior`` and ``prior_predictive``: z ~ p(z) and x ~ p(x | z) from the model run generatively
      (``model(None, num_samples=N)``), so they have the same dims;
    * ``observed_data``: the data.
    """
    if num_samples < 1:
        raise ConfigError(f"num_samples must be positive, got {num_samples}")
    n = data.shape[0]
    with _seeded(seed, data.device):
        posterior = Predictive(model, guide=guide, num_samples=num_samples,
                               return_sites=[latent_site, observed_site])(data)
        z = posterior[latent_site]                                                    # (S, N, d)
        # log p(x_n | z_s): replay the model's observed site at each posterior draw of z.
        log_lik = _pointwise_log_likelihood(model, data, z, latent_site, observed_site)   # (S, N)
        prior = Predictive(model, num_samples=num_samples, return_sites=[latent_site, observed_site])(
            None, num_samples=n)
        predictive = Predictive(model, posterior_samples={latent_site: z}, return_sites=[observed_site])(
            None, num_samples=n)

    def arr(t):
        return t.detach().cpu().numpy()[None]                                          # add the chain dim

    d = z.shape[-1]
    x_dims = [f"{observed_site}_dim_{i}" for i in range(data.dim() - 1)]
    dims = {latent_site: ["obs", "latent_dim"], observed_site: ["obs", *x_dims]}
    coords = {"obs": np.arange(n), "latent_dim": np.arange(d)}
    az = _arviz()
    return az.from_dict(
        posterior={latent_site: arr(z)},
        posterior_predictive={observed_site: arr(predictive[observed_site])},
        log_likelihood={observed_site: arr(log_lik)},
        prior={latent_site: arr(prior[latent_site])},
        prior_predictive={observed_site: arr(prior[observed_site])},
        observed_data={observed_site: data.detach().cpu().numpy()},
        dims={**dims},
        coords=coords,
    )


def _pointwise_log_likelihood(model, data, z, latent_site, observed_site) -> torch.Tensor:
    from pyro import poutine

    out = []
    for s in range(z.shape[0]):
        conditioned = poutine.condition(model, data={latent_site: z[s]})
        trace = poutine.trace(conditioned).get_trace(data)
        site = trace.nodes[observed_site]
        out.append(site["fn"].log_prob(site["value"]))
    return torch.stack(out)                                                            # (S, N)


@torch.no_grad()
def mutual_information(posterior, data: torch.Tensor, *, num_samples: int = 10, seed: int | None = None) -> tuple[float, float]:
    """I(x; z) under the aggregate posterior q(z) = (1/N) sum_m q(z | x_m), with its Monte Carlo s.e.

    I = E_n E_{z ~ q(z|x_n)}[log q(z | x_n) - log q(z)], estimated with ``num_samples`` draws per
    example. ``posterior(x)`` returns q(z | x) with batch shape ``(N,)``. 0 means the encodings carry no
    information about x (posterior collapse); the estimate can never exceed log N.
    """
    with _seeded(seed, data.device):
        q = posterior(data)
        z = q.sample(torch.Size([num_samples]))                                        # (S, N, d)
        own = q.log_prob(z)                                                            # (S, N)
        n = data.shape[0]
        # log q(z_sn) = logsumexp_m log q(z_sn | x_m) - log N, one example's draws against every x_m.
        cross = torch.stack([q.log_prob(z[:, i:i + 1, :].expand(-1, n, -1)) for i in range(n)], dim=1)  # (S, N, M)
        aggregate = torch.logsumexp(cross, dim=-1) - math.log(n)
        terms = (own - aggregate).double()                                             # (S, N)
    per_example = terms.mean(0)
    return per_example.mean().item(), (terms.std() / math.sqrt(terms.numel())).item()




def collapse_report(vae, data: torch.Tensor, *, num_samples: int = 10, threshold: float = 0.01,
                    seed: int | None = 0) -> dict:
    """Posterior-collapse monitors for an amortized model (anything with ``encode``, ``posterior`` and,
    for the KL, ``prior_distribution``), on ``data (N, *data_shape)``. Returns a JSON-ready dict:

    * ``kl_per_dimension``: KL(q(z_j | x) || p(z_j)) per latent dimension, to the VAE's **own prior**
      ``vae.prior_distribution()`` (any loc and scale, learned or not; not N(0, I) unless that is the
      prior), averaged over the examples: ``latent_dim`` floats in nats summing to ``kl_total``, from
      :func:`ppl_vae.compare.kl_to_prior` (closed form where it exists, else Monte Carlo with
      ``kl_per_dimension_se``). None where there is no per-dimension split (a mixture, VampPrior or flow
      prior, a full-rank guide) or no finite KL (a point-mass guide); ``kl_note`` then says why.
    * ``kl_total``, ``kl_total_se``: the whole KL (the rate), nats per example, with its s.e.
      (0 when exact); it agrees with ``evaluate(...).kl`` within Monte Carlo error.
    * ``activity``: Cov_x(E_q[z_j | x]) per dimension; ``active_units``: how many exceed ``threshold``
      (Burda et al. 2016); ``latent_dim``.
    * ``mutual_information``, ``mutual_information_se``: I(x; z) under the aggregate posterior, nats,
      at most ``log_num_examples``.
    * ``collapsed``: True when no unit is active, or the KL or I(x; z) is ~0 (below ``COLLAPSE_NATS``
      nats, or within 2 s.e. of 0): q(z | x) then ignores x, and diagnostics of the guide describe
      the prior. ``mostly_inactive``: True when more than half the units are inactive.
      ``warning``: one line saying so (None when neither holds).
    """
    from ppl_vae.compare import activity, kl_to_prior

    kl = {"total": None, "total_se": None, "per_dimension": None, "per_dimension_se": None,
          "per_dimension_note": None}
    try:
        kl = kl_to_prior(vae, data, seed=seed)
    except ConfigError as error:
        kl["per_dimension_note"] = str(error)
    act = activity(vae, data)
    mi, mi_se = mutual_information(vae.posterior, data, num_samples=num_samples, seed=seed)
    active, dims = int((act > threshold).sum()), int(act.numel())
    reasons = []
    if active == 0:
        reasons.append(f"0 of {dims} latent units active")
    if kl["total"] is not None and kl["total"] < max(COLLAPSE_NATS, 2 * (kl["total_se"] or 0.0)):
        reasons.append(f"KL to the prior {kl['total']:.3g} nats")
    if mi < max(COLLAPSE_NATS, 2 * mi_se):
        reasons.append(f"I(x; z) {mi:.3g} ± {mi_se:.2g} nats")
    collapsed = bool(reasons)
    mostly_inactive = active < dims / 2
    if collapsed:
        warning = ("the model is collapsed (" + "; ".join(reasons) + "): q(z | x) ignores x, so the guide "
                   "diagnostics describe the prior, not an informative encoder")
    elif mostly_inactive:
        warning = (f"most latent units are inactive ({active} of {dims} active): the guide diagnostics "
                   f"describe the {active} informative dimensions; the others are collapsed to the prior")
    else:
        warning = None

    def listed(t):
        return None if t is None else [float(v) for v in t]

    return {"kl_per_dimension": listed(kl["per_dimension"]), "kl_per_dimension_se": listed(kl["per_dimension_se"]),
            "kl_total": kl["total"], "kl_total_se": kl["total_se"], "kl_note": kl["per_dimension_note"],
            "activity": act.tolist(), "active_units": active, "latent_dim": dims,
            "mutual_information": mi, "mutual_information_se": mi_se, "log_num_examples": math.log(data.shape[0]),
            "collapsed": collapsed, "mostly_inactive": mostly_inactive, "warning": warning}


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
        import pyro
        import pyro.distributions as dist

        if self.global_guide is not None:
            self.global_guide(x, **kwargs)
        with pyro.plate("data", x.shape[0]):
            return pyro.sample(self.latent_site, dist.Normal(self.loc, self.log_scale.exp()).to_event(1))


def amortization_gap(model, guide, data: torch.Tensor, *, posterior=None, num_steps: int = 500, lr: float = 1e-2,
                     num_particles: int = 1000, seed: int = 0, latent_site: str = "z") -> dict:
    """Split log p(x) - ELBO into the approximation gap and the amortization gap (Cremer et al. 2018).

    A non-amortized diagonal Normal guide, one (loc, scale) per observation started from the encoder's
    q(z | x), is refined for ``num_steps`` steps of ``torch.optim.Adam`` on a differentiable ELBO
    (``Trace_ELBO`` with 16 vectorized draws), with gradients taken with respect to the local (loc,
    log scale) only: the model's parameters are held fixed. The local parameters are plain tensors, not
    ``pyro.param`` sites, and everything runs in a private copy of Pyro's param store
    (``ParamStoreDict.scope``), so the store is left exactly as it was found and repeated calls on the
    same or equal data give the same answer (identical for the same ``seed``). Then, per example in nats
    with Monte Carlo standard errors:

    * ``elbo_amortized``: the ELBO of the encoder's q(z | x);
    * ``elbo_local``: the ELBO of the refined local guide (the best of the family, up to optimization);
    * ``log_likelihood``: log p(x) by importance sampling with ``num_particles`` draws from the local guide;
    * ``amortization_gap = elbo_local - elbo_amortized`` and
      ``approximation_gap = log_likelihood - elbo_local``.

    With global latents (sites the guide draws outside the data plate) both guides share the amortized
    guide's q(globals), and the figures are per example given q(globals) (see
    :class:`ppl_vae.evaluate.EvalResult`).

    ``posterior(x)`` must return the encoder's q(z | x) as a diagonal Normal (``vae.posterior``).
    Meant for chosen observations (tens to hundreds): all of them are refined and scored together.
    """
    import pyro
    from pyro import poutine
    from pyro.infer import Trace_ELBO
    from types import SimpleNamespace

    from ppl_vae.evaluate import evaluate, global_sites

    if posterior is None:
        raise ConfigError("amortization_gap needs posterior=vae.posterior (the encoder's q(z | x)) to start from")
    if num_steps < 0 or lr <= 0:
        raise ConfigError(f"amortization_gap needs num_steps >= 0 and lr > 0, got {num_steps} and {lr}")
    store = pyro.get_param_store()
    # A private copy of the param store: the same tensors (the model sees its trained parameters), and
    # whatever the programs register while we run them is dropped on the way out.
    with store.scope(state=store.get_state()):
        with torch.no_grad():
            q = posterior(data)
        base = q.base_dist if hasattr(q, "base_dist") else q
        if not isinstance(base, torch.distributions.Normal):
            raise ConfigError(f"amortization_gap refines a diagonal Normal guide; this encoder gives {type(base).__name__}")
        globals_ = global_sites(guide, data[:1])
        global_guide = poutine.block(guide, expose=globals_) if globals_ else None
        local = _LocalGuide(base.loc, base.scale, latent_site=latent_site, global_guide=global_guide)
        with _seeded(seed, data.device):
            nesting = max_plate_nesting(model, guide, data[:1])
            # Several vectorized draws per step: less gradient noise, so the refinement gets close to the optimum.
            elbo = Trace_ELBO(num_particles=16, vectorize_particles=True, max_plate_nesting=nesting)
            params = [local.loc, local.log_scale]
            optimizer = torch.optim.Adam(params, lr=lr)
            for _ in range(num_steps):
                loss = elbo.differentiable_loss(model, local, data)
                grads = torch.autograd.grad(loss, params)          # the model's parameters get no gradient
                for p, g in zip(params, grads):
                    p.grad = g
                optimizer.step()
        local.loc.requires_grad_(False)
        local.log_scale.requires_grad_(False)
        amortized = evaluate(SimpleNamespace(model=model, guide=guide), data, num_particles=num_particles, seed=seed)
        # The local guide holds one (loc, scale) per observation: evaluate it on all of them at once.
        refined = evaluate(SimpleNamespace(model=model, guide=local), data, num_particles=num_particles, seed=seed,
                           batch_size=data.shape[0])
    return {
        "elbo_amortized": amortized.elbo, "elbo_amortized_se": amortized.elbo_se,
        "elbo_local": refined.elbo, "elbo_local_se": refined.elbo_se,
        "log_likelihood": refined.log_likelihood, "log_likelihood_se": refined.log_likelihood_se,
        "amortization_gap": refined.elbo - amortized.elbo,
        "amortization_gap_se": math.hypot(refined.elbo_se, amortized.elbo_se),
        "approximation_gap": refined.log_likelihood - refined.elbo,
        "approximation_gap_se": math.hypot(refined.log_likelihood_se, refined.elbo_se),
        "num_steps": num_steps, "num_examples": int(data.shape[0]),
    }


# ---------------------------------------------------------------------------------------------------
# NUTS reference posteriors


def _split_global_sites(guide, x, plate_name: str = "data") -> dict:
    """One draw of every latent site the guide samples outside the data plate (global latents)."""
    from pyro import poutine
    from pyro.poutine.util import site_is_subsample

    with torch.no_grad(), poutine.block():
        trace = poutine.trace(guide).get_trace(x)
    return {name: site["value"].detach() for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
            and plate_name not in {f.name for f in site["cond_indep_stack"]}}


@dataclass(frozen=True)
class NUTSResult:
    """NUTS on p(z | x) (decoder fixed) for chosen observations, against the guide's q(z | x).

    Attributes:
        samples: ``(chains, draws, obs, latent_dim)`` NUTS draws of z.
        guide_samples: ``(draws, obs, latent_dim)`` draws of z from the guide.
        nuts_mean, nuts_sd, guide_mean, guide_sd: ``(obs, latent_dim)``.
        standardized_mean_error: ``(guide_mean - nuts_mean) / nuts_sd``; |values| above ~0.5 mean the
            guide is off-centre by a sizeable fraction of the posterior's width.
        sd_ratio: ``guide_sd / nuts_sd``: below 1 an under-dispersed (over-confident) guide.
        rhat, ess_bulk, ess_tail: ``(obs, latent_dim)`` from ArviZ (rank-normalized R-hat, ESS).
        max_rhat, min_ess_bulk: the worst of each; trust the comparison when R-hat < 1.01 and ESS > 400.
        global_values: values of global latents held fixed (one guide draw), if the model has any.
        inference_data: ArviZ InferenceData of the NUTS draws (``posterior``) and the sampler's stats.
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
    inference_data: object = field(repr=False, default=None)

    def summary(self) -> dict:
        """JSON-ready numbers: per observation and overall."""
        return {
            "max_rhat": self.max_rhat, "min_ess_bulk": self.min_ess_bulk, "divergences": self.divergences,
            "max_abs_standardized_mean_error": float(np.abs(self.standardized_mean_error).max()),
            "median_sd_ratio": float(np.median(self.sd_ratio)),
            "sd_ratio_range": [float(self.sd_ratio.min()), float(self.sd_ratio.max())],
            "per_observation": [
                {"standardized_mean_error": self.standardized_mean_error[i].tolist(),
                 "sd_ratio": self.sd_ratio[i].tolist(), "rhat": self.rhat[i].tolist(),
                 "ess_bulk": self.ess_bulk[i].tolist()}
                for i in range(self.sd_ratio.shape[0])],
        }


def nuts_reference(model, guide, x: torch.Tensor, *, num_chains: int = 4, num_warmup: int = 300,
                   num_samples: int = 500, guide_samples: int = 2000, latent_site: str = "z",
                   seed: int = 0, progress: bool = False) -> NUTSResult:
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
    """
    import pyro
    from pyro import poutine
    from pyro.infer import MCMC, NUTS
    from pyro.infer.autoguide.initialization import init_to_sample

    if num_chains < 2:
        raise ConfigError(f"num_chains must be at least 2 for R-hat, got {num_chains}")
    if num_samples < 10 or num_warmup < 0:
        raise ConfigError(f"need num_samples >= 10 and num_warmup >= 0, got {num_samples} and {num_warmup}")
    with _seeded(seed, x.device):
        globals_ = _split_global_sites(guide, x)
        # Parameters are read from the param store as constants; no gradient flows into them.
        target = poutine.condition(model, data=globals_) if globals_ else model
        chains, divergences = [], 0
        nesting = max_plate_nesting(model, guide, x[:1])
        for chain in range(num_chains):
            pyro.set_rng_seed(seed * 1000 + chain)
            kernel = NUTS(target, init_strategy=init_to_sample, max_plate_nesting=nesting)
            mcmc = MCMC(kernel, num_samples=num_samples, warmup_steps=num_warmup, num_chains=1,
                        disable_progbar=not progress)
            mcmc.run(x)
            chains.append(mcmc.get_samples()[latent_site].detach())
            divergences += int(sum(len(v) for v in mcmc.diagnostics()["divergences"].values()))
        samples = torch.stack(chains).double().cpu()                               # (C, S, N, d)
        with torch.no_grad():
            draws = Predictive(guide, num_samples=guide_samples, return_sites=[latent_site])(x)[latent_site]
    draws = draws.double().cpu().reshape(guide_samples, *samples.shape[2:])          # (S, N, d)
    nuts_mean, nuts_sd = samples.mean((0, 1)), samples.std((0, 1))
    guide_mean, guide_sd = draws.mean(0), draws.std(0)
    az = _arviz()
    n, d = samples.shape[2], samples.shape[3]
    idata = az.from_dict(posterior={latent_site: samples.numpy()}, dims={latent_site: ["obs", "latent_dim"]},
                         coords={"obs": np.arange(n), "latent_dim": np.arange(d)})
    rhat = az.rhat(idata)[latent_site].values
    ess_bulk = az.ess(idata, method="bulk")[latent_site].values
    ess_tail = az.ess(idata, method="tail")[latent_site].values
    return NUTSResult(
        samples=samples.numpy(), guide_samples=draws.numpy(),
        nuts_mean=nuts_mean.numpy(), nuts_sd=nuts_sd.numpy(), guide_mean=guide_mean.numpy(), guide_sd=guide_sd.numpy(),
        standardized_mean_error=((guide_mean - nuts_mean) / nuts_sd).numpy(), sd_ratio=(guide_sd / nuts_sd).numpy(),
        rhat=rhat, ess_bulk=ess_bulk, ess_tail=ess_tail, max_rhat=float(np.max(rhat)),
        min_ess_bulk=float(np.min(ess_bulk)), divergences=divergences,
        global_values={k: v.cpu().tolist() for k, v in globals_.items()}, inference_data=idata)


# ---------------------------------------------------------------------------------------------------
# Simulation-based calibration


@dataclass(frozen=True)
class SBCResult:
    """Simulation-based calibration of an amortized guide (Talts et al. 2018).

    For each simulation z* ~ p(z), x ~ p(x | z*), the rank of z*_j among L draws from q(z | x) is
    uniform on {0, ..., L} for every latent dimension j when q is the exact posterior.

    Shift and width are told apart with a two-parameter model of the ranks (see :func:`sbc`): per
    dimension, the guide's marginal is taken to be the posterior's moved by ``shift`` posterior sds and
    scaled by ``width_ratio``, both fitted to the ranks by maximum likelihood.

    Attributes:
        ranks: ``(num_simulations, latent_dim)`` integer ranks in 0..L.
        num_draws: L.
        p_values: ``(latent_dim,)`` chi-square uniformity test of the binned ranks per dimension.
        p_value: the smallest, Bonferroni-corrected over dimensions (capped at 1).
        num_bins: bins of the chi-square test (and of the histograms).
        shift: ``(latent_dim,)`` fitted (guide mean - posterior mean) / posterior sd, averaged over x.
        width_ratio: ``(latent_dim,)`` fitted guide sd / posterior sd (1 when calibrated).
        dispersion_z: ``(latent_dim,)`` signed root of the likelihood-ratio statistic of width_ratio = 1
            with the shift fitted in both models, so a pure shift does not read as a change of width;
            N(0, 1) under calibration. Positive (ranks pile up at both ends, a U-shape): the guide is
            under-dispersed (too narrow, over-confident). Negative (a hump in the middle): over-dispersed.
        bias_z: ``(latent_dim,)`` signed root of the likelihood-ratio statistic of shift = 0 with the
            width fitted in both models; N(0, 1) under calibration. Negative (the true z falls below most
            guide draws): the guide is biased high (mean too high); positive: biased low.
        flags: per flagged dimension, ``{"latent_dim", "finding", "description", "p_value", "shift",
            "width_ratio", "dispersion_z", "bias_z"}``; ``finding`` names each z-score beyond the Bonferroni
            critical value (e.g. ``"under-dispersed and biased high"``), or ``"non-uniform"`` when the
            chi-square test rejects but neither does; ``description`` says what that means for the guide.
        verdict: ``"calibrated"``, or the findings with the dimensions that have them, e.g.
            ``"dims 0, 3: biased high (guide mean too high: the true z falls below most draws); dim 1:
            under-dispersed (...) [3 of 8 dimensions flagged]"``.
    """

    ranks: np.ndarray = field(repr=False)
    num_draws: int
    p_values: np.ndarray = field(repr=False)
    p_value: float
    num_bins: int
    dispersion_z: np.ndarray = field(repr=False)
    bias_z: np.ndarray = field(repr=False)
    flags: list
    verdict: str
    shift: np.ndarray = field(repr=False, default=None)
    width_ratio: np.ndarray = field(repr=False, default=None)

    def summary(self) -> dict:
        return {"num_simulations": int(self.ranks.shape[0]), "num_draws": self.num_draws, "num_bins": self.num_bins,
                "p_value": self.p_value, "p_values": self.p_values.tolist(),
                "dispersion_z": self.dispersion_z.tolist(), "bias_z": self.bias_z.tolist(),
                "shift": self.shift.tolist(), "width_ratio": self.width_ratio.tolist(),
                "flags": self.flags, "verdict": self.verdict}


def sbc_ranks(model, guide, *, num_simulations: int = 1000, num_draws: int = 99, latent_site: str = "z",
              observed_site: str = "x", seed: int = 0) -> np.ndarray:
    """``(num_simulations, latent_dim)`` ranks of the simulated z among ``num_draws`` guide draws.

    Simulations come from the model run generatively, ``model(None, num_samples=num_simulations)``;
    the guide is then run on the simulated x."""
    if num_simulations < 2 or num_draws < 1:
        raise ConfigError(f"need num_simulations >= 2 and num_draws >= 1, got {num_simulations} and {num_draws}")
    from pyro import poutine

    device = _device_of(model, guide)
    with torch.no_grad(), _seeded(seed, device):
        trace = poutine.trace(poutine.block(model, hide_types=["param"])).get_trace(None, num_samples=num_simulations)
        if latent_site not in trace.nodes or observed_site not in trace.nodes:
            raise ConfigError(f"the model run as model(None, num_samples=N) must sample sites {latent_site!r} "
                              f"and {observed_site!r}")
        z_true = trace.nodes[latent_site]["value"]                                  # (N, d)
        x = trace.nodes[observed_site]["value"]
        draws = Predictive(guide, num_samples=num_draws, return_sites=[latent_site])(x)[latent_site]
    draws = draws.reshape(num_draws, *z_true.shape)
    return (draws < z_true).sum(0).reshape(num_simulations, -1).cpu().numpy()


def _device_of(*programs) -> torch.device:
    for program in programs:
        owner = getattr(program, "__self__", None)
        if isinstance(owner, torch.nn.Module):
            for p in owner.parameters():
                return p.device
    return torch.device("cpu")


class _RankModel:
    """P(rank = r | shift, width) for r in 0..L under the location-scale model of :func:`sbc`.

    With the posterior's marginal standardized to N(0, 1), the true value is eps ~ N(0, 1) and the guide
    N(delta, s^2); each of the L guide draws falls below eps with probability Phi(w), w = (eps - delta) / s,
    so the rank is Binomial(L, Phi(w)) and w has density s phi(delta + s w). Hence

        P(r) = integral Binomial(r; L, Phi(w)) s phi(delta + s w) dw,

    computed by the trapezoid rule on a fixed grid of w in [-8, 8] (Phi(-8) ~ 6e-16: the mass beyond it
    goes to rank 0 or L). At delta = 0, s = 1 it is 1 / (L + 1) for every r (uniform ranks), to 1e-9.
    """

    HALF_WIDTH = 8.0

    def __init__(self, num_draws: int):
        from scipy import stats

        step = min(0.02, 0.2 / math.sqrt(num_draws + 1))       # resolves the binomial's width in w
        self.w = np.linspace(-self.HALF_WIDTH, self.HALF_WIDTH, int(round(2 * self.HALF_WIDTH / step)) + 1)
        weights = np.full_like(self.w, self.w[1] - self.w[0])
        weights[[0, -1]] /= 2
        ranks = np.arange(num_draws + 1)[:, None]
        self.matrix = stats.binom.pmf(ranks, num_draws, stats.norm.cdf(self.w)[None, :]) * weights   # (L + 1, G)
        self.num_draws = num_draws

    def pmf(self, delta: float, log_s: float) -> np.ndarray:
        from scipy import stats

        s = math.exp(log_s)
        p = self.matrix @ (s * stats.norm.pdf(delta + s * self.w))
        p[0] += stats.norm.cdf(delta - s * self.HALF_WIDTH)
        p[-1] += stats.norm.cdf(-delta - s * self.HALF_WIDTH)
        return np.maximum(p, 1e-300)

    def log_likelihood(self, counts: np.ndarray, delta: float, log_s: float) -> float:
        return float(counts @ np.log(self.pmf(delta, log_s)))

    def fit(self, counts: np.ndarray) -> dict:
        """Maximum-likelihood (delta, log s) with both free, with s = 1, and with delta = 0, and the two
        signed-root likelihood-ratio statistics."""
        from scipy import optimize, stats

        bound_delta, bound_log_s = 10.0, 3.0
        n = counts.sum()
        # Start from the moments of the probit-transformed ranks: w = Phi^-1((r + 1/2) / (L + 1)) has
        # mean about -delta / s and variance about 1 / s^2.
        w = stats.norm.ppf((np.arange(self.num_draws + 1) + 0.5) / (self.num_draws + 1))
        mean = counts @ w / n
        var = max(counts @ (w - mean) ** 2 / n, 1e-3)
        start = (float(np.clip(-mean / math.sqrt(var), -bound_delta, bound_delta)),
                 float(np.clip(-0.5 * math.log(var), -bound_log_s, bound_log_s)))

        def negative(theta):
            return -self.log_likelihood(counts, theta[0], theta[1])

        fixed_width = optimize.minimize_scalar(lambda d: negative((d, 0.0)), bounds=(-bound_delta, bound_delta),
                                               method="bounded", options={"xatol": 1e-7})
        fixed_shift = optimize.minimize_scalar(lambda ls: negative((0.0, ls)), bounds=(-bound_log_s, bound_log_s),
                                               method="bounded", options={"xatol": 1e-7})
        best = None
        for x0 in (start, (fixed_width.x, 0.0), (0.0, fixed_shift.x)):
            result = optimize.minimize(negative, x0, method="L-BFGS-B",
                                       bounds=[(-bound_delta, bound_delta), (-bound_log_s, bound_log_s)],
                                       options={"ftol": 1e-12, "gtol": 1e-8})
            if best is None or result.fun < best.fun:
                best = result
        delta, log_s = (float(v) for v in best.x)
        width_statistic = max(0.0, 2 * (fixed_width.fun - best.fun))
        shift_statistic = max(0.0, 2 * (fixed_shift.fun - best.fun))
        return {"shift": delta, "width_ratio": math.exp(log_s),
                # positive: narrower than the posterior (under-dispersed); negative: wider
                "dispersion_z": -math.copysign(math.sqrt(width_statistic), log_s),
                # negative: guide mean above the posterior's (biased high); positive: below
                "bias_z": -math.copysign(math.sqrt(shift_statistic), delta)}


_SBC_DESCRIPTIONS = {
    "biased high": "guide mean too high: the true z falls below most draws",
    "biased low": "guide mean too low: the true z falls above most draws",
    "under-dispersed": "guide too narrow, over-confident: ranks pile up at both ends",
    "over-dispersed": "guide too wide, under-confident: ranks bunch in the middle",
    "non-uniform": "ranks not uniform, and neither a shift nor a change of width explains it",
}


def _sbc_verdict(flags: list, latent_dim: int) -> str:
    if not flags:
        return "calibrated"
    by_finding: dict = {}
    for flag in flags:
        by_finding.setdefault(flag["finding"], []).append(flag["latent_dim"])
    parts = []
    for finding, dims in by_finding.items():
        label = "dim" if len(dims) == 1 else "dims"
        parts.append(f"{label} {', '.join(str(j) for j in dims)}: {finding} ({flags_description(finding)})")
    return f"{'; '.join(parts)} [{len(flags)} of {latent_dim} dimensions flagged]"


def flags_description(finding: str) -> str:
    """What an SBC finding (``"under-dispersed and biased high"``, ...) says about the guide."""
    return "; ".join(_SBC_DESCRIPTIONS[part] for part in finding.split(" and "))


def sbc(model, guide, *, num_simulations: int = 1000, num_draws: int = 99, num_bins: int | None = None,
        alpha: float = 0.01, latent_site: str = "z", observed_site: str = "x", seed: int = 0) -> SBCResult:
    """Simulation-based calibration of the guide, with a uniformity test and dispersion flags.

    The test is a chi-square test of the ranks binned into ``num_bins`` equal bins (default: about
    num_simulations / 20 bins, at most 20, so every bin expects at least 20 ranks), per latent dimension.
    A dimension is flagged when its p-value, Bonferroni-corrected, is below ``alpha``; the flag says how
    (under-dispersed, over-dispersed, biased high or low) from two z-scores, each compared with the
    two-sided Bonferroni critical value ``Phi^-1(1 - alpha / (2 latent_dim))``.

    The z-scores separate a shift of the guide from a change of its width. A shift alone narrows the
    spread of the ranks too (they crowd towards one end), so the raw rank variance cannot judge the
    width. Instead the ranks of each dimension are fitted, by maximum likelihood, with the model in
    which the guide's marginal is the posterior's moved by ``delta`` posterior sds and scaled by ``s``
    (exact when both are Normal, a two-parameter summary otherwise): the rank is then
    Binomial(L, Phi(w)) with w = (eps - delta) / s, eps ~ N(0, 1), whose distribution
    :class:`_RankModel` computes by quadrature (uniform at delta = 0, s = 1). ``dispersion_z`` is the
    signed root of the likelihood-ratio statistic of s = 1 with delta free in both fits, ``bias_z`` that
    of delta = 0 with s free; each is N(0, 1) under calibration (Wilks), and a pure shift leaves the
    width test at N(0, 1) whatever its size. ``shift`` and ``width_ratio`` are the fitted delta and s.
    """
    from scipy import stats

    ranks = sbc_ranks(model, guide, num_simulations=num_simulations, num_draws=num_draws, latent_site=latent_site,
                      observed_site=observed_site, seed=seed)
    n, d = ranks.shape
    num_bins = num_bins or int(max(2, min(20, n // 20, num_draws + 1)))
    # Equal-width bins over the L + 1 rank values; exact expected counts when L + 1 is not a multiple.
    edges = np.linspace(0, num_draws + 1, num_bins + 1)
    values = np.arange(num_draws + 1)
    expected = np.histogram(values, bins=edges)[0] / (num_draws + 1) * n
    p_values = np.empty(d)
    for j in range(d):
        observed = np.histogram(ranks[:, j], bins=edges)[0]
        statistic = ((observed - expected) ** 2 / expected).sum()
        p_values[j] = stats.chi2.sf(statistic, num_bins - 1)
    model_of_ranks = _RankModel(num_draws)
    fits = [model_of_ranks.fit(np.bincount(ranks[:, j], minlength=num_draws + 1).astype(float)) for j in range(d)]
    dispersion_z = np.array([f["dispersion_z"] for f in fits])
    bias_z = np.array([f["bias_z"] for f in fits])
    corrected = np.minimum(p_values * d, 1.0)
    critical = stats.norm.isf(alpha / (2 * d))          # two-sided, Bonferroni over dimensions
    flags = []
    for j in range(d):
        if corrected[j] >= alpha:
            continue
        found = []
        if abs(dispersion_z[j]) > critical:
            found.append("under-dispersed" if dispersion_z[j] > 0 else "over-dispersed")
        if abs(bias_z[j]) > critical:
            found.append("biased high" if bias_z[j] < 0 else "biased low")   # truth below most draws: q too high
        finding = " and ".join(found) or "non-uniform"
        flags.append({"latent_dim": j, "finding": finding, "description": flags_description(finding),
                      "p_value": float(corrected[j]), "shift": fits[j]["shift"], "width_ratio": fits[j]["width_ratio"],
                      "dispersion_z": float(dispersion_z[j]), "bias_z": float(bias_z[j])})
    return SBCResult(ranks=ranks, num_draws=num_draws, p_values=p_values, p_value=float(corrected.min()),
                     num_bins=num_bins, dispersion_z=dispersion_z, bias_z=bias_z, flags=flags,
                     verdict=_sbc_verdict(flags, d), shift=np.array([f["shift"] for f in fits]),
                     width_ratio=np.array([f["width_ratio"] for f in fits]))
