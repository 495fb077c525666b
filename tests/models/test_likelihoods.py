"""Every registered likelihood passes the generic checks; new likelihoods get them by being registered.

Event shape = data shape, draws inside the support that ``check_support`` accepts, finite log-densities
(also at extreme decoder outputs, with finite gradients), ``mean`` equal to the Monte Carlo mean of
draws, ``check_support`` refusing data of the wrong kind with a message naming the likelihood, and one
SVI step of a VAE built with it. Per-likelihood normalization checks are in test_likelihood_math.py.
"""

import math
import re

import pytest
import torch
from pyro.infer import Trace_ELBO

from ppl_vae import VAE, DataError
from ppl_vae.models import LIKELIHOODS, Bernoulli
from ppl_vae.models.likelihoods import DATA_KINDS

SHAPE = (1, 3, 4)
D = math.prod(SHAPE)
Z = 4.0  # tolerance in Monte Carlo standard errors

#: Per data kind: values that must pass check_support, and values that must not (one per tensor).
VALID = {
    "binary": torch.tensor([0.0, 1.0]),
    "unit": torch.tensor([0.0, 0.25, 1.0]),
    "8bit": torch.arange(256, dtype=torch.uint8).float() / 255,
    "real": torch.tensor([-1e6, 0.0, 3.5]),
    "count": torch.tensor([0.0, 1.0, 7.0, 1e6]),
}
INVALID = {
    "binary": [0.5, -1.0, 2.0, float("nan")],
    "unit": [-0.01, 1.01, float("nan"), float("inf")],
    "8bit": [0.5 / 255, 0.3, -1 / 255, 256 / 255, float("nan")],
    "real": [float("nan"), float("inf"), -float("inf")],
    "count": [-1.0, 0.5, float("nan"), float("inf")],
}
#: Per data kind: extreme but valid data values.
EDGES = {"binary": [0.0, 1.0], "unit": [0.0, 1.0], "8bit": [0.0, 1.0], "real": [-5.0, 5.0], "count": [0.0, 5000.0]}


@pytest.fixture(params=sorted(LIKELIHOODS))
def likelihood(request):
    return LIKELIHOODS[request.param](SHAPE)


def test_protocol_attributes():
    for name, factory in LIKELIHOODS.items():
        lik = factory(SHAPE)
        assert lik.name == name
        assert lik.data_kind in DATA_KINDS
        assert isinstance(lik.params_per_feature, int) and lik.params_per_feature >= 1
        assert lik.data_shape == SHAPE


def test_shapes_and_finite_log_prob(likelihood):
    params = torch.randn(7, likelihood.params_per_feature * D)
    px = likelihood(params)
    assert px.batch_shape == (7,) and px.event_shape == SHAPE
    x = px.sample()
    assert x.shape == (7, *SHAPE)
    likelihood.check_support(x)  # draws are data the likelihood accepts
    assert torch.isfinite(px.log_prob(x)).all()
    assert likelihood.mean(params).shape == (7, *SHAPE)


def test_particle_dimensions_broadcast_against_data(likelihood):
    """What vectorized particles do: params (K, N, P) scored at data (N, *shape) gives (K, N)."""
    params = torch.randn(3, 5, likelihood.params_per_feature * D)
    px = likelihood(params)
    assert px.batch_shape == (3, 5) and px.event_shape == SHAPE
    x = likelihood(torch.randn(5, likelihood.params_per_feature * D)).sample()
    assert px.log_prob(x).shape == (3, 5)
    torch.testing.assert_close(px.log_prob(x)[1], likelihood(params[1]).log_prob(x))
    assert likelihood.mean(params).shape == (3, 5, *SHAPE)
    assert px.expand((2, 3, 5)).log_prob(x).shape == (2, 3, 5)


def test_mean_matches_monte_carlo_mean(likelihood):
    params = torch.randn(4, likelihood.params_per_feature * D)
    n = 4000
    draws = likelihood(params).sample((n,)).double()
    mc_mean = draws.mean(0)
    se = draws.std(0) / math.sqrt(n) + 1e-9
    excess = ((mc_mean - likelihood.mean(params).double()).abs() / se).max().item()
    assert excess < Z, f"mean is {excess:.1f} standard errors from the Monte Carlo mean"


def test_finite_log_prob_and_gradients_at_extreme_params(likelihood):
    """Saturated decoder outputs at the edges of the data range: no inf, no NaN, no NaN gradients."""
    values = torch.tensor(EDGES[likelihood.data_kind])
    x = values[torch.arange(D) % len(values)].reshape(SHAPE)
    for value in (-60.0, -20.0, 0.0, 20.0, 60.0):
        params = torch.full((2, likelihood.params_per_feature * D), value, requires_grad=True)
        log_p = likelihood(params).log_prob(x)
        assert torch.isfinite(log_p).all(), value
        log_p.sum().backward()
        assert torch.isfinite(params.grad).all(), value
        for p in likelihood.parameters():
            assert torch.isfinite(p.grad).all(), value
            p.grad = None
        assert torch.isfinite(likelihood.mean(params)).all()


def test_check_support_accepts_valid_and_refuses_invalid_data(likelihood):
    kind = likelihood.data_kind
    likelihood.check_support(VALID[kind].reshape(-1, 1, 1, 1).expand(-1, *SHAPE))
    for bad in INVALID[kind]:
        x = VALID[kind][0].repeat(2, *SHAPE)
        x[1, 0, 2, 3] = bad
        with pytest.raises(DataError, match=re.escape(f"the {likelihood.name} likelihood needs")) as error:
            likelihood.check_support(x)
        assert "\n" not in str(error.value) and ";" in str(error.value)  # one line: problem; fix


def test_one_svi_step_of_a_vae_with_vectorized_particles(likelihood):
    """The likelihood inside the Pyro programs: the data plate and a particle plate, finite loss and
    gradients for the decoder and the likelihood's own parameters."""
    vae = VAE(SHAPE, 2, (8,), likelihood=likelihood)
    x = likelihood(torch.randn(6, likelihood.params_per_feature * D)).sample()
    for elbo in (Trace_ELBO(), Trace_ELBO(num_particles=3, vectorize_particles=True)):
        vae.zero_grad()
        loss = elbo.differentiable_loss(vae.model, vae.guide, x)
        assert torch.isfinite(loss)
        loss.backward()
        for name, p in vae.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_bernoulli_is_normalized_over_binary_images():
    """Summing p(x | params) over all 2^4 binary images of a 2x2 example gives 1."""
    lik = Bernoulli((1, 2, 2))
    params = torch.randn(4)
    images = torch.tensor([[(i >> k) & 1 for k in range(4)] for i in range(16)], dtype=torch.float32).reshape(
        16, 1, 2, 2
    )
    total = lik(params).log_prob(images).logsumexp(0)
    assert total.item() == pytest.approx(0.0, abs=1e-6)


def test_bernoulli_refuses_grey_levels():
    with pytest.raises(DataError, match="binarize"):
        Bernoulli(SHAPE).check_support(torch.full((2, *SHAPE), 0.5))
    Bernoulli(SHAPE).check_support(torch.ones(2, *SHAPE))
