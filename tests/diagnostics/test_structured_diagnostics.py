"""The diagnostics on structured models (mixture:K, semi-supervised:K, conditional:K), against exact
references: the mixture of PPCA (tests/mixture_ppca.py) and linear Gaussian M2 and conditional VAEs whose
guides are the exact posteriors (tests/diagnostics/linear_structured.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from ppl_vae import ConfigError
from ppl_vae.diagnostics import amortization_gap, collapse_report, nuts_reference, psis, sbc, to_inference_data
from ppl_vae.diagnostics.arviz_bridge import arviz as _arviz
from tests.common import assert_within_se
from tests.diagnostics.linear_structured import (
    K,
    exact_mixture_guide,
    make_conditional,
    make_semi_supervised,
    mixture_posterior,
    semi_supervised_exact,
)
from tests.mixture_ppca import make_mixture_ppca, set_wide_guide

Z = 4.0


@pytest.fixture(scope="module")
def semi():
    return make_semi_supervised()


@pytest.fixture(scope="module")
def conditional():
    return make_conditional()


def _mixture_data(m, n, seed=1):
    return m.data(n, torch.Generator().manual_seed(seed))


# -- PSIS ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("amortized_y", [False, True], ids=["q(z|x)", "q(y|x)q(z|x,y)"])
def test_psis_on_the_mixture_sums_the_component_and_recovers_the_exact_log_likelihood(amortized_y):
    m = make_mixture_ppca(amortized_y=amortized_y)
    set_wide_guide(m)
    x = _mixture_data(m, 30)
    result = psis(m.vae.model, m.vae.guide, x, num_samples=1000, seed=0)
    exact = m.log_marginal(x).mean().item()
    # The importance estimate of log p(x) is biased low by about its variance / 2 per example.
    assert_within_se(
        result.log_likelihood,
        exact,
        result.log_likelihood_se,
        slack=0.5 * result.log_likelihood_se**2 * len(x),
        what="PSIS log p(x)",
    )
    # A wide guide with y summed exactly is a good proposal: every k-hat below 0.5.
    assert np.all(np.isfinite(result.khat)) and result.khat.max() < 0.5, result.khat.max()


def test_psis_khat_flags_a_too_narrow_guide_on_the_mixture(mixture):
    """The same mixture with q(z | x) shrunk to 0.2 of its width: the weights become heavy-tailed."""
    m = make_mixture_ppca()
    set_wide_guide(m)
    with torch.no_grad():
        m.vae.encoder.encoder.net[0].bias[2:] += math.log(0.2)
    x = _mixture_data(m, 30)
    wide = psis(mixture.vae.model, mixture.vae.guide, x, num_samples=1000, seed=0)
    narrow = psis(m.vae.model, m.vae.guide, x, num_samples=1000, seed=0)
    assert np.median(narrow.khat) > 0.7 > np.median(wide.khat) + 0.3, (np.median(narrow.khat), np.median(wide.khat))
    assert narrow.fraction_above["0.7"] > 0.5


def test_psis_of_the_exact_semi_supervised_guide_is_exact(semi):
    """q(y | x) q(z | x, y) = p(y, z | x): with y summed inside the weight every ratio is log p(x) itself."""
    _, _, x = semi.simulate(25, torch.Generator().manual_seed(2))
    exact, _ = semi_supervised_exact(semi, x)
    result = psis(semi.vae.model, semi.vae.guide, x, num_samples=20, seed=0)
    np.testing.assert_allclose(result.log_ratios.numpy(), exact.expand(20, -1).numpy(), atol=1e-7)
    assert np.all(result.khat == -np.inf)  # equal weights: the perfect proposal
    assert result.log_likelihood == pytest.approx(exact.mean().item(), abs=1e-7)


def test_psis_of_the_conditional_model_needs_c_and_is_exact_with_it(conditional):
    c, _, x = conditional.simulate(25, torch.Generator().manual_seed(3))
    with pytest.raises(ConfigError, match="needs the class of every example") as error:
        psis(conditional.vae.model, conditional.vae.guide, x, num_samples=20)
    assert "\n" not in str(error.value)
    result = psis(conditional.vae.model, conditional.vae.guide, x, num_samples=20, seed=0, c=c)
    exact = conditional.log_p_x_given_class(x).gather(1, c[:, None]).squeeze(1)
    np.testing.assert_allclose(result.log_ratios.numpy(), exact.expand(20, -1).numpy(), atol=1e-7)
    assert np.all(result.khat == -np.inf)
    with pytest.raises(ConfigError, match="one per example"):
        psis(conditional.vae.model, conditional.vae.guide, x, num_samples=20, c=c[:5])


# -- InferenceData ------------------------------------------------------------------------------------


def test_inference_data_holds_the_class_posterior_of_the_mixture(mixture, tmp_path):
    x = _mixture_data(mixture, 12)
    idata = to_inference_data(mixture.vae.model, mixture.vae.guide, x, num_samples=20, seed=0, class_particles=500)
    group = idata.class_posterior
    assert dict(group["y"].sizes) == {"obs": 12, "y_class": K}
    assert "q_y" not in group  # the guide q(z | x) has no classifier: y is enumerated in the model
    probs, se = group["y"].values, group["y_se"].values
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-12)
    # Self-normalized importance sampling: the s.e. is from 8 batch means (7 degrees of freedom), so the
    # tolerance is Student's t quantile at 1e-4 two-sided, plus the O(1/draws) bias of self-normalization.
    t = stats.t.isf(0.5e-4, 7)
    assert_within_se(probs, mixture.responsibilities(x).numpy(), se, z=t, slack=2e-3, what="p(y | x)")
    assert idata.posterior["z"].shape == (1, 20, 12, 2)  # the existing content is still there
    idata.to_netcdf(str(tmp_path / "idata.nc"))
    back = _arviz().from_netcdf(str(tmp_path / "idata.nc"))
    np.testing.assert_array_equal(back.class_posterior["y"].values, probs)


def test_inference_data_of_the_semi_supervised_model_replays_the_guides_class(semi):
    _, _, x = semi.simulate(10, torch.Generator().manual_seed(4))
    _, exact = semi_supervised_exact(semi, x)
    idata = to_inference_data(semi.vae.model, semi.vae.guide, x, num_samples=15, seed=0, class_particles=10)
    np.testing.assert_allclose(idata.class_posterior["q_y"].values, exact.numpy(), atol=1e-12)
    np.testing.assert_allclose(idata.class_posterior["y"].values, exact.numpy(), atol=1e-7)
    # The posterior group holds the guide's draws of y beside z, and log p(x | z, y) is scored with the y
    # each z was drawn with (not a fresh draw from the prior's y): recompute it by hand.
    y = torch.as_tensor(idata.posterior["y"].values[0])  # (S, N)
    z = torch.as_tensor(idata.posterior["z"].values[0])  # (S, N, d)
    assert y.shape == (15, 10) and len(torch.unique(y)) == K
    loc = z @ semi.W.T + semi.B.T[y] + semi.b
    by_hand = torch.distributions.Normal(loc, 0.5).log_prob(x).sum(-1)
    np.testing.assert_allclose(idata.log_likelihood["x"].values[0], by_hand.numpy(), atol=1e-9)


def test_inference_data_of_the_conditional_model_uses_c(conditional):
    c, _, x = conditional.simulate(10, torch.Generator().manual_seed(5))
    with pytest.raises(ConfigError, match="needs the class"):
        to_inference_data(conditional.vae.model, conditional.vae.guide, x, num_samples=5)
    idata = to_inference_data(conditional.vae.model, conditional.vae.guide, x, num_samples=200, seed=0, c=c)
    assert "class_posterior" not in idata.groups()
    # The guide is exact, so its draws have the posterior's mean (within Monte Carlo error).
    mean, sd = conditional.posterior(x, c)
    draws = idata.posterior["z"].values[0]  # (S, N, d)
    assert_within_se(draws.mean(0), mean.numpy(), sd.numpy() / math.sqrt(200), what="posterior mean")
    # The prior group is p(z | c): its draws centre on each example's class mean.
    prior = idata.prior["z"].values[0]  # (S, N, d)
    assert_within_se(prior.mean(0), conditional.locs[c].numpy(), conditional.s / math.sqrt(200), what="p(z | c)")


# -- NUTS ---------------------------------------------------------------------------------------------


def test_nuts_with_the_component_enumerated_recovers_the_exact_mixture_posterior_mean(mixture):
    """NUTS on p(z | x) = sum_y p(y | x) N(m_y(x), S_y), y summed out in the potential: its mean matches
    the closed form within Monte Carlo error (posterior sd / sqrt(ESS))."""
    x = _mixture_data(mixture, 3)[2:3]  # an example with two components of weight 0.64 and 0.34
    mean, sd, r, _, _ = mixture_posterior(mixture, x)
    assert r.min() < 0.05 and r.max() < 0.7  # the posterior really is a mixture here
    result = nuts_reference(
        mixture.vae.model, mixture.vae.guide, x, num_chains=2, num_warmup=60, num_samples=150, guide_samples=400
    )
    assert result.samples.shape == (2, 150, 1, 2) and result.divergences == 0
    assert result.max_rhat < 1.05 and result.min_ess_bulk > 100
    assert_within_se(result.nuts_mean, mean.numpy(), sd.numpy() / np.sqrt(result.ess_bulk), what="NUTS mean")
    np.testing.assert_array_less(np.abs(result.nuts_sd / sd.numpy() - 1), Z / np.sqrt(2 * result.ess_bulk))


def test_nuts_on_the_conditional_model_targets_p_z_given_x_and_c(conditional):
    c, _, x = conditional.simulate(1, torch.Generator().manual_seed(6))
    with pytest.raises(ConfigError, match="NUTS needs the class"):
        nuts_reference(conditional.vae.model, conditional.vae.guide, x, num_chains=2, num_warmup=5, num_samples=10)
    result = nuts_reference(
        conditional.vae.model, conditional.vae.guide, x, num_chains=2, num_warmup=40, num_samples=100, c=c
    )
    mean, sd = conditional.posterior(x, c)
    assert result.max_rhat < 1.05 and result.min_ess_bulk > 80
    assert_within_se(result.nuts_mean, mean.numpy(), sd.numpy() / np.sqrt(result.ess_bulk), what="NUTS mean")
    # the guide is exact: its draws (given c too) agree with NUTS up to both Monte Carlo errors
    np.testing.assert_array_less(np.abs(result.sd_ratio - 1), Z / np.sqrt(2 * result.ess_bulk) + 0.05)


# -- SBC ----------------------------------------------------------------------------------------------


def test_sbc_simulates_the_mixture_from_its_full_generative_program(mixture):
    """Ranks are uniform for the exact posterior (a mixture over y) only if the simulations draw y, then
    z | y, then x; a guide shrunk to half its width is flagged."""
    exact = sbc(mixture.vae.model, exact_mixture_guide(mixture), num_simulations=300, num_draws=19, seed=0)
    assert exact.verdict == "calibrated" and exact.p_value > 0.01
    narrow = sbc(mixture.vae.model, exact_mixture_guide(mixture, 0.5), num_simulations=300, num_draws=19, seed=0)
    assert [f["finding"] for f in narrow.flags] == ["under-dispersed", "under-dispersed"]


def test_sbc_of_the_exact_semi_supervised_guide_is_calibrated():
    """M2 simulated as y, z, x; the guide draws y ~ q(y | x), then z ~ q(z | x, y): its marginal for z is
    the exact posterior, so the ranks are uniform; with q(z | x, y) at half its width they are not."""
    m = make_semi_supervised()
    exact = sbc(m.vae.model, m.vae.guide, num_simulations=400, num_draws=19, seed=0)
    assert exact.verdict == "calibrated" and exact.p_value > 0.01
    with torch.no_grad():
        m.vae.encoder.encoder.net[0].bias[2:] += math.log(0.5)
    narrow = sbc(m.vae.model, m.vae.guide, num_simulations=400, num_draws=19, seed=0)
    assert [f["finding"] for f in narrow.flags] == ["under-dispersed", "under-dispersed"], narrow.verdict


def test_sbc_of_the_conditional_model_conditions_on_c(conditional):
    with pytest.raises(ConfigError, match="SBC needs the class") as error:
        sbc(conditional.vae.model, conditional.vae.guide, num_simulations=30, num_draws=9)
    assert "\n" not in str(error.value)
    c = torch.arange(300) % K
    result = sbc(conditional.vae.model, conditional.vae.guide, num_simulations=300, num_draws=19, seed=0, c=c)
    assert result.verdict == "calibrated" and result.p_value > 0.01
    # The guide with every class's offset removed is off by the class means: flagged as biased.
    with torch.no_grad():
        layer = conditional.vae.encoder.encoder.net[0]
        saved = layer.weight[:2, 4:].clone()
        layer.weight[:2, 4:] = 0.0
    try:
        shifted = sbc(conditional.vae.model, conditional.vae.guide, num_simulations=300, num_draws=19, seed=0, c=c)
    finally:
        with torch.no_grad():
            layer.weight[:2, 4:] = saved
    assert shifted.flags, shifted.verdict


# -- collapse and the amortization gap ------------------------------------------------------------------


def test_collapse_works_for_the_mixture_with_q_z_given_x(mixture):
    x = _mixture_data(mixture, 40)
    report = collapse_report(mixture.vae, x, seed=0)
    assert report.active_units == 2 and not report.collapsed
    assert report.kl_per_dimension is None and "MixtureSameFamily" in report.kl_note  # no per-dimension split
    assert report.kl_total > 0 and report.kl_total_se > 0  # Monte Carlo KL to the mixture density


@pytest.mark.parametrize("which", ["semi", "conditional", "amortized mixture"])
def test_collapse_refuses_a_guide_that_needs_the_label(which, semi, conditional):
    vae = {
        "semi": semi.vae,
        "conditional": conditional.vae,
        "amortized mixture": make_mixture_ppca(amortized_y=True).vae,
    }[which]
    with pytest.raises(
        ConfigError, match=r"collapse is measured on q\(z \| x\), which this model does not have"
    ) as error:
        collapse_report(vae, torch.zeros(4, 4, dtype=torch.float64))
    assert "\n" not in str(error.value)


def test_amortization_gap_sums_the_mixture_component(mixture):
    """The local guides are refined with y enumerated, and the refined guide's log p(x) is the exact one."""
    x = _mixture_data(mixture, 8)
    gap = amortization_gap(
        mixture.vae.model, mixture.vae.guide, x, posterior=mixture.vae.posterior, num_steps=60, num_particles=1000
    )
    exact = mixture.log_marginal(x).mean().item()
    slack = 0.5 * gap.log_likelihood_se**2 * len(x)
    assert_within_se(gap.log_likelihood, exact, gap.log_likelihood_se, slack=slack, what="log p(x)")
    assert gap.elbo_local <= exact  # a bound
    assert gap.amortization_gap > -Z * gap.amortization_gap_se  # refining cannot make the ELBO worse
