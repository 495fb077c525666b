"""The reference checks of a guide on probabilistic PCA, where p(z | x) is known exactly: NUTS recovers
the analytic posterior, SBC ranks are uniform for the exact guide and flagged for a shrunk or inflated
one, and every diagnostic runs on a plain Pyro model/guide pair that is not a ppl_vae.VAE."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from ppl_vae.diagnostics.calibration import sbc
from ppl_vae.diagnostics.gaps import amortization_gap
from ppl_vae.diagnostics.posterior import nuts_reference, psis, to_inference_data
from tests.ppca import make_ppca, plain_pyro_pair

Z = 4.0


@pytest.fixture(scope="module")
def ppca():
    return make_ppca()


@pytest.fixture(scope="module")
def x(ppca):
    return ppca.data(3, torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def nuts_exact(ppca, x):
    """NUTS against a guide that is shifted and too narrow, on a plain Pyro pair."""
    model, guide = plain_pyro_pair(ppca, loc_shift=0.1, scale_factor=0.5)
    return nuts_reference(model, guide, x, num_chains=4, num_warmup=150, num_samples=300, seed=0)


def test_nuts_recovers_the_analytic_posterior(ppca, x, nuts_exact):
    r = nuts_exact
    assert r.samples.shape == (4, 300, 3, 2)
    assert r.max_rhat < 1.02 and r.min_ess_bulk > 200 and r.divergences == 0
    loc, scale = (t.numpy() for t in ppca.posterior(x))
    # Mean: error within Z Monte Carlo s.e. (posterior sd / sqrt(ESS)).
    np.testing.assert_array_less(np.abs(r.nuts_mean - loc), Z * scale / np.sqrt(r.ess_bulk))
    # Sd: the relative error of a sample sd from ESS draws is about 1 / sqrt(2 ESS).
    np.testing.assert_array_less(np.abs(r.nuts_sd / scale - 1), Z / np.sqrt(2 * r.ess_bulk))


def test_nuts_comparison_measures_the_guide_error(ppca, x, nuts_exact):
    r = nuts_exact
    # the guide's sd is half the posterior's, its mean is off by 0.1 = 0.1 / sd posterior sds
    np.testing.assert_allclose(r.sd_ratio, 0.5, atol=Z * 0.5 / np.sqrt(2 * r.ess_bulk.min()))
    _, scale = ppca.posterior(x)
    expected = 0.1 / scale.numpy()
    assert np.all(np.abs(r.standardized_mean_error - expected) < 0.15)
    summary = r.summary()
    assert len(summary["per_observation"]) == 3 and summary["median_sd_ratio"] < 0.6
    assert dict(r.inference_data.posterior["z"].sizes) == {"chain": 4, "draw": 300, "obs": 3, "latent_dim": 2}


def test_nuts_holds_global_latents_at_a_guide_draw():
    import pyro
    import pyro.distributions as dist

    def model(x, num_samples=None):
        tau = pyro.sample("tau", dist.LogNormal(0.0, 0.3))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(1), tau).to_event(1))
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

    def guide(x, num_samples=None):
        pyro.sample("tau", dist.Delta(torch.tensor(2.0)))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x * 0.8, math.sqrt(0.8)).to_event(1))

    x = torch.tensor([[1.0], [-2.0]])
    r = nuts_reference(model, guide, x, num_chains=4, num_warmup=150, num_samples=300, seed=1)
    assert r.global_values == {"tau": 2.0}
    # with tau = 2 fixed the posterior is N(0.8 x, 0.8), exactly the guide
    np.testing.assert_array_less(
        np.abs(r.nuts_mean[:, 0] - 0.8 * x[:, 0].numpy()), Z * math.sqrt(0.8 / r.ess_bulk.min())
    )


def test_sbc_is_uniform_for_the_exact_guide(ppca):
    p_values, flagged = [], 0
    for seed in range(20):
        model, guide = plain_pyro_pair(ppca)
        r = sbc(model, guide, num_simulations=500, num_draws=49, seed=seed)
        assert r.ranks.shape == (500, 2) and r.ranks.min() >= 0 and r.ranks.max() <= 49
        p_values += list(r.p_values)
        flagged += r.verdict != "calibrated"
    # Under uniformity the per-dimension p-values are uniform and a run is flagged with probability ~alpha.
    assert stats.kstest(p_values, "uniform").pvalue > 0.001
    assert flagged <= 3


@pytest.mark.parametrize("factor, finding", [(0.6, "under-dispersed"), (1.6, "over-dispersed")])
def test_sbc_flags_a_shrunk_or_inflated_guide(ppca, factor, finding):
    ppca.set_guide(scale_factor=factor)
    r = sbc(ppca.vae.model, ppca.vae.guide, num_simulations=500, num_draws=49, seed=0)
    assert r.p_value < 1e-6
    assert {f["finding"] for f in r.flags} == {finding} and len(r.flags) == 2
    assert r.verdict.startswith(f"dims 0, 1: {finding} (guide too") and r.verdict.endswith(
        "[2 of 2 dimensions flagged]"
    )
    # the fitted width, 0.6 or 1.6; 0.15 is about 5 s.e. of log width (1 / sqrt(2 n), n = 500)
    assert np.all(np.abs(np.log(r.width_ratio / factor)) < 0.15)
    ppca.set_guide()


def test_sbc_flags_a_shifted_guide(ppca):
    model, guide = plain_pyro_pair(ppca, loc_shift=0.1)  # 0.4 and 0.2 posterior sds
    r = sbc(model, guide, num_simulations=500, num_draws=49, seed=0)
    assert {f["finding"] for f in r.flags} == {"biased high"} and len(r.flags) == 2


def test_every_diagnostic_runs_on_a_plain_pyro_pair(ppca, tmp_path):
    model, guide = plain_pyro_pair(ppca)
    x = ppca.data(20, torch.Generator().manual_seed(3))
    result = psis(model, guide, x, num_samples=500, seed=0)
    assert np.max(result.khat) < 0.5  # exact posterior: every weight equals log p(x)
    exact = ppca.log_marginal(x).mean().item()
    assert result.log_likelihood == pytest.approx(exact, abs=1e-6)
    idata = to_inference_data(model, guide, x, num_samples=10, seed=0)
    assert dict(idata.posterior["z"].sizes) == {"chain": 1, "draw": 10, "obs": 20, "latent_dim": 2}
    idata.to_netcdf(str(tmp_path / "plain.nc"))

    def posterior(data):
        loc, scale = ppca.posterior(data)
        return torch.distributions.Independent(torch.distributions.Normal(loc, scale.expand_as(loc)), 1)

    gap = amortization_gap(model, guide, x, posterior=posterior, num_steps=50, num_particles=200, seed=0)
    assert abs(gap["amortization_gap"]) < Z * gap["amortization_gap_se"] + 0.01
    assert abs(gap["approximation_gap"]) < Z * gap["approximation_gap_se"] + 0.01
