"""Evaluation of a model with a global latent, checked against closed forms.

Model (conjugate, non-standard hyperprior):  mu ~ N(m0, s0^2);  z_n | mu ~ N(mu, 1);  x_n | z_n ~ N(z_n, sigma^2).
Guide (mean field):  q(mu) = N(a, b^2);  q(z_n | x_n) = N(c x_n + e, d^2).

Everything is Gaussian, so the joint ELBO, the per-example ELBO given q(mu), KL(q(mu) || p(mu)) and the
exact log evidence log p(x_1..N) = log N(x; m0 1, s0^2 1 1^T + (1 + sigma^2) I) are closed forms.
"""

import math
from types import SimpleNamespace

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from scipy import stats

from ppl_vae.infer.evaluate import ELBO, ELBO_GIVEN_GLOBALS, evaluate

Z = 5.0
M0, S0, SIGMA = 1.5, 0.5, 0.7
N = 40


def global_pair(a, b, c, e, d):
    def model(x):
        mu = pyro.sample("mu", dist.Normal(torch.full((1,), M0, dtype=torch.float64), S0).to_event(1))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(mu, 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, SIGMA).to_event(1), obs=x)

    def guide(x):
        pyro.sample("mu", dist.Normal(torch.full((1,), a, dtype=torch.float64), b).to_event(1))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(c * x + e, d).to_event(1))

    return SimpleNamespace(model=model, guide=guide)


def closed_form(x, a, b, c, e, d):
    """(joint ELBO of the data set, KL(q(mu) || p(mu)), exact log p(x_1..N)), nats."""
    x = x[:, 0].double()
    m = c * x + e
    kl = math.log(S0 / b) + (b**2 + (a - M0) ** 2) / (2 * S0**2) - 0.5
    per_example = (
        -0.5 * math.log(2 * math.pi)
        - 0.5 * ((m - a) ** 2 + d**2 + b**2)
        - 0.5 * math.log(2 * math.pi * SIGMA**2)
        - ((x - m) ** 2 + d**2) / (2 * SIGMA**2)
        + 0.5 * math.log(2 * math.pi * math.e * d**2)
    )
    n = x.shape[0]
    cov = S0**2 * torch.ones(n, n, dtype=torch.float64) + (1 + SIGMA**2) * torch.eye(n, dtype=torch.float64)
    evidence = torch.distributions.MultivariateNormal(torch.full((n,), M0, dtype=torch.float64), cov).log_prob(x)
    return per_example.sum().item() - kl, kl, evidence.item()


@pytest.fixture(scope="module")
def x():
    g = torch.Generator().manual_seed(3)
    mu = M0 + S0 * torch.randn((), generator=g, dtype=torch.float64)
    z = mu + torch.randn(N, 1, generator=g, dtype=torch.float64)
    return z + SIGMA * torch.randn(N, 1, generator=g, dtype=torch.float64)


GUIDE = dict(a=1.2, b=0.3, c=0.5, e=0.6, d=0.6)


@pytest.mark.parametrize("batch_size", [None, 7])
def test_joint_elbo_matches_the_closed_form_and_bounds_the_evidence(x, batch_size):
    result = evaluate(global_pair(**GUIDE), x, num_particles=4000, seed=0, batch_size=batch_size)
    joint, kl, evidence = closed_form(x, **GUIDE)
    assert result.elbo_kind == ELBO_GIVEN_GLOBALS
    assert abs(result.joint_elbo - joint / N) < Z * result.joint_elbo_se
    assert abs(result.elbo - (joint + kl) / N) < Z * result.elbo_se
    assert abs(result.global_kl - kl) < Z * result.global_kl_se
    assert result.joint_elbo == pytest.approx(result.elbo - result.global_kl / N, abs=1e-12)
    assert result.joint_elbo + Z * result.joint_elbo_se < evidence / N  # a bound, and not a tight one here
    saved = result.to_dict()
    assert saved["elbo_kind"] == ELBO_GIVEN_GLOBALS and saved["joint_elbo"] == result.joint_elbo
    assert saved["global_kl"] == result.global_kl


def test_per_example_elbo_given_q_global_is_not_a_bound_on_the_evidence(x):
    """q(mu) a near point mass at the posterior mean of mu and q(z | x) = p(z | x, mu): the per-example
    figures then approach sum_n log p(x_n | mu_hat) > log p(x_1..N), while the joint ELBO stays below."""
    precision = 1 / S0**2 + N / (1 + SIGMA**2)
    a = (M0 / S0**2 + x.sum().item() / (1 + SIGMA**2)) / precision
    c = (1 / SIGMA**2) / (1 / SIGMA**2 + 1)
    guide = dict(a=a, b=0.02, c=c, e=a * (1 - c), d=(1 / (1 / SIGMA**2 + 1)) ** 0.5)
    result = evaluate(global_pair(**guide), x, num_particles=2000, seed=1)
    joint, kl, evidence = closed_form(x, **guide)
    assert result.elbo - Z * result.elbo_se > evidence / N  # exceeds log p(x) / N
    assert result.joint_elbo + Z * result.joint_elbo_se < evidence / N  # the joint bound does not
    assert abs(result.joint_elbo - joint / N) < Z * result.joint_elbo_se


def test_monte_carlo_errors_account_for_the_shared_global_draw(x):
    """Repeated evaluations (independent seeds) spread as much as the reported s.e. says: the
    variance ratio is chi-square with R - 1 degrees of freedom. Summing per-example variances, which
    ignores that the examples of a chunk share each draw of mu, understated the ELBO's error about
    1.8-fold here (q(mu) with sd 0.5, two chunks of 20 examples)."""
    pair, reps = global_pair(**dict(GUIDE, b=0.5)), 40
    results = [evaluate(pair, x, num_particles=50, seed=100 + r, batch_size=20) for r in range(reps)]
    for value, se in (
        ("joint_elbo", "joint_elbo_se"),
        ("elbo", "elbo_se"),
        ("kl", "kl_se"),
        ("log_likelihood", "log_likelihood_se"),
    ):
        values = np.array([getattr(r, value) for r in results])
        reported = np.mean([getattr(r, se) ** 2 for r in results])
        statistic = (reps - 1) * values.var(ddof=1) / reported
        assert stats.chi2.ppf(1e-4, reps - 1) < statistic < stats.chi2.ppf(1 - 1e-4, reps - 1), (value, statistic)


def test_without_global_latents_the_joint_elbo_is_the_elbo(x):
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.full((1,), M0, dtype=torch.float64), S0).to_event(1))
            pyro.sample("x", dist.Normal(z, SIGMA).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(0.5 * x + 0.6, 0.6).to_event(1))

    result = evaluate(SimpleNamespace(model=model, guide=guide), x, num_particles=200, seed=0)
    assert result.elbo_kind == ELBO and result.global_kl == 0.0
    assert (result.joint_elbo, result.joint_elbo_se) == (result.elbo, result.elbo_se)
