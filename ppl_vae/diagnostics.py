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
