"""Every registered guide family: q(z | x) has the right shapes and reparameterized, differentiable draws."""

import pytest
import torch

from ppl_vae.guides import GUIDES

SHAPE, LATENT_DIM = (1, 4, 4), 3


@pytest.fixture(params=sorted(GUIDES))
def guide(request):
    return GUIDES[request.param](SHAPE, LATENT_DIM, (16,))


def test_shapes(guide):
    q = guide(torch.rand(5, *SHAPE))
    assert q.batch_shape == (5,) and q.event_shape == (LATENT_DIM,)
    assert torch.isfinite(q.log_prob(q.sample())).all()


def test_rsample_carries_gradients_to_the_encoder(guide):
    x = torch.rand(5, *SHAPE)
    q = guide(x)
    assert q.has_rsample
    q.rsample().pow(2).sum().backward()
    grads = [p.grad for p in guide.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


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
