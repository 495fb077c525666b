"""Bits per dimension: the unit conversion on known numbers, and ``evaluate`` reporting it (with its
Monte Carlo error) for 8-bit likelihoods only."""

import math

import pytest
import torch

from ppl_vae import VAE, ConfigError
from ppl_vae.infer.evaluate import bits_per_dim, evaluate
from ppl_vae.models import LIKELIHOODS

SHAPE = (3, 4, 4)  # a tiny colour image
D = math.prod(SHAPE)
EIGHT_BIT = sorted(name for name, cls in LIKELIHOODS.items() if cls.data_kind == "8bit")


def test_known_conversions():
    assert bits_per_dim(D * math.log(2), D) == pytest.approx(1.0, rel=1e-15)
    assert bits_per_dim(D * math.log(256), D) == pytest.approx(8.0, rel=1e-15)
    assert bits_per_dim(0.0, D) == 0.0
    assert bits_per_dim(math.log(2), 1) == pytest.approx(1.0, rel=1e-15)
    nats = torch.tensor([D * math.log(2), 3 * D * math.log(2)], dtype=torch.float64)
    torch.testing.assert_close(bits_per_dim(nats, D), torch.tensor([1.0, 3.0], dtype=torch.float64))
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ConfigError, match="num_dims"):
            bits_per_dim(1.0, bad)


def test_a_uniform_mass_function_over_256_levels_is_exactly_8_bits_per_dim():
    """categorical-256 with all logits equal: every 8-bit image has p(x) = 256^-D."""
    lik = LIKELIHOODS["categorical-256"](SHAPE)
    params = torch.zeros(5, 256 * D, dtype=torch.float64)
    x = torch.randint(0, 256, (5, *SHAPE), dtype=torch.float64) / 255
    log_p = lik(params).log_prob(x)  # nats of the pmf, no Jacobian
    torch.testing.assert_close(log_p, torch.full((5,), -D * math.log(256), dtype=torch.float64))
    torch.testing.assert_close(bits_per_dim(-log_p, D), torch.full((5,), 8.0, dtype=torch.float64))


@pytest.mark.parametrize("likelihood", EIGHT_BIT)
def test_evaluate_reports_bits_per_dim_for_8bit_likelihoods(likelihood):
    x = torch.randint(0, 256, (10, *SHAPE)).float() / 255
    vae = VAE(SHAPE, 2, (8,), likelihood=likelihood)
    result = evaluate(vae, x, num_particles=8, seed=0)
    assert result.bits_per_dim == pytest.approx(-result.log_likelihood / (D * math.log(2)), rel=1e-12)
    assert result.bits_per_dim_se == pytest.approx(result.log_likelihood_se / (D * math.log(2)), rel=1e-12)
    assert result.bits_per_dim > 0 and result.bits_per_dim_se > 0
    as_dict = result.to_dict()
    assert as_dict["bits_per_dim"] == result.bits_per_dim and as_dict["bits_per_dim_se"] == result.bits_per_dim_se


def test_other_likelihoods_have_no_bits_per_dim():
    x = torch.bernoulli(torch.full((6, *SHAPE), 0.5))
    result = evaluate(VAE(SHAPE, 2, (8,), likelihood="bernoulli"), x, num_particles=4, seed=0)
    assert result.bits_per_dim is None and result.bits_per_dim_se is None
    assert "bits_per_dim" not in result.to_dict() and "bits_per_dim_se" not in result.to_dict()
