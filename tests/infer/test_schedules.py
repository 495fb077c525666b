"""KL schedules: their values, their use in fit, and their record in the run."""

import json

import pytest
import torch

from ppl_vae import VAE, ConfigError, fit
from ppl_vae.cli import main
from ppl_vae.infer.schedules import Constant, Cyclical, LinearWarmup, parse_schedule


def test_schedule_values():
    assert [LinearWarmup(4, 2.0)(t) for t in (0, 1, 2, 4, 9)] == [0.0, 0.5, 1.0, 2.0, 2.0]
    cyc = Cyclical(period=4, ratio=0.5)
    assert [cyc(t) for t in (0, 1, 2, 3, 4, 5)] == [0.0, 0.5, 1.0, 1.0, 0.0, 0.5]
    assert Constant(0.3)(100) == 0.3


def test_parse_schedule():
    assert parse_schedule("constant", 0.5) == Constant(0.5)
    assert parse_schedule("warmup:10") == LinearWarmup(10.0, 1.0)
    assert parse_schedule("cyclical:8:0.25", 2.0) == Cyclical(8.0, 0.25, 2.0)
    for bad in ("warmup", "warmup:-1", "cyclical:4:2", "sigmoid:3", "warmup:x"):
        with pytest.raises(ConfigError, match="schedule"):
            parse_schedule(bad)


def test_fit_applies_the_schedule_per_step():
    seen = []
    x = torch.bernoulli(torch.full((40, 1, 4, 4), 0.4), generator=torch.Generator().manual_seed(0))
    vae = VAE((1, 4, 4), latent_dim=2, hidden_dims=(8,))

    def schedule(progress):
        seen.append(progress)
        return min(1.0, progress / 2)

    result = fit(vae, x, epochs=3, batch_size=20, kl_schedule=schedule, progress=False)
    assert seen == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]  # epochs completed before each of the 6 steps
    assert [r["beta"] for r in result.history] == [0.25, 0.75, 1.0]


def test_warmup_from_the_cli_is_recorded(tmp_path):
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--epochs",
                "3",
                "--latent-dim",
                "2",
                "--hidden-dims",
                "16",
                "--quiet",
                "--kl-schedule",
                "warmup:2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert json.loads((out / "config.json").read_text())["kl_schedule"] == "warmup:2"
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert [round(r["beta"], 4) for r in history][-1] == 1.0 and history[0]["beta"] < 1.0


def test_a_varying_schedule_with_iwae_is_refused(tmp_path, capsys):
    assert (
        main(
            [
                "train",
                "--elbo",
                "iwae",
                "--particles",
                "2",
                "--kl-schedule",
                "warmup:2",
                "--epochs",
                "1",
                "--quiet",
                "--out",
                str(tmp_path / "r"),
            ]
        )
        == 2
    )
    assert "beta" in capsys.readouterr().err
