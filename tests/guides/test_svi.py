"""Each registered guide inside a small Pyro model/guide pair: a few SVI steps give finite losses and move
the encoder. The prior matches the guide's space: N(0, I) on R^d, uniform on the sphere, Dirichlet(1) on
the simplex."""

import copy

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO
from pyro.optim import Adam

from ppl_vae.guides import GUIDES
from ppl_vae.models.manifold import DirichletPrior, SphereUniform

N, D, LATENT_DIM = 8, 16, 3


def prior_for(support, latent_dim):
    if support is constraints.sphere:
        return SphereUniform(latent_dim)
    if support is constraints.simplex:
        return DirichletPrior(latent_dim)
    assert support is constraints.real_vector
    return lambda: dist.Normal(torch.zeros(latent_dim), 1.0).to_event(1)


def programs(name):
    guide = GUIDES[name]((D,), LATENT_DIM, (16,))
    prior = prior_for(guide.support, LATENT_DIM)
    decoder = torch.nn.Linear(LATENT_DIM, D)

    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", prior())
            pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x)

    def guide_fn(x):
        pyro.module("encoder", guide)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", guide(x))

    return model, guide_fn, guide


@pytest.mark.parametrize("name", sorted(GUIDES))
@pytest.mark.parametrize(
    "loss", [Trace_ELBO(), Trace_ELBO(num_particles=4, vectorize_particles=True)], ids=["trace", "trace-vectorized"]
)
def test_three_svi_steps(name, loss):
    model, guide_fn, guide = programs(name)
    x = torch.randint(0, 2, (N, D)).float()
    before = copy.deepcopy(guide.encoder.state_dict())
    svi = SVI(model, guide_fn, Adam({"lr": 1e-2}), loss=loss)
    losses = [svi.step(x) for _ in range(3)]
    assert all(torch.isfinite(torch.tensor(v)) for v in losses)
    after = guide.encoder.state_dict()
    assert any((after[k] - before[k]).abs().max() > 1e-4 for k in before)


def test_power_spherical_with_the_analytic_kl():
    # TraceMeanField_ELBO uses the registered KL(PowerSpherical || HypersphericalUniform)
    model, guide_fn, guide = programs("power-spherical")
    x = torch.randint(0, 2, (N, D)).float()
    before = copy.deepcopy(guide.encoder.state_dict())
    svi = SVI(model, guide_fn, Adam({"lr": 1e-2}), loss=TraceMeanField_ELBO())
    losses = [svi.step(x) for _ in range(3)]
    assert all(torch.isfinite(torch.tensor(v)) for v in losses)
    assert any((guide.encoder.state_dict()[k] - before[k]).abs().max() > 1e-4 for k in before)
    # and the analytic-KL loss agrees with the Monte Carlo one in expectation
    with torch.no_grad():
        mc = torch.tensor([Trace_ELBO().loss(model, guide_fn, x) for _ in range(200)])
        analytic = torch.tensor([TraceMeanField_ELBO().loss(model, guide_fn, x) for _ in range(200)])
    se = (mc.var() / 200 + analytic.var() / 200).sqrt()
    assert (mc.mean() - analytic.mean()).abs() < 5 * se
