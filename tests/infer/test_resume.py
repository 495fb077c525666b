"""Interrupted training loses nothing: a stop at any step boundary (a signal, or ``stop``) leaves a state
from which training continues exactly as if it had never stopped."""

import json
import os
import signal
import subprocess
import sys
import time

import pyro
import pytest
import torch

from ppl_vae import Config, ConfigError, fit
from ppl_vae.app.checkpoint import load_checkpoint
from ppl_vae.app.run import resume_run, train_run
from ppl_vae.cli import main
from ppl_vae.errors import TrainingInterrupted
from tests.common import seeded_vae

# The ``digits`` fixture (load_dataset("digits"), once per module) comes from conftest.py.


def _vae(data, seed=1):
    return seeded_vae(data.data_shape, seed=seed, latent_dim=3, hidden_dims=(32,))


def _without_seconds(history):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


KW = dict(epochs=3, batch_size=48, seed=4, progress=False)  # 200 examples: 5 steps per epoch, the last short


@pytest.mark.parametrize("stop_at", [2, 5, 7, 10, 14])  # inside epochs and at their ends
def test_stop_and_resume_equals_an_uninterrupted_fit(digits, stop_at):
    x, heldout = digits.train[:200], digits.heldout[:40]
    full = fit(_vae(digits), x, heldout, **KW)

    pyro.clear_param_store()
    vae = _vae(digits)
    with pytest.raises(TrainingInterrupted) as info:
        fit(vae, x, heldout, stop=lambda step: step == stop_at, **KW)
    state = info.value.state
    assert state["step"] == stop_at and info.value.signal_name == "stop"
    saved = {k: v.clone() for k, v in vae.state_dict().items()}

    pyro.clear_param_store()
    again = _vae(digits, seed=99)  # different initialisation: the checkpoint must win
    again.load_state_dict(saved)
    resumed = fit(again, x, heldout, resume=state, **KW)
    assert resumed.losses == full.losses
    assert _without_seconds(resumed.history) == _without_seconds(full.history)
    for name, value in full.vae.state_dict().items():
        assert torch.equal(value, resumed.vae.state_dict()[name]), name


def test_a_finished_fit_can_be_extended(digits):
    x = digits.train[:200]
    longer = fit(_vae(digits), x, **{**KW, "epochs": 4})
    pyro.clear_param_store()
    short = fit(_vae(digits), x, **KW)
    extended = fit(short.vae, x, resume=short.state, **{**KW, "epochs": 4})
    assert extended.losses == longer.losses


def test_resume_with_other_settings_is_refused(digits):
    x = digits.train[:100]
    result = fit(_vae(digits), x, **{**KW, "epochs": 1})
    with pytest.raises(ConfigError, match="batch_size was 48 .* and is 32 now"):
        fit(result.vae, x, resume=result.state, **{**KW, "batch_size": 32})
    with pytest.raises(ConfigError, match="nothing to resume"):
        fit(result.vae, x, resume=result.state, **{**KW, "epochs": 1})


def test_train_run_keeps_checkpoints_and_best(tmp_path):
    config = Config.tiny(epochs=4, checkpoint_every=2, keep_best=True)
    run = train_run(config, tmp_path / "run", progress=False)
    payload = load_checkpoint(run.run_dir / "checkpoint.pt")
    assert payload["epoch"] == 4 and payload["training"]["epoch"] == 4
    best = load_checkpoint(run.run_dir / "best.pt")
    elbos = [r["heldout_elbo"] for r in run.result.history]
    assert best["heldout_elbo"] == max(elbos) and best["epoch"] == 1 + elbos.index(max(elbos))
    info = json.loads((run.run_dir / "run.json").read_text())
    assert info["status"] == "complete" and info["versions"]["torch"] and info["command"]
    # A finished run trains longer on request, and equals a run that was that long from the start.
    longer = resume_run(run.run_dir, epochs=5, progress=False)
    direct = train_run(Config.tiny(epochs=5, checkpoint_every=2, keep_best=True), tmp_path / "direct", progress=False)
    assert _without_seconds(longer.result.history) == _without_seconds(direct.result.history)


def test_resume_refuses_other_flags_and_old_checkpoints(tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main(["train", "--epochs", "1", "--latent-dim", "2", "--hidden-dims", "8", "--quiet", "--out", str(out)]) == 0
    )
    assert main(["train", "--resume", str(out), "--lr", "0.1", "--quiet"]) == 2
    assert "drop --lr" in capsys.readouterr().err
    assert main(["train", "--resume", str(out), "--quiet"]) == 2  # 1 of 1 epochs done
    assert "nothing to resume" in capsys.readouterr().err
    payload = torch.load(out / "checkpoint.pt", weights_only=True)
    del payload["training"]
    torch.save(payload, out / "checkpoint.pt")
    assert main(["train", "--resume", str(out), "--epochs", "2", "--quiet"]) == 2
    assert "holds no training state" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "missing"), "--quiet"]) == 2


def _cli(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "ppl_vae", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_and_resume_matches_an_uninterrupted_run(tmp_path, sig, code):
    args = [
        "train",
        "--epochs",
        "12",
        "--latent-dim",
        "2",
        "--hidden-dims",
        "16",
        "--batch-size",
        "64",
        "--checkpoint-every",
        "100",
        "--quiet",
    ]
    full = _cli(*args, "--out", str(tmp_path / "full"))
    stopped = _cli(*args, "--out", str(tmp_path / "stopped"))
    # wait until training is under way (the first epoch has ended and written the folder), then signal
    deadline = time.time() + 120
    while not (tmp_path / "stopped" / "config.json").exists() and stopped.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    stopped.send_signal(sig)
    _, err = stopped.communicate(timeout=120)
    assert full.wait(timeout=300) == 0
    if stopped.returncode == 0:
        pytest.skip("training finished before the signal arrived")
    assert stopped.returncode == code, err
    assert "--resume" in err and len(err.strip().splitlines()) == 1
    info = json.loads((tmp_path / "stopped" / "run.json").read_text())
    assert info["status"] == "interrupted"
    resumed = _cli("train", "--resume", str(tmp_path / "stopped"), "--quiet")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "stopped" / "checkpoint.pt")
    for name, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][name]), name
    ma = json.loads((tmp_path / "full" / "metrics.json").read_text())["history"]
    mb = json.loads((tmp_path / "stopped" / "metrics.json").read_text())["history"]
    assert _without_seconds(ma) == _without_seconds(mb)


def test_same_seed_and_config_give_the_same_run(tmp_path):
    config = Config.tiny(epochs=2)
    a = train_run(config, tmp_path / "a", progress=False, command=["test"])
    b = train_run(config, tmp_path / "b", progress=False, command=["test"])
    assert _without_seconds(a.result.history) == _without_seconds(b.result.history)
    for name, value in load_checkpoint(a.run_dir / "checkpoint.pt")["state_dict"].items():
        assert torch.equal(value, load_checkpoint(b.run_dir / "checkpoint.pt")["state_dict"][name])
    c = train_run(Config.tiny(epochs=2, seed=1), tmp_path / "c", progress=False)
    assert _without_seconds(c.result.history) != _without_seconds(a.result.history)
    info = json.loads((a.run_dir / "run.json").read_text())
    assert info["command"] == ["test"] and set(info["versions"]) >= {"torch", "pyro-ppl", "ppl-vae", "python"}


def test_the_first_epoch_leaves_a_resumable_checkpoint(tmp_path, monkeypatch):
    """A crash (no chance to save) right after epoch 1, with checkpoints due only every 10 epochs,
    still leaves a folder that --resume can continue."""
    from ppl_vae.app import run as run_module

    original_fit = run_module.fit

    def crashing_fit(*args, on_epoch_end, **kwargs):
        def then_crash(state):
            on_epoch_end(state)
            raise RuntimeError("simulated crash")

        return original_fit(*args, on_epoch_end=then_crash, **kwargs)

    monkeypatch.setattr(run_module, "fit", crashing_fit)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_run(Config.tiny(epochs=3, checkpoint_every=10), tmp_path / "run", progress=False)
    monkeypatch.setattr(run_module, "fit", original_fit)
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["training"]["epoch"] == 1
    pyro.clear_param_store()
    resumed = resume_run(tmp_path / "run", progress=False)
    pyro.clear_param_store()
    direct = train_run(Config.tiny(epochs=3, checkpoint_every=10), tmp_path / "direct", progress=False)
    assert _without_seconds(resumed.result.history) == _without_seconds(direct.result.history)
