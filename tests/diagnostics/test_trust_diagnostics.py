"""Trust checks of the diagnostic numbers against closed forms, under a non-standard prior.

The reference model is linear-Gaussian with prior N(1.5, 0.5^2) per dimension:

    z ~ N(m, diag s^2),   x | z ~ N(W z + b, sigma^2 I),   W with orthogonal columns,

so p(z | x) = N(P^-1 (m / s^2 + W^T (x - b) / sigma^2), P^-1) with P = diag(1 / s^2 + |W_j|^2 / sigma^2)
lies in the diagonal Normal family, and log p(x) = log N(x; W m + b, W diag(s^2) W^T + sigma^2 I).
The guides are that exact posterior with a chosen shift (in posterior sds) and width factor.
"""

import math
from dataclasses import dataclass

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

from ppl_vae.diagnostics.calibration import sbc
from ppl_vae.diagnostics.gaps import amortization_gap
from tests.common import assert_within_se

Z = 5.0


@dataclass
class Conjugate:
    W: torch.Tensor  # (D, d)
    b: torch.Tensor  # (D,)
    m: torch.Tensor  # (d,) prior mean
    s: torch.Tensor  # (d,) prior sd
    sigma: float

    def model(self, x, num_samples=None):
        n = x.shape[0] if x is not None else num_samples
        with pyro.plate("data", n):
            z = pyro.sample("z", dist.Normal(self.m, self.s).to_event(1))
            return pyro.sample("x", dist.Normal(z @ self.W.T + self.b, self.sigma).to_event(1), obs=x)

    def posterior_exact(self, x):
        """Mean ``(N, d)`` and sd ``(d,)`` of p(z | x)."""
        precision = 1 / self.s**2 + (self.W**2).sum(0) / self.sigma**2
        loc = (self.m / self.s**2 + (x - self.b) @ self.W / self.sigma**2) / precision
        return loc, precision.rsqrt()

    def log_evidence(self, x):
        cov = self.W @ torch.diag(self.s**2) @ self.W.T + self.sigma**2 * torch.eye(self.W.shape[0], dtype=x.dtype)
        return dist.MultivariateNormal(self.W @ self.m + self.b, covariance_matrix=cov).log_prob(x)

    def guide_pair(self, shift=0.0, factor=1.0):
        """(guide, posterior): the exact posterior moved by ``shift`` posterior sds and widened ``factor``-fold,
        as a Pyro guide and as the encoder's q(z | x) (an Independent Normal)."""

        def posterior(x):
            loc, scale = self.posterior_exact(x)
            return dist.Normal(loc + shift * scale, factor * scale.expand_as(loc)).to_event(1)

        def guide(x, num_samples=None):
            with pyro.plate("data", x.shape[0]):
                return pyro.sample("z", posterior(x))

        return guide, posterior

    def simulate(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        z = self.m + self.s * torch.randn(n, len(self.m), generator=g, dtype=torch.float64)
        return z @ self.W.T + self.b + self.sigma * torch.randn(n, self.W.shape[0], generator=g, dtype=torch.float64)


def make_conjugate(D=4, d=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))
    W = q[:, :d] * torch.linspace(1.5, 0.6, d, dtype=torch.float64)
    b = torch.randn(D, generator=g, dtype=torch.float64)
    return Conjugate(
        W=W, b=b, m=torch.full((d,), 1.5, dtype=torch.float64), s=torch.full((d,), 0.5, dtype=torch.float64), sigma=0.5
    )


@pytest.fixture(scope="module")
def conj():
    return make_conjugate()


# ---------------------------------------------------------------------------------------------------
# Amortization gap


def _store_snapshot():
    store = pyro.get_param_store()
    return {name: (store._params[name], store._params[name].detach().clone()) for name in store.keys()}


def test_amortization_gap_is_the_same_on_repeated_calls_and_leaves_the_param_store_alone(conj):
    """The amortized guide is the exact posterior shifted by 0.8 sd and 1.5 times too wide; the local
    guides can reach the exact posterior, so the amortization gap is the closed-form KL(q || p(z | x))
    and the approximation gap ~0 -- on the first call, the second call on the same tensor, and a clone."""
    x = conj.simulate(25, seed=1)
    guide, posterior = conj.guide_pair(shift=0.8, factor=1.5)
    loc_q, scale_q = posterior(x).base_dist.loc, posterior(x).base_dist.scale
    loc_p, scale_p = conj.posterior_exact(x)
    kl = (
        torch.distributions.kl_divergence(dist.Normal(loc_q, scale_q), dist.Normal(loc_p, scale_p.expand_as(loc_p)))
        .sum(-1)
        .mean()
        .item()
    )
    exact = conj.log_evidence(x).mean().item()
    pyro.param("user.weight", torch.tensor([1.0, 2.0]))  # someone else's parameter: must survive untouched
    before = _store_snapshot()
    results = []
    for data in (x, x, x.clone()):
        gaps = amortization_gap(
            conj.model, guide, data, posterior=posterior, num_steps=800, lr=2e-2, num_particles=2000, seed=0
        )
        after = _store_snapshot()
        assert after.keys() == before.keys()
        assert all(after[k][0] is before[k][0] and torch.equal(after[k][1], before[k][1]) for k in before)
        assert_within_se(gaps["log_likelihood"], exact, gaps["log_likelihood_se"], z=Z, slack=1e-3, what="log p(x)")
        assert_within_se(gaps["elbo_amortized"], exact - kl, gaps["elbo_amortized_se"], z=Z, what="amortized ELBO")
        # Adam leaves the local guides slightly off the optimum: allow 2% of the gap it has to close.
        assert gaps["amortization_gap"] > kl - Z * gaps["amortization_gap_se"] - 0.02 * kl > 0
        assert_within_se(
            gaps["amortization_gap"],
            kl,
            gaps["amortization_gap_se"],
            z=Z,
            slack=0.02 * kl,
            what="amortization gap vs closed-form KL",
        )
        assert_within_se(
            gaps["approximation_gap"], 0.0, gaps["approximation_gap_se"], z=Z, slack=0.02 * kl, what="approximation gap"
        )
        results.append(gaps)
    for later in results[1:]:
        for key in ("amortization_gap", "approximation_gap", "elbo_local"):
            se = math.hypot(results[0][key + "_se"], later[key + "_se"])
            assert abs(later[key] - results[0][key]) <= Z * se, key
    # A different seed: another Monte Carlo draw of the same numbers.
    other = amortization_gap(
        conj.model, guide, x, posterior=posterior, num_steps=800, lr=2e-2, num_particles=2000, seed=7
    )
    se = math.hypot(other["amortization_gap_se"], results[0]["amortization_gap_se"])
    assert_within_se(
        other["amortization_gap"],
        results[0]["amortization_gap"],
        se,
        z=Z,
        slack=0.02 * kl,
        what="amortization gap, seed 7 vs seed 0",
    )


def test_amortization_gap_with_a_global_latent_shares_q_global():
    """mu ~ N(1.5, 0.5^2), z_n | mu ~ N(mu, 1), x_n | z_n ~ N(z_n, sigma^2); q(mu) = N(a, b^2) fixed.
    Given q(mu), the best local q(z_n) is N((x_n / sigma^2 + a) / (1 / sigma^2 + 1), 1 / (1 / sigma^2 + 1)),
    so the amortization gap of any other diagonal Normal encoder is its KL to that, in closed form."""
    a, b, sigma = 1.2, 0.3, 0.7
    one = torch.ones(1, dtype=torch.float64)

    def model(x):
        mu = pyro.sample("mu", dist.Normal(1.5 * one, 0.5).to_event(1))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(mu, 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, sigma).to_event(1), obs=x)

    def posterior(x):
        return dist.Normal(0.5 * x + 0.6, 0.6 * torch.ones_like(x)).to_event(1)

    def guide(x):
        pyro.sample("mu", dist.Normal(a * one, b).to_event(1))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", posterior(x))

    x = 1.5 + 1.3 * torch.randn(20, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    precision = 1 / sigma**2 + 1
    best = dist.Normal((x / sigma**2 + a) / precision, precision**-0.5)
    kl = torch.distributions.kl_divergence(posterior(x).base_dist, best).sum(-1).mean().item()
    gaps = amortization_gap(model, guide, x, posterior=posterior, num_steps=600, lr=2e-2, num_particles=2000, seed=0)
    assert_within_se(
        gaps["amortization_gap"],
        kl,
        gaps["amortization_gap_se"],
        z=Z,
        slack=0.02 * kl,
        what="amortization gap vs closed-form KL",
    )
    assert list(pyro.get_param_store().keys()) == []


def test_amortization_gap_refuses_bad_settings(conj):
    from ppl_vae.errors import ConfigError

    x = conj.simulate(3, seed=0)
    guide, posterior = conj.guide_pair()
    with pytest.raises(ConfigError, match="num_steps"):
        amortization_gap(conj.model, guide, x, posterior=posterior, num_steps=-1)


# ---------------------------------------------------------------------------------------------------
# Simulation-based calibration

SIMULATIONS, DRAWS = 1000, 99


def _critical(alpha, d):
    from scipy import stats

    return stats.norm.isf(alpha / (2 * d))


@pytest.fixture(scope="module")
def conj4():
    return make_conjugate(D=6, d=4, seed=1)


def test_sbc_of_the_exact_posterior_is_calibrated_across_seeds(conj4):
    """The exact posterior as guide, 30 seeds: the z-scores are N(0, 1), the fitted shift and width are
    0 and 1 within their standard errors, and a run is flagged at rate ~alpha (0.01): by design, a
    single seed can be a false alarm (seed 0 is one: the chi-square gate, dimension 1, p = 0.0016)."""
    from scipy import stats

    guide, _ = conj4.guide_pair()
    dispersion, bias, flagged, width_or_bias = [], [], 0, 0
    for seed in range(30):
        r = sbc(conj4.model, guide, num_simulations=SIMULATIONS, num_draws=DRAWS, seed=seed)
        dispersion += list(r.dispersion_z)
        bias += list(r.bias_z)
        flagged += r.verdict != "calibrated"
        width_or_bias += any(f["finding"] != "non-uniform" for f in r.flags)
        # Fitted shift and width: about 1 / sqrt(n) and 1 / sqrt(2 n) standard errors (Gaussian Fisher information).
        assert np.all(np.abs(r.shift) < Z / math.sqrt(SIMULATIONS))
        assert np.all(np.abs(np.log(r.width_ratio)) < Z / math.sqrt(2 * SIMULATIONS))
    assert stats.kstest(dispersion, "norm").pvalue > 1e-3
    assert stats.kstest(bias, "norm").pvalue > 1e-3
    # Expected about 0.3 flagged runs (P(4 or more) < 1e-3) and 0.6 runs with a z-score finding (2% each).
    assert flagged <= 3 and width_or_bias <= 3


def test_sbc_of_a_shifted_guide_reports_bias_only(conj4):
    """Right width, mean +0.5 posterior sd: the guide is biased high in every dimension, and the shift
    must not read as a change of width (the old rank-variance z-score said over-dispersed, -4.9)."""
    guide, _ = conj4.guide_pair(shift=0.5)
    r = sbc(conj4.model, guide, num_simulations=SIMULATIONS, num_draws=DRAWS, seed=0)
    assert [f["finding"] for f in r.flags] == ["biased high"] * 4
    assert np.all(np.abs(r.dispersion_z) < _critical(0.01, 4))
    assert np.all(r.bias_z < -_critical(0.01, 4))
    assert np.all(np.abs(r.shift - 0.5) < Z / math.sqrt(SIMULATIONS))
    assert np.all(np.abs(np.log(r.width_ratio)) < Z / math.sqrt(2 * SIMULATIONS))
    assert r.verdict == (
        "dims 0, 1, 2, 3: biased high (guide mean too high: the true z falls below most draws) "
        "[4 of 4 dimensions flagged]"
    )


@pytest.mark.parametrize("factor, finding, sign", [(0.5, "under-dispersed", 1), (2.0, "over-dispersed", -1)])
def test_sbc_of_a_too_narrow_or_too_wide_guide_reports_width_only(conj4, factor, finding, sign):
    guide, _ = conj4.guide_pair(factor=factor)
    r = sbc(conj4.model, guide, num_simulations=SIMULATIONS, num_draws=DRAWS, seed=0)
    assert [f["finding"] for f in r.flags] == [finding] * 4
    assert np.all(sign * r.dispersion_z > _critical(0.01, 4))
    assert np.all(np.abs(r.bias_z) < _critical(0.01, 4))
    assert np.all(np.abs(np.log(r.width_ratio / factor)) < Z / math.sqrt(2 * SIMULATIONS))
    assert r.verdict.startswith(f"dims 0, 1, 2, 3: {finding} (guide too ")


def test_sbc_verdict_names_the_dimensions_of_each_finding(conj4):
    """Dimension 1 shifted down by 0.6 sd, dimension 3 half as wide, the others exact."""

    def guide(x, num_samples=None):
        loc, scale = conj4.posterior_exact(x)
        loc = loc - 0.6 * scale * torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=loc.dtype)
        scale = scale * torch.tensor([1.0, 1.0, 1.0, 0.5], dtype=loc.dtype)
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("z", dist.Normal(loc, scale.expand_as(loc)).to_event(1))

    r = sbc(conj4.model, guide, num_simulations=SIMULATIONS, num_draws=DRAWS, seed=0)
    assert [(f["latent_dim"], f["finding"]) for f in r.flags] == [(1, "biased low"), (3, "under-dispersed")]
    assert r.verdict == (
        "dim 1: biased low (guide mean too low: the true z falls above most draws); "
        "dim 3: under-dispersed (guide too narrow, over-confident: ranks pile up at both ends) "
        "[2 of 4 dimensions flagged]"
    )
    assert r.summary()["width_ratio"][3] == pytest.approx(0.5, abs=Z * 0.5 / math.sqrt(2 * SIMULATIONS))


# ---------------------------------------------------------------------------------------------------
# Posterior collapse under a non-standard prior


@pytest.fixture
def shifted_prior_vae():
    """A VAE with the learned-normal prior set to N(1.5, 0.5^2) per dimension, and data."""
    from ppl_vae import VAE

    pyro.set_rng_seed(0)
    vae = VAE((6,), latent_dim=3, hidden_dims=(16,), prior="learned-normal", likelihood="gaussian")
    with torch.no_grad():
        vae.prior.loc.fill_(1.5)
        vae.prior.log_scale.fill_(math.log(0.5))
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(4))
    return vae, x


def test_collapse_report_kl_is_to_the_models_own_prior(shifted_prior_vae):
    """The KL per dimension sums to the rate that evaluate() estimates by Monte Carlo (E_q[log q - log p]
    with the VAE's prior): with N(1.5, 0.5^2) the KL to N(0, I) is a different number (0.58 vs 15.7 nats
    in the case that found this)."""
    from ppl_vae.diagnostics.collapse import collapse_report
    from ppl_vae.infer.evaluate import evaluate

    vae, x = shifted_prior_vae
    report = collapse_report(vae, x, num_samples=20, seed=0)
    result = evaluate(vae, x, num_particles=4000, seed=0)
    total = sum(report["kl_per_dimension"])
    se = math.hypot(result.kl_se, report["kl_total_se"] or 0.0)
    assert_within_se(total, result.kl, se, z=Z, slack=1e-5, what="sum of the KL per dimension vs evaluate's KL")
    assert report["kl_total"] == pytest.approx(total, rel=1e-5)
    # the same numbers on a second call
    again = collapse_report(vae, x, num_samples=20, seed=0)
    assert again["kl_per_dimension"] == pytest.approx(report["kl_per_dimension"], rel=1e-6)


def test_collapse_report_names_a_collapsed_model(shifted_prior_vae):
    """An encoder that ignores x and outputs the prior N(1.5, 0.5^2): no active unit, KL 0, I(x; z) 0."""
    from ppl_vae.diagnostics.collapse import collapse_report

    vae, x = shifted_prior_vae
    healthy = collapse_report(vae, x, num_samples=20, seed=0)
    layer = [m for m in vae.encoder.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():  # last layer: constant (loc, log-scale) whatever x
        layer.weight.zero_()
        out = layer.bias.shape[0] // 2
        layer.bias[:out] = 1.5
        layer.bias[out:] = math.log(0.5)
    q = vae.posterior(x)
    assert torch.allclose(q.mean, torch.full_like(q.mean, 1.5)) and torch.allclose(
        q.stddev, torch.full_like(q.mean, 0.5)
    )
    collapsed = collapse_report(vae, x, num_samples=20, seed=0)
    assert not healthy["collapsed"] and healthy["warning"] is None
    assert collapsed["collapsed"] and collapsed["active_units"] == 0
    assert collapsed["kl_per_dimension"] == pytest.approx([0.0] * 3, abs=1e-5)
    assert "collapsed" in collapsed["warning"] and "0 of 3 latent units active" in collapsed["warning"]
