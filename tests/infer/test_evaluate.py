"""Evaluation works for any Pyro model/guide pair following the site/plate contract."""

import math
from types import SimpleNamespace

import pyro
import pyro.distributions as dist
import pytest
import torch

from ppl_vae import VAE, ConfigError, evaluate, log_weights

Z = 4.0


def conjugate_pair(guide_scale_factor=1.0, replicates=3):
    """z_n ~ N(0, 1); x_nr ~ N(z_n, 1) for r in a nested plate. Exact: p(z | x) = N(sum x / (R+1), 1/(R+1))."""

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            with pyro.plate("replicates", replicates, dim=-2):
                pyro.sample("x", dist.Normal(z, 1.0), obs=x.T)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            loc = x.sum(-1) / (replicates + 1)
            pyro.sample("z", dist.Normal(loc, guide_scale_factor * (1.0 / (replicates + 1)) ** 0.5))

    def exact(x):
        cov = torch.eye(replicates) + torch.ones(replicates, replicates)
        return dist.MultivariateNormal(torch.zeros(replicates), covariance_matrix=cov).log_prob(x)

    return SimpleNamespace(model=model, guide=guide), exact


@pytest.fixture
def x():
    return torch.randn(30, 3) * 1.5


def test_hand_written_pair_with_nested_plate_exact_guide(x):
    pair, exact = conjugate_pair()
    parts = log_weights(pair.model, pair.guide, x, num_particles=20)
    assert parts["log_weight"].shape == (20, 30)
    torch.testing.assert_close(parts["log_weight"], exact(x).expand(20, -1), atol=1e-4, rtol=0)


def test_hand_written_pair_iwae_within_mc_error(x):
    pair, exact = conjugate_pair(guide_scale_factor=2.0)
    result = evaluate(pair, x, num_particles=3000, seed=0)
    truth = exact(x).mean().item()
    assert abs(result.log_likelihood - truth) < Z * result.log_likelihood_se
    assert result.elbo + Z * result.elbo_se < truth
    assert result.num_examples == 30 and result.num_particles == 3000


def test_iwae_is_never_below_the_elbo_on_the_same_draws():
    vae = VAE((1, 4, 4), latent_dim=2, hidden_dims=(8,))
    data = torch.bernoulli(torch.full((25, 1, 4, 4), 0.3))
    result = evaluate(vae, data, num_particles=64, seed=0)
    # log mean exp >= mean log (Jensen), per example and for the very draws used.
    assert (result.per_example["log_likelihood"] >= result.per_example["elbo"] - 1e-5).all()
    assert result.reconstruction - result.kl == pytest.approx(result.elbo, abs=1e-4)


def test_chunking_does_not_change_the_estimates_beyond_mc_error():
    vae = VAE((1, 4, 4), latent_dim=2, hidden_dims=(8,))
    data = torch.bernoulli(torch.full((40, 1, 4, 4), 0.3))
    whole = evaluate(vae, data, num_particles=500, seed=0)
    chunked = evaluate(vae, data, num_particles=500, seed=1, batch_size=7, max_elements=7 * 16 * 33)
    se = math.hypot(whole.log_likelihood_se, chunked.log_likelihood_se)
    assert abs(whole.log_likelihood - chunked.log_likelihood) < Z * se
    se = math.hypot(whole.elbo_se, chunked.elbo_se)
    assert abs(whole.elbo - chunked.elbo) < Z * se


def test_seeded_evaluation_is_reproducible_and_leaves_global_rng_alone():
    vae = VAE((1, 4, 4), latent_dim=2, hidden_dims=(8,))
    data = torch.bernoulli(torch.full((10, 1, 4, 4), 0.3))
    state = torch.get_rng_state()
    a = evaluate(vae, data, num_particles=50, seed=5)
    assert torch.equal(state, torch.get_rng_state())
    b = evaluate(vae, data, num_particles=50, seed=5)
    assert a.to_dict() == b.to_dict()


def test_observed_site_outside_the_data_plate_is_refused_clearly(x):
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("total", dist.Normal(z.sum(), 1.0), obs=x.sum())

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(0.0, 1.0))

    with pytest.raises(ConfigError, match="'total' is outside the 'data' plate"):
        evaluate(SimpleNamespace(model=model, guide=guide), x, num_particles=4)


def test_invalid_arguments():
    vae = VAE((1, 4, 4), latent_dim=2, hidden_dims=(8,))
    with pytest.raises(ConfigError, match="num_particles"):
        evaluate(vae, torch.zeros(3, 1, 4, 4), num_particles=0)
    with pytest.raises(ConfigError, match="empty"):
        evaluate(vae, torch.zeros(0, 1, 4, 4))
