"""Simulation-based calibration (SBC) of the guide: rank statistics, a uniformity test and dispersion flags."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from pyro.infer import Predictive

from ppl_vae.diagnostics.programs import label_kwargs
from ppl_vae.errors import ConfigError
from ppl_vae.results import Result
from ppl_vae.rng import seeded
from ppl_vae.validation import BOUNDS, Bound, check_number

# ---------------------------------------------------------------------------------------------------
# Simulation-based calibration


@dataclass(frozen=True)
class SBCResult(Result):
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
        return {
            "num_simulations": int(self.ranks.shape[0]),
            "num_draws": self.num_draws,
            "num_bins": self.num_bins,
            "p_value": self.p_value,
            "p_values": self.p_values.tolist(),
            "dispersion_z": self.dispersion_z.tolist(),
            "bias_z": self.bias_z.tolist(),
            "shift": self.shift.tolist(),
            "width_ratio": self.width_ratio.tolist(),
            "flags": self.flags,
            "verdict": self.verdict,
        }


def sbc_ranks(
    model,
    guide,
    *,
    num_simulations: int = 1000,
    num_draws: int = 99,
    latent_site: str = "z",
    observed_site: str = "x",
    seed: int = 0,
    c: torch.Tensor | None = None,
) -> np.ndarray:
    """``(num_simulations, latent_dim)`` ranks of the simulated z among ``num_draws`` guide draws.

    Simulations come from the model run generatively, ``model(None, num_samples=num_simulations)``: the
    full generative program, so a structured prior draws its discrete sites first (a mixture's component
    y, then z | y, then x); the guide is then run on the simulated x, and its draws of z are from its
    marginal q(z | x) (a guide that draws y first draws it too). ``c``: ``(num_simulations,)`` labels to
    condition every simulation and guide run on, for programs that take them (required by a
    conditional model: the ranks then check q(z | x, c) against p(z | x, c))."""
    _check_sizes(num_simulations, num_draws)
    from pyro import poutine

    side = label_kwargs(model, guide, c, num_simulations, "SBC")
    device = _device_of(model, guide)
    with torch.no_grad(), seeded(seed, device):
        trace = poutine.trace(poutine.block(model, hide_types=["param"])).get_trace(
            None, num_samples=num_simulations, **side
        )
        if latent_site not in trace.nodes or observed_site not in trace.nodes:
            raise ConfigError(
                f"the model run as model(None, num_samples=N) must sample sites {latent_site!r} and {observed_site!r}"
            )
        z_true = trace.nodes[latent_site]["value"]  # (N, d)
        x = trace.nodes[observed_site]["value"]
        draws = Predictive(guide, num_samples=num_draws, return_sites=[latent_site])(x, **side)[latent_site]
    draws = draws.reshape(num_draws, *z_true.shape)
    return (draws < z_true).sum(0).reshape(num_simulations, -1).cpu().numpy()


def _check_sizes(num_simulations: int, num_draws: int) -> None:
    check_number(num_simulations, "num_simulations", Bound(int, 2, BOUNDS["num_samples"].high))
    check_number(num_draws, "num_draws", Bound(int, 1, 100_000))


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

        step = min(0.02, 0.2 / math.sqrt(num_draws + 1))  # resolves the binomial's width in w
        self.w = np.linspace(-self.HALF_WIDTH, self.HALF_WIDTH, round(2 * self.HALF_WIDTH / step) + 1)
        weights = np.full_like(self.w, self.w[1] - self.w[0])
        weights[[0, -1]] /= 2
        ranks = np.arange(num_draws + 1)[:, None]
        self.matrix = stats.binom.pmf(ranks, num_draws, stats.norm.cdf(self.w)[None, :]) * weights  # (L + 1, G)
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
        start = (
            float(np.clip(-mean / math.sqrt(var), -bound_delta, bound_delta)),
            float(np.clip(-0.5 * math.log(var), -bound_log_s, bound_log_s)),
        )

        def negative(theta):
            return -self.log_likelihood(counts, theta[0], theta[1])

        fixed_width = optimize.minimize_scalar(
            lambda d: negative((d, 0.0)), bounds=(-bound_delta, bound_delta), method="bounded", options={"xatol": 1e-7}
        )
        fixed_shift = optimize.minimize_scalar(
            lambda ls: negative((0.0, ls)),
            bounds=(-bound_log_s, bound_log_s),
            method="bounded",
            options={"xatol": 1e-7},
        )
        best = None
        for x0 in (start, (fixed_width.x, 0.0), (0.0, fixed_shift.x)):
            result = optimize.minimize(
                negative,
                x0,
                method="L-BFGS-B",
                bounds=[(-bound_delta, bound_delta), (-bound_log_s, bound_log_s)],
                options={"ftol": 1e-12, "gtol": 1e-8},
            )
            if best is None or result.fun < best.fun:
                best = result
        delta, log_s = (float(v) for v in best.x)
        width_statistic = max(0.0, 2 * (fixed_width.fun - best.fun))
        shift_statistic = max(0.0, 2 * (fixed_shift.fun - best.fun))
        return {
            "shift": delta,
            "width_ratio": math.exp(log_s),
            # positive: narrower than the posterior (under-dispersed); negative: wider
            "dispersion_z": -math.copysign(math.sqrt(width_statistic), log_s),
            # negative: guide mean above the posterior's (biased high); positive: below
            "bias_z": -math.copysign(math.sqrt(shift_statistic), delta),
        }


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


def sbc(
    model,
    guide,
    *,
    num_simulations: int = 1000,
    num_draws: int = 99,
    num_bins: int | None = None,
    alpha: float = 0.01,
    latent_site: str = "z",
    observed_site: str = "x",
    seed: int = 0,
    c: torch.Tensor | None = None,
) -> SBCResult:
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
    ``_RankModel`` computes by quadrature (uniform at delta = 0, s = 1). ``dispersion_z`` is the
    signed root of the likelihood-ratio statistic of s = 1 with delta free in both fits, ``bias_z`` that
    of delta = 0 with s free; each is N(0, 1) under calibration (Wilks), and a pure shift leaves the
    width test at N(0, 1) whatever its size. ``shift`` and ``width_ratio`` are the fitted delta and s.

    Structured models: the simulations run the full generative program (:func:`sbc_ranks`), and ``c``
    (``(num_simulations,)`` labels) conditions them for programs that need labels.
    """
    _check_sizes(num_simulations, num_draws)
    check_number(alpha, "alpha", Bound(float, 0, 1, open_low=True))
    if num_bins is not None:
        check_number(num_bins, "num_bins", Bound(int, 2, num_draws + 1))
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
    n, d = ranks.shape
    num_bins = num_bins or int(max(2, min(20, n // 20, num_draws + 1)))
    p_values = _uniformity_p_values(ranks, num_draws, num_bins)
    model_of_ranks = _RankModel(num_draws)
    fits = [model_of_ranks.fit(np.bincount(ranks[:, j], minlength=num_draws + 1).astype(float)) for j in range(d)]
    corrected = np.minimum(p_values * d, 1.0)
    flags = _sbc_flags(corrected, fits, alpha)
    return SBCResult(
        ranks=ranks,
        num_draws=num_draws,
        p_values=p_values,
        p_value=float(corrected.min()),
        num_bins=num_bins,
        dispersion_z=np.array([f["dispersion_z"] for f in fits]),
        bias_z=np.array([f["bias_z"] for f in fits]),
        flags=flags,
        verdict=_sbc_verdict(flags, d),
        shift=np.array([f["shift"] for f in fits]),
        width_ratio=np.array([f["width_ratio"] for f in fits]),
    )


def _uniformity_p_values(ranks: np.ndarray, num_draws: int, num_bins: int) -> np.ndarray:
    """``(latent_dim,)`` p-values of the chi-square test of uniform ranks (0..L) in ``num_bins`` bins."""
    from scipy import stats

    n, d = ranks.shape
    # Equal-width bins over the L + 1 rank values; exact expected counts when L + 1 is not a multiple.
    edges = np.linspace(0, num_draws + 1, num_bins + 1)
    values = np.arange(num_draws + 1)
    expected = np.histogram(values, bins=edges)[0] / (num_draws + 1) * n
    p_values = np.empty(d)
    for j in range(d):
        observed = np.histogram(ranks[:, j], bins=edges)[0]
        statistic = ((observed - expected) ** 2 / expected).sum()
        p_values[j] = stats.chi2.sf(statistic, num_bins - 1)
    return p_values


def _sbc_flags(corrected: np.ndarray, fits: list[dict], alpha: float) -> list[dict]:
    """One flag per dimension whose Bonferroni-corrected p-value is below ``alpha``, named by the
    z-scores of :class:`_RankModel` beyond the two-sided Bonferroni critical value."""
    from scipy import stats

    d = len(fits)
    critical = stats.norm.isf(alpha / (2 * d))  # two-sided, Bonferroni over dimensions
    flags = []
    for j, fit in enumerate(fits):
        if corrected[j] >= alpha:
            continue
        found = []
        if abs(fit["dispersion_z"]) > critical:
            found.append("under-dispersed" if fit["dispersion_z"] > 0 else "over-dispersed")
        if abs(fit["bias_z"]) > critical:
            found.append("biased high" if fit["bias_z"] < 0 else "biased low")  # truth below most draws: q too high
        finding = " and ".join(found) or "non-uniform"
        flags.append(
            {
                "latent_dim": j,
                "finding": finding,
                "description": flags_description(finding),
                "p_value": float(corrected[j]),
                "shift": fit["shift"],
                "width_ratio": fit["width_ratio"],
                "dispersion_z": float(fit["dispersion_z"]),
                "bias_z": float(fit["bias_z"]),
            }
        )
    return flags
