"""Discrete latent sites summed out exactly, per draw and per example, for evaluation.

A discrete site marked ``infer={"enumerate": "parallel"}`` is never sampled here. For K draws of the
continuous latents per example, :func:`enumerated_log_weights` runs the guide and the model under
Pyro's parallel enumeration (the guide's discrete sites first, then the model's own, each on its own
tensor dimension left of the particle and data plates, as ``TraceEnum_ELBO`` does) and reduces the
enumerated log-densities to ``(K, N)`` tables:

* ``log_weight`` = log sum_{y_G, y_M} p(x, y, z) / q(z | x, y_G): the importance weight with every
  discrete value summed inside it (guide-enumerated y_G stratify the draws of z: K draws of z per
  value of y_G; model-only y_M are summed out of the joint), so mean_k exp(log_weight) is unbiased
  for p(x_n) and the IWAE bound applies unchanged;
* the ELBO's parts, as ``TraceEnum_ELBO`` defines the bound: y_M summed out of the joint, y_G averaged
  under q(y_G | x): ``elbo = sum_{y_G} q(y_G | x) [log sum_{y_M} p(x, y, z) - log q(z | x, y_G) -
  log q(y_G | x)]``; ``log_likelihood`` (the reconstruction) averages the observed sites' log-density
  under q(y_G | x) and the exact conditional posterior of y_M given (x, z, y_G), and ``log_prior`` is
  what makes ``log_likelihood + log_prior - log_guide == elbo``.

:func:`class_posterior` gives each example's posterior over one enumerated site, p(y | x), by
self-normalized importance sampling over the draws of z with y summed exactly.
"""

from __future__ import annotations

import pyro
import torch
from pyro import poutine
from pyro.poutine.enum_messenger import EnumMessenger
from pyro.poutine.util import site_is_subsample

from ppl_vae.errors import ConfigError

__all__ = ["class_posterior", "enumerated_log_weights", "enumerated_sites", "is_enumerated", "site_log_prob"]


def site_log_prob(site) -> torch.Tensor:
    """log-density of a sample site, masked but not scaled (evaluation wants the true density)."""
    log_prob = site["fn"].log_prob(site["value"])
    if site["mask"] is not None:
        log_prob = torch.where(torch.as_tensor(site["mask"]), log_prob, torch.zeros_like(log_prob))
    return log_prob


def is_enumerated(site) -> bool:
    """Whether a trace node is a latent sample site marked for parallel enumeration."""
    return site["type"] == "sample" and site["infer"].get("enumerate") == "parallel" and not site["is_observed"]


def enumerated_sites(model, guide, x: torch.Tensor, **kwargs) -> dict[str, tuple[str, int]]:
    """The sites marked for parallel enumeration, from one trace of the guide and of the model replayed
    against it: ``{name: (where, size)}``, ``where`` ``"guide"`` or ``"model"`` (the guide's take
    precedence) and ``size`` the number of values summed over."""
    with torch.no_grad(), poutine.block():
        guide_trace = poutine.trace(guide).get_trace(x, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x, **kwargs)
    found = {}
    for where, trace in (("guide", guide_trace), ("model", model_trace)):
        for name, site in trace.nodes.items():
            if is_enumerated(site) and name not in found:
                found[name] = (where, int(site["fn"].enumerate_support(expand=False).shape[0]))
    return found


def _enumerated_traces(model, guide, x, num_particles: int, plate_dim: int, kwargs):
    """Guide and model traces with ``num_particles`` vectorized draws at ``plate_dim`` and the discrete
    sites enumerated to its left (guide first, then the model's own)."""

    def vectorized(fn):
        def wrapped(*args, **kw):
            with pyro.plate("_num_particles_vectorized", num_particles, dim=plate_dim):
                return fn(*args, **kw)

        return wrapped

    with poutine.block():
        guide_trace = poutine.trace(EnumMessenger(first_available_dim=plate_dim - 1)(vectorized(guide))).get_trace(
            x, **kwargs
        )
        model_enum = EnumMessenger()  # continues the guide's dimension allocation, as TraceEnum_ELBO does
        model_trace = poutine.trace(model_enum(poutine.replay(vectorized(model), trace=guide_trace))).get_trace(
            x, **kwargs
        )
    return model_trace, guide_trace


def _reduce(site, log_prob: torch.Tensor, nesting: int, plate_name: str) -> torch.Tensor:
    """A site's log-density as ``(*enum_dims, K or 1, N or 1)``: every plate inside the data plate summed."""
    frames = {f.name: f.dim for f in site["cond_indep_stack"] if f.vectorized}
    if plate_name not in frames:
        raise ConfigError(
            f"sample site {site['name']!r} is outside the {plate_name!r} plate; in a model with enumerated "
            f"discrete sites every local site must be inside pyro.plate({plate_name!r}) and there can be no "
            "global latents"
        )
    while log_prob.dim() < nesting + 1:
        log_prob = log_prob.unsqueeze(0)
    data_dim = frames[plate_name]
    other = [d for d in range(-nesting, 0) if d != data_dim and log_prob.shape[d] > 1]
    if other:
        if site["infer"].get("_enumerate_dim") is not None:
            raise ConfigError(
                f"the enumerated site {site['name']!r} sits in a plate inside {plate_name!r}; enumerate only "
                f"sites directly in pyro.plate({plate_name!r})"
            )
        log_prob = log_prob.sum(other, keepdim=True)
    lead = log_prob.shape[: log_prob.dim() - nesting - 1]
    return log_prob.reshape(lead + (log_prob.shape[-nesting - 1], log_prob.shape[data_dim]))


def _tables(model_trace, guide_trace, nesting: int, plate_name: str) -> dict:
    """Per role, the sum of the reduced log-densities, each ``(*enum, K, N)`` with size 1 where it does not vary."""
    parts = {"joint": [], "observed": [], "q_cont": [], "q_disc": []}
    for trace, is_guide in ((model_trace, False), (guide_trace, True)):
        for site in trace.nodes.values():
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            table = _reduce(site, site_log_prob(site), nesting, plate_name)
            if not is_guide:
                parts["joint"].append(table)
                if site["is_observed"]:
                    parts["observed"].append(table)
            else:
                parts["q_disc" if site["infer"].get("_enumerate_dim") is not None else "q_cont"].append(table)
    tensors = [t for ts in parts.values() for t in ts]
    ndim = max(t.dim() for t in tensors)
    # Each role keeps only the dimensions it depends on (q(y_G | x) has no draw or model-enumeration axis).
    zero = torch.zeros((1,) * ndim, dtype=tensors[0].dtype, device=tensors[0].device)

    def total(ts):
        out = zero
        for t in ts:
            out = out + t.reshape((1,) * (ndim - t.dim()) + t.shape)
        return out

    return {k: total(v) for k, v in parts.items()}


def _guide_dims(guide_trace, ndim: int) -> list[int]:
    """Positive axes (of a ``ndim``-dim table) on which the guide enumerates."""
    return sorted(
        ndim + site["infer"]["_enumerate_dim"]
        for site in guide_trace.nodes.values()
        if site["type"] == "sample" and site["infer"].get("_enumerate_dim") is not None
    )


def _weighted_sum(prob: torch.Tensor, value: torch.Tensor, axes: list[int]) -> torch.Tensor:
    """sum over ``axes`` of prob * value, where prob = 0 contributes 0 whatever value is (-inf too)."""
    out = torch.where(prob > 0, prob * value, torch.zeros_like(value))
    return out.sum(axes, keepdim=True) if axes else out


def _lse(t: torch.Tensor, axes: list[int]) -> torch.Tensor:
    return torch.logsumexp(t, axes, keepdim=True) if axes else t


@torch.no_grad()
def enumerated_log_weights(
    model, guide, x: torch.Tensor, num_particles: int, *, nesting: int = 1, plate_name: str = "data", **kwargs
) -> dict[str, torch.Tensor]:
    """The ``(K, N)`` tables of :class:`ppl_vae.infer.evaluate.LogWeights` for a model with enumerated
    discrete sites (see the module's docstring): ``log_likelihood``, ``log_prior``, ``log_guide``,
    ``log_weight`` and ``log_global`` (zeros: global latents are refused here)."""
    plate_dim = -(nesting + 1)
    model_trace, guide_trace = _enumerated_traces(model, guide, x, num_particles, plate_dim, kwargs)
    t = _tables(model_trace, guide_trace, nesting, plate_name)
    ndim = t["joint"].dim()
    enum_axes = list(range(ndim - 2))
    g_axes = _guide_dims(guide_trace, ndim)
    m_axes = [a for a in enum_axes if a not in g_axes]
    log_w = _lse(t["joint"] - t["q_cont"], enum_axes)
    joint_m = _lse(t["joint"], m_axes)  # the model's own discrete sites summed out
    q_g = t["q_disc"].exp()  # q(y_G | x); 1 without guide enumeration
    elbo = _weighted_sum(q_g, joint_m - t["q_cont"] - t["q_disc"], g_axes)
    posterior_m = (t["joint"] - joint_m).exp()  # p(y_M | x, z, y_G)
    rec = _weighted_sum(q_g, _weighted_sum(posterior_m, t["observed"], m_axes), g_axes)
    log_guide = _weighted_sum(q_g, t["q_cont"] + t["q_disc"], g_axes)
    # Enumeration dimensions are summed out (kept as size 1): take what is left, (K, N).
    shape = (num_particles, x.shape[0])

    def flat(table):
        return table.reshape(table.shape[-2:]).expand(shape)

    return {
        "log_likelihood": flat(rec),
        "log_prior": flat(elbo - rec + log_guide),
        "log_guide": flat(log_guide),
        "log_weight": flat(log_w),
        "log_global": torch.zeros(num_particles, device=x.device),
    }


@torch.no_grad()
def class_posterior(
    model,
    guide,
    x: torch.Tensor,
    num_particles: int,
    *,
    site: str = "y",
    nesting: int = 1,
    plate_name: str = "data",
    **kwargs,
) -> torch.Tensor:
    """p(site | x_n) for every example: ``(N, K)`` probabilities of the enumerated discrete ``site``.

    The weight of value k for example n is sum over draws of p(x_n, y = k, z) / q(z | x_n, ...), with the
    other discrete sites summed exactly and the draws z from the guide (stratified by y when the guide
    enumerates it), normalized over k: self-normalized importance sampling, exact as the draws grow.
    ``nesting``: the plates inside and including ``plate_name`` (1 for a ``ppl_vae.VAE``). Memory grows
    with N x draws x values: call it on chunks of examples (``ppl_vae.diagnostics.class_probabilities``
    does).
    """
    plate_dim = -(nesting + 1)
    model_trace, guide_trace = _enumerated_traces(model, guide, x, num_particles, plate_dim, kwargs)
    node = guide_trace.nodes.get(site) if site in guide_trace.nodes else model_trace.nodes.get(site)
    if node is None or node["infer"].get("_enumerate_dim") is None:
        raise ConfigError(f"site {site!r} is not an enumerated discrete site of this model")
    t = _tables(model_trace, guide_trace, nesting, plate_name)
    ndim = t["joint"].dim()
    axis = ndim + node["infer"]["_enumerate_dim"]
    log_w = t["joint"] - t["q_cont"]
    others = [a for a in range(ndim - 1) if a != axis]  # every enumeration axis but y's, and the draws
    per_value = torch.logsumexp(log_w, others, keepdim=True)
    probs = torch.softmax(per_value, axis)
    return probs.reshape(probs.shape[axis], x.shape[0]).T.contiguous()
