"""Posterior collapse: the mutual information I(x; z) under the encoder and the per-dimension collapse report."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ppl_vae.diagnostics.kl import KLToPrior, activity, kl_to_prior
from ppl_vae.errors import ConfigError
from ppl_vae.infer.evaluate import COLLAPSE_NATS
from ppl_vae.results import Result
from ppl_vae.rng import seeded


@torch.no_grad()
def mutual_information(
    posterior, data: torch.Tensor, *, num_samples: int = 10, seed: int | None = None
) -> tuple[float, float]:
    """I(x; z) under the aggregate posterior q(z) = (1/N) sum_m q(z | x_m), nats: the pair ``(value, se)``
    of the estimate and its Monte Carlo standard error.

    I = E_n E_{z ~ q(z|x_n)}[log q(z | x_n) - log q(z)], estimated with ``num_samples`` draws per
    example. ``posterior(x)`` returns q(z | x) with batch shape ``(N,)``. 0 means the encodings carry no
    information about x (posterior collapse); the estimate can never exceed log N.
    """
    with seeded(seed, data.device):
        q = posterior(data)
        z = q.sample(torch.Size([num_samples]))  # (S, N, d)
        own = q.log_prob(z)  # (S, N)
        n = data.shape[0]
        # log q(z_sn) = logsumexp_m log q(z_sn | x_m) - log N, one example's draws against every x_m.
        cross = torch.stack([q.log_prob(z[:, i : i + 1, :].expand(-1, n, -1)) for i in range(n)], dim=1)  # (S, N, M)
        aggregate = torch.logsumexp(cross, dim=-1) - math.log(n)
        terms = (own - aggregate).double()  # (S, N)
    per_example = terms.mean(0)
    return per_example.mean().item(), (terms.std() / math.sqrt(terms.numel())).item()


@dataclass(frozen=True)
class CollapseReport(Result):
    """Posterior-collapse monitors of an amortized model on some data (see :func:`collapse_report`)."""

    kl_per_dimension: list | None
    kl_per_dimension_se: list | None
    kl_total: float | None
    kl_total_se: float | None
    kl_note: str | None
    activity: list
    active_units: int
    latent_dim: int
    mutual_information: float
    mutual_information_se: float
    log_num_examples: float
    collapsed: bool
    mostly_inactive: bool
    warning: str | None


def collapse_report(
    vae, data: torch.Tensor, *, num_samples: int = 10, threshold: float = 0.01, seed: int | None = 0
) -> CollapseReport:
    """Posterior-collapse monitors for an amortized model (anything with ``encode``, ``posterior`` and,
    for the KL, ``prior_distribution``), on ``data (N, *data_shape)``. Returns a :class:`CollapseReport`
    of plain numbers and lists:

    * ``kl_per_dimension``: KL(q(z_j | x) || p(z_j)) per latent dimension, to the VAE's **own prior**
      ``vae.prior_distribution()`` (any loc and scale, learned or not; not N(0, I) unless that is the
      prior), averaged over the examples: ``latent_dim`` floats in nats summing to ``kl_total``, from
      :func:`ppl_vae.diagnostics.kl.kl_to_prior` (closed form where it exists, else Monte Carlo with
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

    Structured models: a ``mixture:K`` prior with q(z | x) works (the KL is to the mixture density p(z)
    with the component summed out, by Monte Carlo). A model whose guide is q(z | x, y) or q(z | x, c)
    (``semi-supervised``, ``conditional``, a mixture with an amortized q(y | x)) has no q(z | x): it is
    refused with a one-line :class:`ConfigError` saying so.
    """
    require_amortized_z(vae, data)
    try:
        kl = kl_to_prior(vae, data, seed=seed)
    except ConfigError as error:
        kl = KLToPrior(per_dimension_note=str(error))
    act = activity(vae, data)
    mi, mi_se = mutual_information(vae.posterior, data, num_samples=num_samples, seed=seed)
    active, dims = int((act > threshold).sum()), int(act.numel())
    reasons = _collapse_reasons(kl, mi, mi_se, active, dims)
    mostly_inactive = active < dims / 2

    def listed(t):
        return None if t is None else [float(v) for v in t]

    return CollapseReport(
        kl_per_dimension=listed(kl.per_dimension),
        kl_per_dimension_se=listed(kl.per_dimension_se),
        kl_total=kl.total,
        kl_total_se=kl.total_se,
        kl_note=kl.per_dimension_note,
        activity=act.tolist(),
        active_units=active,
        latent_dim=dims,
        mutual_information=mi,
        mutual_information_se=mi_se,
        log_num_examples=math.log(data.shape[0]),
        collapsed=bool(reasons),
        mostly_inactive=mostly_inactive,
        warning=_collapse_warning(reasons, mostly_inactive, active, dims),
    )


def require_amortized_z(vae, data: torch.Tensor) -> None:
    """Refuse, with one line, a model without q(z | x) (its guide for z also needs a label y or c)."""
    try:
        vae.posterior(data[:1])
    except ConfigError as error:
        raise ConfigError(f"collapse is measured on q(z | x), which this model does not have: {error}") from None


def _collapse_reasons(kl: KLToPrior, mi: float, mi_se: float, active: int, dims: int) -> list[str]:
    """What says the model is collapsed: no active unit, a KL or I(x; z) of ~0 (one phrase each)."""
    reasons = []
    if active == 0:
        reasons.append(f"0 of {dims} latent units active")
    if kl.total is not None and kl.total < max(COLLAPSE_NATS, 2 * (kl.total_se or 0.0)):
        reasons.append(f"KL to the prior {kl.total:.3g} nats")
    if mi < max(COLLAPSE_NATS, 2 * mi_se):
        reasons.append(f"I(x; z) {mi:.3g} ± {mi_se:.2g} nats")
    return reasons


def _collapse_warning(reasons: list[str], mostly_inactive: bool, active: int, dims: int) -> str | None:
    if reasons:
        return (
            "the model is collapsed (" + "; ".join(reasons) + "): q(z | x) ignores x, so the guide "
            "diagnostics describe the prior, not an informative encoder"
        )
    if mostly_inactive:
        return (
            f"most latent units are inactive ({active} of {dims} active): the guide diagnostics "
            f"describe the {active} informative dimensions; the others are collapsed to the prior"
        )
    return None
