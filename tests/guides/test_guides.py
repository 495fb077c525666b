"""Every registered guide family: q(z | x) has the right shapes, reparameterized differentiable draws in
the guide's declared space, and log-densities that broadcast over particle dimensions."""

import math

import pyro
import pytest
import torch
from pyro.distributions import constraints

import ppl_vae.guides
from ppl_vae.guides import GUIDES

SHAPE, LATENT_DIM, N, K = (1, 4, 4), 3, 5, 7
REQUIRED = {"normal", "full-rank", "iaf", "delta", "power-spherical", "dirichlet"}
DETERMINISTIC = {"delta"}  # q(z | x) is a point mass: its draw is f(x) itself


@pytest.fixture(params=sorted(GUIDES))
def name(request):
    return request.param


@pytest.fixture
def guide(name):
    return GUIDES[name](SHAPE, LATENT_DIM, (16,))


def test_registry_has_every_family_and_exports_its_class():
    assert REQUIRED <= set(GUIDES)
    for cls in (
        "DiagonalNormal",
        "FullRankNormal",
        "InverseAutoregressiveFlow",
        "PointMass",
        "PowerSphericalGuide",
        "DirichletGuide",
        "MLPEncoder",
    ):
        assert cls in ppl_vae.guides.__all__ and hasattr(ppl_vae.guides, cls)


def test_shapes(guide):
    q = guide(torch.rand(N, *SHAPE))
    assert q.batch_shape == (N,) and q.event_shape == (LATENT_DIM,)
    z = q.sample()
    assert z.shape == (N, LATENT_DIM)
    assert torch.isfinite(q.log_prob(z)).all() and q.log_prob(z).shape == (N,)


def test_rsample_carries_gradients_to_the_encoder(name, guide):
    x = torch.rand(N, *SHAPE)
    q = guide(x)
    assert q.has_rsample
    z1, z2 = q.rsample(), q.rsample()
    if name in DETERMINISTIC:
        # the draw is the encoder's output itself: identical every time, and the mean
        assert torch.equal(z1, z2) and torch.equal(z1, q.mean)
        assert (q.stddev == 0).all()
    else:
        assert (z1 - z2).abs().max() > 1e-4
        assert (q.stddev > 0).all()
    z1.pow(2).sum().backward()
    grads = [p.grad for p in guide.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_draws_lie_in_the_declared_support(guide):
    assert guide.support in (constraints.real_vector, constraints.sphere, constraints.simplex)
    q = guide(torch.rand(N, *SHAPE))
    z = q.rsample(torch.Size([200]))
    assert guide.support.check(z).all()
    assert q.support.check(z).all()


def test_log_prob_broadcasts_over_a_leading_particle_dim(guide):
    q = guide(torch.rand(N, *SHAPE))
    z = q.rsample(torch.Size([K]))  # (K, N, d) while the parameters are (N, ...)
    assert z.shape == (K, N, LATENT_DIM)
    log_q = q.log_prob(z)
    assert log_q.shape == (K, N) and torch.isfinite(log_q).all()
    # the same numbers one particle at a time (a copy: no cached inverse of a flow can be reused)
    one_by_one = torch.stack([q.log_prob(z[k].clone()) for k in range(K)])
    torch.testing.assert_close(log_q, one_by_one, atol=1e-4, rtol=1e-4)


def test_under_a_vectorized_particle_plate(guide):
    x = torch.rand(N, *SHAPE)

    def draw():
        with pyro.plate("particles", K, dim=-2), pyro.plate("data", N, dim=-1):
            return pyro.sample("z", guide(x))

    trace = pyro.poutine.trace(draw).get_trace()
    trace.compute_log_prob()
    site = trace.nodes["z"]
    assert site["value"].shape == (K, N, LATENT_DIM)
    assert site["log_prob"].shape == (K, N) and torch.isfinite(site["log_prob"]).all()


def test_log_prob_broadcasts_against_a_batch_of_posteriors(name, guide):
    # as in a mixture of posteriors (e.g. a VampPrior): z (N, 1, d) scored under q(z | u_m), m = 1..4
    u = torch.rand(4, *SHAPE)
    q_mix = guide(u)
    z = guide(torch.rand(N, *SHAPE)).rsample().detach()
    if name in DETERMINISTIC:
        z[:2] = q_mix.mean[:2].detach()  # z_n = f(u_n) for n = 0, 1: only there does a component have mass
    log_q = q_mix.log_prob(z[:, None])
    assert log_q.shape == (N, 4)
    if name in DETERMINISTIC:
        expected = torch.full((N, 4), -math.inf)
        expected[0, 0] = expected[1, 1] = 0.0
        assert torch.equal(log_q, expected)
    else:
        for m in range(4):  # column m is q(z | u_m) on its own
            torch.testing.assert_close(log_q[:, m], guide(u[m : m + 1]).log_prob(z), atol=1e-4, rtol=1e-4)
    mixture = torch.distributions.MixtureSameFamily(torch.distributions.Categorical(logits=torch.zeros(4)), q_mix)
    assert mixture.log_prob(z).shape == (N,)


def test_mean_and_stddev_for_encode(guide):
    q = guide(torch.rand(N, *SHAPE))
    mean, stddev = q.mean, q.stddev
    assert mean.shape == stddev.shape == (N, LATENT_DIM)
    assert torch.isfinite(mean).all() and torch.isfinite(stddev).all() and (stddev >= 0).all()


def test_state_dict_round_trip_reproduces_the_distribution(name):
    torch.manual_seed(1)
    first = GUIDES[name](SHAPE, LATENT_DIM, (16,))
    torch.manual_seed(2)
    second = GUIDES[name](SHAPE, LATENT_DIM, (16,))
    x = torch.rand(N, *SHAPE)
    z = first(x).rsample().detach()
    before = second(x).log_prob(z)
    second.load_state_dict(first.state_dict())
    torch.testing.assert_close(second(x).log_prob(z), first(x).log_prob(z))
    torch.testing.assert_close(second(x).mean, first(x).mean)
    if name not in DETERMINISTIC:  # delta: -inf off the point for both, 0 on it
        assert not torch.allclose(before, first(x).log_prob(z))


def test_module_follows_dtype(guide):
    guide = guide.double()
    q = guide(torch.rand(N, *SHAPE, dtype=torch.float64))
    z = q.rsample()
    assert z.dtype == torch.float64 and q.log_prob(z).dtype == torch.float64


def test_diagonal_normal_outputs_loc_and_log_scale():
    guide = GUIDES["normal"](SHAPE, LATENT_DIM, (16,))
    x = torch.rand(5, *SHAPE)
    raw = guide.encoder(x)
    loc, scale = guide.loc_scale(x)
    torch.testing.assert_close(loc, raw[:, :LATENT_DIM])
    torch.testing.assert_close(scale, raw[:, LATENT_DIM:].exp())
    q = guide(x)
    torch.testing.assert_close(q.mean, loc)
    torch.testing.assert_close(q.stddev, scale)
