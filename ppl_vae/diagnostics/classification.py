"""Calibration of discrete posteriors: reliability diagrams and the expected calibration error (ECE) of
predicted class probabilities against labels.

The predictions are either an amortized classifier q(y | x) (a semi-supervised model's, or the class
site of any guide) or the class posterior p(y | x) of a model with an enumerated site ``"y"``
(:func:`class_probabilities`, self-normalized importance sampling with y summed exactly). The labels are
held-out labels, or the classes simulated with the data from the model itself
(:func:`simulated_class_calibration`): when x is drawn from the model, the exact p(y | x) is calibrated
by construction, so a miscalibrated p(y | x) there is an error of inference, as a non-uniform rank is in
simulation-based calibration.

ECE is biased upwards: even exactly calibrated predictions leave, in each bin, a gap between the observed
frequency and the mean prediction of the order of sqrt(sum p (1 - p)) / n_bin. So every ECE here comes
with its distribution *under calibration*, by consistency resampling (Broecker and Smith 2007): labels
drawn from the predictions themselves, binned the same way. An ECE inside that distribution is what
calibrated predictions of this size give; the p-value says how far out it is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from pyro import poutine

from ppl_vae.diagnostics.programs import label_kwargs, rows
from ppl_vae.errors import ConfigError
from ppl_vae.infer.enumeration import class_posterior, enumerated_sites
from ppl_vae.infer.evaluate import DEFAULT_MAX_ELEMENTS, chunk_sizes, max_plate_nesting
from ppl_vae.results import NOT_IN_DICT, Result
from ppl_vae.rng import seeded
from ppl_vae.validation import BOUNDS, Bound, check_number

#: What a reliability diagram bins: the top-label probability (is the predicted class right?) or every
#: class probability (does the class happen that often?).
KINDS = ("top-label", "classwise")


@dataclass(frozen=True)
class Reliability(Result):
    """Binned predicted probability against observed frequency, and the expected calibration error.

    Attributes:
        kind: ``"top-label"`` (each example's largest probability against whether its label is that
            class; Guo et al. 2017) or ``"classwise"`` (every probability p_nk against 1[label_n = k]).
        source: what was predicted against what (one line).
        num_examples, num_classes: N and K.
        bin_edges: ``num_bins + 1`` equal-width edges on [0, 1].
        counts: predictions per bin (N per kind top-label, N K classwise in total).
        mean_predicted: per bin, the mean predicted probability (None for an empty bin).
        observed_frequency: per bin, how often the event happened (None for an empty bin).
        calibrated_spread: per bin, the standard deviation of the observed frequency if the predictions
            were calibrated, sqrt(sum p (1 - p)) / n_bin: the width of the band a calibrated diagram
            stays in (None for an empty bin).
        ece: sum over bins of (n_bin / total) ``|observed_frequency - mean_predicted|``.
        ece_calibrated_mean, ece_calibrated_sd: mean and standard deviation of the ECE of calibrated
            predictions (these very predictions, labels drawn from them), over ``num_resamples`` draws.
        ece_z: (ece - ece_calibrated_mean) / ece_calibrated_sd.
        p_value: share of calibrated resamples with an ECE at least as large, (1 + count) / (1 + R).
        confidence: mean top-label probability; accuracy and accuracy_se: share of examples whose label
            is the most probable class, with its binomial standard error.
        overconfidence: sum over bins of (n_bin / total) (mean_predicted - observed_frequency) *
            sign(mean_predicted - 1/K): positive when the predictions are more extreme than the frequencies
            (over-confident), negative when less (under-confident).
        verdict: ``"calibrated"``, ``"over-confident"`` or ``"under-confident"`` (p-value below ``alpha``).
        probabilities, labels: the ``(N, K)`` predictions and ``(N,)`` labels (not in :meth:`to_dict`).
    """

    kind: str
    source: str
    num_examples: int
    num_classes: int
    bin_edges: list
    counts: list
    mean_predicted: list
    observed_frequency: list
    calibrated_spread: list
    ece: float
    ece_calibrated_mean: float
    ece_calibrated_sd: float
    ece_z: float
    p_value: float
    num_resamples: int
    confidence: float
    accuracy: float
    accuracy_se: float
    overconfidence: float
    verdict: str
    probabilities: np.ndarray = field(repr=False, default=None, metadata=NOT_IN_DICT)
    labels: np.ndarray = field(repr=False, default=None, metadata=NOT_IN_DICT)


def _events(probs: np.ndarray, labels: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """The binned predictions and their outcomes: ``(M,)`` probabilities and ``(M,)`` 0/1 outcomes."""
    if kind == "top-label":
        return probs.max(1), (labels == probs.argmax(1)).astype(float)
    return probs.reshape(-1), (labels[:, None] == np.arange(probs.shape[1])[None, :]).astype(float).reshape(-1)


def _ece(bins: np.ndarray, predicted: np.ndarray, outcomes: np.ndarray, num_bins: int) -> np.ndarray:
    """ECE of outcomes ``(..., M)`` against predictions ``(M,)`` binned by ``bins (M,)``: ``(...)``."""
    total = predicted.shape[0]
    lead = outcomes.shape[:-1]
    flat = (outcomes - predicted).reshape(-1, total)
    gaps = np.zeros((flat.shape[0], num_bins))
    for b in range(num_bins):
        inside = bins == b
        if inside.any():
            gaps[:, b] = flat[:, inside].sum(1)
    return (np.abs(gaps).sum(1) / total).reshape(lead)


def _calibrated_eces(probs: np.ndarray, kind: str, bins: np.ndarray, num_bins: int, num_resamples: int, seed: int):
    """ECEs of ``num_resamples`` label sets drawn from the predictions themselves (consistency resampling)."""
    rng = np.random.default_rng(seed)
    n, k = probs.shape
    cumulative = np.cumsum(probs, 1)
    cumulative[:, -1] = 1.0
    predicted = _events(probs, np.zeros(n, dtype=int), kind)[0]
    out = []
    block = max(1, min(num_resamples, 2**22 // max(1, n * (k if kind == "classwise" else 1))))
    for start in range(0, num_resamples, block):
        r = min(block, num_resamples - start)
        u = rng.random((r, n, 1))
        drawn = (u > cumulative[None]).sum(-1)  # (r, n) labels ~ Categorical(probs)
        if kind == "top-label":
            outcomes = (drawn == probs.argmax(1)[None]).astype(float)
        else:
            outcomes = (drawn[..., None] == np.arange(k)).astype(float).reshape(r, -1)
        out.append(_ece(bins, predicted, outcomes, num_bins))
    return np.concatenate(out)


def _per_bin(bins: np.ndarray, predicted: np.ndarray, outcomes: np.ndarray, num_bins: int, k: int) -> dict:
    """Per bin: ``counts``, ``mean_predicted``, ``observed_frequency`` and ``calibrated_spread`` (None where
    a bin is empty), and ``signed``, the count-weighted sum of (mean predicted - frequency) * sign(mean - 1/K)."""
    out = {"counts": [], "mean_predicted": [], "observed_frequency": [], "calibrated_spread": [], "signed": 0.0}
    for b in range(num_bins):
        inside = bins == b
        m = int(inside.sum())
        out["counts"].append(m)
        if not m:
            for key in ("mean_predicted", "observed_frequency", "calibrated_spread"):
                out[key].append(None)
            continue
        p, o = predicted[inside], outcomes[inside]
        out["mean_predicted"].append(float(p.mean()))
        out["observed_frequency"].append(float(o.mean()))
        out["calibrated_spread"].append(float(math.sqrt((p * (1 - p)).sum()) / m))
        out["signed"] += m * (p.mean() - o.mean()) * np.sign(p.mean() - 1 / k)
    return out


def _check_predictions(probs, labels) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs.detach().cpu() if isinstance(probs, torch.Tensor) else probs, dtype=float)
    labels = np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels)
    if probs.ndim != 2 or probs.shape[1] < 2 or probs.shape[0] < 1:
        raise ConfigError(f"predicted probabilities must be (N, K) with K >= 2 and N >= 1, got {probs.shape}")
    if labels.shape != (probs.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ConfigError(f"labels must be {probs.shape[0]} integer class labels, got shape {labels.shape}")
    if labels.min() < 0 or labels.max() >= probs.shape[1]:
        raise ConfigError(f"labels must lie in 0..{probs.shape[1] - 1}; got {labels.min()} to {labels.max()}")
    if not np.isfinite(probs).all() or probs.min() < 0 or np.abs(probs.sum(1) - 1).max() > 1e-4:
        raise ConfigError("predicted probabilities must be finite, non-negative and sum to 1 per example")
    return probs, labels.astype(int)


def reliability(
    probs,
    labels,
    *,
    kind: str = "top-label",
    num_bins: int = 10,
    num_resamples: int = 1000,
    alpha: float = 0.01,
    seed: int = 0,
    source: str = "",
) -> Reliability:
    """A reliability diagram and the ECE of predicted class probabilities ``probs (N, K)`` against integer
    ``labels (N,)``, with the ECE's distribution under calibration (see the module docstring).

    ``kind``: ``"top-label"`` or ``"classwise"`` (:data:`KINDS`); ``num_bins`` equal-width bins on [0, 1];
    ``num_resamples`` label sets drawn from the predictions (seeded by ``seed``) for the calibrated
    distribution of the ECE; ``alpha``: below this p-value the verdict names the miscalibration."""
    if kind not in KINDS:
        raise ConfigError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    check_number(num_bins, "num_bins", Bound(int, 1, 1000))
    check_number(num_resamples, "num_resamples", Bound(int, 2, 1_000_000))
    check_number(alpha, "alpha", Bound(float, 0, 1, open_low=True))
    probs, labels = _check_predictions(probs, labels)
    n, k = probs.shape
    predicted, outcomes = _events(probs, labels, kind)
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    bins = np.clip(np.searchsorted(edges, predicted, side="right") - 1, 0, num_bins - 1)
    ece = float(_ece(bins, predicted, outcomes, num_bins))
    null = _calibrated_eces(probs, kind, bins, num_bins, num_resamples, seed)
    per_bin = _per_bin(bins, predicted, outcomes, num_bins, k)
    null_sd = float(null.std(ddof=1))
    p_value = float((1 + (null >= ece).sum()) / (1 + num_resamples))
    overconfidence = float(per_bin.pop("signed") / predicted.shape[0])
    accuracy = float((labels == probs.argmax(1)).mean())
    verdict = "calibrated" if p_value >= alpha else ("over-confident" if overconfidence > 0 else "under-confident")
    return Reliability(
        kind=kind,
        source=source,
        num_examples=n,
        num_classes=k,
        bin_edges=edges.tolist(),
        **per_bin,
        ece=ece,
        ece_calibrated_mean=float(null.mean()),
        ece_calibrated_sd=null_sd,
        ece_z=float((ece - null.mean()) / null_sd) if null_sd > 0 else float("nan"),
        p_value=p_value,
        num_resamples=num_resamples,
        confidence=float(probs.max(1).mean()),
        accuracy=accuracy,
        accuracy_se=math.sqrt(accuracy * (1 - accuracy) / n),
        overconfidence=overconfidence,
        verdict=verdict,
        probabilities=probs,
        labels=labels,
    )


@dataclass(frozen=True)
class ClassProbabilities(Result):
    """p(y | x) per example by self-normalized importance sampling, with its Monte Carlo error.

    Attributes:
        probabilities: ``(N, K)`` the mean of ``repeats`` independent estimates, each from
            ``num_particles`` draws of the continuous latents per example (y summed exactly).
        standard_error: ``(N, K)`` their standard deviation / sqrt(repeats) (batch means: itself an
            estimate with ``repeats - 1`` degrees of freedom, so compare errors with Student's t quantiles).
            Self-normalization adds a bias of order 1 / num_particles that this does not include.
    """

    probabilities: torch.Tensor = field(repr=False)
    standard_error: torch.Tensor = field(repr=False)
    num_particles: int
    repeats: int
    site: str


@torch.no_grad()
def class_probabilities(
    model,
    guide,
    x: torch.Tensor,
    *,
    num_particles: int = 100,
    repeats: int = 8,
    site: str = "y",
    seed: int | None = 0,
    c: torch.Tensor | None = None,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
) -> ClassProbabilities:
    """Each example's posterior over the enumerated discrete ``site``, p(y | x_n), ``repeats`` times with
    ``num_particles`` draws each (:func:`ppl_vae.infer.enumeration.class_posterior`), in chunks of examples
    that keep draws x values x examples x features below ``max_elements``."""
    check_number(num_particles, "num_particles", Bound(int, 1, BOUNDS["num_samples"].high))
    check_number(repeats, "repeats (a standard error needs two estimates)", Bound(int, 2, 1000))
    side = label_kwargs(model, guide, c, x.shape[0], "the class posterior")
    found = enumerated_sites(model, guide, x[:1], **rows(side, 0, 1))
    if site not in found:
        raise ConfigError(f"site {site!r} is not an enumerated discrete site of this model; it has none to compare")
    values = math.prod(size for _, size in found.values())
    batch, _ = chunk_sizes(x, num_particles, None, max(1, max_elements // values))
    nesting = max_plate_nesting(model, guide, x[:1], **rows(side, 0, 1))
    estimates = []
    with seeded(seed, x.device):
        for _ in range(repeats):
            parts = [
                class_posterior(
                    model,
                    guide,
                    x[i : i + batch],
                    num_particles,
                    site=site,
                    nesting=nesting,
                    **rows(side, i, i + batch),
                )
                for i in range(0, x.shape[0], batch)
            ]
            estimates.append(torch.cat(parts).double().cpu())
    stacked = torch.stack(estimates)
    return ClassProbabilities(
        probabilities=stacked.mean(0),
        standard_error=stacked.std(0) / math.sqrt(repeats),
        num_particles=num_particles,
        repeats=repeats,
        site=site,
    )


def guide_class_probabilities(guide, x: torch.Tensor, *, site: str = "y", c=None) -> torch.Tensor | None:
    """q(y | x): the probabilities ``(N, K)`` of the guide's categorical ``site`` (an amortized classifier),
    read off one trace of the guide; None when the guide does not draw ``site``. Labels ``c`` are passed
    to the guide when given (a semi-supervised guide then puts all of q's mass on a known label)."""
    kwargs = {} if c is None else {"c": c}
    with torch.no_grad(), poutine.block():
        trace = poutine.trace(guide).get_trace(x, **kwargs)
    node = trace.nodes.get(site)
    if node is None or node["type"] != "sample" or not hasattr(node["fn"], "probs"):
        return None
    probs = node["fn"].probs
    if probs.dim() != 2 or probs.shape[0] != x.shape[0]:
        return None
    return probs.detach().double().cpu()


def simulate_classes(model, num_simulations: int, *, site: str = "y", observed_site: str = "x", c=None, seed: int = 0):
    """``(labels, x)``: ``num_simulations`` draws of the full generative program (y, then the continuous
    latents, then x), ``model(None, num_samples=N)``; the class drawn at ``site`` and the data."""
    check_number(num_simulations, "num_simulations", Bound(int, 2, BOUNDS["num_samples"].high))
    kwargs = {} if c is None else {"c": c}
    device = _device_of(model)
    with torch.no_grad(), seeded(seed, device), poutine.block():
        trace = poutine.trace(model).get_trace(None, num_samples=num_simulations, **kwargs)
    if site not in trace.nodes or observed_site not in trace.nodes:
        raise ConfigError(
            f"the model run as model(None, num_samples=N) must sample sites {site!r} and {observed_site!r} "
            "to simulate classes"
        )
    return trace.nodes[site]["value"].long(), trace.nodes[observed_site]["value"]


def _device_of(program) -> torch.device:
    owner = getattr(program, "__self__", None)
    if isinstance(owner, torch.nn.Module):
        for p in owner.parameters():
            return p.device
    return torch.device("cpu")


def simulated_class_calibration(
    model,
    guide,
    *,
    num_simulations: int = 1000,
    num_particles: int = 100,
    predict: str = "posterior",
    site: str = "y",
    observed_site: str = "x",
    kind: str = "top-label",
    num_bins: int = 10,
    num_resamples: int = 1000,
    seed: int = 0,
) -> Reliability:
    """Calibration of the class predictions on data simulated from the model (SBC for a discrete site):
    y, z, x drawn from the full generative program, then the predictions for x against the drawn y.

    ``predict``: ``"posterior"``, the model's p(y | x) (:func:`class_probabilities`, ``num_particles``
    draws per estimate), calibrated exactly when inference is right; or ``"guide"``, the guide's
    amortized q(y | x) (:func:`guide_class_probabilities`), calibrated only as far as it matches p(y | x).
    """
    if predict not in ("posterior", "guide"):
        raise ConfigError(f"predict must be 'posterior' or 'guide', got {predict!r}")
    labels, x = simulate_classes(model, num_simulations, site=site, observed_site=observed_site, seed=seed)
    if predict == "guide":
        probs = guide_class_probabilities(guide, x, site=site)
        if probs is None:
            raise ConfigError(f"the guide does not draw {site!r}: there is no amortized q({site} | x) to calibrate")
        source = f"q({site} | x) of the guide against {site} simulated with x from the model"
    else:
        estimate = class_probabilities(model, guide, x, num_particles=num_particles, site=site, seed=seed)
        probs = estimate.probabilities
        source = (
            f"p({site} | x) ({estimate.repeats} x {num_particles} draws) against {site} simulated with x from the model"
        )
    return reliability(
        probs, labels, kind=kind, num_bins=num_bins, num_resamples=num_resamples, seed=seed, source=source
    )
