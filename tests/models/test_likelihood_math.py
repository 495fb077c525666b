"""Per-likelihood checks that the numbers are right: masses sum to 1 over the whole support, densities
integrate to 1 on a fine grid, parameter layouts, and agreement with independent reference formulas.

Everything is on a one-feature data shape ``(1,)`` unless a layout is being checked, so that one
``log_prob`` call scores a whole grid of values.
"""

import math

import pyro.distributions as dist
import pytest
import torch

from ppl_vae.models.likelihoods import (
    Beta,
    Categorical256,
    ContinuousBernoulli,
    DiscretizedLogistic,
    DiscretizedLogisticDistribution,
    Gaussian,
    GaussianPerFeature,
    Laplace,
    NegativeBinomial,
    Poisson,
)

ONE = (1,)
LEVELS = torch.arange(256, dtype=torch.float64) / 255  # every 8-bit grey level


def integral(lik, params, lo, hi, n=400_001):
    """Trapezoid integral of p(x | params) over [lo, hi] for a one-feature likelihood, in float64."""
    grid = torch.linspace(lo, hi, n, dtype=torch.float64)
    with torch.no_grad():
        log_p = lik(params).log_prob(grid.to(params.dtype).unsqueeze(-1)).double()
    return torch.trapezoid(log_p.exp(), grid).item()


def total_mass(lik, params, values):
    """Sum of p(x | params) over the values ``(V,)``, for a one-feature likelihood, in float64."""
    with torch.no_grad():
        log_p = lik(params).log_prob(values.to(params.dtype).unsqueeze(-1)).double()
    return log_p.logsumexp(0).exp().item()


# -- continuous: densities integrate to 1 -------------------------------------------------------------


@pytest.mark.parametrize("logit", [-40.0, -25.0, -5.0, -0.05, -1e-3, 0.0, 1e-5, 0.3, 5.0, 25.0, 40.0])
def test_continuous_bernoulli_integrates_to_one_in_float32(logit):
    """Pyro's (torch's) ContinuousBernoulli integrates to 0.64 at logit 25 in float32; this one to 1."""
    assert integral(ContinuousBernoulli(ONE), torch.tensor([logit]), 0.0, 1.0) == pytest.approx(1.0, abs=2e-5)


def test_continuous_bernoulli_matches_pyro_where_pyro_is_exact():
    """In float64 and away from the saturation, Pyro's density and mean are exact: agree with them."""
    logits = torch.tensor([-7.0, -1.0, -0.004, 0.002, 0.2, 3.0, 9.0], dtype=torch.float64)
    x = torch.tensor([0.0, 0.1, 0.5, 0.77, 1.0], dtype=torch.float64).unsqueeze(-1)
    lik = ContinuousBernoulli(ONE).double()
    ours = lik(logits.unsqueeze(-1)).log_prob(x.unsqueeze(-1))
    reference = dist.ContinuousBernoulli(logits=logits).log_prob(x)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-9)
    torch.testing.assert_close(
        lik.mean(logits.unsqueeze(-1)).squeeze(-1), dist.ContinuousBernoulli(logits=logits).mean, rtol=0, atol=1e-9
    )


def test_continuous_bernoulli_mean_is_not_the_sigmoid_and_is_exact_for_large_logits():
    lik = ContinuousBernoulli(ONE)
    logits = torch.tensor([[-60.0], [-5.0], [5.0], [60.0]])
    # mean(l) = 1 / (1 - e^{-l}) - 1 / l, e.g. 1 - 1/60 at l = 60 (torch's saturates at 0.937).
    expected = torch.tensor([[1 / 60], [1 / (1 - math.exp(5)) + 1 / 5], [1 / (1 - math.exp(-5)) - 1 / 5], [1 - 1 / 60]])
    torch.testing.assert_close(lik.mean(logits), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("factory", [Gaussian, GaussianPerFeature, Laplace])
@pytest.mark.parametrize("loc,scale", [(0.3, 0.05), (-2.0, 1.0), (5.0, 4.0)])
def test_location_scale_densities_integrate_to_one(factory, loc, scale):
    lik = factory(ONE, scale=scale).double()
    width = 40 * scale  # Laplace tail beyond 40 scales: e^-40
    params = torch.tensor([loc], dtype=torch.float64)
    assert integral(lik, params, loc - width, loc + width) == pytest.approx(1.0, abs=1e-7)


@pytest.mark.parametrize("alpha,beta", [(1.0, 1.0), (2.0, 5.0), (1.3, 1.1), (30.0, 2.0)])
def test_beta_integrates_to_one_over_its_stretched_support(alpha, beta):
    lik = Beta(ONE).double()
    raw = torch.tensor([alpha, beta], dtype=torch.float64) - lik.min_concentration
    params = raw.expm1().log()  # inverse softplus
    m = lik.margin
    assert integral(lik, params, -m, 1 + m) == pytest.approx(1.0, abs=1e-5)  # y^0.3 at the ends: grid error ~4e-7


def test_beta_scores_edge_values_as_the_squeezed_beta_plus_the_jacobian():
    """The documented choice: log p(x) = log Beta(eps + (1 - 2 eps) x) + log(1 - 2 eps), finite at 0 and 1
    even for concentrations below 1 (where the Beta density is infinite at the ends)."""
    lik = Beta((2,))
    params = torch.tensor([-3.0, 0.5, 1.0, -2.0])  # alpha = softplus(-3, 0.5) + 1e-3, beta = softplus(1, -2) + 1e-3
    alpha = torch.nn.functional.softplus(params[:2]) + 1e-3
    beta = torch.nn.functional.softplus(params[2:]) + 1e-3
    x = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.5, 0.25]])
    eps = lik.eps
    expected = (dist.Beta(alpha, beta).log_prob(eps + (1 - 2 * eps) * x) + math.log(1 - 2 * eps)).sum(-1)
    log_p = lik(params).log_prob(x)
    assert torch.isfinite(log_p).all()
    torch.testing.assert_close(log_p, expected)
    torch.testing.assert_close(lik.mean(params), (alpha / (alpha + beta) - eps) / (1 - 2 * eps))


# -- discrete: masses sum to 1 -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "loc,log_scale",
    [
        (0.5, -3.0),
        (0.0, -5.0),
        (1.0, -1.0),
        (0.37, -10.0),
        (0.37, -30.0),
        (-3.0, 0.0),
        (4.0, -2.0),
        (0.5, 8.0),
        (0.5, 40.0),
        (0.2, -6.2),
    ],
)
def test_discretized_logistic_masses_sum_to_one_over_the_256_levels(loc, log_scale):
    lik = DiscretizedLogistic(ONE)
    assert total_mass(lik, torch.tensor([loc, log_scale]), LEVELS) == pytest.approx(1.0, abs=1e-5)


def test_discretized_logistic_masses_match_the_logistic_cdf():
    """Every bin's mass is F(upper edge) - F(lower edge), the edge bins taking the tails (float64 reference)."""
    loc, log_scale = torch.tensor(0.1, dtype=torch.float64), torch.tensor(-2.5, dtype=torch.float64)
    cdf = lambda t: torch.sigmoid((t - loc) / log_scale.exp())  # noqa: E731
    upper = torch.where(LEVELS == 1, torch.ones(()), cdf(LEVELS + 0.5 / 255))
    lower = torch.where(LEVELS == 0, torch.zeros(()), cdf(LEVELS - 0.5 / 255))
    expected = (upper - lower).log()
    log_p = DiscretizedLogisticDistribution(loc, log_scale).log_prob(LEVELS)
    torch.testing.assert_close(log_p, expected, rtol=1e-9, atol=1e-12)
    assert expected[0] > expected[1]  # loc is 25 levels up but the first bin holds the whole left tail


def test_discretized_logistic_far_tail_bins_are_finite_and_exact():
    """A bin 40 scales from loc: mass ~ e^-40 (float32 sigmoid differences would give 0 and -inf)."""
    d = DiscretizedLogisticDistribution(torch.tensor(0.0), torch.tensor(math.log(0.01)))
    level = torch.tensor(102 / 255)  # 40 scales above loc
    log_p = d.log_prob(level)
    # In the right tail, difference of survival functions: 1 - F(t) = sigmoid(-t / s), accurate in float64.
    edges = torch.tensor([101.5, 102.5], dtype=torch.float64) / 255 / 0.01
    reference = (torch.sigmoid(-edges[0]) - torch.sigmoid(-edges[1])).log()
    assert torch.isfinite(log_p) and log_p.item() == pytest.approx(reference.item(), rel=1e-5)


def test_discretized_logistic_support_enumerates_the_256_levels():
    d = DiscretizedLogisticDistribution(torch.zeros(3), torch.zeros(3))
    values = d.enumerate_support()
    assert values.shape == (256, 3)
    torch.testing.assert_close(d.log_prob(values).exp().sum(0), torch.ones(3))


def test_categorical_masses_sum_to_one_and_equal_the_softmax():
    lik = Categorical256(ONE)
    params = 3 * torch.randn(256)
    assert total_mass(lik, params, LEVELS) == pytest.approx(1.0, abs=1e-5)
    log_p = lik(params).log_prob(LEVELS.float().unsqueeze(-1))
    torch.testing.assert_close(log_p, params.log_softmax(0))


@pytest.mark.parametrize("log_rate", [-6.0, -1.0, 0.0, 2.0, 6.0])
def test_poisson_masses_sum_to_one(log_rate):
    # rate e^6 = 403: the tail beyond 3000 is far below 1e-300
    assert total_mass(Poisson(ONE), torch.tensor([log_rate]), torch.arange(3001.0)) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("dispersion", ["feature", "shared"])
@pytest.mark.parametrize("total_count", [0.3, 1.0, 20.0])
@pytest.mark.parametrize("log_mean", [-2.0, 1.5, 4.0])
def test_negative_binomial_masses_sum_to_one(dispersion, total_count, log_mean):
    # worst case mean e^4 = 55, r = 0.3: P(X > 20000) ~ (55 / 55.3)^20000 ~ e^-110
    lik = NegativeBinomial(ONE, dispersion=dispersion, total_count=total_count)
    assert total_mass(lik, torch.tensor([log_mean]), torch.arange(20001.0)) == pytest.approx(1.0, abs=1e-5)


def test_negative_binomial_mean_variance_and_float32_precision_at_large_total_count():
    lik = NegativeBinomial(ONE, total_count=2.0)
    px = lik(torch.tensor([math.log(10.0)]))
    torch.testing.assert_close(px.mean, torch.tensor([10.0]))
    torch.testing.assert_close(px.variance, torch.tensor([10.0 + 10.0**2 / 2]))  # mu + mu^2 / r
    # Near the Poisson limit, lgamma(r + x) - lgamma(r) must not lose digits in float32.
    with torch.no_grad():
        lik.log_total_count.fill_(math.log(1e5))
    x = torch.tensor([[3.0], [10.0], [40.0]])
    ours = lik(torch.tensor([math.log(10.0)])).log_prob(x)
    r, mu = torch.tensor(1e5, dtype=torch.float64), torch.tensor(10.0, dtype=torch.float64)
    reference = dist.NegativeBinomial(total_count=r, logits=(mu / r).log()).log_prob(x.double().squeeze(-1))
    torch.testing.assert_close(ours.double(), reference, rtol=0, atol=1e-4)


def test_negative_binomial_dispersion_parameters():
    assert NegativeBinomial((2, 3)).log_total_count.shape == (2, 3)
    assert NegativeBinomial((2, 3), dispersion="shared").log_total_count.shape == ()
    with pytest.raises(ValueError, match="dispersion"):
        NegativeBinomial((2, 3), dispersion="gene")


# -- layouts and global parameters --------------------------------------------------------------------


def test_two_parameter_layout_is_parameter_major():
    """params (..., 2 * D) read as (..., 2, *data_shape): entry j * D + i is parameter j of feature i."""
    shape = (2, 3)
    params = torch.randn(2 * 6)
    d = DiscretizedLogistic(shape)(params).base_dist
    torch.testing.assert_close(d.loc, params[:6].reshape(shape))
    torch.testing.assert_close(d.log_scale, params[6:].reshape(shape))
    b = Beta(shape)(params).base_dist
    torch.testing.assert_close(b.concentration1, torch.nn.functional.softplus(params[:6]).reshape(shape) + 1e-3)
    torch.testing.assert_close(b.concentration0, torch.nn.functional.softplus(params[6:]).reshape(shape) + 1e-3)


def test_categorical_layout_is_level_major():
    """params (..., 256 * D) read as (..., 256, *data_shape): entry k * D + i is the logit of level k/255
    of feature i."""
    shape = (2, 3)
    params = torch.randn(256 * 6)
    logits = params.reshape(256, *shape)
    x = torch.tensor([[0, 17, 255], [128, 3, 254]]) / 255
    expected = sum(logits.log_softmax(0)[round(float(x[i, j]) * 255), i, j] for i in range(2) for j in range(3))
    torch.testing.assert_close(Categorical256(shape)(params).log_prob(x), expected)
    expected_mean = (logits.softmax(0) * LEVELS.float().reshape(256, 1, 1)).sum(0)
    torch.testing.assert_close(Categorical256(shape).mean(params), expected_mean)


def test_scales_are_learned_globals_of_the_right_shape():
    shape = (2, 3)
    assert Gaussian(shape).log_scale.shape == () and isinstance(Gaussian(shape).log_scale, torch.nn.Parameter)
    assert GaussianPerFeature(shape).log_scale.shape == shape
    assert Laplace(shape).log_scale.shape == ()
    assert list(Gaussian(shape, scale=0.5, learn_scale=False).parameters()) == []
    lik = GaussianPerFeature(shape, scale=2.0)
    with torch.no_grad():
        lik.log_scale[0, 1] = math.log(0.1)
    px = lik(torch.zeros(6)).base_dist
    assert px.scale[0, 1].item() == pytest.approx(0.1) and px.scale[1, 2].item() == pytest.approx(2.0)


def test_beta_accepts_its_own_support_and_data_at_the_edges():
    lik = Beta(ONE)
    lik.check_support(torch.tensor([[0.0], [1.0], [0.5]]))
    lik.check_support(torch.tensor([[-lik.margin], [1 + lik.margin]]))
