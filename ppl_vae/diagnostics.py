"""Posterior diagnostics for any Pyro model/guide pair that follows the site/plate contract.

Every ArviZ call of the project lives in this module, so that a move from ArviZ 0.x (InferenceData)
to 1.x touches one file. Functions take ``(model, guide, data)`` and return numbers and arrays;
files and figures are for the caller.

So far: :func:`to_inference_data` (ArviZ export) and :func:`psis` (per-observation Pareto k-hat of
the guide as an importance proposal, and the importance-sampled log p(x) with its Monte Carlo error).
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
    _, khat = _arviz().psislw(log_ratios.T.numpy().copy())                    # (N, S) -> (N,)
    khat = np.asarray(khat, dtype=float)
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
        svi = SVI(fixed_model, local, pyro.optim.Adam({"lr": lr}), Trace_ELBO(num_particles=16, vectorize_particles=True))
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
