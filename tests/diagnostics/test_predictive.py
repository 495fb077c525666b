"""Posterior and prior predictive checks (ppl_vae.diagnostics.predictive) and their diagnose section.

The references: hand-computed statistics on tiny data sets; probabilistic PCA, whose posterior predictive
and leave-one-feature-out predictive are Gaussian in closed form; and a deliberately misspecified PPCA
(fitted by maximum likelihood to Student-t data) against a well-specified one (fitted to PPCA data).
Thresholds are the module's derived ones (Bonferroni over the statistics at alpha = 0.01), never tuned here.
"""

import json
import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from matplotlib.figure import Figure
from scipy import stats

from ppl_vae.app.predictive_checks import loo_pit_figure, predictive_lines, predictive_section, predictive_summary
from ppl_vae.diagnostics import predictive as P
from ppl_vae.errors import ConfigError
from ppl_vae.models import LIKELIHOODS
from tests.common import assert_within_se, binary_data, seeded_vae
from tests.ppca import make_ppca, plain_pyro_pair
from tests.ppca_fit import fit_ppca

# ---------------------------------------------------------------------------------------------------
# Data kinds


@pytest.mark.parametrize(
    ("likelihood", "shape", "kind"),
    [
        ("bernoulli", (1, 8, 8), "image"),
        ("bernoulli", (64,), "image"),  # a square-flattened image
        ("bernoulli", (5,), "table"),
        ("continuous-bernoulli", (3, 4, 4), "image"),
        ("beta", (8, 8), "image"),
        ("discretized-logistic", (1, 4, 4), "image"),
        ("categorical-256", (16,), "image"),
        ("gaussian", (6,), "table"),
        ("gaussian", (64,), "table"),  # real vectors are tables even when their length is square
        ("laplace", (1, 8, 8), "image"),
        ("gaussian-per-feature", (7,), "table"),
        ("poisson", (20,), "counts"),
        ("negative-binomial", (1, 8, 8), "counts"),
    ],
)
def test_data_kind_follows_the_likelihood_and_the_shape(likelihood, shape, kind):
    data = torch.zeros(3, *shape)
    assert P.data_kind(likelihood, data) == kind
    assert P.data_kind(LIKELIHOODS[likelihood](shape), data) == kind  # a module reads the same


def test_data_kind_of_a_vae_and_of_bare_values():
    vae = seeded_vae((1, 8, 8), latent_dim=2, hidden_dims=(8,))
    assert P.data_kind(vae, torch.zeros(2, 1, 8, 8)) == "image"
    assert P.data_kind(None, torch.tensor([[0.0, 3.0], [2.0, 1.0]])) == "counts"  # integers above 1
    assert P.data_kind(None, torch.tensor([[0.5, -1.0], [2.0, 1.0]])) == "table"
    assert P.data_kind(None, binary_data(4, (1, 4, 4), seed=0)) == "image"
    with pytest.raises(ConfigError, match="unknown likelihood"):
        P.data_kind("gaussian-mixture", torch.zeros(2, 3))


# ---------------------------------------------------------------------------------------------------
# Statistics on hand-computed examples

#: A drawn 8x8 image with three strokes under 8-connectivity: an L, a diagonal (whose pixels touch only
#: at corners, so it is one stroke), and a single dot; a grey pixel of 0.5 (not above the threshold).
STROKES = """
........
.#......
.#...#..
.###..#.
.......#
........
...#..:.
........
"""


def _drawn(text: str) -> torch.Tensor:
    rows = [r for r in text.strip().splitlines()]
    values = {".": 0.0, "#": 1.0, ":": 0.5}
    return torch.tensor([[values[ch] for ch in r] for r in rows])


def test_count_strokes_on_a_drawn_image_and_not_across_images():
    image = _drawn(STROKES)
    assert image.shape == (8, 8)
    assert P.count_strokes(image.numpy()) == 3
    # Stacked images never connect: the first one's bottom row and the second one's top row are inked,
    # which would join them into one component if the label structure reached across the stack.
    first, second = torch.zeros(8, 8), torch.zeros(8, 8)
    first[7, :] = 1.0
    second[0, :] = 1.0
    second[5, 5] = 1.0
    stack = torch.stack([first, second, image, torch.zeros(8, 8)]).reshape(2, 2, 8, 8)
    assert P.count_strokes(stack.numpy()).tolist() == [[1, 2], [3, 0]]


def test_image_statistics_by_hand():
    image = _drawn(STROKES)  # ink = 9 pixels of 1 + one of 0.5 = 9.5
    blank = torch.zeros(8, 8)
    data = torch.stack([image, blank])[:, None]  # (N = 2, 1, 8, 8)
    s = P.statistics_for("image", data)
    assert s.names == ["ink_mean", "ink_sd", "pixel_mean", "strokes_mean"]
    values = s(data)
    assert values["ink_mean"] == pytest.approx([9.5 / 2])
    assert values["ink_sd"] == pytest.approx([9.5 / 2])  # population sd of {9.5, 0}
    assert values["pixel_mean"].shape == (1, 64)
    assert values["pixel_mean"][0].reshape(8, 8) == pytest.approx(image.numpy() / 2)
    assert values["strokes_mean"] == pytest.approx([1.5])  # (3 + 0) / 2
    batch = s(torch.stack([data, data.flip(0), torch.zeros_like(data)]))  # (B = 3, N, ...)
    assert batch["ink_mean"] == pytest.approx([4.75, 4.75, 0.0])
    assert batch["pixel_mean"].shape == (3, 64)
    flat = P.statistics_for("image", data.reshape(2, 64))  # a square-flattened image reads the same
    assert flat(data.reshape(2, 64))["strokes_mean"] == pytest.approx([1.5])


def test_table_statistics_by_hand():
    # Column 0: 0, 0, 0, 4 -> mean 1, deviations (-1, -1, -1, 3): m2 = 12/4 = 3, m3 = 24/4 = 6,
    # m4 = 84/4 = 21, so sd = sqrt 3, skewness = 6 / 3^1.5, excess kurtosis = 21/9 - 3 = -2/3.
    # Column 1: 1, 2, 3, 4 (linear quantiles: 5% at position 0.15 -> 1.15; median 2.5; 95% -> 3.85).
    # Column 2: -column 1, so its correlation with column 1 is -1; with column 0 it is corr(c0, c1).
    c0 = torch.tensor([0.0, 0.0, 0.0, 4.0])
    c1 = torch.tensor([1.0, 2.0, 3.0, 4.0])
    data = torch.stack([c0, c1, -c1], dim=1)  # (4, 3)
    s = P.statistics_for("table", data)
    assert s.columns == (0, 1, 2)  # variances 3, 1.25, 1.25: largest first, ties in order
    assert s.pairs == ((0, 1), (0, 2), (1, 2))
    v = {k: value[0] for k, value in s(data).items()}
    assert v["mean"] == pytest.approx([1.0, 2.5, -2.5])
    assert v["sd"] == pytest.approx([math.sqrt(3), math.sqrt(1.25), math.sqrt(1.25)])
    assert v["skewness"][0] == pytest.approx(6 / 3**1.5)
    assert v["kurtosis"][0] == pytest.approx(21 / 9 - 3)
    assert v["q05"][1] == pytest.approx(1.15) and v["median"][1] == pytest.approx(2.5)
    assert v["q95"][1] == pytest.approx(3.85)
    r01 = np.corrcoef(c0.numpy(), c1.numpy())[0, 1]
    assert v["correlation"] == pytest.approx([r01, -r01, -1.0])


def test_table_statistics_use_a_bounded_number_of_columns():
    data = torch.randn(30, 50, generator=torch.Generator().manual_seed(0)) * torch.logspace(0, 3, 50)
    s = P.statistics_for("table", data)
    assert len(s.columns) == P.MAX_TABLE_COLUMNS and s.columns[0] == 49  # the widest column first
    assert len(s.pairs) == P.MAX_CORRELATION_COLUMNS * (P.MAX_CORRELATION_COLUMNS - 1) // 2
    assert s(data)["kurtosis"].shape == (1, P.MAX_TABLE_COLUMNS)


def test_count_statistics_by_hand():
    # Feature 0: 0, 0, 1 -> mean 1/3, variance 2/9, ratio 2/3; feature 1: 2, 4, 0 -> mean 2, variance 8/3,
    # ratio 4/3; dispersion = mean of the ratios = 1. Three zeros among six counts; largest count 4.
    data = torch.tensor([[0.0, 2.0], [0.0, 4.0], [1.0, 0.0]])
    v = {k: value[0] for k, value in P.statistics_for("counts", data)(data).items()}
    assert v == pytest.approx({"zero_fraction": 0.5, "mean": 7 / 6, "dispersion": 1.0, "max": 4.0})


# ---------------------------------------------------------------------------------------------------
# Predictive p-values


def test_predictive_pvalue_by_hand():
    replicated = np.array([1.0, 2.0, 2.0, 3.0])
    # observed 2: one replicate above, two ties -> ppp = (1 + 2/2) / 4 = 0.5
    ppp, se, p = P.predictive_pvalue(2.0, replicated)
    assert ppp == 0.5 and se == pytest.approx(math.sqrt(0.25 / 4))
    # observed 2.5: one above -> ppp 0.25; Monte Carlo p-value 2 min((1 + 1)/5, (1 + 3)/5) = 0.8
    assert P.predictive_pvalue(2.5, replicated) == pytest.approx((0.25, math.sqrt(0.25 * 0.75 / 4), 0.8))
    # above every replicate: ppp 0 (s.e. 0), the smallest p-value 2/(S+1) two-sided, 1/(S+1) one-sided
    assert P.predictive_pvalue(9.0, replicated) == pytest.approx((0.0, 0.0, 2 / 5))
    assert P.predictive_pvalue(9.0, replicated, two_sided=False)[2] == pytest.approx(1 / 5)


def test_an_exactly_reproduced_statistic_has_ppp_one_half_and_is_not_extreme():
    """A plain Pyro model whose images are blank whatever z is, against blank data: every statistic of every
    replicate equals the observed one, so ppp = 1/2 exactly (all ties), and nothing is extreme."""

    def model(x=None, num_samples=None):
        n = x.shape[0] if x is not None else num_samples
        with pyro.plate("data", n):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            probs = torch.zeros(n, 1, 4, 4) * z.sum(-1).reshape(-1, 1, 1, 1)
            return pyro.sample("x", dist.Bernoulli(probs=probs).to_event(3), obs=x)

    def guide(x, num_samples=None):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))

    data = torch.zeros(10, 1, 4, 4)
    for kind in ("posterior", "prior"):
        check = P.predictive_check(model, guide, data, kind=kind, likelihood="bernoulli", seed=0)
        assert check.extreme == []
        for s in check.statistics.values():
            # all ties: ppp = 1/2 exactly; the Monte Carlo p-value (1 + S/2) / (S + 1) is about 1/2 one-sided
            # (the pixel profile) and 1 two-sided
            assert s.ppp == 0.5, s.name
            assert s.p_value == pytest.approx(1.0 if s.sided == "two-sided" else (1 + 400) / 801), s.name
        assert "no statistic is extreme" in check.verdict


def test_too_few_replicates_for_the_threshold_are_refused():
    """4 image statistics at alpha 0.01: two-sided p-values reach alpha/4 = 0.0025 only when
    2/(S+1) <= 0.0025, i.e. S >= 799."""
    images = binary_data(20, (1, 4, 4), seed=0)
    vae = seeded_vae((1, 4, 4), latent_dim=2, hidden_dims=(8,))
    s = P.statistics_for("image", images)
    assert P.min_num_samples(s) == 799
    assert P.extreme_threshold(4) == pytest.approx(0.0025)
    with pytest.raises(ConfigError, match="num_samples 799 or more") as error:
        P.predictive_check(vae.model, vae.guide, images, num_samples=798)
    assert "\n" not in str(error.value)
    assert P.replicates_for(vae, images) == 800 and P.replicates_for(vae, images, 799) == 799
    with pytest.raises(ConfigError, match="--ppc-samples 799 or more"):
        P.replicates_for(vae, images, 798, name="--ppc-samples")
    # tables: 8 profile statistics, one-sided: 1/(S+1) <= 0.01/8 -> S >= 799 as well; a family level of
    # 0.05 needs S >= 159 (8/0.05 - 1)
    table = torch.randn(20, 6)
    assert P.min_num_samples(P.statistics_for("table", table)) == 799
    assert P.min_num_samples(P.statistics_for("table", table), alpha=0.05) == 159
    with pytest.raises(ConfigError, match="image-shaped"):
        P.statistics_for("image", table)


# ---------------------------------------------------------------------------------------------------
# Replicated data


def test_posterior_predictive_of_exact_ppca_matches_the_closed_form():
    """x_rep_n ~ p(x | z), z ~ p(z | x_n) is Gaussian with mean W E[z | x_n] + b and covariance
    W Cov[z | x_n] W^T + sigma^2 I. The plain Pyro pair (no ppl_vae.VAE) must reproduce both moments,
    per example and feature, within 4 Monte Carlo standard errors."""
    ppca = make_ppca()
    model, guide = plain_pyro_pair(ppca)
    x = ppca.data(4, torch.Generator().manual_seed(3))
    s = 4000
    reps = P.posterior_predictive(model, guide, x, num_samples=s, seed=0)
    assert reps.shape == (s, 4, 6)
    loc, scale = ppca.posterior(x)
    mean = loc @ ppca.W.T + ppca.b
    var = ((ppca.W * scale) ** 2).sum(1) + ppca.sigma**2  # (D,) diagonal of the covariance
    assert_within_se(reps.mean(0), mean, (var / s).sqrt(), what="posterior predictive mean")
    # the sample variance of S Gaussian draws has s.e. var * sqrt(2 / (S - 1))
    assert_within_se(reps.var(0), var.expand(4, 6), var * math.sqrt(2 / (s - 1)), what="posterior predictive var")


def test_replicate_shapes_for_images_tables_counts_and_the_prior():
    images = binary_data(7, (1, 8, 8), seed=0)
    vae = seeded_vae((1, 8, 8), latent_dim=2, hidden_dims=(8,))
    assert P.posterior_predictive(vae.model, vae.guide, images, num_samples=5, seed=0).shape == (5, 7, 1, 8, 8)
    assert P.prior_predictive(vae.model, num_samples=5, num_examples=3, seed=0).shape == (5, 3, 1, 8, 8)
    counts_vae = seeded_vae((12,), latent_dim=2, hidden_dims=(8,), likelihood="poisson")
    counts = torch.poisson(torch.full((6, 12), 2.0), generator=torch.Generator().manual_seed(0))
    reps = P.posterior_predictive(counts_vae.model, counts_vae.guide, counts, num_samples=4, seed=0)
    assert reps.shape == (4, 6, 12) and bool((reps == reps.round()).all()) and bool((reps >= 0).all())
    assert P.prior_predictive(counts_vae.model, num_samples=2, num_examples=9, seed=0).shape == (2, 9, 12)
    model, guide = plain_pyro_pair(make_ppca())
    table = torch.randn(5, 6, dtype=torch.float64)
    assert P.posterior_predictive(model, guide, table, num_samples=3, seed=0).shape == (3, 5, 6)
    assert P.prior_predictive(model, num_samples=3, num_examples=8, seed=0).shape == (3, 8, 6)


def test_structured_models_replicate_with_their_local_sites_and_labels():
    """A semi-supervised guide draws a class y per example, which the replicates hold; a conditional model
    needs each example's class c (refused in one line without it)."""
    images = binary_data(6, (1, 4, 4), seed=1)
    semi = seeded_vae((1, 4, 4), latent_dim=2, hidden_dims=(8,), prior="semi-supervised:3")
    assert P.posterior_predictive(semi.model, semi.guide, images, num_samples=3, seed=0).shape == (3, 6, 1, 4, 4)
    conditional = seeded_vae((1, 4, 4), latent_dim=2, hidden_dims=(8,), prior="conditional:3")
    c = torch.tensor([0, 1, 2, 0, 1, 2])
    with pytest.raises(ConfigError, match="pass c="):
        P.posterior_predictive(conditional.model, conditional.guide, images, num_samples=3)
    assert P.posterior_predictive(conditional.model, conditional.guide, images, num_samples=3, c=c).shape[:2] == (3, 6)
    assert P.prior_predictive(conditional.model, num_samples=2, num_examples=6, c=c).shape[:2] == (2, 6)


def test_replicates_beyond_the_memory_budget_are_refused_in_one_line(monkeypatch):
    monkeypatch.setenv("PPL_VAE_MAX_MEMORY", "1M")
    images = binary_data(100, (1, 8, 8), seed=0)
    vae = seeded_vae((1, 8, 8), latent_dim=2, hidden_dims=(8,))
    # 1000 x 100 x 64 float32 values, twice: 48.8 MiB against a 1 MiB budget
    with pytest.raises(ConfigError, match=r"48\.8 MiB.*1\.0 MiB.*num_samples <= 20") as error:
        P.posterior_predictive(vae.model, vae.guide, images, num_samples=1000, seed=0)
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="memory limit"):
        P.prior_predictive(vae.model, num_samples=1000, num_examples=100, seed=0)
    # the check summarizes replicates a chunk at a time, so the same sizes pass: one replicated data set
    # (100 x 64 values, float64, a few copies) fits the budget
    check = P.predictive_check(vae.model, vae.guide, images, num_samples=800, seed=0)
    assert check.num_samples == 800 and len(check.statistics["ink_mean"].replicated) == 800


# ---------------------------------------------------------------------------------------------------
# The misspecification test of the issue


@pytest.fixture(scope="module")
def ppca_fits():
    """PPCA (D = 6, d = 2, sigma = 0.5) fitted by maximum likelihood to N = 1000 examples of (a) PPCA data
    from the same structure and (b) the same structure with Student-t noise of 3 degrees of freedom
    (scale 0.5): the right covariance, the wrong shape."""
    truth = make_ppca(D=6, d=2, sigma=0.5, seed=0)
    g = torch.Generator().manual_seed(1)
    good = truth.data(1000, g)
    z = torch.randn(1000, 2, generator=g, dtype=torch.float64)
    # Student-t(3) = N(0, 1) / sqrt(chi^2_3 / 3), from the same private generator (a module fixture is built
    # before the per-test seeding, so it must not use the global stream)
    chi2 = torch.randn(3, 1000, 6, generator=g, dtype=torch.float64).pow(2).sum(0)
    t3 = torch.randn(1000, 6, generator=g, dtype=torch.float64) / (chi2 / 3).sqrt()
    bad = z @ truth.W.T + truth.b + 0.5 * t3
    return {"right": (fit_ppca(good, 2), good), "wrong": (fit_ppca(bad, 2), bad)}


@pytest.mark.parametrize("kind", ["posterior", "prior"])
def test_misspecified_ppca_has_an_extreme_kurtosis_and_the_right_one_nothing_extreme(ppca_fits, kind):
    """Table statistics: 8 profiles over the 6 columns, judged one-sided at alpha/8 = 0.00125, reachable
    since S = 800 gives p-values down to 1/801 = 0.00125 (the default S: the fewest that reach it).

    Expected numbers. The fitted Gaussian model's replicates have per-column excess kurtosis 0 with sd
    about sqrt(24/N) = 0.15, so the largest standardized discrepancy over 6 columns is about 1.5 +- 0.6
    (half-normal maxima). Student-t(3) noise has no fourth moment: its sample kurtosis grows with N and is
    12.7 in the worst column here (column 4; z = 82 posterior, 85 prior), above every replicate, so ppp = 0
    and p = 1/801: extreme, by a margin far beyond what another seed could change (skewness is flagged
    too, by the same tails). For the well-specified fit no flag has probability more than alpha = 0.01
    (the posterior check is conservative, so less), and with these seeds none is raised; the measured
    kurtosis ppp is 0.65 (posterior) and 0.70 (prior). (The models are fitted to the very examples they
    are checked on, so e.g. the column means sit at the centre of the replicates, ppp = 1: double use of
    the data makes the checks more conservative still, and a one-sided profile does not flag it.)"""
    results = {}
    for name, (fitted, data) in ppca_fits.items():
        results[name] = P.predictive_check(
            fitted.vae.model, fitted.vae.guide, data, kind=kind, seed=0, loo_pit_samples=None
        )
    wrong, right = results["wrong"], results["right"]
    assert wrong.num_samples == right.num_samples == 800
    assert wrong.threshold == pytest.approx(0.01 / 8)
    kurtosis = wrong.statistics["kurtosis"]
    assert kurtosis.extreme and "kurtosis" in wrong.extreme
    assert kurtosis.ppp == 0.0 and kurtosis.p_value == pytest.approx(1 / 801)
    assert kurtosis.worst["observed"] > 5 and kurtosis.worst["replicated_mean"] < 1 and kurtosis.direction == "higher"
    assert "kurtosis" in wrong.verdict
    assert right.extreme == [], right.verdict
    assert not right.statistics["kurtosis"].extreme and right.statistics["kurtosis"].p_value > right.threshold


# ---------------------------------------------------------------------------------------------------
# LOO-PIT


def _exact_leave_feature_out_pit(ppca, x: torch.Tensor) -> np.ndarray:
    """P(X_j <= x_j | x_-j) under p(x) = N(b, W W^T + sigma^2 I): with precision matrix Q, the conditional
    of x_j is Gaussian with mean b_j - sum_{k != j} Q_jk (x_k - b_k) / Q_jj and variance 1 / Q_jj."""
    cov = ppca.W @ ppca.W.T + ppca.sigma**2 * torch.eye(ppca.W.shape[0], dtype=ppca.W.dtype)
    precision = torch.linalg.inv(cov)
    q = torch.diagonal(precision)
    mean = x - ((x - ppca.b) @ precision) / q
    return torch.distributions.Normal(mean, q.rsqrt()).cdf(x).numpy()


@pytest.fixture(scope="module")
def exact_pit():
    """LOO-PIT of exact PPCA (D = 10, d = 2, sigma = 1; the exact posterior as guide) on 500 examples from it.
    With these loadings every column's leave-feature-out importance ratio 1 / p(x_j | z) has a light
    enough tail (shape sum_k W_jk^2 / (|W_k|^2 + sigma^2) <= 0.48, finite variance) for most k-hat to be
    below 0.7."""
    ppca = make_ppca(D=10, d=2, sigma=1.0, seed=1)
    ppca.set_guide()
    x = ppca.data(500, torch.Generator().manual_seed(1))
    return ppca, x, P.loo_pit(ppca.vae.model, ppca.vae.guide, x, num_samples=1000, seed=0)


def test_loo_pit_of_exact_ppca_matches_the_closed_form_and_is_uniform(exact_pit):
    ppca, x, pit = exact_pit
    exact = _exact_leave_feature_out_pit(ppca, x)
    assert pit.values.shape == pit.khat.shape == (500, 10) and pit.reason is None
    assert pit.share_khat_over_0_7 < 0.1 and pit.num_values == int(np.isfinite(pit.values).sum())
    # Where k-hat <= 0.5 the importance weights have finite variance and their s.e. is trustworthy: every
    # value agrees with the closed form within the Bonferroni normal quantile over those values (a correct
    # estimator fails this with probability about 0.01), and on average without bias.
    reliable = pit.khat <= 0.5
    diff = (pit.values - exact)[reliable]
    z = stats.norm.isf(0.01 / (2 * diff.size))
    assert_within_se(pit.values[reliable], exact[reliable], pit.standard_error[reliable], z=z, what="LOO-PIT")
    assert_within_se(diff.mean(), 0.0, diff.std() / math.sqrt(diff.size), what="mean LOO-PIT error")
    # Uniformity: per column, the KS distance of the kept values is below its critical value at level
    # 0.01 / 10 (exact KS distribution), as is that of the exact PIT itself.
    assert pit.uniform and pit.ks_distance < pit.ks_threshold
    critical = stats.kstwo.isf(0.01 / 10, 500)
    assert max(stats.kstest(exact[:, j], "uniform").statistic for j in range(10)) < critical
    # The mean of all values is the mean over 500 independent examples of each example's average PIT, whose
    # variance is at most that of one uniform value (1/12), however the features of an example correlate.
    assert_within_se(pit.mean, 0.5, 1 / math.sqrt(12 * 500), what="mean LOO-PIT value")
    assert "close to uniform" in pit.verdict


def test_loo_pit_leaves_out_examples_whose_psis_khat_is_high():
    """PSIS log ratios passed in: an example whose ratios have a Pareto tail of shape 2 (k-hat far above
    0.7) loses all its values; examples with equal ratios (an exact guide: k-hat -inf) keep theirs."""
    ppca = make_ppca()
    ppca.set_guide()
    x = ppca.data(12, torch.Generator().manual_seed(0))
    ratios = torch.zeros(400, 12, dtype=torch.float64)
    u = torch.rand(400, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ratios[:, 3] = -2.0 * u.log()  # log of U^(-2): a Pareto tail with shape k = 2
    pit = P.loo_pit(ppca.vae.model, ppca.vae.guide, x, num_samples=200, seed=0, log_ratios=ratios)
    assert np.isnan(pit.values[3]).all()
    others = np.arange(12) != 3
    kept = np.isfinite(pit.values)
    assert np.array_equal(kept[others], pit.khat[others] <= P.LOO_PIT_KHAT)  # only their own k-hat counts
    assert kept[others].mean() > 0.5
    assert pit.share_left_out == pytest.approx(1 - kept.mean())


def test_loo_pit_refuses_discrete_data_and_images():
    images = binary_data(5, (1, 4, 4), seed=0)
    vae = seeded_vae((1, 4, 4), latent_dim=2, hidden_dims=(8,))
    pit = P.loo_pit(vae.model, vae.guide, images, num_samples=20)
    assert pit.values is None and "discrete" in pit.reason and "randomization" in pit.reason
    assert pit.to_dict() == {"num_samples": 20, "verdict": f"not computed: {pit.reason}", "reason": pit.reason}
    counts_vae = seeded_vae((5,), latent_dim=2, hidden_dims=(8,), likelihood="negative-binomial")
    counts = torch.poisson(torch.full((4, 5), 2.0), generator=torch.Generator().manual_seed(0))
    assert "count" in P.loo_pit(counts_vae.model, counts_vae.guide, counts, num_samples=20).reason
    grey = seeded_vae((1, 4, 4), latent_dim=2, hidden_dims=(8,), likelihood="gaussian")
    assert "tables only" in P.loo_pit(grey.model, grey.guide, images, num_samples=20).reason
    check = P.predictive_check(vae.model, vae.guide, images, seed=0, loo_pit_samples=20)
    assert check.loo_pit.values is None and "discrete" in check.to_dict()["loo_pit"]["reason"]


# ---------------------------------------------------------------------------------------------------
# Repeatability, state, non-default priors


def _rng_and_store():
    return torch.get_rng_state(), sorted(pyro.get_param_store().keys())


@pytest.mark.parametrize("prior", ["laplace", "learned-normal"])
def test_every_estimator_is_repeatable_and_leaves_state_alone(prior):
    vae = seeded_vae((5,), latent_dim=2, hidden_dims=(8,), likelihood="gaussian", prior=prior)
    data = torch.randn(30, 5, generator=torch.Generator().manual_seed(2))
    before = [p.detach().clone() for p in vae.parameters()]
    calls = {
        "posterior_predictive": lambda seed: P.posterior_predictive(
            vae.model, vae.guide, data, num_samples=4, seed=seed
        ),
        "prior_predictive": lambda seed: P.prior_predictive(vae.model, num_samples=4, num_examples=6, seed=seed),
        "check": lambda seed: P.predictive_check(vae.model, vae.guide, data, seed=seed, loo_pit_samples=50).to_dict(),
        "loo_pit": lambda seed: P.loo_pit(vae.model, vae.guide, data, num_samples=50, seed=seed).values,
    }
    for name, call in calls.items():
        first = call(0)
        state, store = _rng_and_store()
        second = call(0)
        after_state, after_store = _rng_and_store()
        assert torch.equal(after_state, state) and after_store == store, name  # no stream or store change
        assert _same(first, second), name
        assert not _same(first, call(1)), name  # the seed matters
    assert all(torch.equal(a, b) for a, b in zip(before, vae.parameters()))


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b, equal_nan=True)
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


# ---------------------------------------------------------------------------------------------------
# The diagnose section


def test_the_diagnose_section_on_a_tiny_digits_vae(digits):
    heldout = (digits.heldout[:60] > 0.5).float()
    vae = seeded_vae((1, 8, 8), latent_dim=2, hidden_dims=(16,))
    section, figures = predictive_section(vae, heldout, seed=0)
    text = json.dumps(section, allow_nan=False)  # JSON-ready: no NaN or inf
    assert set(section) == {"posterior", "prior"} and "loo_pit" in section["posterior"]
    post = section["posterior"]
    assert post["kind"] == "posterior" and post["data_kind"] == "image" and post["num_samples"] == 800
    assert set(post["statistics"]) == {"ink_mean", "ink_sd", "pixel_mean", "strokes_mean"}
    assert "per_example" not in text and "replicated" not in post["statistics"]["ink_mean"]  # bulky arrays
    assert set(figures) == {"ppc.png", "ppc_pvalues.png"}  # no LOO-PIT for binary images
    for name, fig in figures.items():
        assert isinstance(fig, Figure)
        for ax in fig.axes:
            if ax.get_visible() and ax.has_data():
                assert ax.get_xlabel() and ax.get_ylabel(), f"{name}: unlabelled axis {ax.get_title()!r}"
    lines = predictive_lines(section)
    report = "\n".join(lines)
    assert report.startswith("## Posterior and prior predictive checks")
    assert "conservative" in report and "collapsed" in report and "figures/ppc.png" in report
    assert "LOO-PIT:** not computed" in report
    # An untrained decoder draws images of independent pixels near 1/2: far more ink than the digits.
    assert "ink_mean" in post["extreme"] and "more ink than the real ones" in report
    summary = predictive_summary(section)
    assert "\n" not in summary and summary.startswith("predictive checks: posterior")


def test_the_loo_pit_figure_is_labelled(exact_pit):
    fig = loo_pit_figure(exact_pit[2])
    assert len(fig.axes) == 2 and all(ax.get_xlabel() and ax.get_ylabel() for ax in fig.axes)
