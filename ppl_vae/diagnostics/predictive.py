"""Posterior and prior predictive checks: replicated data, test statistics that fit the data kind,
predictive p-values with a derived threshold for "extreme", and LOO-PIT of table-like data.

The idea: if the model were right, data sets it generates would look like the real one. A *test
statistic* T maps a data set ``(N, ...)`` to one number (the mean ink of the images, the kurtosis of a
column). Replicated data sets come from the model, either

* given each held-out example (*posterior predictive*): every latent site the guide draws per example
  (z, and e.g. a semi-supervised class y) is drawn from q(. | x_n), then x_rep_n ~ p(x | z); or
* from the model alone (*prior predictive*): z ~ p(z), x_rep ~ p(x | z), N fresh examples.

The predictive p-value of T is ppp = P(T(x_rep) >= T(x_obs)), ties counted half. A ppp near 0 or 1 says
the model does not reproduce that feature of the data. See :func:`predictive_check` for the derived
threshold and :func:`loo_pit` for the leave-one-feature-out probability integral transform.

Everything here is computation: no files, no printing; figures are drawn by :mod:`ppl_vae.app`, with
ArviZ through :mod:`ppl_vae.diagnostics.arviz_bridge.predictive`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.infer import Predictive
from pyro.poutine.util import site_is_subsample

from ppl_vae.diagnostics.arviz_bridge import posterior as psis_bridge
from ppl_vae.diagnostics.programs import label_kwargs, rows
from ppl_vae.errors import ConfigError
from ppl_vae.infer.enumeration import enumerated_sites
from ppl_vae.infer.evaluate import max_plate_nesting
from ppl_vae.limits import ENV_VAR, format_bytes, memory_limit
from ppl_vae.models import LIKELIHOODS
from ppl_vae.results import NOT_IN_DICT, OMIT_NONE, Result
from ppl_vae.rng import seeded
from ppl_vae.validation import BOUNDS, Bound, check_number

#: The family-wise level of the "extreme" flags of one check (see :func:`extreme_threshold`).
DEFAULT_ALPHA = 0.01
#: Pixels above this grey level are ink when strokes are counted.
STROKE_THRESHOLD = 0.5
#: Tables: per-column statistics for at most this many columns (those with the largest observed variance).
MAX_TABLE_COLUMNS = 32
#: Tables: correlations of every pair among the first this-many of those columns (at most 120 pairs).
MAX_CORRELATION_COLUMNS = 16
#: Replicated data sets are drawn and summarized a chunk at a time: at most this many values per chunk.
MAX_CHUNK_ELEMENTS = 2**22
#: Replicates of each per-example statistic kept for figures (``PredictiveCheck.per_example``).
KEPT_REPLICATES = 100
#: Pareto k-hat above which a leave-feature-out importance estimate is left out of LOO-PIT.
LOO_PIT_KHAT = 0.7
#: The kinds of data :func:`data_kind` tells apart, each with its own test statistics.
DATA_KINDS = ("image", "table", "counts")

_DISCRETE_KINDS = ("binary", "8bit", "count")
_UNIFORM_SD = 1 / math.sqrt(12)  # sd of U(0, 1)

# ---------------------------------------------------------------------------------------------------
# Replicated data


def _device(model, data: torch.Tensor | None) -> torch.device:
    if data is not None:
        return data.device
    owner = getattr(model, "__self__", None)
    return getattr(owner, "device", torch.device("cpu"))


def _check_replicate_memory(num_samples: int, num_examples: int, example_shape: tuple, itemsize: int, what: str):
    """Refuse, with one line naming the size and the fix, ``num_samples`` replicated data sets of
    ``num_examples`` examples that would not fit the memory budget (twice their size: Predictive stacks
    a list of draws)."""
    per_set = num_examples * math.prod(example_shape) * itemsize * 2
    limit = memory_limit()
    if num_samples * per_set > limit:
        fit = limit // max(per_set, 1)
        raise ConfigError(
            f"{what}: {num_samples} replicated data sets of {num_examples} examples of shape {tuple(example_shape)} "
            f"would need {format_bytes(num_samples * per_set)}, more than the memory limit of {format_bytes(limit)}; "
            f"use num_samples <= {fit} or fewer examples (predictive_check summarizes replicates in chunks and "
            f"needs far less), or raise {ENV_VAR}"
        )


def _guide_sites(guide, data: torch.Tensor, side: dict) -> list[str]:
    """Every latent site the guide draws (local ones such as z and a semi-supervised y, and global ones),
    from one trace: the sites a posterior replicate holds at the guide's draw."""
    with torch.no_grad(), poutine.block():
        trace = poutine.trace(guide).get_trace(data, **side)
    return [
        name
        for name, site in trace.nodes.items()
        if site["type"] == "sample"
        and not site["is_observed"]
        and not site_is_subsample(site)
        and not site["infer"].get("is_auxiliary")
    ]


def _draw(model, guide, data, num: int, num_examples: int, side: dict, sites, observed_site: str) -> torch.Tensor:
    """``(num, N, ...)`` replicated data sets (no seeding here): posterior ones when ``guide`` is given."""
    if guide is None:
        program = Predictive(model, num_samples=num, return_sites=[observed_site])
        return program(None, num_samples=num_examples, **side)[observed_site]
    draws = Predictive(guide, num_samples=num, return_sites=sites)(data, **side)
    program = Predictive(model, posterior_samples=draws, return_sites=[observed_site])
    return program(None, num_samples=num_examples, **side)[observed_site]


@torch.no_grad()
def posterior_predictive(
    model,
    guide,
    data: torch.Tensor,
    *,
    num_samples: int = 100,
    seed: int | None = 0,
    c: torch.Tensor | None = None,
    observed_site: str = "x",
) -> torch.Tensor:
    """Posterior predictive replicates of the held-out data: ``(S, N, *data_shape)``.

    For replicate s and example n, every latent site the guide draws (z, a semi-supervised guide's class
    y, global sites) is drawn from the guide given x_n (``pyro.infer.Predictive``), then the model is run
    generatively (``model(None, num_samples=N)``) with those sites held at the draws, giving
    x_rep[s, n] ~ p(x | z_sn). Works for any model/guide pair that follows the site/plate contract.

    Args:
        data: ``(N, ...)`` held-out examples in the form the likelihood scores them.
        num_samples: S, replicated data sets.
        c: ``(N,)`` per-example labels (or ``(N, M)`` covariates) for programs that take them.

    The whole array is returned, so its size is checked against the memory budget first
    (:class:`ConfigError` naming the size and the fix); :func:`predictive_check` needs no such array."""
    check_number(num_samples, "num_samples")
    n = data.shape[0]
    side = label_kwargs(model, guide, c, n, "the posterior predictive check")
    _check_replicate_memory(num_samples, n, tuple(data.shape[1:]), data.element_size(), "posterior_predictive")
    with seeded(seed, data.device):
        sites = _guide_sites(guide, data, side)
        return _draw(model, guide, data, num_samples, n, side, sites, observed_site)


@torch.no_grad()
def prior_predictive(
    model,
    *,
    num_samples: int = 100,
    num_examples: int,
    seed: int | None = 0,
    c: torch.Tensor | None = None,
    observed_site: str = "x",
) -> torch.Tensor:
    """Prior predictive replicates: ``(S, num_examples, *data_shape)`` from the model run generatively,
    ``model(None, num_samples=num_examples)``: z ~ p(z) (a structured prior's discrete sites first, global
    latents from their prior), x ~ p(x | z). ``c``: ``(num_examples,)`` labels for a model that needs them
    (the replicates are then of p(x | c)). The size is checked against the memory budget first."""
    check_number(num_samples, "num_samples")
    check_number(num_examples, "num_examples", Bound(int, 1, BOUNDS["num_samples"].high))
    side = label_kwargs(model, None, c, num_examples, "the prior predictive check")
    device = _device(model, c)
    with seeded(seed, device):
        one = _draw(model, None, None, 1, 1, rows(side, 0, 1), None, observed_site)  # the shape of an example
        _check_replicate_memory(num_samples, num_examples, tuple(one.shape[2:]), one.element_size(), "prior_predictive")
    with seeded(seed, device):
        return _draw(model, None, None, num_samples, num_examples, side, None, observed_site)


# ---------------------------------------------------------------------------------------------------
# The kind of data


def _likelihood_kind(likelihood_or_vae) -> str | None:
    """The ``data_kind`` of a likelihood (module, class or registry name) or of a VAE's likelihood."""
    lik = getattr(likelihood_or_vae, "likelihood", likelihood_or_vae)
    if isinstance(lik, str):
        if lik.partition(":")[0] not in LIKELIHOODS:
            raise ConfigError(f"unknown likelihood {lik!r}; choose one of: {', '.join(sorted(LIKELIHOODS))}")
        lik = LIKELIHOODS[lik.partition(":")[0]]
    kind = getattr(lik, "data_kind", None)
    return kind if isinstance(kind, str) else None


def _kind_from_values(data: torch.Tensor) -> str:
    """Guess a likelihood's data kind from the values: 0/1, [0, 1], non-negative integers, else real."""
    if bool(((data == 0) | (data == 1)).all()):
        return "binary"
    if bool(((data >= 0) & (data <= 1)).all()):
        return "unit"
    if bool(((data >= 0) & (data == data.round())).all()):
        return "count"
    return "real"


def _image_side(example_shape: tuple, allow_square: bool) -> bool:
    if len(example_shape) == 2:
        return min(example_shape) >= 2
    if len(example_shape) == 3:
        return example_shape[0] in (1, 3) and min(example_shape[1:]) >= 2
    if len(example_shape) == 1 and allow_square:
        side = math.isqrt(example_shape[0])
        return side >= 4 and side * side == example_shape[0]
    return False


def data_kind(likelihood_or_vae, data: torch.Tensor) -> str:
    """Which test statistics fit the data: ``"image"``, ``"table"`` or ``"counts"``.

    ``likelihood_or_vae``: a ``ppl_vae.VAE``, a likelihood module or class of
    :data:`ppl_vae.models.LIKELIHOODS`, its registry name, or None (then the kind is read off the values
    of ``data``). Rules, by the likelihood's ``data_kind``:

    * ``count`` (Poisson, NegativeBinomial): counts;
    * ``binary``, ``unit``, ``8bit`` (Bernoulli, ContinuousBernoulli, Beta, DiscretizedLogistic,
      Categorical256) on image-shaped examples (``(H, W)`` or ``(C, H, W)``, C = 1 or 3) or on flat
      examples of a square length >= 16 (a flattened image): image; other shapes: table;
    * ``real`` (Gaussian, GaussianPerFeature, Laplace): image on image-shaped examples, table on flat ones.
    """
    kind = _likelihood_kind(likelihood_or_vae) or _kind_from_values(data)
    shape = tuple(data.shape[1:])
    if kind == "count":
        return "counts"
    if _image_side(shape, allow_square=kind != "real"):
        return "image"
    return "table"


# ---------------------------------------------------------------------------------------------------
# Test statistics


@dataclass(frozen=True)
class Statistic:
    """A test statistic: ``name``, what it measures with its unit (``description``), and whether it is a
    profile (``labels``: one value per pixel, column or pair, reduced by :func:`profile_discrepancy` to
    one number per data set) or a scalar (one number per data set). Scalars are judged two-sided,
    profiles by their largest discrepancy (one-sided: large is extreme)."""

    name: str
    description: str
    labels: tuple = ()

    @property
    def profile(self) -> bool:
        return bool(self.labels)


def _as_batch(x) -> torch.Tensor:
    """Data sets as a float64 CPU tensor, for statistics that need the precision (moments, sums)."""
    return torch.as_tensor(x).detach().cpu().double()


def _images(x: torch.Tensor, example_shape: tuple) -> torch.Tensor:
    """``(B, N, *example_shape)`` -> ``(B, N, H, W)``: channels averaged, square vectors unflattened."""
    if len(example_shape) == 3:
        return x.mean(2)
    if len(example_shape) == 1:
        side = math.isqrt(example_shape[0])
        return x.reshape(*x.shape[:2], side, side)
    return x


def count_strokes(images: np.ndarray, threshold: float = STROKE_THRESHOLD) -> np.ndarray:
    """Connected strokes per image: ``(..., H, W)`` -> ``(...)`` integers, the number of 8-connected
    components of pixels above ``threshold``. One ``scipy.ndimage.label`` call labels the whole stack;
    its structure connects neighbours within an image only, never across images."""
    from scipy import ndimage

    images = np.asarray(images)
    lead, (h, w) = images.shape[:-2], images.shape[-2:]
    stack = images.reshape(-1, h, w) > threshold
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True  # 8-connectivity inside an image, nothing between neighbouring images
    labels, count = ndimage.label(stack, structure=structure)
    # Each component lies in one image, so any one of its pixels tells which: write every inked pixel's
    # index at its label (which of a label's pixels is kept does not matter).
    pixel_of = np.zeros(count + 1, dtype=np.int64)
    inked = np.flatnonzero(labels)
    pixel_of[labels.ravel()[inked]] = inked
    per_image = np.bincount(pixel_of[1:] // (h * w), minlength=stack.shape[0])
    return per_image.reshape(lead)


def _moments(x: torch.Tensor) -> dict:
    """Per-column moments over examples of ``(B, N, K)``: mean, sd, skewness, excess kurtosis (population
    moments; 0 where a column is constant)."""
    mean = x.mean(1)
    centred = x - mean[:, None]
    m2 = centred.pow(2).mean(1)
    safe = torch.where(m2 > 0, m2, torch.ones_like(m2))
    skew = torch.where(m2 > 0, centred.pow(3).mean(1) / safe.pow(1.5), torch.zeros_like(m2))
    kurt = torch.where(m2 > 0, centred.pow(4).mean(1) / safe.pow(2) - 3, torch.zeros_like(m2))
    return {"mean": mean, "sd": m2.sqrt(), "skewness": skew, "kurtosis": kurt, "centred": centred, "m2": m2}


def _quantiles(x: torch.Tensor, probs: tuple) -> list[torch.Tensor]:
    """Per-column quantiles over examples of ``(B, N, K)`` (linear interpolation between order statistics)."""
    ordered = x.sort(dim=1).values
    n = x.shape[1]
    out = []
    for p in probs:
        pos = p * (n - 1)
        lo, frac = int(math.floor(pos)), pos - math.floor(pos)
        hi = min(lo + 1, n - 1)
        out.append(ordered[:, lo] * (1 - frac) + ordered[:, hi] * frac)
    return out


@dataclass(frozen=True)
class StatisticSet:
    """The test statistics of one data kind, ready to apply to batches of data sets.

    Call it on ``(B, N, *example_shape)`` (or one data set ``(N, ...)``): ``{name: (B,) or (B, K)}``
    float64 arrays, ``(B, K)`` for profiles. :meth:`per_example` gives ``{name: (B, N)}`` per-example
    values for figures (ink per image, columns, totals). ``columns``/``pairs``: which table columns
    (by index) the per-column statistics and the correlations use."""

    data_kind: str
    example_shape: tuple
    statistics: tuple
    columns: tuple = ()
    pairs: tuple = ()

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.statistics]

    def __call__(self, x) -> dict:
        x = _as_batch(x)
        if x.dim() == len(self.example_shape) + 1:
            x = x[None]
        compute = {"image": self._image, "table": self._table, "counts": self._counts}[self.data_kind]
        return {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in compute(x).items()}

    def _image(self, x: torch.Tensor) -> dict:
        images = _images(x, self.example_shape)  # (B, N, H, W)
        ink = images.sum((2, 3))
        strokes = torch.as_tensor(count_strokes(images.numpy()), dtype=torch.float64)
        return {
            "ink_mean": ink.mean(1),
            "ink_sd": ink.std(1, correction=0),
            "pixel_mean": images.mean(1).flatten(1),
            "strokes_mean": strokes.mean(1),
        }

    def _table(self, x: torch.Tensor) -> dict:
        columns = x.flatten(2)[..., list(self.columns)]  # (B, N, K)
        m = _moments(columns)
        q05, q50, q95 = _quantiles(columns, (0.05, 0.5, 0.95))
        k = max((j for pair in self.pairs for j in pair), default=-1) + 1
        out = {"mean": m["mean"], "sd": m["sd"], "q05": q05, "median": q50, "q95": q95}
        out.update(skewness=m["skewness"], kurtosis=m["kurtosis"])
        if self.pairs:
            c = m["centred"][..., :k]
            cov = torch.einsum("bnk,bnl->bkl", c, c) / c.shape[1]
            sd = m["m2"][:, :k].sqrt()
            scale = sd[:, :, None] * sd[:, None, :]
            corr = torch.where(scale > 0, cov / torch.where(scale > 0, scale, torch.ones_like(scale)), 0.0)
            i, j = zip(*self.pairs)
            out["correlation"] = corr[:, list(i), list(j)]
        return out

    def _counts(self, x: torch.Tensor) -> dict:
        flat = x.flatten(2)  # (B, N, D)
        mean = flat.mean(1)  # (B, D) per-feature means
        var = flat.var(1, correction=0)
        used = mean > 0
        ratio = torch.where(used, var / torch.where(used, mean, torch.ones_like(mean)), 0.0)
        return {
            "zero_fraction": (flat == 0).double().mean((1, 2)),
            "mean": flat.mean((1, 2)),
            "dispersion": ratio.sum(1) / used.sum(1).clamp(min=1),
            "max": flat.amax((1, 2)),
        }

    def per_example(self, x) -> dict:
        """``{name: (B, N)}`` per-example values for predictive-distribution figures: ink and strokes of
        each image; up to 4 table columns; total count and number of zeros of each example."""
        x = _as_batch(x)
        if x.dim() == len(self.example_shape) + 1:
            x = x[None]
        if self.data_kind == "image":
            images = _images(x, self.example_shape)
            return {"ink": images.sum((2, 3)).numpy(), "strokes": count_strokes(images.numpy()).astype(float)}
        flat = x.flatten(2)
        if self.data_kind == "counts":
            return {"total count": flat.sum(2).numpy(), "zeros": (flat == 0).sum(2).double().numpy()}
        return {f"column {j}": flat[..., j].numpy() for j in self.columns[:4]}


_IMAGE_STATISTICS = (
    Statistic("ink_mean", "mean over images of the ink per image (sum of grey levels, 0 = blank)"),
    Statistic("ink_sd", "sd over images of the ink per image (sum of grey levels)"),
    Statistic("strokes_mean", f"mean over images of the number of strokes (8-connected pixels > {STROKE_THRESHOLD})"),
)
_TABLE_STATISTICS = {
    "mean": "column mean (data units)",
    "sd": "column sd (data units)",
    "q05": "column 5% quantile (data units)",
    "median": "column median (data units)",
    "q95": "column 95% quantile (data units)",
    "skewness": "column skewness (third standardized moment, unitless)",
    "kurtosis": "column excess kurtosis (fourth standardized moment - 3, unitless; 0 for a Gaussian)",
}
_COUNT_STATISTICS = (
    Statistic("zero_fraction", "share of all counts that are 0"),
    Statistic("mean", "mean count per feature and example"),
    Statistic("dispersion", "mean over features (with a positive mean) of variance / mean (1 for Poisson counts)"),
    Statistic("max", "largest count in the data set"),
)


def statistics_for(kind: str, data: torch.Tensor) -> StatisticSet:
    """The test statistics of data kind ``kind`` (:func:`data_kind`) for data sets shaped like ``data``.

    * image: ``ink_mean``, ``ink_sd``, ``strokes_mean`` (scalars) and ``pixel_mean`` (a profile over
      pixels: each pixel's mean grey level over the images; for binary images the share in which it is
      inked);
    * table: per-column ``mean``, ``sd``, ``q05``, ``median``, ``q95``, ``skewness``, ``kurtosis`` (profiles
      over the :data:`MAX_TABLE_COLUMNS` columns of largest variance in ``data``) and ``correlation``
      (a profile over all pairs among the first :data:`MAX_CORRELATION_COLUMNS` of those);
    * counts: ``zero_fraction``, ``mean``, ``dispersion``, ``max`` (scalars)."""
    if kind not in DATA_KINDS:
        raise ConfigError(f"unknown data kind {kind!r}; one of {', '.join(DATA_KINDS)}")
    shape = tuple(data.shape[1:])
    if kind == "image" and not _image_side(shape, allow_square=True):
        raise ConfigError(f"image statistics need image-shaped examples ((H, W), (C, H, W) or H*W), got {shape}")
    if kind == "image":
        h, w = _images(_as_batch(data[:1])[None], shape).shape[-2:]
        pixels = tuple(f"pixel ({r}, {c})" for r in range(h) for c in range(w))
        pixel = Statistic("pixel_mean", "mean over images of each pixel's grey level", pixels)
        return StatisticSet("image", shape, (*_IMAGE_STATISTICS[:2], pixel, _IMAGE_STATISTICS[2]))
    if kind == "counts":
        return StatisticSet("counts", shape, _COUNT_STATISTICS)
    flat = _as_batch(data).flatten(1)
    variance = flat.var(0, correction=0).numpy() if flat.shape[0] > 1 else np.zeros(flat.shape[1])
    columns = tuple(int(j) for j in np.argsort(-variance, kind="stable")[:MAX_TABLE_COLUMNS])
    pairs = tuple(combinations(range(min(len(columns), MAX_CORRELATION_COLUMNS)), 2))
    labels = tuple(f"column {j}" for j in columns)
    stats = [Statistic(name, text, labels) for name, text in _TABLE_STATISTICS.items()]
    if pairs:
        pair_labels = tuple(f"columns {columns[i]}, {columns[j]}" for i, j in pairs)
        stats.append(Statistic("correlation", "correlation of a pair of columns", pair_labels))
    return StatisticSet("table", shape, tuple(stats), columns, pairs)


# ---------------------------------------------------------------------------------------------------
# Predictive p-values


def predictive_pvalue(observed: float, replicated, *, two_sided: bool = True) -> tuple[float, float, float]:
    """``(ppp, ppp_se, p_value)`` of an observed statistic against ``(S,)`` replicated values.

    * ``ppp`` = P(T(x_rep) >= T(x_obs)) estimated by the share of replicates above the observed value,
      ties counted half: near 0 the data lie above what the model produces, near 1 below;
    * ``ppp_se`` = sqrt(ppp (1 - ppp) / S), its binomial Monte Carlo standard error;
    * ``p_value``: the Monte Carlo p-value of the test, ``(1 + #above + #ties / 2) / (S + 1)`` for the
      upper tail (and the same for the lower), doubled and capped at 1 when ``two_sided``. The +1 makes
      it valid at every S: when the observed data set is exchangeable with the replicates (a prior
      predictive check of a well-specified model), P(p_value <= t) <= t. Its smallest value is
      ``2 / (S + 1)`` (``1 / (S + 1)`` one-sided)."""
    replicated = np.asarray(replicated, dtype=float)
    s = replicated.size
    above = float(np.sum(replicated > observed))
    below = float(np.sum(replicated < observed))
    ties = s - above - below
    ppp = (above + 0.5 * ties) / s
    upper = (1 + above + 0.5 * ties) / (s + 1)
    if not two_sided:
        return ppp, math.sqrt(ppp * (1 - ppp) / s), min(1.0, upper)
    lower = (1 + below + 0.5 * ties) / (s + 1)
    return ppp, math.sqrt(ppp * (1 - ppp) / s), min(1.0, 2 * min(upper, lower))


def extreme_threshold(num_statistics: int, alpha: float = DEFAULT_ALPHA) -> float:
    """The p-value at or below which a statistic is flagged extreme: ``alpha / num_statistics``
    (Bonferroni), so that a well-specified model has any flag with probability at most ``alpha``."""
    return alpha / num_statistics


def min_num_samples(statistics: StatisticSet, alpha: float = DEFAULT_ALPHA) -> int:
    """The fewest replicates whose smallest p-value reaches the threshold: ``2 / (S + 1) <= alpha / m``
    for two-sided scalars (``1 / (S + 1)`` for profiles), m the number of statistics."""
    m = len(statistics.statistics)
    sides = 1 if all(s.profile for s in statistics.statistics) else 2
    return math.ceil(sides * m / alpha - 1 - 1e-9)


def profile_discrepancy(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One number per data set for a profile statistic: ``values (1 + S, K)`` are the profile of the
    observed data set (row 0) and of S replicates. For each data set i, every component k is standardized
    by the mean and sd of the *other* S data sets, and the discrepancy is the largest ``|z|`` over k:
    ``T_i = max_k |v_ik - mean_{-i}(v_k)| / sd_{-i}(v_k)``. Treating every data set alike keeps the S + 1
    values exchangeable when the model is right. Returns ``(T (1 + S,), z (1 + S, K))``; a component
    that is constant in the others has z = 0 where the value agrees and inf where it does not."""
    v = np.asarray(values, dtype=float)
    v = v - v.mean(0)  # centring first keeps the sums below free of cancellation
    count = v.shape[0] - 1
    total, squares = v.sum(0), (v**2).sum(0)
    mean = (total - v) / count
    var = np.maximum((squares - v**2) / count - mean**2, 0.0) * count / max(count - 1, 1)
    sd = np.sqrt(var)
    gap = np.abs(v - mean)
    tiny = 1e-12 * np.maximum(1.0, np.abs(v).max(0))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(sd > tiny, gap / np.where(sd > tiny, sd, 1.0), np.where(gap > tiny, np.inf, 0.0))
    return z.max(1), z


# ---------------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class StatisticCheck(Result):
    """One test statistic against its replicates.

    Attributes:
        name, description: the statistic and what it measures, with its unit.
        observed: T(x_obs), in the statistic's unit; for a profile, the observed data set's largest
            standardized discrepancy (in sds of the replicates; see :func:`profile_discrepancy`).
        replicated_mean, replicated_sd: mean and sd of T over the S replicated data sets.
        ppp: P(T(x_rep) >= T(x_obs)), ties counted half; ``ppp_se`` its binomial Monte Carlo s.e.
        p_value: the test's Monte Carlo p-value (two-sided for scalars, upper tail for profiles; see
            :func:`predictive_pvalue`); ``extreme`` when it is at or below the check's threshold.
        sided: ``"two-sided"`` or ``"upper"``.
        direction: ``"higher"`` when the data's value lies above most replicates (ppp < 1/2), ``"lower"``
            below, ``"equal"`` at ppp = 1/2; for a profile, that of its worst component.
        worst: profiles only: the component whose observed discrepancy is largest, ``{"label",
            "observed", "replicated_mean", "replicated_sd", "ppp", "z"}`` in the statistic's unit.
        replicated: ``(S,)`` T of every replicate (for figures; not in :meth:`to_dict`).
    """

    name: str
    description: str
    observed: float
    replicated_mean: float
    replicated_sd: float
    ppp: float
    ppp_se: float
    p_value: float
    extreme: bool
    sided: str
    direction: str
    worst: dict | None = field(default=None, metadata=OMIT_NONE)
    replicated: np.ndarray = field(default=None, repr=False, metadata=NOT_IN_DICT)


@dataclass(frozen=True)
class LooPit(Result):
    """Leave-one-feature-out probability integral transform (PIT) of table-like data.

    PIT_nj = P(x'_j <= x_nj | x_n,-j): where x_nj falls in its predictive distribution given the example's
    other features, ∫ F(x_nj | z) p(z | x_n,-j) dz. Uniform on [0, 1] for every column when the model is
    right. Values pile up near 0 and 1 when the predictive distributions are too narrow, in the middle
    when they are too wide, and on one side when they are biased.

    Attributes:
        values: ``(N, D)`` PIT values (NaN where left out), or None when not computed (``reason``).
        standard_error: ``(N, D)`` Monte Carlo s.e. of each value (self-normalized importance sampling).
        khat: ``(N, D)`` Pareto k-hat of each leave-feature-out importance estimate.
        num_samples: draws from the guide per example.
        num_values: values kept; ``share_khat_over_0_7``: share of (n, j) left out because k-hat > 0.7;
            ``share_left_out``: share left out for any reason (also an example's own PSIS k-hat > 0.7 when
            the PSIS log ratios were given).
        mean, sd: of the kept values (uniform: 0.5 and 0.289).
        ks_distance: the largest Kolmogorov-Smirnov distance to U(0, 1) over columns (``ks_column``);
            ``ks_threshold``: that column's critical distance at the family level ``alpha``, Bonferroni over
            columns (exact finite-sample KS distribution, independent examples); ``uniform``: no column
            above its critical distance.
        verdict: one sentence; ``reason``: why LOO-PIT was not computed (None when it was).
    """

    num_samples: int
    verdict: str
    reason: str | None = field(default=None, metadata=OMIT_NONE)
    num_values: int | None = field(default=None, metadata=OMIT_NONE)
    share_khat_over_0_7: float | None = field(default=None, metadata=OMIT_NONE)
    share_left_out: float | None = field(default=None, metadata=OMIT_NONE)
    mean: float | None = field(default=None, metadata=OMIT_NONE)
    sd: float | None = field(default=None, metadata=OMIT_NONE)
    ks_distance: float | None = field(default=None, metadata=OMIT_NONE)
    ks_column: int | None = field(default=None, metadata=OMIT_NONE)
    ks_threshold: float | None = field(default=None, metadata=OMIT_NONE)
    uniform: bool | None = field(default=None, metadata=OMIT_NONE)
    values: np.ndarray | None = field(default=None, repr=False, metadata=NOT_IN_DICT)
    standard_error: np.ndarray | None = field(default=None, repr=False, metadata=NOT_IN_DICT)
    khat: np.ndarray | None = field(default=None, repr=False, metadata=NOT_IN_DICT)


@dataclass(frozen=True)
class PredictiveCheck(Result):
    """A posterior or prior predictive check of held-out data.

    Attributes:
        kind: ``"posterior"`` (replicates given each example's guide draws) or ``"prior"``.
        data_kind: ``"image"``, ``"table"`` or ``"counts"``: which statistics were used.
        num_samples: S, replicated data sets; ``num_examples``: N, examples per data set.
        alpha: the family level; ``threshold``: ``alpha / m`` for m statistics, the p-value at or below
            which a statistic is extreme; ``min_num_samples``: the fewest S that can reach it.
        statistics: ``{name: StatisticCheck}``.
        extreme: names of the extreme statistics.
        verdict: one sentence; ``note``: how to read the p-values of this kind of check.
        columns: tables: the column indices the per-column statistics use (at most
            :data:`MAX_TABLE_COLUMNS`, largest observed variance first; correlations among the first
            :data:`MAX_CORRELATION_COLUMNS`).
        loo_pit: :class:`LooPit` (posterior checks).
        per_example: ``{name: {"observed": (N,), "replicated": (S', N)}}`` per-example values (ink per
            image, columns, totals) of the data and of the first S' <= 100 replicates, for figures
            (not in :meth:`to_dict`).
    """

    kind: str
    data_kind: str
    num_samples: int
    num_examples: int
    alpha: float
    threshold: float
    min_num_samples: int
    statistics: dict
    extreme: list
    verdict: str
    note: str
    columns: list | None = field(default=None, metadata=OMIT_NONE)
    loo_pit: LooPit | None = field(default=None, metadata=OMIT_NONE)
    per_example: dict = field(default_factory=dict, repr=False, metadata=NOT_IN_DICT)


# ---------------------------------------------------------------------------------------------------
# The check

_NOTES = {
    "posterior": (
        "Posterior predictive p-values are conservative: the data were used to draw each example's z, so "
        "under a well-specified model they gather near 0.5 instead of being uniform, and the flags have "
        "level at most alpha (a flag is strong evidence; no flag is weak evidence of fit)."
    ),
    "prior": (
        "Prior predictive p-values compare the data with fresh data sets from p(z) p(x | z): when the model "
        "is right the observed data set is exchangeable with the replicates, the p-values are uniform and "
        "the flags have level alpha."
    ),
}


def _replicate_statistics(model, guide, data, num: int, seed, side: dict, stats: StatisticSet, site: str):
    """The statistics of ``num`` replicated data sets, ``{name: (S,) or (S, K)}``, and the per-example
    values of the first :data:`KEPT_REPLICATES`, drawn a chunk of at most :data:`MAX_CHUNK_ELEMENTS` values
    at a time (one seeded stream: the numbers depend on ``seed`` and the chunk size only)."""
    n = data.shape[0]
    per_set = n * math.prod(data.shape[1:])
    if per_set * 8 * 4 > memory_limit():  # float64 copies of one replicate while it is summarized
        raise ConfigError(
            f"one replicated data set of {n} examples of shape {tuple(data.shape[1:])} would need "
            f"{format_bytes(per_set * 32)}, more than the memory limit of {format_bytes(memory_limit())}; "
            f"check fewer examples or raise {ENV_VAR}"
        )
    chunk = max(1, min(num, MAX_CHUNK_ELEMENTS // per_set))
    parts: dict = {name: [] for name in stats.names}
    kept: dict = {}
    with seeded(seed, data.device):
        sites = _guide_sites(guide, data, side) if guide is not None else None
        for start in range(0, num, chunk):
            x_rep = _draw(model, guide, data, min(chunk, num - start), n, side, sites, site)
            for name, value in stats(x_rep).items():
                parts[name].append(value)
            if start < KEPT_REPLICATES:
                for name, value in stats.per_example(x_rep[: KEPT_REPLICATES - start]).items():
                    kept.setdefault(name, []).append(value)
    return {k: np.concatenate(v) for k, v in parts.items()}, {k: np.concatenate(v) for k, v in kept.items()}


def _direction(ppp: float) -> str:
    return "higher" if ppp < 0.5 else "lower" if ppp > 0.5 else "equal"


def _judge(statistic: Statistic, observed: np.ndarray, replicated: np.ndarray, threshold: float) -> StatisticCheck:
    """One :class:`StatisticCheck` from the observed value (``()`` or ``(K,)``) and ``(S,)`` or ``(S, K)``."""
    worst = None
    if statistic.profile:
        t, z = profile_discrepancy(np.concatenate([observed[None], replicated]))
        t_obs, t_rep = float(t[0]), t[1:]
        ppp, se, p = predictive_pvalue(t_obs, t_rep, two_sided=False)
        k = int(np.argmax(np.nan_to_num(z[0], nan=-1.0)))
        component_ppp = predictive_pvalue(observed[k], replicated[:, k])[0]
        worst = {
            "label": statistic.labels[k],
            "observed": float(observed[k]),
            "replicated_mean": float(replicated[:, k].mean()),
            "replicated_sd": float(replicated[:, k].std(ddof=1)),
            "ppp": component_ppp,
            "z": float(z[0, k]),
        }
        direction = _direction(component_ppp)
    else:
        t_obs, t_rep = float(observed), replicated
        ppp, se, p = predictive_pvalue(t_obs, t_rep, two_sided=True)
        direction = _direction(ppp)
    finite = t_rep[np.isfinite(t_rep)]
    return StatisticCheck(
        name=statistic.name,
        description=statistic.description
        + (" — judged by the largest standardized discrepancy over them (replicate sds)" if statistic.profile else ""),
        observed=t_obs,
        replicated_mean=float(finite.mean()) if finite.size else float("nan"),
        replicated_sd=float(finite.std(ddof=1)) if finite.size > 1 else float("nan"),
        ppp=ppp,
        ppp_se=se,
        p_value=p,
        extreme=bool(p <= threshold),
        sided="upper" if statistic.profile else "two-sided",
        direction=direction,
        worst=worst,
        replicated=np.asarray(t_rep, dtype=float),
    )


def _verdict(kind: str, checks: dict, threshold: float, alpha: float) -> str:
    extreme = [c for c in checks.values() if c.extreme]
    m = len(checks)
    if not extreme:
        return (
            f"no statistic is extreme (every p-value above {threshold:.2g}, family level {alpha:g} over {m} "
            f"statistics): the {kind} predictive replicates reproduce these features of the data"
        )
    parts = []
    for c in extreme:
        where = f" at {c.worst['label']}" if c.worst else ""
        parts.append(f"{c.name} (data {c.direction} than the replicates{where}, p = {c.p_value:.2g})")
    return (
        f"{len(extreme)} of {m} statistics extreme at family level {alpha:g}: {'; '.join(parts)}: the model does "
        "not reproduce these features of the data"
    )


def _resolve_samples(num_samples, stats: StatisticSet, alpha: float, name: str = "num_samples") -> int:
    """S: ``num_samples``, refused below :func:`min_num_samples`; None: that minimum rounded up to 100."""
    needed = min_num_samples(stats, alpha)
    if num_samples is None:
        return int(math.ceil((needed + 1) / 100) * 100)
    check_number(num_samples, name, BOUNDS["num_samples"])
    if num_samples < needed:
        m = len(stats.statistics)
        raise ConfigError(
            f"{name} {num_samples} is too few for {m} test statistics at family level alpha={alpha:g}: the "
            f"smallest p-value of S replicates is 2/(S+1), above the threshold alpha/{m} = {alpha / m:.3g}; use "
            f"{name} {needed} or more (or a larger alpha)"
        )
    return num_samples


def replicates_for(
    likelihood_or_vae,
    data: torch.Tensor,
    num_samples: int | None = None,
    *,
    alpha: float = DEFAULT_ALPHA,
    name: str = "num_samples",
) -> int:
    """How many replicated data sets a check of ``data`` uses: ``num_samples``, refused with a one-line
    :class:`ConfigError` (naming ``name``) when too few to flag any statistic, or, when None, the fewest
    that can, rounded up to 100. Call it to validate a setting before any work."""
    return _resolve_samples(num_samples, statistics_for(data_kind(likelihood_or_vae, data), data), alpha, name)


@torch.no_grad()
def predictive_check(
    model,
    guide,
    data: torch.Tensor,
    *,
    kind: str = "posterior",
    num_samples: int | None = None,
    seed: int | None = 0,
    c: torch.Tensor | None = None,
    likelihood=None,
    statistics: str | None = None,
    alpha: float = DEFAULT_ALPHA,
    loo_pit_samples: int | None = 1000,
    log_ratios: torch.Tensor | None = None,
    observed_site: str = "x",
) -> PredictiveCheck:
    """A posterior (``kind="posterior"``) or prior (``kind="prior"``) predictive check of ``data``.

    Args:
        model, guide: Pyro programs following the site/plate contract (the guide is not used for
            ``kind="prior"``).
        data: ``(N, ...)`` held-out examples in the form the likelihood scores them.
        num_samples: S, replicated data sets of N examples each; None: the fewest that can reach the
            threshold (:func:`min_num_samples`), rounded up to a multiple of 100. Fewer are refused.
        c: ``(N,)`` per-example labels (or covariates) for programs that take them.
        likelihood: what :func:`data_kind` reads (a VAE, a likelihood or its name); by default the VAE
            ``model`` is bound to, if any, else the values of ``data``.
        statistics: ``"image"``, ``"table"`` or ``"counts"`` to override :func:`data_kind`.
        alpha: family level of the extreme flags.
        loo_pit_samples: guide draws per example for :func:`loo_pit` (posterior checks; None: skip).
        log_ratios: optional ``(S', N)`` PSIS log ratios of the same examples, passed to :func:`loo_pit`.

    The threshold is derived, not tuned: a statistic is *extreme* when its Monte Carlo p-value
    (:func:`predictive_pvalue`; two-sided for scalars, upper tail for profiles) is at most ``alpha / m``
    for m statistics (Bonferroni), so a model whose data set is exchangeable with its replicates has any
    flag with probability at most ``alpha``. Posterior predictive p-values are conservative (not uniform
    under a well-specified model: they gather near 1/2), so that check has level *at most* alpha; the prior
    predictive check has level alpha. S must make the threshold reachable: ``2 / (S + 1) <= alpha / m``.

    Replicates are drawn and summarized in chunks (:data:`MAX_CHUNK_ELEMENTS`), so memory does not grow
    with S. Returns a :class:`PredictiveCheck`."""
    if kind not in ("posterior", "prior"):
        raise ConfigError(f"kind must be 'posterior' or 'prior', got {kind!r}")
    check_number(alpha, "alpha", Bound(float, 0, 0.5, open_low=True))
    owner = likelihood if likelihood is not None else getattr(model, "__self__", None)
    which = statistics or data_kind(owner, data)
    stats = statistics_for(which, data)
    num = _resolve_samples(num_samples, stats, alpha)
    threshold = extreme_threshold(len(stats.statistics), alpha)
    program_guide = guide if kind == "posterior" else None
    side = label_kwargs(model, program_guide, c, data.shape[0], f"the {kind} predictive check")
    replicated, per_example = _replicate_statistics(model, program_guide, data, num, seed, side, stats, observed_site)
    observed = {k: v[0] for k, v in stats(data).items()}
    checks = {s.name: _judge(s, observed[s.name], replicated[s.name], threshold) for s in stats.statistics}
    pit = None
    if kind == "posterior" and loo_pit_samples:
        pit = loo_pit(
            model, guide, data, num_samples=loo_pit_samples, seed=seed, c=c, likelihood=owner, log_ratios=log_ratios
        )
    observed_pe = {k: v[0] for k, v in stats.per_example(data).items()}
    return PredictiveCheck(
        kind=kind,
        data_kind=which,
        num_samples=num,
        num_examples=int(data.shape[0]),
        alpha=alpha,
        threshold=threshold,
        min_num_samples=min_num_samples(stats, alpha),
        statistics=checks,
        extreme=[name for name, check in checks.items() if check.extreme],
        verdict=_verdict(kind, checks, threshold, alpha),
        note=_NOTES[kind],
        columns=list(stats.columns) if stats.columns else None,
        loo_pit=pit,
        per_example={k: {"observed": observed_pe[k], "replicated": per_example[k]} for k in observed_pe},
    )


# ---------------------------------------------------------------------------------------------------
# LOO-PIT


def _loo_pit_refusal(owner, data: torch.Tensor, model, guide, side: dict) -> str | None:
    """Why LOO-PIT does not apply to this model and data (one line), or None when it does."""
    kind = _likelihood_kind(owner) or _kind_from_values(data)
    if kind in _DISCRETE_KINDS:
        return (
            f"LOO-PIT needs a continuous likelihood: the PIT of discrete data ({kind}) is not uniform even under "
            "the right model without randomization, which is not implemented"
        )
    if data_kind(owner, data) != "table":
        return "LOO-PIT is computed for tables only (one value per example and column), not for images"
    if enumerated_sites(model, guide, data[:1], **rows(side, 0, 1)):
        return "LOO-PIT is not implemented for models with enumerated discrete sites (mixture, semi-supervised)"
    return None


def _per_example(log_prob: torch.Tensor, site, num: int, n: int, particle_dim: int) -> torch.Tensor:
    """A site's log-density reduced to ``(num, n)``: summed over every batch dim but particles and data."""
    frames = {f.name: f.dim for f in site["cond_indep_stack"]}
    ndim = -particle_dim
    while log_prob.dim() < ndim:
        log_prob = log_prob.unsqueeze(0)
    data_axis = ndim + frames["data"]
    other = [a for a in range(1, ndim) if a != data_axis]
    if other:
        log_prob = log_prob.sum(other, keepdim=True)
    return log_prob.reshape(log_prob.shape[0], log_prob.shape[data_axis]).expand(num, n)


def _feature_terms(model, guide, x: torch.Tensor, num: int, nesting: int, side: dict, site: str):
    """For ``num`` guide draws per example of ``x (n, ...)``, vectorized over draws: the log ratios
    ``(num, n)`` log p(x_n, z_s) - log q(z_s | x_n) (global sites left out, as they are shared), and the
    per-feature ``(num, n, D)`` log p(x_nj | z_s) and CDF F(x_nj | z_s); or a reason string when the
    observed site's distribution is not factorized over features with a CDF."""
    dim = -(nesting + 1)

    def particles(fn):
        def wrapped(*args, **kwargs):
            with pyro.plate("_loo_pit_particles", num, dim=dim):
                return fn(*args, **kwargs)

        return wrapped

    with poutine.block():
        guide_trace = poutine.trace(particles(guide)).get_trace(x, **side)
        model_trace = poutine.trace(poutine.replay(particles(model), trace=guide_trace)).get_trace(x, **side)
    guide_trace.compute_log_prob()
    model_trace.compute_log_prob()
    n = x.shape[0]
    ratio = torch.zeros(num, n, dtype=torch.float64, device=x.device)
    for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
        for node in trace.nodes.values():
            if node["type"] != "sample" or site_is_subsample(node):
                continue
            if "data" in {f.name for f in node["cond_indep_stack"]}:  # global sites: shared, left out
                ratio = ratio + sign * _per_example(node["log_prob"], node, num, n, dim).double()
    fn, value = model_trace.nodes[site]["fn"], model_trace.nodes[site]["value"]
    while isinstance(fn, torch.distributions.Independent):
        fn = fn.base_dist
    try:
        log_p = fn.log_prob(value).double().reshape(num, n, -1)
        cdf = fn.cdf(value).double().reshape(num, n, -1)
    except (NotImplementedError, RuntimeError):
        return f"LOO-PIT needs the CDF of every feature of p(x | z); {type(fn).__name__} has none"
    return ratio, log_p, cdf


def _smoothed_pit(ratio: torch.Tensor, log_p: torch.Tensor, cdf: torch.Tensor):
    """PSIS of the leave-feature-out weights ``ratio - log p(x_nj | z_s)`` per (n, j): ``(n, D)`` PIT
    values, their Monte Carlo s.e. and k-hat (-inf where every weight is equal: nothing to smooth)."""
    num, n, d = log_p.shape
    log_w = (ratio[:, :, None] - log_p).permute(1, 2, 0).reshape(n * d, num).numpy()
    spread = log_w.max(1) - log_w.min(1)
    smoothed, khat = psis_bridge.smoothed_log_weights(log_w)
    flat = spread < 1e-9
    smoothed[flat] = -math.log(num)
    khat = np.where(flat, -np.inf, khat)
    w = np.exp(smoothed)
    w /= w.sum(1, keepdims=True)
    f = cdf.permute(1, 2, 0).reshape(n * d, num).numpy()
    pit = (w * f).sum(1)
    se = np.sqrt((w**2 * (f - pit[:, None]) ** 2).sum(1))
    return pit.reshape(n, d), se.reshape(n, d), khat.reshape(n, d)


def _uniformity(values: np.ndarray, alpha: float) -> dict:
    """Per-column Kolmogorov-Smirnov distance of PIT values ``(N, D)`` (NaN ignored) to U(0, 1): the largest,
    its column, and that column's critical distance at level ``alpha`` Bonferroni-corrected over columns."""
    from scipy import stats

    kept = [(j, col[np.isfinite(col)]) for j, col in enumerate(values.T)]
    kept = [(j, col) for j, col in kept if col.size]
    if not kept:
        return {}
    level = alpha / len(kept)
    scores = [(stats.kstest(col, "uniform").statistic / stats.kstwo.isf(level, col.size), j, col) for j, col in kept]
    ratio, j, col = max(scores, key=lambda item: item[0])
    return {
        "ks_distance": float(stats.kstest(col, "uniform").statistic),
        "ks_column": int(j),
        "ks_threshold": float(stats.kstwo.isf(level, col.size)),
        "uniform": bool(ratio <= 1),
        "column": col,
    }


def _pit_verdict(u: dict) -> str:
    if u["uniform"]:
        return (
            f"LOO-PIT values are close to uniform in every column (largest KS distance {u['ks_distance']:.3f} in "
            f"column {u['ks_column']}, below its critical {u['ks_threshold']:.3f}): each feature's predictive "
            "distribution given the others is calibrated"
        )
    col = u["column"]
    z_mean = (col.mean() - 0.5) / (_UNIFORM_SD / math.sqrt(col.size))
    z_sd = (col.std() - _UNIFORM_SD) / (0.129 / math.sqrt(col.size))  # sd of the sd of n uniforms: 0.129/sqrt(n)
    if abs(z_mean) >= abs(z_sd):
        shape = f"the data lie mostly {'above' if z_mean > 0 else 'below'} their predictive distributions (biased)"
    elif z_sd > 0:
        shape = "values pile up near 0 and 1: the predictive distributions are too narrow (the data vary more)"
    else:
        shape = "values bunch in the middle: the predictive distributions are too wide"
    return (
        f"LOO-PIT values are not uniform in column {u['ks_column']} (KS distance {u['ks_distance']:.3f} above "
        f"its critical {u['ks_threshold']:.3f}): {shape}"
    )


@torch.no_grad()
def loo_pit(
    model,
    guide,
    data: torch.Tensor,
    *,
    num_samples: int = 1000,
    seed: int | None = 0,
    c: torch.Tensor | None = None,
    likelihood=None,
    log_ratios: torch.Tensor | None = None,
    alpha: float = DEFAULT_ALPHA,
    observed_site: str = "x",
) -> LooPit:
    """Leave-one-feature-out PIT of table-like data with a continuous likelihood, by Pareto-smoothed
    importance sampling from the guide.

    For example n and feature j, the predictive of x_nj given the example's other features is
    ∫ p(x_nj | z) p(z | x_n,-j) dz (features are independent given z). With draws z_s ~ q(z | x_n) and
    r_s = log p(x_n, z_s) - log q(z_s | x_n), the weights ``r_s - log p(x_nj | z_s)`` target p(z | x_n,-j);
    they are Pareto-smoothed per (n, j) (k-hat), and PIT_nj = sum_s w_s F(x_nj | z_s) with the CDF of the
    likelihood. Values whose k-hat exceeds :data:`LOO_PIT_KHAT` are left out (NaN), as are all values of an
    example whose own PSIS k-hat from ``log_ratios`` (``(S', N)``, optional) exceeds it. Leaving values out
    is a selection: high k-hat goes with x_nj far from what the rest of the example predicts, so the kept
    values look more central than all would (the verdict says so when any were left out).

    Not computed (``values`` None, ``reason`` says why) for discrete data (binary, 8-bit, counts: their
    PIT needs randomization), images, models with enumerated discrete sites, and likelihoods without a
    per-feature CDF. ``c``: per-example labels for programs that take them. Returns a :class:`LooPit`."""
    check_number(num_samples, "num_samples", Bound(int, 10, BOUNDS["num_samples"].high))
    owner = likelihood if likelihood is not None else getattr(model, "__self__", None)
    side = label_kwargs(model, guide, c, data.shape[0], "LOO-PIT")
    reason, parts = _pit_parts(owner, model, guide, data, num_samples, seed, side, observed_site)
    if reason is not None:
        return LooPit(num_samples=num_samples, verdict=f"not computed: {reason}", reason=reason)
    values, se, khat = (np.concatenate(p) for p in zip(*parts))
    high = ~(khat <= LOO_PIT_KHAT)  # NaN k-hat counts as high
    left_out = high.copy()
    if log_ratios is not None:
        left_out |= ~(_example_khat(log_ratios) <= LOO_PIT_KHAT)[:, None]
    values = np.where(left_out, np.nan, values)
    kept = values[np.isfinite(values)]
    u = _uniformity(values, alpha)
    verdict = _pit_verdict(u) if u else "every value was left out (k-hat above 0.7): no LOO-PIT to judge"
    if u and left_out.any():
        verdict += (
            f"; {left_out.mean():.1%} of the values were left out (k-hat above {LOO_PIT_KHAT}): they are the ones "
            "the importance weights find hardest, often the most surprising, so the kept values may look more "
            "central than all would"
        )
    return LooPit(
        num_samples=num_samples,
        verdict=verdict,
        num_values=int(kept.size),
        share_khat_over_0_7=float(high.mean()),
        share_left_out=float(left_out.mean()),
        mean=float(kept.mean()) if kept.size else None,
        sd=float(kept.std()) if kept.size else None,
        ks_distance=u.get("ks_distance"),
        ks_column=u.get("ks_column"),
        ks_threshold=u.get("ks_threshold"),
        uniform=u.get("uniform"),
        values=values,
        standard_error=se,
        khat=khat,
    )


def _example_khat(log_ratios) -> np.ndarray:
    """``(N,)`` PSIS k-hat of ``(S', N)`` log ratios; -inf where every ratio of an example is equal (the
    guide is that posterior: nothing to smooth, ArviZ's fit is undefined there), inf where undefined."""
    r = np.asarray(log_ratios, dtype=float)
    khat = np.nan_to_num(psis_bridge.pareto_khat(r.T), nan=np.inf)
    spread = r.max(0) - r.min(0)
    return np.where(spread < 1e-6 * np.maximum(1.0, np.abs(r.mean(0))), -np.inf, khat)


def _pit_parts(owner, model, guide, data, num: int, seed, side: dict, site: str):
    """``(reason, parts)``: the ``(values, se, khat)`` of chunks of examples (bounded memory), or a reason
    why LOO-PIT does not apply (every trace, the refusal's too, runs inside the seeded stream)."""
    features = math.prod(data.shape[1:])
    step = max(1, MAX_CHUNK_ELEMENTS // (num * features))
    parts = []
    with seeded(seed, data.device):
        reason = _loo_pit_refusal(owner, data, model, guide, side)
        if reason is not None:
            return reason, None
        nesting = max_plate_nesting(model, guide, data[:1], **rows(side, 0, 1))
        for start in range(0, data.shape[0], step):
            terms = _feature_terms(
                model, guide, data[start : start + step], num, nesting, rows(side, start, start + step), site
            )
            if isinstance(terms, str):
                return terms, None
            parts.append(_smoothed_pit(*(t.cpu() for t in terms)))
    return None, parts
