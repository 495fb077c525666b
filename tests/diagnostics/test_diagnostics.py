"""Diagnostics with ArviZ: PSIS k-hat flags a poor proposal, the IS estimate matches the exact
log p(x), and the InferenceData export has the documented groups and round-trips through NetCDF."""

import numpy as np
import pytest
import torch

from ppl_vae.diagnostics.arviz_bridge import arviz as _arviz
from ppl_vae.diagnostics.posterior import psis, to_inference_data
from tests.common import assert_within_se, binary_data

Z = 4.0

# The ``ppca`` fixture (a fresh tests.ppca.make_ppca() per test) comes from conftest.py.


@pytest.fixture
def x(ppca):
    return ppca.data(30, torch.Generator().manual_seed(1))


def test_wide_guide_is_reliable_and_matches_exact_log_marginal(ppca, x):
    ppca.set_guide(loc_shift=0.2, scale_factor=1.5)  # over-dispersed proposal: light-tailed weights
    result = psis(ppca.vae.model, ppca.vae.guide, x, num_samples=2000, seed=0)
    assert result.log_ratios.shape == (2000, 30)
    assert result.fraction_above["0.7"] == 0.0 and np.median(result.khat) < 0.5
    exact = ppca.log_marginal(x).mean().item()
    assert_within_se(result.log_likelihood, exact, result.log_likelihood_se, z=Z, what="PSIS log p(x)")


def test_narrow_guide_is_flagged(ppca, x):
    ppca.set_guide(loc_shift=0.3, scale_factor=0.3)  # under-dispersed proposal: heavy-tailed weights
    result = psis(ppca.vae.model, ppca.vae.guide, x, num_samples=2000, seed=0)
    assert result.fraction_above["0.7"] > 0.5
    assert result.worst[0][1] == pytest.approx(result.khat.max())
    assert result.sample_size_threshold == pytest.approx(min(1 - 1 / np.log10(2000), 0.7))


def test_log_ratios_are_enough_to_recompute_khat(ppca, x):
    ppca.set_guide(scale_factor=0.8)
    result = psis(ppca.vae.model, ppca.vae.guide, x, num_samples=500, seed=1)
    _, khat = _arviz().psislw(result.log_ratios.T.numpy().copy())
    np.testing.assert_allclose(khat, result.khat)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # inside ArviZ 0.23 plotting with matplotlib 3.11
def test_inference_data_groups_dims_and_netcdf_round_trip(tmp_path):
    from ppl_vae import VAE

    vae = VAE((1, 4, 4), latent_dim=3, hidden_dims=(8,))
    data = binary_data(7, (1, 4, 4), 0.4, seed=2)
    idata = to_inference_data(vae.model, vae.guide, data, num_samples=20, seed=0)
    for group in ("posterior", "posterior_predictive", "log_likelihood", "prior", "prior_predictive", "observed_data"):
        assert hasattr(idata, group), group
    assert dict(idata.posterior["z"].sizes) == {"chain": 1, "draw": 20, "obs": 7, "latent_dim": 3}
    assert dict(idata.log_likelihood["x"].sizes) == {"chain": 1, "draw": 20, "obs": 7}
    assert idata.posterior_predictive["x"].shape == (1, 20, 7, 1, 4, 4)
    assert idata.prior["z"].shape == (1, 20, 7, 3)
    # the pointwise log-likelihood is log p(x_n | z_s) at the posterior draws: check one by hand
    z = torch.as_tensor(idata.posterior["z"].values[0, 5, 2])
    logits = vae.decoder(z).reshape(1, 4, 4)
    expected = torch.distributions.Bernoulli(logits=logits).log_prob(data[2]).sum().item()
    assert idata.log_likelihood["x"].values[0, 5, 2] == pytest.approx(expected, rel=1e-5)
    az = _arviz()
    path = tmp_path / "idata.nc"
    idata.to_netcdf(str(path))
    loaded = az.from_netcdf(str(path))
    np.testing.assert_array_equal(loaded.posterior["z"].values, idata.posterior["z"].values)
    summary = az.summary(loaded, var_names=["z"], kind="stats")
    assert len(summary) == 7 * 3
    import matplotlib

    matplotlib.use("Agg")
    axes = az.plot_posterior(loaded, var_names=["z"], coords={"obs": [0]})
    assert np.asarray(axes).size == 3
    axes = az.plot_pair(loaded, var_names=["z"], coords={"obs": [0]})
    assert np.asarray(axes).size >= 1
    import matplotlib.pyplot as plt

    plt.close("all")


def test_collapse_report_on_an_informative_and_a_collapsed_encoder(ppca, x):
    from ppl_vae.diagnostics.collapse import collapse_report

    ppca.set_guide()  # the exact posterior: informative
    informative = collapse_report(ppca.vae, x, num_samples=50, seed=0)
    with torch.no_grad():  # an encoder that ignores x: q(z|x) = N(0, 1)
        ppca.vae.encoder.encoder.net[0].weight.zero_()
        ppca.vae.encoder.encoder.net[0].bias.zero_()
    collapsed = collapse_report(ppca.vae, x, num_samples=50, seed=0)
    assert informative["active_units"] == 2 and collapsed["active_units"] == 0
    assert collapsed["mutual_information"] == pytest.approx(0.0, abs=1e-9)
    assert collapsed["kl_per_dimension"] == pytest.approx([0.0, 0.0], abs=1e-9)
    mi, se = informative["mutual_information"], informative["mutual_information_se"]
    assert 1.0 < mi <= informative["log_num_examples"] + Z * se
    assert sum(informative["kl_per_dimension"]) > mi - Z * se  # rate >= I(x; z) (KL to the prior bounds it)


def test_amortization_gap_on_ppca_matches_closed_form(ppca, x):
    """The diagonal family contains the exact posterior here, so the approximation gap is ~0 and the
    amortization gap of a perturbed encoder is its closed-form KL to the exact posterior."""
    from ppl_vae.diagnostics.gaps import amortization_gap

    ppca.set_guide(loc_shift=0.4, scale_factor=1.5)
    loc_q, scale_q = ppca.vae.encode(x)
    loc_p, scale_p = ppca.posterior(x)
    kl = (
        torch.distributions.kl_divergence(
            torch.distributions.Normal(loc_q, scale_q), torch.distributions.Normal(loc_p, scale_p.expand_as(loc_p))
        )
        .sum(-1)
        .mean()
        .item()
    )
    decoder_before = [p.detach().clone() for p in ppca.vae.decoder.parameters()]
    gaps = amortization_gap(
        ppca.vae.model,
        ppca.vae.guide,
        x,
        posterior=ppca.vae.posterior,
        num_steps=1500,
        lr=2e-2,
        num_particles=2000,
        seed=0,
    )
    assert all(torch.equal(a, b) for a, b in zip(decoder_before, ppca.vae.decoder.parameters()))
    exact = ppca.log_marginal(x).mean().item()
    assert_within_se(gaps["log_likelihood"], exact, gaps["log_likelihood_se"], z=Z, slack=1e-3, what="log p(x)")
    assert_within_se(gaps["elbo_amortized"], exact - kl, gaps["elbo_amortized_se"], z=Z, what="amortized ELBO")
    # SGD leaves the local guide slightly off the optimum: allow 2% of the gap it has to close.
    assert_within_se(
        gaps["amortization_gap"],
        kl,
        gaps["amortization_gap_se"],
        z=Z,
        slack=0.02 * kl,
        what="amortization gap vs closed-form KL",
    )
    assert gaps["approximation_gap"] < 0.02 * kl
