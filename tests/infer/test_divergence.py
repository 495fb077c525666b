"""Divergence: a NaN/inf gradient is never applied; the error names the sample site and the parameters;
``on_divergence="restore"`` lowers the learning rate and goes on; the last checkpoint stays loadable."""

import math
import re

import pyro
import pytest
import torch

from ppl_vae import Config, fit
from ppl_vae.app.checkpoint import load_checkpoint
from ppl_vae.app.run import train_run
from ppl_vae.errors import TrainingDiverged
from tests.common import seeded_vae

# The ``digits`` fixture (load_dataset("digits"), once per module) comes from conftest.py.


class _NanGradient(torch.autograd.Function):
    """Identity forward; NaN gradient backward."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


def _sabotage(module, at_calls, kind):
    """From the listed forward calls on, make ``module``'s output NaN (kind="value") or its gradient NaN."""
    calls = {"n": 0}

    def hook(mod, inputs, output):
        calls["n"] += 1
        if calls["n"] in at_calls:
            return output * float("nan") if kind == "value" else _NanGradient.apply(output)
        return output

    return module.register_forward_hook(hook)


def _vae(data):
    return seeded_vae(data.data_shape, seed=0, latent_dim=3, hidden_dims=(32,))


def test_a_nan_gradient_stops_training_naming_parameters_and_keeps_them_finite(digits):
    vae = _vae(digits)
    _sabotage(vae.decoder, {5}, "gradient")
    with pytest.raises(TrainingDiverged) as info:
        fit(vae, digits.train[:128], epochs=3, batch_size=32, progress=False)
    message = str(info.value)
    assert re.search(
        r"diverged at epoch \d+, step \d+: .*non-finite gradients of decoder\.net\.\d\.(weight|bias)", message
    )
    assert len(message.splitlines()) == 1
    assert all(torch.isfinite(p).all() for p in vae.parameters())  # the bad update was not applied


@pytest.mark.filterwarnings("ignore:Encountered NaN")
def test_a_non_finite_likelihood_names_the_observed_site(digits):
    vae = _vae(digits)
    _sabotage(vae.decoder, set(range(3, 100)), "value")  # NaN logits from the third step on
    with pyro.validation_enabled(False), pytest.raises(TrainingDiverged) as info:
        fit(vae, digits.train[:128], epochs=2, batch_size=64, progress=False)
    message = str(info.value)
    assert "sample sites: 'x' in the model (non-finite log-density)" in message
    assert all(torch.isfinite(p).all() for p in vae.parameters())


def test_restore_lowers_the_learning_rate_and_finishes(digits, capsys):
    vae = _vae(digits)
    _sabotage(vae.decoder, {3, 9}, "gradient")
    result = fit(vae, digits.train[:128], epochs=3, batch_size=32, lr=1e-3, on_divergence="restore", progress=False)
    assert [r.get("lr") for r in result.history] == [1e-4, pytest.approx(1e-5), pytest.approx(1e-5)]
    assert len(result.losses) == 3 * 4 - 2  # the two bad steps were skipped
    assert all(math.isfinite(v) for v in result.losses)
    assert capsys.readouterr().err.count("lowered the learning rate") == 2


def test_restore_gives_up_after_three(digits):
    vae = _vae(digits)
    _sabotage(vae.decoder, set(range(1, 100)), "gradient")
    with pytest.raises(TrainingDiverged, match="non-finite gradients"):
        fit(vae, digits.train[:64], epochs=2, batch_size=16, on_divergence="restore", progress=False)


def test_the_last_good_checkpoint_survives_a_divergence(tmp_path, monkeypatch):
    import ppl_vae.app.run as run_module

    real_build = run_module.build_vae

    def sabotaged(config, shape):
        vae = real_build(config, shape)
        _sabotage(vae.decoder, set(range(3 * 23 + 5, 10**6)), "gradient")  # digits: 23 steps of 64 per epoch
        return vae

    monkeypatch.setattr(run_module, "build_vae", sabotaged)
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"last good checkpoint is .*checkpoint.pt \(epoch 2\)"):
        train_run(Config.tiny(epochs=6, checkpoint_every=2), out, progress=False)
    payload = load_checkpoint(out / "checkpoint.pt")
    assert payload["epoch"] == 2
    assert all(torch.isfinite(v).all() for v in payload["state_dict"].values())
    import json

    assert json.loads((out / "run.json").read_text())["status"] == "diverged"
