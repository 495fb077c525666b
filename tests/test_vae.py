"""The VAE's model and guide are ordinary Pyro programs: sites, plates, generation, and every Pyro
tool that takes a model and a guide."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, JitTrace_ELBO, Predictive, RenyiELBO, Trace_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO

from ppl_vae import VAE, ConfigError, evaluate, fit

SHAPE = (1, 4, 4)


@pytest.fixture
def vae():
    return VAE(SHAPE, latent_dim=3, hidden_dims=(16,))


@pytest.fixture
def x():
    return torch.bernoulli(torch.full((5, *SHAPE), 0.4))


def test_model_and_guide_sites_and_plate(vae, x):
    guide_trace = poutine.trace(vae.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x)
    z, obs = model_trace.nodes["z"], model_trace.nodes["x"]
    assert not z["is_observed"] and obs["is_observed"]
    assert z["fn"].event_shape == (3,) and z["fn"].batch_shape == (5,)
    assert obs["fn"].event_shape == SHAPE and obs["fn"].batch_shape == (5,)
    for site in (z, obs, guide_trace.nodes["z"]):
        assert [f.name for f in site["cond_indep_stack"]] == ["data"]
    assert guide_trace.nodes["z"]["fn"].has_rsample
    torch.testing.assert_close(model_trace.nodes["z"]["value"], guide_trace.nodes["z"]["value"])


def test_model_generates_without_data(vae):
    trace = poutine.trace(vae.model).get_trace(None, num_samples=7)
    assert not trace.nodes["x"]["is_observed"]
    assert trace.nodes["x"]["value"].shape == (7, *SHAPE)
    assert set(trace.nodes["x"]["value"].unique().tolist()) <= {0.0, 1.0}
    assert vae.sample(6).shape == (6, *SHAPE)
    samples = vae.sample(6)
    assert ((samples >= 0) & (samples <= 1)).all()


def test_guide_requires_data(vae):
    with pytest.raises(ValueError, match="needs data"):
        vae.guide(None)


def test_predictive_gives_posterior_predictive_and_prior_predictive(vae, x):
    post = Predictive(vae.model, guide=vae.guide, num_samples=4)(x)
    assert post["z"].shape == (4, 5, 3)
    prior = Predictive(vae.model, num_samples=4)(None, num_samples=5)
    assert prior["x"].shape == (4, 5, *SHAPE)


@pytest.mark.filterwarnings("ignore:.*torch.jit.trace.*:FutureWarning")
@pytest.mark.parametrize(
    "elbo",
    [
        Trace_ELBO(),
        TraceMeanField_ELBO(),
        TraceGraph_ELBO(),
        RenyiELBO(alpha=0.5),
        Trace_ELBO(num_particles=3, vectorize_particles=True),
        JitTrace_ELBO(ignore_jit_warnings=True),
    ],
    ids=["trace", "meanfield", "tracegraph", "renyi", "vectorized", "jit"],
)
def test_any_pyro_elbo_trains(vae, x, elbo):
    before = [p.detach().clone() for p in vae.parameters()]
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), elbo)
    losses = [svi.step(x) for _ in range(3)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert any(not torch.equal(b, p) for b, p in zip(before, vae.parameters()))


def test_num_data_scales_the_batch_to_the_data_set(vae, x):
    pyro.set_rng_seed(3)
    batch_loss = Trace_ELBO().loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(3)
    full_loss = Trace_ELBO().loss(vae.model, vae.guide, x, num_data=20)
    assert full_loss == pytest.approx(4 * batch_loss, rel=1e-6)


def test_encode_decode_reconstruct_shapes(vae, x):
    loc, scale = vae.encode(x)
    assert loc.shape == scale.shape == (5, 3) and (scale > 0).all()
    assert vae.decode(loc).shape == (5, *SHAPE)
    assert vae.reconstruct(x).shape == (5, *SHAPE)


def test_user_distribution_as_prior_trains_and_samples(x):
    vae = VAE(SHAPE, latent_dim=3, hidden_dims=(16,), prior=dist.Gumbel(0.0, 1.0).expand([3]).to_event(1))
    trace = poutine.trace(vae.model).get_trace(x)
    assert isinstance(trace.nodes["z"]["fn"].base_dist, dist.Gumbel)
    result = fit(vae, x.repeat(4, 1, 1, 1), epochs=2, batch_size=10, progress=False)
    assert len(result.losses) == 4 and all(torch.isfinite(torch.tensor(result.losses)))
    assert vae.sample(3).shape == (3, *SHAPE)
    report = evaluate(vae, x, num_particles=50, seed=0)
    assert math.isfinite(report.log_likelihood) and report.log_likelihood >= report.elbo


def test_user_module_prior_with_learnable_parameters_trains(x):
    class ScaledLaplace(torch.nn.Module):  # the README's example of a prior of one's own
        def __init__(self, latent_dim):
            super().__init__()
            self.log_scale = torch.nn.Parameter(torch.zeros(latent_dim))

        def forward(self):
            return dist.Laplace(torch.zeros_like(self.log_scale), self.log_scale.exp()).to_event(1)

    vae = VAE(SHAPE, latent_dim=3, hidden_dims=(16,), prior=ScaledLaplace(3))
    before = vae.prior.log_scale.detach().clone()
    fit(vae, x.repeat(4, 1, 1, 1), epochs=3, batch_size=10, lr=1e-2, progress=False)
    assert not torch.equal(before, vae.prior.log_scale)
    assert math.isfinite(evaluate(vae, x, num_particles=20, seed=0).log_likelihood)


def test_unknown_component_names_are_clear_errors():
    with pytest.raises(ConfigError, match="unknown prior 'cauchy'.*normal"):
        VAE(SHAPE, prior="cauchy")
    with pytest.raises(ConfigError, match="unknown likelihood"):
        VAE(SHAPE, likelihood="poisson-ish")
    with pytest.raises(ConfigError, match="latent_dim"):
        VAE(SHAPE, latent_dim=0)


def test_second_vae_in_the_same_process_really_trains(x):
    """Pyro's param store is global; fit must bind it to the VAE being trained."""
    data = x.repeat(4, 1, 1, 1)
    first = VAE(SHAPE, latent_dim=3, hidden_dims=(16,))
    fit(first, data, epochs=1, batch_size=10, progress=False)
    second = VAE(SHAPE, latent_dim=3, hidden_dims=(16,))
    before = [p.detach().clone() for p in second.parameters()]
    frozen_first = [p.detach().clone() for p in first.parameters()]
    fit(second, data, epochs=1, batch_size=10, progress=False)
    assert all(not torch.equal(b, p) for b, p in zip(before, second.parameters()))
    assert all(torch.equal(b, p) for b, p in zip(frozen_first, first.parameters()))
