"""Closed-form checks on probabilistic PCA: the estimators agree with exact log p(x), posterior and KL.

Tolerances are multiples of the estimators' own Monte Carlo standard errors (4 s.e.: a false alarm
about once in 16,000 runs for a Gaussian estimate; runs are seeded, so the outcome is fixed anyway).
"""

import math

import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from ppl_vae import evaluate, fit, log_weights
from tests.common import assert_within_se

Z = 4.0  # tolerance in Monte Carlo standard errors

# The ``ppca`` fixture (a fresh tests.ppca.make_ppca() per test) comes from conftest.py.


@pytest.fixture
def x(ppca):
    return ppca.data(40, torch.Generator().manual_seed(1))


def test_exact_guide_makes_every_importance_weight_equal_to_log_marginal(ppca, x):
    ppca.set_guide()
    parts = log_weights(ppca.vae.model, ppca.vae.guide, x, num_particles=50)
    exact = ppca.log_marginal(x)
    # With q(z|x) = p(z|x), log p(x, z) - log q(z|x) = log p(x) for every draw z: zero variance.
    # (1e-6: the fixed noise scale was stored in float32 before the model moved to float64.)
    torch.testing.assert_close(parts["log_weight"], exact.expand(50, -1), atol=1e-6, rtol=0)
    result = evaluate(ppca.vae, x, num_particles=50, seed=0)
    assert result.elbo == pytest.approx(exact.mean().item(), abs=1e-6)
    assert result.log_likelihood == pytest.approx(exact.mean().item(), abs=1e-6)
    assert result.elbo_se < 1e-6


def test_exact_guide_pyro_elbo_equals_log_marginal(ppca, x):
    ppca.set_guide()
    loss = Trace_ELBO().loss(ppca.vae.model, ppca.vae.guide, x)
    assert -loss == pytest.approx(ppca.log_marginal(x).sum().item(), rel=1e-8)


def test_iwae_estimate_matches_exact_log_marginal_within_mc_error(ppca, x):
    ppca.set_guide(loc_shift=0.3, scale_factor=1.6)  # a poor but valid proposal
    exact = ppca.log_marginal(x).mean().item()
    result = evaluate(ppca.vae, x, num_particles=4000, seed=0, max_elements=2**16)
    assert result.log_likelihood_se > 0
    assert_within_se(result.log_likelihood, exact, result.log_likelihood_se, z=Z, what="IWAE log p(x)")
    # The ELBO is a strict lower bound for this guide; its gap is far larger than its error.
    assert result.elbo + Z * result.elbo_se < exact
    assert result.elbo < result.log_likelihood


def test_elbo_gap_is_the_kl_between_guide_and_exact_posterior(ppca, x):
    ppca.set_guide(loc_shift=0.3, scale_factor=1.6)
    loc_q, scale_q = ppca.vae.encode(x)
    loc_p, scale_p = ppca.posterior(x)
    q = torch.distributions.Normal(loc_q, scale_q)
    p = torch.distributions.Normal(loc_p, scale_p.expand_as(loc_p))
    gap = torch.distributions.kl_divergence(q, p).sum(-1).mean().item()
    result = evaluate(ppca.vae, x, num_particles=2000, seed=1)
    exact = ppca.log_marginal(x).mean().item()
    assert_within_se(exact - result.elbo, gap, result.elbo_se, z=Z, what="log p(x) - ELBO vs KL(q || p(z|x))")


def _closed_form_kl(loc, scale):
    return 0.5 * (loc**2 + scale**2 - 2 * scale.log() - 1).sum(-1)


def test_monte_carlo_kl_agrees_with_closed_form(ppca, x):
    ppca.set_guide(loc_shift=0.5, scale_factor=0.8)
    loc, scale = ppca.vae.encode(x)
    exact_kl = _closed_form_kl(loc, scale).mean().item()
    result = evaluate(ppca.vae, x, num_particles=3000, seed=2)
    assert result.kl_se > 0
    assert_within_se(result.kl, exact_kl, result.kl_se, z=Z, what="Monte Carlo KL")


def _closed_form_elbo(ppca, x):
    """E_q[log p(x|z)] - KL(q || p(z)) in closed form for the linear-Gaussian decoder."""
    loc, scale = ppca.vae.encode(x)
    D = x.shape[-1]
    resid = x - loc @ ppca.W.T - ppca.b
    trace = ((ppca.W**2) * scale[:, None, :] ** 2).sum((-1, -2))  # tr(W diag(s^2) W^T)
    expected_loglik = -0.5 * D * math.log(2 * math.pi * ppca.sigma**2) - ((resid**2).sum(-1) + trace) / (
        2 * ppca.sigma**2
    )
    return (expected_loglik - _closed_form_kl(loc, scale)).sum().item()


@pytest.mark.parametrize("elbo", [Trace_ELBO, TraceMeanField_ELBO], ids=["monte-carlo-kl", "analytic-kl"])
def test_pyro_elbo_estimates_agree_with_closed_form_elbo(ppca, x, elbo):
    ppca.set_guide(loc_shift=0.4, scale_factor=1.3)
    exact = _closed_form_elbo(ppca, x)
    estimator = elbo()
    losses = torch.tensor([estimator.loss(ppca.vae.model, ppca.vae.guide, x) for _ in range(300)], dtype=torch.float64)
    mean, se = -losses.mean().item(), (losses.std() / math.sqrt(len(losses))).item()
    assert se > 0
    assert_within_se(mean, exact, se, z=Z, what="Pyro ELBO")


def _kl_to_exact_posterior(ppca, x):
    loc_q, scale_q = ppca.vae.encode(x)
    loc_p, scale_p = ppca.posterior(x)
    q = torch.distributions.Normal(loc_q, scale_q)
    p = torch.distributions.Normal(loc_p, scale_p.expand_as(loc_p))
    return torch.distributions.kl_divergence(q, p).sum(-1).mean().item()


def test_svi_recovers_the_exact_posterior_with_the_decoder_fixed(ppca):
    """Convergence on a conjugate model: training only the encoder drives KL(q || p(z|x)) to ~0."""
    x = ppca.data(512, torch.Generator().manual_seed(3))
    for p in ppca.vae.decoder.parameters():
        p.requires_grad_(False)
    before = _kl_to_exact_posterior(ppca, x)
    # A fast phase, then a slow one to shrink the stochastic-gradient noise around the optimum.
    fit(ppca.vae, x, epochs=100, batch_size=128, lr=2e-2, binarize="none", progress=False)
    fit(ppca.vae, x, epochs=100, batch_size=128, lr=2e-3, seed=1, binarize="none", progress=False)
    after = _kl_to_exact_posterior(ppca, x)
    # The untrained encoder is tens of nats away, q = p(z) would be 17 nats away. What remains
    # after training is SGD noise in the encoder's weights (measured 0.04 nats).
    assert before > 5.0
    assert after < 0.1
    # log p(x) - ELBO is exactly that KL: the evaluator must see the same gap, within its MC error.
    result = evaluate(ppca.vae, x, num_particles=1000, seed=0)
    gap = ppca.log_marginal(x).mean().item() - result.elbo
    assert_within_se(gap, after, result.elbo_se, z=Z, what="log p(x) - ELBO after training")
