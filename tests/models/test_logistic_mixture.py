"""The mixture of discretized logistics (``logistic-mixture``): its masses sum to one over the 256 levels
for any parameters, K = 1 is the discretized logistic, draws follow the mass function, gradients stay
finite at the edges, the ``:K`` option, and a VAE with it trains.

The generic checks every likelihood gets (shapes, support, particles, mean against draws, one SVI step)
are in test_likelihoods.py.
"""

import math

import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam
from scipy.stats import chi2

from ppl_vae import VAE, ConfigError
from ppl_vae.infer.evaluate import evaluate
from ppl_vae.models import LIKELIHOODS
from ppl_vae.models.likelihoods import (
    DiscretizedLogistic,
    DiscretizedLogisticMixture,
    DiscretizedLogisticMixtureDistribution,
)

LEVELS = torch.arange(256, dtype=torch.float64) / 255  # every 8-bit level


def _extreme_and_random_params(k: int, dtype=torch.float64):
    """``(N, K)`` logits, locations and log-scales: every combination of extreme values (locations far
    outside [0, 1] and on bin edges, log-scales beyond both clamps, saturated logits) followed by random
    draws."""
    edge = 151.5 / 255  # a bin boundary; with the scale at its clamp a bin is 86 scales wide
    locs = torch.tensor([-1e3, -5.0, 0.0, 0.5 / 255, edge, edge + 3e-8, 0.5, 1.0, 1.0 + 1e-9, 5.0, 1e3], dtype=dtype)
    log_scales = torch.tensor([-40.0, -10.0, -6.0, -2.0, 0.0, 3.0, 10.0, 40.0], dtype=dtype)
    grid = torch.cartesian_prod(locs, log_scales)  # (88, 2)
    g = torch.Generator().manual_seed(0)
    n = grid.shape[0]
    # component j of row i takes grid row (i + 7 j) mod n: every row mixes different extremes
    rows = (torch.arange(n).unsqueeze(-1) + 7 * torch.arange(k)) % n
    loc, log_scale = grid[rows, 0], grid[rows, 1]
    logits = torch.tensor([-50.0, 0.0, 50.0], dtype=dtype)[torch.arange(n * k) % 3].reshape(n, k)
    m = 500
    rand = (
        30 * torch.randn(m, k, generator=g, dtype=dtype),
        torch.rand(m, k, generator=g, dtype=dtype) * 3 - 1,
        torch.rand(m, k, generator=g, dtype=dtype) * 24 - 12,
    )
    return torch.cat([logits, rand[0]]), torch.cat([loc, rand[1]]), torch.cat([log_scale, rand[2]])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("k", [1, 2, 5, 10])
def test_masses_sum_to_one_over_the_256_levels(k, dtype):
    """Every bin's mass is a difference of the CDF at shared, identically rounded boundaries, each term
    exact to a few units of rounding (eps = 2.2e-16 in float64, 1.2e-7 in float32), so the sum is 1 to a
    few eps (measured: 1.3e-15 and 2.9e-7); 100 eps leaves a margin, while a wrong edge bin, weight or
    boundary is off by far more (a float32 boundary rounded two ways was off by 3e-4)."""
    logits, loc, log_scale = (t.to(dtype) for t in _extreme_and_random_params(k))
    d = DiscretizedLogisticMixtureDistribution(logits, loc, log_scale)
    log_p = d.log_prob(LEVELS.to(dtype).unsqueeze(-1))  # (256, N)
    assert torch.isfinite(log_p).all()
    error = (log_p.double().exp().sum(0) - 1).abs().max().item()
    assert error < 100 * torch.finfo(dtype).eps, f"masses sum to 1 +- {error:.1e}"


def test_masses_of_every_channel_value_sum_to_one_through_the_likelihood():
    """The registered module (float32, a 3-channel image, leading batch dims): per value, the masses over
    all 256 levels sum to one."""
    shape = (3, 2, 2)
    lik = LIKELIHOODS["logistic-mixture"](shape)
    g = torch.Generator().manual_seed(1)
    params = 4 * torch.randn(2, 3, lik.params_per_feature * 12, generator=g)
    base = lik(params).base_dist  # batch (2, 3, *shape)
    log_p = base.log_prob(LEVELS.float().reshape(256, 1, 1, 1, 1, 1))  # (256, 2, 3, *shape)
    assert log_p.shape == (256, 2, 3, *shape)
    total = log_p.double().exp().sum(0)
    # float32 masses: each term carries ~1e-7 relative rounding
    torch.testing.assert_close(total, torch.ones_like(total), rtol=0, atol=1e-5)
    assert torch.isfinite(log_p).all()


def test_one_component_equals_the_discretized_logistic_exactly():
    shape = (3, 2, 2)
    d = 12
    g = torch.Generator().manual_seed(2)
    loc_scale = torch.cat([torch.rand(5, d, generator=g) * 1.4 - 0.2, torch.rand(5, d, generator=g) * 12 - 10], -1)
    logit = 7 * torch.randn(5, d, generator=g)  # any logit: one component has weight exactly 1
    ours = DiscretizedLogisticMixture(shape, num_components=1)
    ref = DiscretizedLogistic(shape)
    params = torch.cat([logit, loc_scale], -1)
    x = torch.randint(0, 256, (5, *shape), generator=g).float() / 255
    x[0], x[1] = 0.0, 1.0  # the edge bins
    assert torch.equal(ours(params).log_prob(x), ref(loc_scale).log_prob(x))
    assert torch.equal(ours.mean(params), ref.mean(loc_scale))


def test_parameter_layout_is_parameter_then_component_major():
    """params (..., 3 K D) read as (..., 3, K, *data_shape): entry (j K + c) D + i is parameter j (logit,
    location, log-scale) of component c at feature i."""
    shape, k, d = (2, 3), 2, 6
    params = torch.randn(3 * k * d)
    base = DiscretizedLogisticMixture(shape, num_components=k)(params).base_dist
    table = params.reshape(3, k, *shape)
    torch.testing.assert_close(base.logits, table[0].movedim(0, -1))
    torch.testing.assert_close(base.loc, table[1].movedim(0, -1))
    torch.testing.assert_close(base.log_scale, table[2].movedim(0, -1))
    # and the mass at a level is the weighted component masses, computed here from the CDF directly
    x = torch.tensor([[0, 17, 255], [128, 3, 254]], dtype=torch.float64) / 255
    t = table.double()
    cdf = lambda e: torch.sigmoid((e - t[1]) / t[2].clamp(-10, 10).exp())  # noqa: E731
    upper = torch.where(x == 1, torch.ones(()), cdf(x + 0.5 / 255))
    lower = torch.where(x == 0, torch.zeros(()), cdf(x - 0.5 / 255))
    expected = (t[0].softmax(0) * (upper - lower)).sum(0).log().sum()
    got = DiscretizedLogisticMixture(shape, num_components=k)(params.double()).log_prob(x)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


def test_mean_is_the_exact_mean_of_the_mass_function():
    logits, loc, log_scale = _extreme_and_random_params(3)
    d = DiscretizedLogisticMixtureDistribution(logits, loc, log_scale)
    p = d.log_prob(LEVELS.unsqueeze(-1)).exp()  # (256, N)
    expected = (p * LEVELS.unsqueeze(-1)).sum(0)
    torch.testing.assert_close(d.mean, expected, rtol=1e-10, atol=1e-12)


def test_draws_follow_the_mass_function():
    """Chi-square goodness of fit of n draws per distribution, bins with expected count < 5 pooled; the
    threshold is the chi-square quantile at 1 - 1e-4 / 4 (Bonferroni over 4 distributions)."""
    logits = torch.tensor([[0.0, 1.0, -1.0], [2.0, 0.0, 0.0], [0.0, 0.0, 0.0], [5.0, -5.0, 0.0]])
    loc = torch.tensor([[0.1, 0.5, 0.9], [0.0, 1.0, 0.5], [-0.2, 1.3, 0.03], [0.5, 0.5, 0.2]])
    log_scale = torch.tensor([[-3.0, -4.0, -2.0], [-5.0, -1.0, -6.0], [-3.0, -3.0, -7.0], [-8.0, 0.0, -4.0]])
    d = DiscretizedLogisticMixtureDistribution(logits, loc, log_scale)
    n = 20_000
    draws = d.sample((n,))  # (n, 4)
    assert draws.shape == (n, 4)
    levels = (draws * 255).round().long()
    torch.testing.assert_close(draws, levels.float() / 255)  # on the grid
    probs = d.log_prob(LEVELS.float().unsqueeze(-1)).double().exp()  # (256, 4)
    threshold_p = 1e-4 / 4
    for i in range(4):
        counts = torch.bincount(levels[:, i], minlength=256).double()
        expected = n * probs[:, i]
        big = expected >= 5
        obs = torch.cat([counts[big], counts[~big].sum().reshape(1)])
        exp = torch.cat([expected[big], expected[~big].sum().reshape(1)])
        keep = exp > 0
        stat = ((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum().item()
        df = int(keep.sum()) - 1
        assert stat < chi2.ppf(1 - threshold_p, df), f"distribution {i}: chi2 = {stat:.1f} on {df} dof"


def test_gradients_are_finite_at_the_edge_levels_and_extreme_parameters():
    shape, k = (1, 2, 3), 3
    lik = DiscretizedLogisticMixture(shape, num_components=k)
    x = torch.tensor([0.0, 1.0, 0.0, 1.0, 1 / 255, 254 / 255]).reshape(shape)
    for loc in (-50.0, -1.0, 0.0, 1.0, 50.0):
        for log_scale in (-30.0, -10.0, -9.0, 0.0, 9.0, 30.0):
            table = torch.empty(3, k, 6)
            table[0] = torch.tensor([-40.0, 0.0, 40.0]).unsqueeze(-1)
            table[1], table[2] = loc, log_scale
            params = table.reshape(1, -1).clone().requires_grad_(True)
            log_p = lik(params).log_prob(x)
            assert torch.isfinite(log_p).all(), (loc, log_scale)
            log_p.sum().backward()
            assert torch.isfinite(params.grad).all(), (loc, log_scale)


def test_the_number_of_components_after_a_colon():
    shape = (3, 4, 4)
    vae = VAE(shape, 2, (8,), likelihood="logistic-mixture:3")
    assert vae.likelihood.num_components == 3 and vae.likelihood.params_per_feature == 9
    assert vae.spec["likelihood"] == "logistic-mixture:3"  # what a saved run rebuilds from
    assert vae.decoder(torch.zeros(1, 2)).shape == (1, 9 * 48)
    assert VAE(shape, 2, (8,), likelihood="logistic-mixture").likelihood.num_components == 5
    for bad in ("logistic-mixture:0", "logistic-mixture:x", "logistic-mixture:", "logistic-mixture:2.5"):
        with pytest.raises(ConfigError, match=r"likelihood 'logistic-mixture:.*(integer|K)"):
            VAE(shape, 2, (8,), likelihood=bad)
    with pytest.raises(ConfigError, match="unknown likelihood 'bernoulli:3'"):
        VAE(shape, 2, (8,), likelihood="bernoulli:3")  # the others take no option
    assert VAE((1, 4, 4), 2, (8,), prior="mixture:3").prior.num_classes == 3  # prior options unchanged


def test_generates_8bit_images_from_the_prior():
    vae = VAE((3, 4, 4), 2, (8,), likelihood="logistic-mixture:2")
    x = vae.model(None, num_samples=6)
    assert x.shape == (6, 3, 4, 4)
    vae.likelihood.check_support(x)


def test_a_few_svi_steps_on_random_8bit_data_raise_the_elbo():
    """60 Adam steps on 64 random 8-bit 3x4x4 images (levels from a Beta, so not uniform): the held-out
    style ELBO on the same data (20 draws, its Monte Carlo s.e.) rises by more than 4 s.e."""
    x = (torch.distributions.Beta(2.0, 5.0).sample((64, 3, 4, 4)) * 255).round() / 255
    vae = VAE((3, 4, 4), 2, (16,), likelihood="logistic-mixture:3")
    before = evaluate(vae, x, num_particles=20, seed=0)
    svi = SVI(vae.model, vae.guide, Adam({"lr": 1e-2}), Trace_ELBO())
    vae.train()
    losses = [svi.step(x) for _ in range(60)]
    assert all(math.isfinite(v) for v in losses)
    after = evaluate(vae, x, num_particles=20, seed=0)
    margin = 4 * math.hypot(before.elbo_se, after.elbo_se)
    assert after.elbo - before.elbo > margin, (before.elbo, after.elbo, margin)
