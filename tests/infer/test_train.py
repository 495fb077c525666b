"""fit: SVI with Pyro's ELBOs on real data."""

import math

import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO

from ppl_vae import ConfigError, DataError, fit
from tests.common import seeded_vae

# The ``digits`` fixture (load_dataset("digits"), once per module) comes from conftest.py.


def _vae(data, seed=0):
    return seeded_vae(data.data_shape, seed=seed, latent_dim=4, hidden_dims=(64,))


def test_training_on_digits_raises_the_heldout_elbo(digits):
    result = fit(_vae(digits), digits.train, digits.heldout, epochs=25, batch_size=64, lr=3e-3, progress=False)
    first, last = result.history[0], result.history[-1]
    # Both numbers are on the same fixed held-out binarization; demand a gain far beyond their MC error.
    se = (first["heldout_elbo_se"] ** 2 + last["heldout_elbo_se"] ** 2) ** 0.5
    assert last["heldout_elbo"] - first["heldout_elbo"] > max(2.0, 5 * se)
    assert last["heldout_elbo"] < 0


def test_fit_result_is_complete_and_per_example(digits):
    x = digits.train[:200]
    result = fit(_vae(digits), x, digits.heldout[:50], epochs=3, batch_size=64, progress=False)
    assert len(result.losses) == 3 * 4  # ceil(200 / 64) steps per epoch
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    assert set(result.history[0]) == {
        "epoch",
        "step",
        "train_elbo",
        "beta",
        "heldout_elbo",
        "heldout_elbo_se",
        "seconds",
    }
    # losses are per example: an 8x8 binary image costs at most 64 log 2 nats + KL early in training
    assert 0 < result.losses[-1] < 200
    assert result.history[-1]["train_elbo"] == pytest.approx(-sum(result.losses[-4:]) / 4)
    assert result.optimizer_state


def test_same_seed_same_run(digits):
    x = digits.train[:128]
    a = fit(_vae(digits, seed=1), x, epochs=2, batch_size=32, seed=4, progress=False)
    b = fit(_vae(digits, seed=1), x, epochs=2, batch_size=32, seed=4, progress=False)
    c = fit(_vae(digits, seed=1), x, epochs=2, batch_size=32, seed=5, progress=False)
    assert a.losses == b.losses
    assert a.losses != c.losses


#: fit's objective names and the Pyro ELBO each one is: the default "auto" is TraceMeanField_ELBO.
PYRO_ELBO = [("auto", TraceMeanField_ELBO), ("trace", Trace_ELBO)]


@pytest.mark.parametrize("elbo,pyro_elbo", PYRO_ELBO, ids=[name for name, _ in PYRO_ELBO])
def test_fit_draws_the_same_random_numbers_as_plain_svi(digits, elbo, pyro_elbo):
    """The checks before training run on their own random stream: fit's first step is exactly the
    first step of SVI with the same Pyro ELBO on the same batch after the same seed."""
    x = digits.train[:64]
    ours = fit(
        _vae(digits, seed=2),
        x,
        epochs=1,
        batch_size=64,
        seed=3,
        binarize="threshold",
        progress=False,
        **({} if elbo == "auto" else {"elbo": elbo}),
    )
    vae = _vae(digits, seed=2)
    pyro.set_rng_seed(3)
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), pyro_elbo())
    order = torch.randperm(64, generator=torch.Generator().manual_seed(3))
    data = (x > 0.5).float()[order]
    assert math.isclose(ours.losses[0], svi.step(data, num_data=64) / 64, rel_tol=1e-6)


def test_batch_larger_than_the_data_is_one_full_batch(digits):
    result = fit(_vae(digits), digits.train[:10], epochs=2, batch_size=512, progress=False)
    assert len(result.losses) == 2


def test_grey_levels_with_bernoulli_and_no_binarization_is_refused(digits):
    with pytest.raises(DataError, match="binarize"):
        fit(_vae(digits), digits.train[:50], epochs=1, binarize="none", progress=False)


@pytest.mark.parametrize(
    "kwargs, name",
    [({"epochs": 0}, "epochs"), ({"lr": -1.0}, "lr"), ({"batch_size": 0}, "batch_size"), ({"lr": float("nan")}, "lr")],
)
def test_invalid_budget_is_refused(digits, kwargs, name):
    with pytest.raises(ConfigError, match=name):
        fit(_vae(digits), digits.train[:50], progress=False, **kwargs)


def test_threshold_binarization_trains(digits):
    result = fit(_vae(digits), digits.train[:64], epochs=1, binarize="threshold", progress=False)
    assert torch.isfinite(torch.tensor(result.losses)).all()


@pytest.mark.parametrize("elbo,pyro_elbo", PYRO_ELBO, ids=[name for name, _ in PYRO_ELBO])
def test_fit_trains_exactly_like_plain_svi_with_pyro_adam(digits, elbo, pyro_elbo):
    """GuardedAdam (one torch Adam over all parameters) makes the same updates as pyro.optim.Adam (one
    per parameter): after 12 steps the parameters agree to float32 rounding."""
    x = (digits.train[:96] > 0.5).float()
    ours = fit(_vae(digits, seed=2), x, epochs=4, batch_size=32, seed=3, binarize="none", progress=False, elbo=elbo)
    pyro.clear_param_store()  # the plain SVI below must not find the first VAE's tensors there
    vae = _vae(digits, seed=2)
    pyro.set_rng_seed(3)
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), pyro_elbo())
    shuffle = torch.Generator().manual_seed(3)
    losses = []
    for _ in range(4):
        order = torch.randperm(96, generator=shuffle)
        losses += [svi.step(x[order[i : i + 32]], num_data=96) / 96 for i in range(0, 96, 32)]
    assert ours.losses == pytest.approx(losses, rel=1e-5)
    for (name, a), b in zip(ours.vae.state_dict().items(), vae.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
