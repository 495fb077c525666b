"""Enumerated discrete latents, checked against a mixture of probabilistic PCA (exact log p(x) and
responsibilities) and against the closed-form ELBO of a known guide."""

from __future__ import annotations

import math

import pyro
import pytest
import torch
from pyro.infer import TraceEnum_ELBO

from ppl_vae.infer.enumeration import class_posterior, enumerated_sites
from ppl_vae.infer.evaluate import evaluate, log_weights
from tests.common import assert_within_se
from tests.mixture_ppca import make_mixture_ppca, set_linear_guide, set_wide_guide


@pytest.fixture(params=[False, True], ids=["q(z|x)", "q(y|x)q(z|x,y)"])
def mixture(request):
    m = make_mixture_ppca(amortized_y=request.param)
    set_wide_guide(m)
    return m


def _data(m, n=40, seed=1):
    return m.data(n, torch.Generator().manual_seed(seed))


def test_sites_are_enumerated_where_the_guide_says(mixture):
    x = _data(mixture, 3)
    where = "guide" if mixture.vae.prior.amortized_y else "model"
    assert enumerated_sites(mixture.vae.model, mixture.vae.guide, x) == {"y": (where, 3)}


def test_log_likelihood_equals_the_exact_mixture_of_ppca(mixture):
    x = _data(mixture)
    exact = mixture.log_marginal(x)
    for seed in (0, 1):  # the estimator called twice
        result = evaluate(mixture.vae, x, num_particles=2000, seed=seed)
        est = result.per_example["log_likelihood"].double()
        # The IWAE estimate is biased low by about its own variance / 2: allowed as slack.
        assert_within_se(
            result.log_likelihood,
            exact.mean().item(),
            result.log_likelihood_se,
            slack=0.5 * result.log_likelihood_se**2 * len(x),
            what="mean log p(x)",
        )
        assert est.shape == exact.shape
        assert float((est - exact).abs().max()) < 0.05  # each example, not only the mean
    again = evaluate(mixture.vae, x, num_particles=2000, seed=1)
    assert again.log_likelihood == result.log_likelihood  # seeded: reproducible


def test_the_importance_weight_sums_y_exactly_with_one_draw_per_value(mixture):
    """With y summed inside the weight, log p(x) is exact when q(z | ...) is exact per value of y;
    here a check that the weight for one draw equals log sum_y p(x, y, z) / q(z | x, y) by hand."""
    x = _data(mixture, 5)
    pyro.set_rng_seed(3)
    lw = log_weights(mixture.vae.model, mixture.vae.guide, x, 4)
    assert lw.log_weight.shape == (4, 5)
    assert torch.isfinite(lw.log_weight).all()
    # The ELBO term never exceeds the importance weight's log-mean (Jensen), per example.
    assert bool((lw.elbo_term.mean(0) <= torch.logsumexp(lw.log_weight, 0) - math.log(4) + 1e-9).all())


def test_responsibilities_equal_the_exact_posterior_over_components(mixture):
    x = _data(mixture, 30)
    exact = mixture.responsibilities(x)
    runs = []
    for seed in range(6):
        pyro.set_rng_seed(seed)
        runs.append(class_posterior(mixture.vae.model, mixture.vae.guide, x, 1000))
    runs = torch.stack(runs)
    assert torch.allclose(runs.sum(-1), torch.ones_like(runs[..., 0]))
    mean, se = runs.mean(0), runs.std(0) / math.sqrt(len(runs))
    # Self-normalized importance sampling has an O(1/K) bias: a slack far below the errors at stake.
    assert_within_se(mean, exact, se + 1e-4, slack=2e-3, what="p(y | x)")
    assert float((mean - exact).abs().max()) < 0.02


def _closed_form_elbo(m, x, loc_weight, loc_bias, log_scale, class_logits):
    """Sum over y of q(y) [E_q log p(x|z) + E_q log p(z|y) + log pi_y - log q(y) + H(q(z|x,y))]."""
    D, d = m.W.shape
    K = m.mu.shape[0]
    log_q_y = torch.log_softmax(class_logits, -1)
    v = (2 * log_scale).exp()  # (d,)
    total = torch.zeros(x.shape[0], dtype=x.dtype)
    for y in range(K):
        onehot = torch.nn.functional.one_hot(torch.tensor(y), K).to(x.dtype)
        inputs = torch.cat([x, onehot.expand(x.shape[0], K)], -1)
        mean = inputs @ loc_weight.T + loc_bias  # (N, d)
        resid = x - mean @ m.W.T - m.b
        e_lik = -0.5 * D * math.log(2 * math.pi * m.sigma**2) - ((resid**2).sum(-1) + (v * (m.W**2).sum(0)).sum()) / (
            2 * m.sigma**2
        )
        s2 = m.s[y] ** 2
        e_prior = (-0.5 * torch.log(2 * math.pi * s2) - ((mean - m.mu[y]) ** 2 + v) / (2 * s2)).sum(-1)
        entropy = (0.5 * torch.log(2 * math.pi * math.e * v)).sum()
        total = total + log_q_y[y].exp() * (e_lik + e_prior + m.log_pi[y] - log_q_y[y] + entropy)
    return total


def test_traceenum_elbo_equals_the_closed_form_elbo_of_a_known_guide():
    m = make_mixture_ppca(amortized_y=True)
    g = torch.Generator().manual_seed(5)
    D, d = m.W.shape
    loc_weight = 0.3 * torch.randn(d, D + 3, generator=g, dtype=torch.float64)
    loc_bias = torch.tensor([0.2, -0.1], dtype=torch.float64)
    log_scale = torch.tensor([-0.4, -0.2], dtype=torch.float64)
    class_logits = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)
    set_linear_guide(m, loc_weight, loc_bias, log_scale, class_logits)
    x = _data(m, 10)
    exact = _closed_form_elbo(m, x, loc_weight, loc_bias, log_scale, class_logits).sum().item()
    elbo = TraceEnum_ELBO(max_plate_nesting=1, num_particles=500, vectorize_particles=True)
    estimates = []
    for seed in range(8):
        pyro.set_rng_seed(seed)
        estimates.append(-elbo.loss(m.vae.model, m.vae.guide, x))
    estimates = torch.tensor(estimates, dtype=torch.float64)
    assert_within_se(estimates.mean().item(), exact, (estimates.std() / math.sqrt(8)).item(), what="TraceEnum_ELBO")
    # evaluate's ELBO (enumerated tables) is the same bound, per example.
    result = evaluate(m.vae, x, num_particles=4000, seed=0)
    assert_within_se(result.elbo, exact / len(x), result.elbo_se, what="evaluate ELBO")
    assert result.elbo <= result.log_likelihood
