"""Calibration of the amortized posterior q(z | x) beyond the SBC rank test: central-interval coverage
against simulations and against a reference posterior (NUTS), a classifier two-sample test of guide
draws against reference draws, and the simultaneous band of the SBC ranks' ECDF.

Coverage asks the question a user of q(z | x) cares about: "when the encoder says z_j lies in this
90% interval, how often is that true?". Under-coverage (72% at 90%) means the guide's intervals are too
narrow or off-centre, so uncertainty read from q(z | x) is understated; over-coverage means they are
too wide. Coverage looks at one latent dimension at a time; the two-sample test looks at the joint
distribution (shape, correlations) as well.

Pure functions: no files, no printing. Its ArviZ calls are in
:mod:`ppl_vae.diagnostics.arviz_bridge.calibration`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from ppl_vae.diagnostics.arviz_bridge import calibration as bridge
from ppl_vae.diagnostics.calibration import sbc_ranks
from ppl_vae.errors import ConfigError
from ppl_vae.results import Result
from ppl_vae.validation import Bound, check_number

#: Nominal levels of the coverage curves: 5%, 10%, ..., 95% and 99%.
DEFAULT_LEVELS = (*(round(0.05 * i, 2) for i in range(1, 20)), 0.99)

#: The nominal level whose coverage verdicts and reports quote (the computed level nearest to it).
QUOTED_LEVEL = 0.9


# ---------------------------------------------------------------------------------------------------
# The central interval of L draws, as a range of ranks


def central_interval_ranks(num_draws: int, levels=DEFAULT_LEVELS) -> tuple[np.ndarray, np.ndarray]:
    """The order-statistic central intervals of ``num_draws`` = L draws: ``(lower_rank, expected)``,
    each ``(K,)`` for the K ``levels``.

    The central interval of nominal level a estimated from L sorted draws y_(1) < ... < y_(L) is taken to
    be [y_(k), y_(L+1-k)], where k is the integer nearest (L+1)(1-a)/2 (ties go to the wider interval),
    kept between 1 and L // 2 so that both ends are draws and the interval holds at least one rank.
    Written with the rank r = #{draws below z} of a value z, z lies inside that interval exactly when
    k <= r <= L - k: L + 1 - 2k of the L + 1 possible ranks.

    When z is exchangeable with the draws (z drawn from the same distribution as they are, as the true
    z* of a simulation is when q is the exact posterior), its rank is uniform on 0..L, so the interval
    holds z with probability exactly ``expected = (L + 1 - 2k) / (L + 1)``, for any continuous
    distribution and any L. This is the coverage to compare against, not a: the two agree when
    (L+1)(1-a)/2 is a whole number (L = 99: a = 0.1, 0.2, ..., 0.9), and otherwise differ by up to
    1 / (L + 1) (L = 99: 0.05 -> 0.06, 0.95 -> 0.96), and more for levels beyond what L draws can resolve
    (L = 99: 0.99 -> 0.98, the widest interval [y_(1), y_(99)])."""
    check_number(num_draws, "num_draws (draws per central interval)", Bound(int, 2, 10_000_000))
    levels = _check_levels(levels)
    half_tail = np.round((num_draws + 1) * (1 - levels) / 2, 9)  # rounded: 47.5 must not read 47.4999..
    lower = np.clip(np.ceil(half_tail - 0.5), 1, num_draws // 2).astype(int)
    expected = (num_draws + 1 - 2 * lower) / (num_draws + 1)
    return lower, expected


def _check_levels(levels) -> np.ndarray:
    values = np.asarray(levels, dtype=float).reshape(-1)
    if values.size == 0 or not np.all((values > 0) & (values < 1)):
        raise ConfigError(f"levels must be numbers strictly between 0 and 1, got {list(np.atleast_1d(levels))}")
    return values


def _bonferroni_critical(alpha: float, tests: int) -> float:
    """Two-sided normal critical value with Bonferroni over ``tests`` z-scores."""
    from scipy import stats

    check_number(alpha, "alpha", Bound(float, 0, 0.5, open_low=True))
    return float(stats.norm.isf(alpha / (2 * max(1, tests))))


def _quoted(levels: np.ndarray) -> int:
    """Index of the level closest to :data:`QUOTED_LEVEL`."""
    return int(np.argmin(np.abs(np.asarray(levels) - QUOTED_LEVEL)))


def _direction_verdict(z: np.ndarray, critical: float, unit: str, where: list[str], quote: str) -> str:
    """``z``: ``(K, units)`` z-scores (actual - expected). The verdict: nominal, under-covers, over-covers
    or mixed, naming the ``units`` (``where[i]``) flagged by their largest ``|z|``."""
    flagged = np.abs(z) > critical
    if not flagged.any():
        return f"nominal: coverage within its error at every level and {unit} ({quote})"
    worst = np.where(flagged, np.abs(z), -1).argmax(0)  # per unit, its most extreme flagged level
    sign = np.sign(z[worst, np.arange(z.shape[1])])
    under = [where[i] for i in range(z.shape[1]) if flagged[:, i].any() and sign[i] < 0]
    over = [where[i] for i in range(z.shape[1]) if flagged[:, i].any() and sign[i] > 0]
    count = f"{len(under) + len(over)} of {z.shape[1]} {unit}s flagged"
    if under and not over:
        return (
            f"under-covers: the guide's intervals are too narrow or off-centre, posterior uncertainty is "
            f"understated ({quote}; {count}: {', '.join(under)})"
        )
    if over and not under:
        return (
            f"over-covers: the guide's intervals are too wide, posterior uncertainty is overstated "
            f"({quote}; {count}: {', '.join(over)})"
        )
    return f"miscalibrated: under-covers in {', '.join(under)}, over-covers in {', '.join(over)} ({quote}; {count})"


# ---------------------------------------------------------------------------------------------------
# Coverage against simulations (from SBC ranks)


@dataclass(frozen=True)
class SimulationCoverage(Result):
    """Central-interval coverage of q(z | x) against simulations (z*, x) ~ p(z) p(x | z*).

    For each level, the share of simulations whose true z*_j lies in the central interval of the L guide
    draws (:func:`central_interval_ranks`), from the SBC ranks. Calibrated, it equals ``expected``.

    Attributes:
        levels: ``(K,)`` nominal levels.
        expected: ``(K,)`` coverage under calibration with L draws (the reference).
        lower_rank: ``(K,)`` k: the interval is [y_(k), y_(L+1-k)].
        actual: ``(K, latent_dim)`` share of simulations inside, per dimension.
        se: ``(K, latent_dim)`` binomial s.e. of ``actual``, sqrt(actual (1 - actual) / N).
        null_se: ``(K,)`` binomial s.e. under calibration, sqrt(expected (1 - expected) / N).
        z: ``(K, latent_dim)`` (actual - expected) / null_se.
        pooled: ``(K,)`` share over every simulation and dimension.
        pooled_se: ``(K,)`` its s.e. from the spread of the per-simulation shares (so dependence between
            dimensions of one simulation is accounted for).
        pooled_null_se: ``(K,)`` sqrt(expected (1 - expected) / (N latent_dim)): calibrated, dimensions
            independent.
        num_simulations, num_draws: N and L.
        alpha: family-wise level of the verdict; critical: its two-sided Bonferroni critical value over
            the K levels and the dimensions (the levels are nested intervals, so their coverages are
            positively dependent: Bonferroni is conservative, never anti-conservative).
        verdict: e.g. ``"under-covers: ... (68% actual at 90% nominal; 2 of 2 dimensions flagged: ...)"``.
    """

    levels: np.ndarray = field(repr=False)
    expected: np.ndarray = field(repr=False)
    lower_rank: np.ndarray = field(repr=False)
    actual: np.ndarray = field(repr=False)
    se: np.ndarray = field(repr=False)
    null_se: np.ndarray = field(repr=False)
    z: np.ndarray = field(repr=False)
    pooled: np.ndarray = field(repr=False)
    pooled_se: np.ndarray = field(repr=False)
    pooled_null_se: np.ndarray = field(repr=False)
    num_simulations: int
    num_draws: int
    alpha: float
    critical: float
    verdict: str

    def summary(self) -> dict:
        """JSON-ready numbers (lists; ``actual`` and ``z`` as ``[level][dimension]``)."""
        return {
            "num_simulations": self.num_simulations,
            "num_draws": self.num_draws,
            "levels": self.levels.tolist(),
            "expected": self.expected.tolist(),
            "pooled": self.pooled.tolist(),
            "pooled_se": self.pooled_se.tolist(),
            "pooled_null_se": self.pooled_null_se.tolist(),
            "actual": self.actual.tolist(),
            "z": self.z.tolist(),
            "max_abs_z": float(np.abs(self.z).max()),
            "critical": self.critical,
            "alpha": self.alpha,
            "verdict": self.verdict,
        }


def coverage_from_ranks(ranks, num_draws: int, *, levels=DEFAULT_LEVELS, alpha: float = 0.01) -> SimulationCoverage:
    """Coverage curves of the guide's central intervals from SBC ranks (:func:`sbc_ranks`).

    Args:
        ranks: ``(N, latent_dim)`` integer ranks in 0..L of each simulation's true z_j among L guide draws.
        num_draws: L.
        levels: nominal levels, each in (0, 1).
        alpha: family-wise level of the verdict (Bonferroni over levels and dimensions).

    z*_j lies in [y_(k), y_(L+1-k)] exactly when k <= rank <= L - k (see :func:`central_interval_ranks`),
    so no draws are needed beyond the ranks. Each simulation is independent, so the count inside is
    Binomial(N, expected) under calibration, whatever the model.
    """
    ranks = np.asarray(ranks)
    if ranks.ndim != 2 or ranks.shape[0] < 2 or not np.issubdtype(ranks.dtype, np.integer):
        raise ConfigError(f"ranks must be an (N >= 2, latent_dim) integer array, got shape {ranks.shape}")
    if ranks.min() < 0 or ranks.max() > num_draws:
        raise ConfigError(f"ranks must lie in 0..{num_draws} (num_draws), got {ranks.min()}..{ranks.max()}")
    lower, expected = central_interval_ranks(num_draws, levels)
    n, d = ranks.shape
    inside = (ranks[None] >= lower[:, None, None]) & (ranks[None] <= num_draws - lower[:, None, None])  # (K, N, d)
    actual = inside.mean(1)
    null_se = np.sqrt(expected * (1 - expected) / n)
    per_simulation = inside.mean(2)  # (K, N)
    critical = _bonferroni_critical(alpha, len(expected) * d)
    z = (actual - expected[:, None]) / null_se[:, None]
    pooled = actual.mean(1)
    q = _quoted(expected)
    quote = f"{pooled[q]:.0%} actual at {expected[q]:.0%} nominal, pooled over dimensions"
    return SimulationCoverage(
        levels=np.asarray(levels, dtype=float),
        expected=expected,
        lower_rank=lower,
        actual=actual,
        se=np.sqrt(actual * (1 - actual) / n),
        null_se=null_se,
        z=z,
        pooled=pooled,
        pooled_se=per_simulation.std(1, ddof=1) / math.sqrt(n),
        pooled_null_se=np.sqrt(expected * (1 - expected) / (n * d)),
        num_simulations=n,
        num_draws=num_draws,
        alpha=alpha,
        critical=critical,
        verdict=_direction_verdict(z, critical, "dimension", [f"dim {j}" for j in range(d)], quote),
    )


def simulation_coverage(
    model,
    guide,
    *,
    num_simulations: int = 1000,
    num_draws: int = 99,
    levels=DEFAULT_LEVELS,
    alpha: float = 0.01,
    latent_site: str = "z",
    observed_site: str = "x",
    seed: int = 0,
    c: torch.Tensor | None = None,
) -> SimulationCoverage:
    """Coverage curves of q(z | x) against ``num_simulations`` simulations from the model: runs
    :func:`ppl_vae.diagnostics.calibration.sbc_ranks` (same arguments, same seed: the same simulations as
    :func:`~ppl_vae.diagnostics.calibration.sbc`) and then :func:`coverage_from_ranks`."""
    ranks = sbc_ranks(
        model,
        guide,
        num_simulations=num_simulations,
        num_draws=num_draws,
        latent_site=latent_site,
        observed_site=observed_site,
        seed=seed,
        c=c,
    )
    return coverage_from_ranks(ranks, num_draws, levels=levels, alpha=alpha)


# ---------------------------------------------------------------------------------------------------
# Coverage against a reference posterior (NUTS)


@dataclass(frozen=True)
class ReferenceCoverage(Result):
    """Coverage of q(z | x)'s central intervals against draws of a reference posterior p(z | x), per
    observation: the share of reference draws of z_j inside the guide's interval [y_(k), y_(S+1-k)]
    from its S draws (:func:`central_interval_ranks`). When q(z_j | x) = p(z_j | x) a reference draw is
    exchangeable with the guide draws, so its expected share is ``expected``.

    Standard errors have two parts: the reference draws (autocorrelated for NUTS: the binomial variance
    divided by the effective sample size ``ess`` of the indicator "z_j inside", not by the number of draws)
    and the guide's own S draws, which place the interval ends (under q = p the interval's true mass is
    Beta(S + 1 - 2k, 2k), variance expected (1 - expected) / (S + 2)).

    Attributes:
        levels, expected, lower_rank: ``(K,)`` as in :class:`SimulationCoverage` (with L = S).
        actual: ``(K, obs, latent_dim)`` share of reference draws inside.
        ess: ``(K, obs, latent_dim)`` effective sample size of the indicator series used for the s.e.
        se: ``(K, obs, latent_dim)`` s.e. of ``actual``: sqrt(actual (1 - actual) (1 / ess + 1 / (S + 2))).
        null_se: ``(K, obs, latent_dim)`` the same with ``expected`` for ``actual`` (calibrated).
        z: ``(K, obs, latent_dim)`` (actual - expected) / null_se.
        pooled: ``(K,)`` mean over observations and dimensions; pooled_se and pooled_null_se: its s.e.
            with the reference part from the ESS of the per-draw share inside (so dependence between the
            dimensions of a draw and along the chains is accounted for) and the guide part for
            independent interval ends across observations and dimensions.
        num_reference: reference draws per observation (chains x draws); num_guide: S.
        ess_method: how ``ess`` was obtained.
        alpha, critical: as in :class:`SimulationCoverage`, Bonferroni over levels, observations and
            dimensions.
        flagged_observations: ``(obs,)`` indices with a ``|z|`` beyond ``critical``.
        verdict: as in :class:`SimulationCoverage`, naming observations.
    """

    levels: np.ndarray = field(repr=False)
    expected: np.ndarray = field(repr=False)
    lower_rank: np.ndarray = field(repr=False)
    actual: np.ndarray = field(repr=False)
    ess: np.ndarray = field(repr=False)
    se: np.ndarray = field(repr=False)
    null_se: np.ndarray = field(repr=False)
    z: np.ndarray = field(repr=False)
    pooled: np.ndarray = field(repr=False)
    pooled_se: np.ndarray = field(repr=False)
    pooled_null_se: np.ndarray = field(repr=False)
    num_reference: int
    num_guide: int
    ess_method: str
    alpha: float
    critical: float
    flagged_observations: list
    verdict: str

    def summary(self) -> dict:
        """JSON-ready numbers; per observation the coverage pooled over dimensions and its worst ``|z|``."""
        return {
            "num_reference": self.num_reference,
            "num_guide": self.num_guide,
            "ess_method": self.ess_method,
            "levels": self.levels.tolist(),
            "expected": self.expected.tolist(),
            "pooled": self.pooled.tolist(),
            "pooled_se": self.pooled_se.tolist(),
            "pooled_null_se": self.pooled_null_se.tolist(),
            "per_observation": self.actual.mean(2).T.tolist(),  # [obs][level]
            "max_abs_z_per_observation": np.abs(self.z).max((0, 2)).tolist(),
            "min_ess": float(self.ess.min()),
            "critical": self.critical,
            "alpha": self.alpha,
            "flagged_observations": self.flagged_observations,
            "verdict": self.verdict,
        }


def reference_coverage(
    guide_draws,
    reference_draws,
    *,
    levels=DEFAULT_LEVELS,
    alpha: float = 0.01,
) -> ReferenceCoverage:
    """Coverage of the guide's central intervals against reference draws of the posterior.

    Args:
        guide_draws: ``(S, obs, latent_dim)`` draws of z from q(z | x).
        reference_draws: ``(chains, draws, obs, latent_dim)`` MCMC draws of p(z | x), or
            ``(draws, obs, latent_dim)`` independent draws.
        levels, alpha: as in :func:`coverage_from_ranks`.

    The effective sample size of each indicator "reference z_j inside the interval" is ArviZ's ESS of
    its mean over the chains (capped at the number of draws, so that an antithetic chain is not credited
    with more than independent draws; where the indicator never changes, the number of draws is used).
    Independent draws (a 3-d array) count fully.
    """
    guide = np.asarray(guide_draws, dtype=float)
    ref = np.asarray(reference_draws, dtype=float)
    independent = ref.ndim == 3
    ref = ref[None] if independent else ref
    if guide.ndim != 3 or ref.ndim != 4 or ref.shape[2:] != guide.shape[1:]:
        raise ConfigError(
            f"guide draws (S, obs, latent_dim) and reference draws ([chains,] draws, obs, latent_dim) must agree, "
            f"got {guide.shape} and {ref.shape}"
        )
    s = guide.shape[0]
    lower, expected = central_interval_ranks(s, levels)
    ordered = np.sort(guide, axis=0)
    lo, hi = ordered[lower - 1], ordered[s - lower]  # (K, obs, d): y_(k) and y_(S+1-k)
    inside = (ref[:, :, None] > lo) & (ref[:, :, None] < hi)  # (C, D, K, obs, d)
    total = ref.shape[0] * ref.shape[1]
    actual = inside.mean((0, 1))
    if independent:
        ess, pooled_ess, method = np.full(actual.shape, float(total)), np.full(len(lower), float(total)), "independent"
    else:
        ess = _capped_ess(inside, total)
        pooled_ess = _capped_ess(inside.mean((3, 4)), total)
        method = "ArviZ ESS of the mean of each indicator, capped at the number of draws"
    guide_part = 1 / (s + 2)
    e = expected[:, None, None]
    null_se = np.sqrt(e * (1 - e) * (1 / ess + guide_part))
    z = (actual - e) / null_se
    critical = _bonferroni_critical(alpha, z.size)
    units = z.shape[1] * z.shape[2]
    pooled = actual.mean((1, 2))
    pooled_part = 1 / pooled_ess + guide_part / units
    q = _quoted(expected)
    flagged = np.abs(z).max((0, 2)) > critical
    by_observation = z.transpose(0, 2, 1).reshape(-1, z.shape[1])  # (K * latent_dim, obs)
    return ReferenceCoverage(
        levels=np.asarray(levels, dtype=float),
        expected=expected,
        lower_rank=lower,
        actual=actual,
        ess=ess,
        se=np.sqrt(actual * (1 - actual) * (1 / ess + guide_part)),
        null_se=null_se,
        z=z,
        pooled=pooled,
        pooled_se=np.sqrt(pooled * (1 - pooled) * pooled_part),
        pooled_null_se=np.sqrt(expected * (1 - expected) * pooled_part),
        num_reference=total,
        num_guide=s,
        ess_method=method,
        alpha=alpha,
        critical=critical,
        flagged_observations=[int(i) for i in np.flatnonzero(flagged)],
        verdict=_direction_verdict(
            by_observation,
            critical,
            "observation",
            [f"#{i}" for i in range(z.shape[1])],
            f"{pooled[q]:.0%} actual at {expected[q]:.0%} nominal, pooled",
        ),
    )


def _capped_ess(indicator: np.ndarray, total: int) -> np.ndarray:
    """ESS of the mean of ``(chains, draws, ...)`` 0/1 series, in [1, chains x draws]; a constant series
    (no variance to estimate) counts as ``total``."""
    ess = bridge.ess_of_mean(indicator.astype(float))
    return np.clip(np.nan_to_num(ess, nan=float(total), posinf=float(total)), 1.0, float(total))


def nuts_coverage(nuts, *, levels=DEFAULT_LEVELS, alpha: float = 0.01) -> ReferenceCoverage:
    """:func:`reference_coverage` of a :class:`~ppl_vae.diagnostics.posterior.NUTSResult`: its guide draws
    against its NUTS draws, per observation. Trust it as far as the NUTS run converged (R-hat < 1.01)."""
    return reference_coverage(nuts.guide_samples, nuts.samples, levels=levels, alpha=alpha)


# ---------------------------------------------------------------------------------------------------
# Classifier two-sample test (C2ST) of guide draws against reference draws

#: Above this many latent dimensions the classifier sees z and z^2 only (no pairwise products).
MAX_PAIRWISE_DIMS = 20


@dataclass(frozen=True)
class C2STResult(Result):
    """Classifier two-sample test of guide draws against reference posterior draws, per observation
    (Lopez-Paz & Oquab 2017): if a classifier cannot tell the two samples apart better than chance on
    held-out draws, q(z | x) and p(z | x) agree as far as that classifier can see.

    The classifier is a logistic regression on standardized z, z^2 and the pairwise products z_a z_b
    (quadratic features: it sees shifts, changes of width and correlations; z and z^2 only above
    :data:`MAX_PAIRWISE_DIMS` dimensions). Its accuracy is that of k-fold cross-validated predictions,
    every draw predicted once by a classifier that did not see it.

    Attributes:
        accuracy: ``(obs,)`` share of the 2n held-out predictions that are right.
        num_per_class: ``(obs,)`` n, draws per class (equal classes; reference draws thinned first).
        thinning: ``(obs,)`` the step each reference chain was thinned by (1: not thinned).
        null_sd: ``(obs,)`` sd of the accuracy of a classifier that guesses, 0.5 / sqrt(2n).
        p_values: ``(obs,)`` one-sided p-values of "no better than chance": the binomial tail
            P(Binomial(2n, 1/2) >= correct) (``null="binomial"``), or the share of label permutations whose
            cross-validated accuracy reaches the observed one, (1 + count) / (1 + permutations).
        p_value: the smallest p-value times the number of observations, capped at 1 (Bonferroni).
        rejected: observations with p < alpha / obs.
        null, num_folds, alpha, features: the settings.
        verdict: e.g. ``"distinguishable for 2 of 8 observations (#0, #3): ..."``.
    """

    accuracy: np.ndarray = field(repr=False)
    num_per_class: np.ndarray = field(repr=False)
    thinning: np.ndarray = field(repr=False)
    null_sd: np.ndarray = field(repr=False)
    p_values: np.ndarray = field(repr=False)
    p_value: float
    rejected: list
    null: str
    num_folds: int
    alpha: float
    features: str
    verdict: str

    def summary(self) -> dict:
        """JSON-ready numbers (lists, one entry per observation)."""
        return {
            "accuracy": self.accuracy.tolist(),
            "num_per_class": self.num_per_class.tolist(),
            "thinning": self.thinning.tolist(),
            "null_sd": self.null_sd.tolist(),
            "p_values": self.p_values.tolist(),
            "p_value": self.p_value,
            "rejected": self.rejected,
            "null": self.null,
            "num_folds": self.num_folds,
            "alpha": self.alpha,
            "features": self.features,
            "verdict": self.verdict,
        }


def _with_squares(z: np.ndarray) -> np.ndarray:
    return np.concatenate([z, z**2], axis=1)


def _classifier(latent_dim: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, PolynomialFeatures, StandardScaler

    if latent_dim <= MAX_PAIRWISE_DIMS:
        expand = PolynomialFeatures(degree=2, include_bias=False)
    else:
        expand = FunctionTransformer(_with_squares)
    return make_pipeline(StandardScaler(), expand, StandardScaler(), LogisticRegression(max_iter=2000))


def _cv_accuracy(features: np.ndarray, labels: np.ndarray, num_folds: int, fold_seed: int) -> float:
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    folds = StratifiedKFold(n_splits=num_folds, shuffle=True, random_state=fold_seed)
    predicted = cross_val_predict(_classifier(features.shape[1]), features, labels, cv=folds)
    return float((predicted == labels).mean())


def _two_sample(guide: np.ndarray, reference: np.ndarray, settings: dict, rng) -> tuple[float, float]:
    """Cross-validated accuracy and its p-value for ``(n, d)`` guide draws against ``(n, d)`` reference draws."""
    from scipy import stats

    n = guide.shape[0]
    features = np.concatenate([guide, reference])
    labels = np.repeat([0, 1], n)
    fold_seed = int(rng.integers(2**31 - 1))
    accuracy = _cv_accuracy(features, labels, settings["num_folds"], fold_seed)
    if settings["null"] == "binomial":
        correct = round(accuracy * 2 * n)
        return accuracy, float(stats.binom.sf(correct - 1, 2 * n, 0.5))
    permuted = [
        _cv_accuracy(features, rng.permutation(labels), settings["num_folds"], fold_seed)
        for _ in range(settings["num_permutations"])
    ]
    return accuracy, (1 + sum(a >= accuracy for a in permuted)) / (1 + len(permuted))


def c2st(
    guide_draws,
    reference_draws,
    *,
    ess=None,
    num_folds: int = 5,
    null: str = "binomial",
    num_permutations: int = 200,
    max_per_class: int = 1000,
    alpha: float = 0.01,
    seed: int = 0,
) -> C2STResult:
    """Classifier two-sample test of guide draws against reference draws, per observation.

    Args:
        guide_draws: ``(S, obs, latent_dim)`` independent draws from q(z | x).
        reference_draws: ``(chains, draws, obs, latent_dim)`` MCMC draws of p(z | x), or
            ``(draws, obs, latent_dim)``.
        ess: ``(obs,)`` or ``(obs, latent_dim)`` effective sample sizes of the reference draws (the smallest
            over dimensions is used): each chain is thinned by the step ceil(chains x draws / ess), so that at
            most about ``ess`` draws are left, roughly independent, as the null distribution assumes.
            None: the reference draws are taken as independent.
        num_folds: k of the k-fold cross-validation (stratified, shuffled with ``seed``).
        null: ``"binomial"`` (fast; treats the 2n held-out predictions as independent fair guesses under
            the null) or ``"permutation"`` (``num_permutations`` refits with shuffled labels; exact).
        max_per_class: at most this many draws per class (randomly chosen).
        alpha: family-wise level, Bonferroni over observations.
        seed: the choice of draws, the folds and the permutations.
    """
    guide = np.asarray(guide_draws, dtype=float)
    ref = np.asarray(reference_draws, dtype=float)
    ref = ref[None] if ref.ndim == 3 else ref
    if guide.ndim != 3 or ref.ndim != 4 or ref.shape[2:] != guide.shape[1:]:
        raise ConfigError(f"guide draws {guide.shape} and reference draws {ref.shape} do not match")
    check_number(num_folds, "num_folds", Bound(int, 2, 100))
    check_number(max_per_class, "max_per_class", Bound(int, num_folds, 10_000_000))
    if null not in ("binomial", "permutation"):
        raise ConfigError(f"null must be 'binomial' or 'permutation', got {null!r}")
    check_number(num_permutations, "num_permutations", Bound(int, 1, 100_000))
    chains, draws, obs, d = ref.shape
    steps = _thinning_steps(ess, chains * draws, obs)
    rng = np.random.default_rng(seed)
    settings = {"num_folds": num_folds, "null": null, "num_permutations": num_permutations}
    accuracy, p_values, sizes = np.empty(obs), np.empty(obs), np.empty(obs, dtype=int)
    for i in range(obs):
        thinned = ref[:, :: steps[i], i].reshape(-1, d)
        n = min(thinned.shape[0], guide.shape[0], max_per_class)
        if n < num_folds:
            raise ConfigError(f"observation {i}: {n} draws per class after thinning, fewer than num_folds={num_folds}")
        a = guide[rng.choice(guide.shape[0], n, replace=False), i]
        b = thinned[rng.choice(thinned.shape[0], n, replace=False)]
        accuracy[i], p_values[i] = _two_sample(a, b, settings, rng)
        sizes[i] = n
    return _c2st_result(accuracy, p_values, sizes, steps, settings, alpha, d)


def _thinning_steps(ess, total: int, obs: int) -> np.ndarray:
    if ess is None:
        return np.ones(obs, dtype=int)
    ess = np.asarray(ess, dtype=float).reshape(obs, -1).min(1)
    ess = np.nan_to_num(ess, nan=1.0, posinf=float(total))
    return np.maximum(1, np.ceil(total / np.maximum(ess, 1.0))).astype(int)  # at most about ess draws left


def _c2st_result(accuracy, p_values, sizes, steps, settings: dict, alpha: float, latent_dim: int) -> C2STResult:
    check_number(alpha, "alpha", Bound(float, 0, 0.5, open_low=True))
    obs = len(accuracy)
    rejected = [int(i) for i in np.flatnonzero(p_values < alpha / obs)]
    null_sd = 0.5 / np.sqrt(2 * sizes)
    chance = f"chance 0.50 ± {np.median(null_sd):.2f}"
    if rejected:
        verdict = (
            f"distinguishable for {len(rejected)} of {obs} observations ({', '.join(f'#{i}' for i in rejected)}): "
            f"q(z | x) differs from the reference posterior (accuracy up to {accuracy.max():.2f}, {chance})"
        )
    else:
        verdict = (
            f"indistinguishable: no observation's classifier beats chance (accuracy {accuracy.min():.2f} to "
            f"{accuracy.max():.2f}, {chance}; Bonferroni over {obs} observations at {alpha:g})"
        )
    quadratic = latent_dim <= MAX_PAIRWISE_DIMS
    return C2STResult(
        accuracy=accuracy,
        num_per_class=sizes,
        thinning=steps,
        null_sd=null_sd,
        p_values=p_values,
        p_value=float(min(1.0, p_values.min() * obs)),
        rejected=rejected,
        null=settings["null"],
        num_folds=settings["num_folds"],
        alpha=alpha,
        features="z, z^2 and pairwise products" if quadratic else "z and z^2",
        verdict=verdict,
    )


def nuts_c2st(nuts, **kwargs) -> C2STResult:
    """:func:`c2st` of a :class:`~ppl_vae.diagnostics.posterior.NUTSResult`'s guide draws against its NUTS
    draws, thinned by the smaller of the bulk and tail ESS of each observation (over dimensions)."""
    ess = np.minimum(nuts.ess_bulk, nuts.ess_tail)
    return c2st(nuts.guide_samples, nuts.samples, ess=ess, **kwargs)


# ---------------------------------------------------------------------------------------------------
# The ECDF of the SBC ranks and its simultaneous band


@dataclass(frozen=True)
class ECDFBand(Result):
    """The ECDF of each dimension's SBC ranks minus the uniform CDF, with a simultaneous band
    (Säilynoja, Bürkner & Vehtari 2022): under calibration the whole ECDF-difference curve of one
    dimension stays inside its band with probability ``prob``.

    Attributes:
        eval_points: ``(P,)`` ranks at which the ECDF is evaluated (0..L-1, or P evenly spread ones).
        cdf: ``(P,)`` the uniform CDF of ranks on 0..L there, (rank + 1) / (L + 1).
        difference: ``(P, latent_dim)`` share of ranks <= each point, minus ``cdf``.
        lower, upper: ``(P,)`` the band of the difference (from ArviZ's optimized simultaneous band).
        outside: ``(latent_dim,)`` whether the dimension's curve leaves the band anywhere.
        excess: ``(latent_dim,)`` how far beyond the band it goes at most (0 inside), in share of
            simulations.
        shape: ``(latent_dim,)`` what the excursions look like (empty inside the band): ``"U-shaped"``
            (extreme ranks too common: guide too narrow), ``"humped"`` (too wide), ``"ranks too low"``
            (true z below the draws: guide mean too high), ``"ranks too high"``, or ``"irregular"``.
        prob: the per-dimension simultaneous probability, 1 - alpha / latent_dim (Bonferroni).
        num_simulations, num_draws, alpha, verdict.
    """

    eval_points: np.ndarray = field(repr=False)
    cdf: np.ndarray = field(repr=False)
    difference: np.ndarray = field(repr=False)
    lower: np.ndarray = field(repr=False)
    upper: np.ndarray = field(repr=False)
    outside: np.ndarray = field(repr=False)
    excess: np.ndarray = field(repr=False)
    shape: list
    prob: float
    num_simulations: int
    num_draws: int
    alpha: float
    verdict: str

    def summary(self) -> dict:
        """JSON-ready numbers (lists; ``outside``: the dimensions whose curve leaves the band)."""
        return {
            "num_simulations": self.num_simulations,
            "num_draws": self.num_draws,
            "prob": self.prob,
            "alpha": self.alpha,
            "outside": [int(j) for j in np.flatnonzero(self.outside)],
            "excess": self.excess.tolist(),
            "shape": self.shape,
            "verdict": self.verdict,
        }


def ecdf_eval_points(num_draws: int, max_points: int = 100) -> np.ndarray:
    """The ranks at which the rank ECDF is evaluated: 0..L-1, or ``max_points`` of them evenly spread."""
    if num_draws <= max_points:
        return np.arange(num_draws)
    return np.unique(np.round(np.linspace(0, num_draws - 1, max_points)).astype(int))


def uniform_rank_cdf(values, num_draws: int) -> np.ndarray:
    """The CDF of ranks uniform on 0..L at ``values``: (floor(value) + 1) / (L + 1), within [0, 1]."""
    return np.clip((np.floor(np.asarray(values, dtype=float)) + 1) / (num_draws + 1), 0.0, 1.0)


def sbc_ecdf(ranks, num_draws: int, *, alpha: float = 0.01, max_points: int = 100) -> ECDFBand:
    """The SBC rank ECDF-difference curves with their simultaneous band, and which dimensions leave it.

    Args:
        ranks: ``(N, latent_dim)`` ranks in 0..L (:func:`sbc_ranks`).
        num_draws: L.
        alpha: family-wise level: each dimension's band holds its whole curve with probability
            1 - alpha / latent_dim under calibration.
        max_points: at most this many evaluation points (fixed in advance, independent of the ranks, as a
            simultaneous band requires).

    Ranks are discrete, and the band is computed for exactly that: at the evaluation ranks e the counts
    of ranks <= e are those of a uniform sample's ECDF at probabilities (e + 1) / (L + 1).
    """
    ranks = np.asarray(ranks)
    if ranks.ndim != 2 or ranks.shape[0] < 2 or ranks.min() < 0 or ranks.max() > num_draws:
        raise ConfigError(f"ranks must be an (N >= 2, latent_dim) array of ranks in 0..{num_draws}")
    check_number(alpha, "alpha", Bound(float, 0, 0.5, open_low=True))
    n, d = ranks.shape
    points = ecdf_eval_points(num_draws, max_points)
    cdf = uniform_rank_cdf(points, num_draws)
    prob = 1 - alpha / d
    low, high = bridge.ecdf_band(n, points, cdf, prob)
    ecdf = (ranks[None, :, :] <= points[:, None, None]).mean(1)  # (P, d)
    difference = ecdf - cdf[:, None]
    lower, upper = low - cdf, high - cdf
    # The ECDF and the band move in steps of 1 / n: a curve on the band's edge is inside (rounding aside).
    beyond = np.maximum(difference - upper[:, None], lower[:, None] - difference)
    excess = np.where(beyond > 1e-9, beyond, 0.0).max(0)
    outside = excess > 0
    shape = [_excursion_shape(difference[:, j], points, num_draws) if outside[j] else "" for j in range(d)]
    return ECDFBand(
        eval_points=points,
        cdf=cdf,
        difference=difference,
        lower=lower,
        upper=upper,
        outside=outside,
        excess=excess,
        shape=shape,
        prob=prob,
        num_simulations=n,
        num_draws=num_draws,
        alpha=alpha,
        verdict=_ecdf_verdict(outside, shape, prob),
    )


def _excursion_shape(difference: np.ndarray, points: np.ndarray, num_draws: int) -> str:
    """Name the pattern of one dimension's ECDF difference: by its mean sign over the low half of the ranks
    and over the high half. Too many extreme ranks (a U) lift the curve early and sink it late; too many
    middle ranks (a hump) the reverse; ranks shifted low or high move it one way throughout."""
    low = points < num_draws / 2
    first, second = difference[low].mean(), difference[~low].mean()
    if first > 0 > second:
        return "U-shaped"
    if first < 0 < second:
        return "humped"
    if first + second > 0:
        return "ranks too low"
    return "ranks too high" if first + second < 0 else "irregular"


_SHAPE_MEANING = {
    "U-shaped": "extreme ranks too common: guide too narrow",
    "humped": "middle ranks too common: guide too wide",
    "ranks too low": "true z below most draws: guide mean too high",
    "ranks too high": "true z above most draws: guide mean too low",
    "irregular": "not uniform",
}


def _ecdf_verdict(outside: np.ndarray, shape: list, prob: float) -> str:
    if not outside.any():
        return f"uniform: every dimension's rank ECDF stays inside its simultaneous {prob:.2%} band"
    by_shape: dict = {}
    for j in np.flatnonzero(outside):
        by_shape.setdefault(shape[j], []).append(str(j))
    parts = [
        f"dim{'s' if len(dims) > 1 else ''} {', '.join(dims)}: {s} ({_SHAPE_MEANING[s]})"
        for s, dims in by_shape.items()
    ]
    return f"{'; '.join(parts)} [{int(outside.sum())} of {len(outside)} dimensions leave the {prob:.2%} band]"
