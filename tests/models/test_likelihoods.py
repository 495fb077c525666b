"""Every registered likelihood: event shape = data shape, finite log-density on its support, mean shape."""

import math

import pytest
import torch

from ppl_vae import DataError
from ppl_vae.models import LIKELIHOODS, Bernoulli

SHAPE = (1, 3, 4)


@pytest.fixture(params=sorted(LIKELIHOODS))
def likelihood(request):
    return LIKELIHOODS[request.param](SHAPE)


def test_shapes_and_finite_log_prob(likelihood):
    params = torch.randn(7, likelihood.params_per_feature * math.prod(SHAPE))
    px = likelihood(params)
    assert px.batch_shape == (7,) and px.event_shape == SHAPE
    x = px.sample()
    assert x.shape == (7, *SHAPE)
    assert torch.isfinite(px.log_prob(x)).all()
    assert likelihood.mean(params).shape == (7, *SHAPE)


def test_bernoulli_is_normalized_over_binary_images():
    """Summing p(x | params) over all 2^4 binary images of a 2x2 example gives 1."""
    lik = Bernoulli((1, 2, 2))
    params = torch.randn(4)
    images = torch.tensor([[(i >> k) & 1 for k in range(4)] for i in range(16)], dtype=torch.float32).reshape(16, 1, 2, 2)
    total = lik(params).log_prob(images).logsumexp(0)
    assert total.item() == pytest.approx(0.0, abs=1e-6)


def test_bernoulli_refuses_grey_levels():
    with pytest.raises(DataError, match="binarize"):
        Bernoulli(SHAPE).check_support(torch.full((2, *SHAPE), 0.5))
    Bernoulli(SHAPE).check_support(torch.ones(2, *SHAPE))
