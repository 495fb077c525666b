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
from ppl_vae.evaluate import chunk_sizes, log_weight_chunk, max_plate_nesting


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
    """Posterior-collapse monitors for an amortized model (anything with ``encode`` and ``posterior``):
    KL per latent dimension (diagonal Normal guide and N(0, I) prior; None otherwise), activity and
    the number of active units (Burda et al. 2016), and I(x; z) with its s.e. (nats)."""
    from ppl_vae.compare import activity, kl_per_dimension

    try:
        kl = kl_per_dimension(vae, data)
    except ConfigError:
        kl = None
    act = activity(vae, data)
    mi, mi_se = mutual_information(vae.posterior, data, num_samples=num_samples, seed=seed)
    return {"kl_per_dimension": None if kl is None else kl.tolist(), "activity": act.tolist(),
            "active_units": int((act > threshold).sum()), "latent_dim": int(act.numel()),
            "mutual_information": mi, "mutual_information_se": mi_se, "log_num_examples": math.log(data.shape[0])}


class _LocalGuide:
    """Per-observation diagonal Normal guide (non-amortized), started from the encoder's output."""

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor, name: str):
        self.loc = torch.nn.Parameter(loc.detach().clone())
        self.log_scale = torch.nn.Parameter(scale.detach().log().clone())
        self.name = name

    def __call__(self, x, **kwargs):
        import pyro
        import pyro.distributions as dist

        loc = pyro.param(f"{self.name}.loc", self.loc)
        log_scale = pyro.param(f"{self.name}.log_scale", self.log_scale)
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))


def amortization_gap(model, guide, data: torch.Tensor, *, posterior=None, num_steps: int = 500, lr: float = 1e-2,
                     num_particles: int = 1000, seed: int = 0) -> dict:
    """Split log p(x) - ELBO into the approximation gap and the amortization gap (Cremer et al. 2018).

    A non-amortized diagonal Normal guide, one (loc, scale) per observation started from the encoder's
    q(z | x), is refined by SVI (``Trace_ELBO`` with 16 vectorized draws, Adam) with the model's
    parameters held fixed. Then,
    per example in nats with Monte Carlo standard errors:

    * ``elbo_amortized``: the ELBO of the encoder's q(z | x);
    * ``elbo_local``: the ELBO of the refined local guide (the best of the family, up to optimization);
    * ``log_likelihood``: log p(x) by importance sampling with ``num_particles`` draws from the local guide;
    * ``amortization_gap = elbo_local - elbo_amortized`` and
      ``approximation_gap = log_likelihood - elbo_local``.

    ``posterior(x)`` must return the encoder's q(z | x) as a diagonal Normal (``vae.posterior``).
    Meant for chosen observations (tens to hundreds): all of them are refined and scored together.
    """
    import pyro
    from pyro import poutine
    from pyro.infer import SVI, Trace_ELBO
    from types import SimpleNamespace

    from ppl_vae.evaluate import evaluate

    if posterior is None:
        raise ConfigError("amortization_gap needs posterior=vae.posterior (the encoder's q(z | x)) to start from")
    with torch.no_grad():
        q = posterior(data)
    base = q.base_dist if hasattr(q, "base_dist") else q
    if not isinstance(base, torch.distributions.Normal):
        raise ConfigError(f"amortization_gap refines a diagonal Normal guide; this encoder gives {type(base).__name__}")
    local = _LocalGuide(base.loc, base.scale, name=f"_amortization_gap_{id(data)}")
    fixed_model = poutine.block(model, hide_fn=lambda msg: msg["type"] == "param")    # model parameters fixed
    store = pyro.get_param_store()
    with _seeded(seed, data.device):
        # Several vectorized draws per step: less gradient noise, so the refinement gets close to the optimum.
        nesting = max_plate_nesting(model, guide, data[:1])
        svi = SVI(fixed_model, local, pyro.optim.Adam({"lr": lr}),
                  Trace_ELBO(num_particles=16, vectorize_particles=True, max_plate_nesting=nesting))
        for _ in range(num_steps):
            svi.step(data)
    for key in (f"{local.name}.loc", f"{local.name}.log_scale"):
        if key in store:
            del store[key]
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

    Attributes:
        ranks: ``(num_simulations, latent_dim)`` integer ranks in 0..L.
        num_draws: L.
        p_values: ``(latent_dim,)`` chi-square uniformity test of the binned ranks per dimension.
        p_value: the smallest, Bonferroni-corrected over dimensions (capped at 1).
        num_bins: bins of the chi-square test (and of the histograms).
        dispersion_z: ``(latent_dim,)`` z-score of the variance of the normalized ranks u = rank / L
            against its uniform value (about 1/12). Positive (ranks pile up at both ends, a U-shape):
            the guide is under-dispersed (over-confident). Negative (a hump in the middle): over-dispersed.
        bias_z: ``(latent_dim,)`` z-score of the mean of u against 1/2. Negative (the true z falls below
            most guide draws): the guide is biased high; positive: biased low.
        flags: per flagged dimension, ``{"latent_dim", "finding", "p_value"}``; the finding names each
            z-score beyond the Bonferroni critical value (e.g. ``"under-dispersed and biased high"``),
            or ``"non-uniform"`` when the test rejects but neither does.
        verdict: ``"calibrated"``, or the findings and how many dimensions have them.
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

    def summary(self) -> dict:
        return {"num_simulations": int(self.ranks.shape[0]), "num_draws": self.num_draws, "num_bins": self.num_bins,
                "p_value": self.p_value, "p_values": self.p_values.tolist(),
                "dispersion_z": self.dispersion_z.tolist(), "bias_z": self.bias_z.tolist(),
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


def sbc(model, guide, *, num_simulations: int = 1000, num_draws: int = 99, num_bins: int | None = None,
        alpha: float = 0.01, latent_site: str = "z", observed_site: str = "x", seed: int = 0) -> SBCResult:
    """Simulation-based calibration of the guide, with a uniformity test and dispersion flags.

    The test is a chi-square test of the ranks binned into ``num_bins`` equal bins (default: about
    num_simulations / 20 bins, at most 20, so every bin expects at least 20 ranks), per latent dimension.
    A dimension is flagged when its p-value, Bonferroni-corrected, is below ``alpha``; the flag says how
    (under-dispersed, over-dispersed, biased high or low) from the z-scores of the ranks' variance and mean.
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
    u = ranks / num_draws
    # Under uniformity: E[u] = 1/2 and Var[u] = m2 (1/12 in the limit). The variance about the sample mean
    # (so that a shift does not read as a change of width) has sd sqrt((m4 - m2^2) / n), m4 the fourth
    # central moment of the discrete uniform.
    m2 = ((values / num_draws - 0.5) ** 2).mean()
    m4 = ((values / num_draws - 0.5) ** 4).mean()
    dispersion_z = (u.var(0) - m2) / math.sqrt((m4 - m2**2) / n)
    bias_z = (u.mean(0) - 0.5) / math.sqrt(m2 / n)
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
        flags.append({"latent_dim": j, "finding": " and ".join(found) or "non-uniform", "p_value": float(corrected[j])})
    kinds = sorted({f["finding"] for f in flags})
    verdict = "calibrated" if not flags else f"{'; '.join(kinds)} ({len(flags)} of {d} dimensions)"
    return SBCResult(ranks=ranks, num_draws=num_draws, p_values=p_values, p_value=float(corrected.min()),
                     num_bins=num_bins, dispersion_z=dispersion_z, bias_z=bias_z, flags=flags, verdict=verdict)
