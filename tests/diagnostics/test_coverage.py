"""Coverage of q(z | x)'s central intervals, the classifier two-sample test and the SBC rank ECDF band
(ppl_vae.diagnostics.coverage), and the diagnose section built on them (ppl_vae.app.calibration_checks).

References are exact: probabilistic PCA has a Normal posterior, so a guide with the exact scale is
calibrated and one with 0.6 times it has a coverage computable in closed form. Tolerances are multiples of
binomial standard errors with a Bonferroni-corrected critical value at family-wise level ALPHA (the
levels are nested intervals, so their coverages are positively dependent: Bonferroni is conservative)."""

import json
import math

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from scipy import stats

from ppl_vae.app.calibration_checks import calibration_lines, calibration_section, calibration_summary
from ppl_vae.diagnostics.coverage import (
    DEFAULT_LEVELS,
    c2st,
    central_interval_ranks,
    coverage_from_ranks,
    nuts_c2st,
    nuts_coverage,
    reference_coverage,
    sbc_ecdf,
    simulation_coverage,
)
from ppl_vae.diagnostics.posterior import nuts_reference
from tests.common import assert_within_se
from tests.ppca import make_ppca, plain_pyro_pair

ALPHA = 0.01
K = len(DEFAULT_LEVELS)
SIMULATIONS, DRAWS = 2000, 99


def critical(tests: int, alpha: float = ALPHA) -> float:
    """Two-sided normal critical value, Bonferroni over ``tests`` z-scores."""
    return stats.norm.isf(alpha / (2 * tests))


def finite_draws_coverage(scale_ratio: float, num_draws: int, lower: np.ndarray) -> np.ndarray:
    """Exact expected coverage of [y_(k), y_(L+1-k)] from L draws of N(0, scale_ratio^2) for a true value
    eps ~ N(0, 1): the rank is Binomial(L, Phi(eps / scale_ratio)) given eps; integrated over eps on a grid
    (trapezoid rule, step 0.002 on [-9, 9]: error far below 1e-6)."""
    w = np.linspace(-9, 9, 9001)
    p = stats.norm.cdf(w / scale_ratio)
    inside = stats.binom.cdf(num_draws - lower[:, None], num_draws, p) - stats.binom.cdf(
        lower[:, None] - 1, num_draws, p
    )
    return np.trapezoid(inside * stats.norm.pdf(w), w, axis=1)


def asymptotic_coverage(scale_ratio: float, level: np.ndarray) -> np.ndarray:
    """Posterior mass of the central ``level`` interval of N(0, scale_ratio^2) under N(0, 1)."""
    return 2 * stats.norm.cdf(scale_ratio * stats.norm.ppf((1 + level) / 2)) - 1


@pytest.fixture(scope="module")
def ppca():
    return make_ppca()


@pytest.fixture(scope="module")
def x(ppca):
    return ppca.data(3, torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def nuts_exact(ppca, x):
    """A small real NUTS run on PPCA with the exact guide (a plain Pyro pair)."""
    model, guide = plain_pyro_pair(ppca)
    return nuts_reference(model, guide, x, num_chains=2, num_warmup=100, num_samples=250, guide_samples=1000, seed=0)


# ---------------------------------------------------------------------------------------------------
# The rank -> coverage rule


def test_the_central_interval_rule_on_hand_built_ranks():
    lower, expected = central_interval_ranks(9, [0.8, 0.5, 0.1, 0.99])
    # (L+1)(1-a)/2 = 1, 2.5 (a tie: the wider interval), 4.5 (tie), 0.05 (at least one draw from each end)
    assert lower.tolist() == [1, 2, 4, 1]
    np.testing.assert_allclose(expected, [0.8, 0.6, 0.2, 0.8])
    lower, expected = central_interval_ranks(99, [0.05, 0.5, 0.9, 0.95, 0.99])
    assert lower.tolist() == [47, 25, 5, 2, 1]
    np.testing.assert_allclose(expected, [0.06, 0.5, 0.9, 0.96, 0.98])

    # every rank 0..9 once: each level's coverage is exactly its expected value
    uniform = np.tile(np.arange(10), 3)[:, None]
    r = coverage_from_ranks(uniform, 9, levels=[0.8, 0.5, 0.1])
    np.testing.assert_allclose(r.actual[:, 0], [0.8, 0.6, 0.2])
    # ranks at both ends are outside every interval; ranks in the middle inside every one
    ends = coverage_from_ranks(np.tile([0, 9], 20)[:, None], 9, levels=[0.8, 0.5])
    middle = coverage_from_ranks(np.full((40, 1), 4), 9, levels=[0.8, 0.5])
    assert ends.actual.tolist() == [[0.0], [0.0]] and middle.actual.tolist() == [[1.0], [1.0]]
    assert ends.verdict.startswith("under-covers") and middle.verdict.startswith("over-covers")


def test_the_rank_rule_is_the_order_statistic_interval():
    """k <= rank <= L - k is the same event as y_(k) < z < y_(L+1-k) for the sorted draws."""
    rng = np.random.default_rng(0)
    num_draws, cases = 9, 5000
    draws, truth = rng.normal(size=(cases, num_draws)), rng.normal(size=cases)
    ranks = (draws < truth[:, None]).sum(1)
    ordered = np.sort(draws, axis=1)
    lower, _ = central_interval_ranks(num_draws, [0.2, 0.5, 0.8])
    for k in lower:
        by_rank = (ranks >= k) & (ranks <= num_draws - k)
        by_draws = (ordered[:, k - 1] < truth) & (truth < ordered[:, num_draws - k])
        assert np.array_equal(by_rank, by_draws)


# ---------------------------------------------------------------------------------------------------
# Coverage against simulations, PPCA


def test_coverage_of_the_exact_ppca_posterior_is_nominal(ppca):
    ppca.set_guide()
    r = simulation_coverage(ppca.vae.model, ppca.vae.guide, num_simulations=SIMULATIONS, num_draws=DRAWS, seed=0)
    assert r.actual.shape == (K, 2) and r.num_simulations == SIMULATIONS
    z = critical(K * 2)
    assert r.critical == pytest.approx(z)
    se = np.sqrt(r.expected * (1 - r.expected) / SIMULATIONS)[:, None]
    assert_within_se(r.actual, r.expected[:, None], se, z=z, what="coverage per level and dimension")
    assert_within_se(r.pooled, r.expected, r.pooled_null_se, z=z, what="pooled coverage")
    assert r.verdict.startswith("nominal")


def test_a_guide_with_0_6_times_the_scale_under_covers(ppca):
    model, guide = plain_pyro_pair(ppca, scale_factor=0.6)
    r = simulation_coverage(model, guide, num_simulations=SIMULATIONS, num_draws=DRAWS, seed=1)
    z = critical(K * 2)
    # the exact coverage with L = 99 draws (the truth is N(0, 1) in posterior units, the guide N(0, 0.36))
    exact = finite_draws_coverage(0.6, DRAWS, r.lower_rank)
    se = np.sqrt(exact * (1 - exact) / SIMULATIONS)[:, None]
    assert_within_se(r.actual, exact[:, None], se, z=z, what="coverage of the 0.6x guide vs its exact value")
    # the brief's formula 2 Phi(0.6 Phi^-1((1 + a) / 2)) - 1 is the limit L -> infinity: the same within the
    # Monte Carlo error plus the (computed) finite-L difference, at most 0.018 here
    limit = asymptotic_coverage(0.6, r.expected)
    assert np.abs(exact - limit).max() < 0.02
    bound = z * r.pooled_se + np.abs(exact - limit)
    assert np.all(np.abs(r.pooled - limit) < bound), (r.pooled, limit, bound)
    # well below nominal: by more than 5 s.e. wherever the predicted gap is over 8 s.e. (most levels)
    big = (r.expected - exact) > 8 * r.null_se
    assert big.sum() >= 15
    assert np.all(r.actual[big] < r.expected[big, None] - 5 * r.null_se[big, None])
    assert r.verdict.startswith("under-covers") and "at 90% nominal" in r.verdict


# ---------------------------------------------------------------------------------------------------
# Coverage against a reference sample


def _normal_draws(rng, loc, scale, n):
    return loc + scale * rng.normal(size=(n, *loc.shape))


def test_coverage_against_independent_reference_draws():
    rng = np.random.default_rng(2)
    loc, scale = rng.normal(size=(3, 2)), np.array([0.4, 1.3])
    reference = _normal_draws(rng, loc, scale, 4000)  # (draws, obs, d): independent
    exact = reference_coverage(_normal_draws(rng, loc, scale, 2000), reference)
    assert exact.actual.shape == (K, 3, 2) and exact.ess_method == "independent"
    assert np.all(exact.ess == 4000)
    z = critical(K * 3 * 2)
    np.testing.assert_array_less(np.abs(exact.z), z)
    assert exact.verdict.startswith("nominal")

    narrow_draws = _normal_draws(rng, loc, 0.6 * scale, 2000)
    narrow = reference_coverage(narrow_draws, reference)
    # against the posterior mass of the guide's realized intervals (closed form), only the reference
    # draws vary: binomial with 4000 draws
    ordered = np.sort(narrow_draws, axis=0)
    lo, hi = ordered[narrow.lower_rank - 1], ordered[2000 - narrow.lower_rank]
    mass = stats.norm.cdf((hi - loc) / scale) - stats.norm.cdf((lo - loc) / scale)
    assert_within_se(narrow.actual, mass, np.sqrt(mass * (1 - mass) / 4000), z=z, what="vs the realized mass")
    high = narrow.expected >= 0.3
    assert np.all(narrow.actual[high] < narrow.expected[high, None, None] - 5 * narrow.null_se[high])
    assert narrow.verdict.startswith("under-covers") and narrow.flagged_observations == [0, 1, 2]


def test_coverage_against_a_real_nuts_run(ppca, x, nuts_exact):
    r = nuts_coverage(nuts_exact)
    total = 2 * 250
    assert r.actual.shape == (K, 3, 2) and r.num_reference == total and r.num_guide == 1000
    assert np.all((r.ess >= 1) & (r.ess <= total))
    np.testing.assert_array_less(np.abs(r.z), critical(K * 3 * 2))
    assert r.verdict.startswith("nominal")
    # the same NUTS draws against a guide 0.6 times too narrow (drawn from the analytic posterior)
    loc, scale = (t.numpy() for t in ppca.posterior(x))
    narrow = _normal_draws(np.random.default_rng(3), loc, 0.6 * scale, 1000)
    bad = reference_coverage(narrow, nuts_exact.samples)
    i = int(np.argmin(np.abs(bad.expected - 0.9)))
    assert bad.pooled[i] < bad.expected[i] - 5 * bad.pooled_null_se[i]
    assert bad.verdict.startswith("under-covers")


# ---------------------------------------------------------------------------------------------------
# Classifier two-sample test


def test_c2st_accepts_the_same_distribution_and_rejects_a_one_sd_shift():
    rng = np.random.default_rng(4)
    rho, n, obs = 0.6, 500, 4
    chol = np.linalg.cholesky(np.array([[1.0, rho], [rho, 1.0]]))
    loc = rng.normal(size=(obs, 2))

    def draws(count):
        return loc + rng.normal(size=(count, obs, 2)) @ chol.T

    same = c2st(draws(n), draws(n), seed=0)
    assert same.num_per_class.tolist() == [n] * obs and same.rejected == []
    null_sd = 0.5 / math.sqrt(2 * n)
    np.testing.assert_allclose(same.null_sd, null_sd)
    np.testing.assert_array_less(np.abs(same.accuracy - 0.5), critical(obs) * null_sd)
    assert same.verdict.startswith("indistinguishable")

    shifted = c2st(draws(n), draws(n) + np.array([1.0, 0.0]), seed=0)  # one posterior sd in z_0
    assert shifted.rejected == list(range(obs)) and shifted.p_value < ALPHA
    # no classifier beats the Bayes rule: Phi(delta / 2), delta the Mahalanobis length of the shift
    bayes = stats.norm.cdf(0.5 / math.sqrt(1 - rho**2))
    np.testing.assert_array_less(shifted.accuracy, bayes + critical(obs) * null_sd)
    np.testing.assert_array_less(0.5 + 5 * null_sd, shifted.accuracy)
    assert shifted.verdict.startswith("distinguishable for 4 of 4")


def test_c2st_null_distributions_hold_their_level():
    """40 pairs from one distribution: p < 0.05 about twice (Binomial(40, 0.05)); the permutation null
    gives p-values on its grid (1 + count) / (1 + B)."""
    rng = np.random.default_rng(5)
    pairs = c2st(rng.normal(size=(150, 40, 2)), rng.normal(size=(150, 40, 2)), seed=1)
    assert (pairs.p_values < 0.05).sum() <= stats.binom.ppf(0.999, 40, 0.05)
    permuted = c2st(rng.normal(size=(100, 2, 2)), rng.normal(size=(100, 2, 2)), null="permutation", num_permutations=19)
    np.testing.assert_allclose(permuted.p_values * 20, np.round(permuted.p_values * 20))
    assert permuted.rejected == []


def test_c2st_on_a_real_nuts_run_thins_by_the_ess(ppca, x, nuts_exact):
    r = nuts_c2st(nuts_exact, seed=0)
    ess = np.minimum(nuts_exact.ess_bulk, nuts_exact.ess_tail).min(1)
    np.testing.assert_array_equal(r.thinning, np.maximum(1, np.ceil(500 / ess)).astype(int))
    assert np.all(r.num_per_class <= ess + 2)  # at most about the ESS (one extra draw per chain)
    assert r.rejected == [], r.verdict
    loc, scale = (t.numpy() for t in ppca.posterior(x))
    shifted = _normal_draws(np.random.default_rng(6), loc + scale, scale, 1000)  # one posterior sd in every dim
    assert c2st(shifted, nuts_exact.samples, ess=ess, seed=0).rejected == [0, 1, 2]


# ---------------------------------------------------------------------------------------------------
# The ECDF band


def _ranks_of(rng, scale_ratio: float, shift: float, n: int, d: int) -> np.ndarray:
    """SBC ranks of a guide N(shift, scale_ratio^2) against a posterior N(0, 1): Binomial(L, Phi(w))."""
    eps = rng.normal(size=(n, d))
    return rng.binomial(DRAWS, stats.norm.cdf((eps - shift) / scale_ratio))


def test_the_ecdf_band_keeps_uniform_ranks_and_flags_u_shaped_ones():
    rng = np.random.default_rng(7)
    uniform = sbc_ecdf(rng.integers(0, DRAWS + 1, size=(500, 3)), DRAWS)
    assert not uniform.outside.any() and uniform.verdict.startswith("uniform")
    assert uniform.prob == pytest.approx(1 - ALPHA / 3) and uniform.difference.shape == (DRAWS, 3)
    for ratio, shift, shape in ((0.6, 0.0, "U-shaped"), (1.6, 0.0, "humped"), (1.0, 0.5, "ranks too low")):
        r = sbc_ecdf(_ranks_of(rng, ratio, shift, 500, 2), DRAWS)
        assert r.outside.all() and r.shape == [shape, shape] and np.all(r.excess > 0), (ratio, shift, r.verdict)


def test_the_ecdf_band_is_simultaneous():
    """Uniform ranks: the whole curve stays inside the band in at least ``prob`` of the replications
    (within 4 binomial s.e.; a pointwise band would hold the whole curve far less often)."""
    rng = np.random.default_rng(8)
    n, replications = 300, 1000
    band = sbc_ecdf(rng.integers(0, DRAWS + 1, size=(n, 1)), DRAWS, alpha=0.05)
    ranks = rng.integers(0, DRAWS + 1, size=(replications, n))
    ecdf = (ranks[:, :, None] <= band.eval_points).mean(1) - band.cdf  # (replications, P)
    inside = ((ecdf >= band.lower - 1e-9) & (ecdf <= band.upper + 1e-9)).all(1).mean()
    assert inside >= 0.95 - 4 * math.sqrt(0.95 * 0.05 / replications)


# ---------------------------------------------------------------------------------------------------
# Determinism, and a prior other than N(0, I)


def _learned_normal_ppca(loc: float = 0.8, scale: float = 0.7):
    """PPCA whose prior is the learned-normal N(loc, scale^2), with the encoder set to the exact posterior:
    precision 1 / scale^2 + |W_j|^2 / sigma^2 per dimension (W has orthogonal columns)."""
    from ppl_vae import VAE
    from ppl_vae.models import Gaussian

    base = make_ppca()
    W, b, sigma = base.W, base.b, base.sigma
    d = W.shape[1]
    vae = VAE(
        (W.shape[0],),
        d,
        hidden_dims=(),
        prior="learned-normal",
        likelihood=Gaussian((W.shape[0],), scale=sigma, learn_scale=False),
    ).double()
    variance = 1 / (1 / scale**2 + (W**2).sum(0) / sigma**2)  # (d,)
    A = variance[:, None] * W.T / sigma**2  # loc = A x + c
    with torch.no_grad():
        vae.decoder.net[0].weight.copy_(W)
        vae.decoder.net[0].bias.copy_(b)
        vae.prior.loc.fill_(loc)
        vae.prior.log_scale.fill_(math.log(scale))
        layer = vae.encoder.encoder.net[0]
        layer.weight.zero_()
        layer.weight[:d] = A
        layer.bias[:d] = variance * loc / scale**2 - A @ b
        layer.bias[d:] = 0.5 * variance.log()
    return vae


def test_estimators_repeat_with_a_seed_and_hold_under_a_learned_normal_prior(nuts_exact):
    vae = _learned_normal_ppca()
    runs = [simulation_coverage(vae.model, vae.guide, num_simulations=1000, num_draws=49, seed=3) for _ in range(2)]
    np.testing.assert_array_equal(runs[0].actual, runs[1].actual)
    # the exact posterior under this prior: nominal (Bonferroni over the levels L = 49 resolves)
    r = runs[0]
    np.testing.assert_array_less(np.abs(r.z), critical(K * 2))
    assert r.verdict.startswith("nominal")
    other = simulation_coverage(vae.model, vae.guide, num_simulations=1000, num_draws=49, seed=4)
    assert not np.array_equal(other.actual, r.actual)  # the seed matters

    ranks = np.random.default_rng(9).integers(0, 50, size=(200, 2))
    assert sbc_ecdf(ranks, 49).to_dict() == sbc_ecdf(ranks, 49).to_dict()
    assert nuts_coverage(nuts_exact).to_dict() == nuts_coverage(nuts_exact).to_dict()
    assert nuts_c2st(nuts_exact, seed=2).to_dict() == nuts_c2st(nuts_exact, seed=2).to_dict()


# ---------------------------------------------------------------------------------------------------
# The diagnose section


def _check_figures(figures: dict, max_ecdf_panels: int) -> None:
    assert set(figures) == {"coverage.png", "sbc_ecdf.png"}
    for name, fig in figures.items():
        assert isinstance(fig, Figure)
        for ax in fig.axes:
            assert ax.get_xlabel() and ax.get_ylabel(), f"{name}: an axis without a label"
    assert len(figures["sbc_ecdf.png"].axes) <= max_ecdf_panels


def test_the_diagnose_section_with_nuts(ppca, nuts_exact):
    model, guide = plain_pyro_pair(ppca, scale_factor=0.6)
    from ppl_vae.diagnostics.calibration import sbc_ranks

    ranks = sbc_ranks(model, guide, num_simulations=400, num_draws=DRAWS, seed=0)
    section, figures = calibration_section(ranks, DRAWS, nuts_exact, seed=0)
    json.dumps(section, allow_nan=False)
    assert set(section) == {"simulations", "ecdf", "nuts", "c2st"}
    assert section["simulations"]["verdict"].startswith("under-covers")
    assert section["nuts"]["verdict"].startswith("nominal") and section["c2st"]["rejected"] == []
    _check_figures(figures, 2)
    assert len(figures["coverage.png"].axes) == 2
    lines = calibration_lines(section)
    text = "\n".join(lines)
    assert lines[0].startswith("## Calibration") and "over-confident" in text and "| vs NUTS |" in text
    assert "figures/coverage.png" in text and "figures/sbc_ecdf.png" in text and "trivially" not in text
    assert "trivially good" in "\n".join(calibration_lines(section, collapsed=True))
    summary = calibration_summary(section)
    assert "\n" not in summary and "vs NUTS" in summary and "under-covers" in summary


def test_the_diagnose_section_without_nuts_bounds_its_panels():
    rng = np.random.default_rng(10)
    ranks = np.concatenate([rng.integers(0, DRAWS + 1, size=(400, 10)), _ranks_of(rng, 0.5, 0.0, 400, 2)], axis=1)
    section, figures = calibration_section(ranks, DRAWS, None)
    json.dumps(section, allow_nan=False)
    assert "skipped" in section["nuts"] and "skipped" in section["c2st"]
    assert section["ecdf"]["outside"] == [10, 11]
    _check_figures(figures, 8)
    titles = [ax.get_title() for ax in figures["sbc_ecdf.png"].axes]
    assert len(titles) == 8 and titles[-2:] == [
        "z[10]: leaves the band (U-shaped)",
        "z[11]: leaves the band (U-shaped)",
    ]
    assert len(figures["coverage.png"].axes) == 1
    text = "\n".join(calibration_lines(section))
    assert "skipped" in text and "| vs NUTS |" not in text
    assert "vs NUTS" not in calibration_summary(section)
