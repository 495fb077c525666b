"""A prior with a global latent (the hierarchical prior): training and per-example evaluation."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from ppl_vae import VAE, ConfigError, fit
from ppl_vae.infer.evaluate import evaluate, log_weights

SHAPE = (1, 2, 3)


@pytest.fixture
def vae():
    pyro.set_rng_seed(0)
    model = VAE(SHAPE, latent_dim=2, hidden_dims=(8,), prior="hierarchical")
    with torch.no_grad():  # a q(tau) that is clearly not the prior
        model.prior.q_loc.copy_(torch.tensor([-0.5, 0.3]))
        model.prior.q_log_scale.fill_(-1.0)
    return model


@pytest.fixture
def x():
    return torch.bernoulli(torch.full((6, *SHAPE), 0.4), generator=torch.Generator().manual_seed(11))


def brute_force_log_likelihood(vae, x, num_particles, generator):
    """Per-example log p(x_n) = log E_{tau ~ q(tau)} E_{z ~ q(z|x_n)}[p(x_n|z) N(z; 0, tau) / q(z|x_n)],
    written out with plain torch: K draws of tau, each shared by all examples, as in the model."""
    with torch.no_grad():
        q_tau = dist.LogNormal(vae.prior.q_loc, vae.prior.q_log_scale.exp())
        tau = q_tau.sample(torch.Size([num_particles]))  # (K, d)
        loc, scale = vae.encode(x)  # (N, d)
        eps = torch.randn((num_particles, *loc.shape), generator=generator)
        z = loc + scale * eps  # (K, N, d)
        log_q = dist.Normal(loc, scale).log_prob(z).sum(-1)  # (K, N)
        log_p_z = dist.Normal(0.0, tau[:, None, :]).log_prob(z).sum(-1)  # (K, N)
        logits = vae.decoder(z).reshape(num_particles, x.shape[0], *SHAPE)
        log_p_x = dist.Bernoulli(logits=logits).log_prob(x).sum((-1, -2, -3))  # (K, N)
        log_w = (log_p_x + log_p_z - log_q).double()
        estimate = torch.logsumexp(log_w, 0) - math.log(num_particles)
        w = (log_w - log_w.max(0).values).exp()
        se = (w.var(0) / (num_particles * w.mean(0) ** 2)).sqrt()
    return estimate, se


def test_per_example_bound_matches_brute_force(vae, x):
    """Ours vs a plain-torch computation of the same per-example estimator, each repeated with
    independent seeds; the tolerance comes from the repeats' spread (the delta-method s.e. of a
    single run is too optimistic for these heavy-tailed weights)."""
    K, R = 2000, 8
    ours = torch.stack(
        [evaluate(vae, x, num_particles=K, seed=r).per_example["log_likelihood"].double() for r in range(R)]
    )  # (R, N)
    reference = torch.stack(
        [brute_force_log_likelihood(vae, x, K, torch.Generator().manual_seed(100 + r))[0] for r in range(R)]
    )
    assert ours.shape == (R, 6)
    se = (ours.var(0) / R + reference.var(0) / R).sqrt()
    z = (ours.mean(0) - reference.mean(0)).abs() / se
    assert (z < 4.0).all(), z


def test_log_weights_do_not_score_the_global_site(vae, x):
    """The hyperprior p(tau) enters only through the global site's own term, which evaluation leaves
    out: swapping the hyperprior must leave every per-example weight unchanged (same draws)."""
    pyro.set_rng_seed(5)
    half_cauchy = log_weights(vae.model, vae.guide, x, num_particles=3)["log_weight"]
    vae.prior.hyperprior = "log-normal"
    pyro.set_rng_seed(5)
    log_normal = log_weights(vae.model, vae.guide, x, num_particles=3)["log_weight"]
    assert half_cauchy.shape == (3, 6)
    torch.testing.assert_close(half_cauchy, log_normal)


def test_training_learns_q_tau_and_stays_finite(vae):
    data = torch.bernoulli(torch.full((64, *SHAPE), 0.4), generator=torch.Generator().manual_seed(3))
    before = (vae.prior.q_loc.detach().clone(), vae.prior.q_log_scale.detach().clone())
    result = fit(vae, data, epochs=5, batch_size=16, lr=1e-2, progress=False)
    assert all(math.isfinite(v) for v in result.losses)
    assert not torch.equal(before[0], vae.prior.q_loc) and not torch.equal(before[1], vae.prior.q_log_scale)
    samples = vae.sample(4)
    assert samples.shape == (4, *SHAPE)


def test_iwae_objective_with_a_global_latent_is_refused(vae, x):
    with pytest.raises(ConfigError, match="global latents"):
        fit(vae, x, epochs=1, elbo="iwae", num_particles=4, progress=False)


@pytest.mark.parametrize("hyperprior", ["half-cauchy", "log-normal"])
def test_joint_elbo_subtracts_kl_of_q_tau_from_the_per_example_figure(vae, x, hyperprior):
    """The joint ELBO is the per-example ELBO given q(tau) minus KL(q(tau) || p(tau)) / N; the KL,
    computed here independently with plain torch and 200,000 draws, agrees within Monte Carlo error."""
    vae.prior.hyperprior = hyperprior
    result = evaluate(vae, x, num_particles=4000, seed=0)
    assert result.elbo_kind == "per-example ELBO given q(global)"
    with torch.no_grad():
        q_tau = dist.LogNormal(vae.prior.q_loc, vae.prior.q_log_scale.exp()).to_event(1)
        p_tau = (
            dist.HalfCauchy(torch.ones(2))
            if hyperprior == "half-cauchy"
            else dist.LogNormal(torch.zeros(2), torch.ones(2))
        ).to_event(1)
        tau = q_tau.sample(torch.Size([200_000]))
        terms = (q_tau.log_prob(tau) - p_tau.log_prob(tau)).double()
    kl, kl_se = terms.mean().item(), (terms.std() / math.sqrt(terms.numel())).item()
    assert kl > 0.5  # q(tau) is far from the hyperprior
    assert abs(result.global_kl - kl) < 5 * math.hypot(result.global_kl_se, kl_se)
    assert result.joint_elbo == pytest.approx(result.elbo - result.global_kl / x.shape[0], abs=1e-9)
    assert result.joint_elbo_se > 0 and result.to_dict()["joint_elbo"] == result.joint_elbo
