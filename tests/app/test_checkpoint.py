"""Checkpoints: atomic, checked against their config, and never executing code on load."""

import json
import os
import random

import pytest
import torch

import ppl_vae
from ppl_vae import CheckpointError, Config, load, train_run
from ppl_vae.app.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    train_run(Config.tiny(epochs=1), out, progress=False)
    return out


def _copy_run(run_dir, tmp_path):
    target = tmp_path / "run"
    target.mkdir()
    for name in ("config.json", CHECKPOINT_NAME):
        (target / name).write_bytes((run_dir / name).read_bytes())
    return target


def test_round_trip_restores_the_same_parameters(run_dir):
    vae = load(run_dir)
    payload = torch.load(run_dir / CHECKPOINT_NAME, weights_only=True)
    for name, tensor in vae.state_dict().items():
        torch.testing.assert_close(tensor, payload["state_dict"][name], rtol=0, atol=0)
    assert vae.latent_dim == 2 and vae.hidden_dims == (32,)


def test_save_leaves_no_temporary_files_and_replaces_atomically(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, model_spec={"a": 1}, state_dict={"w": torch.ones(2)})
    save_checkpoint(path, model_spec={"a": 2}, state_dict={"w": torch.zeros(2)})
    assert os.listdir(tmp_path) == ["c.pt"]
    assert load_checkpoint(path)["model_spec"] == {"a": 2}


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_checkpoint(path, model_spec={"a": 1}, state_dict={"w": torch.ones(2)})

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save_checkpoint(path, model_spec={"a": 2}, state_dict={"w": torch.zeros(2)})
    monkeypatch.undo()
    assert load_checkpoint(path)["model_spec"] == {"a": 1}
    assert os.listdir(tmp_path) == ["c.pt"]


class _Exploit:
    """Unpickling this object would create a file: the test checks that it never does."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_crafted_checkpoint_does_not_execute_code(tmp_path, run_dir):
    marker = tmp_path / "pwned"
    target = _copy_run(run_dir, tmp_path)
    payload = torch.load(target / CHECKPOINT_NAME, weights_only=True)
    payload["extra"] = _Exploit(marker)
    torch.save(payload, target / CHECKPOINT_NAME)
    with pytest.raises(CheckpointError, match="refused"):
        load(target)
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncate", "garbage", "missing"])
def test_damaged_checkpoint_is_a_clear_error(tmp_path, run_dir, damage):
    target = _copy_run(run_dir, tmp_path)
    path = target / CHECKPOINT_NAME
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(random.Random(0).randbytes(4096))
    else:
        path.unlink()
    with pytest.raises(CheckpointError, match=str(path)):
        load(target)


def test_any_garbage_is_a_checkpoint_error(tmp_path):
    """Random bytes (some of them parse as a legacy pickle header) always give our error, never a raw
    IndexError or KeyError from torch's unpickler."""
    path = tmp_path / CHECKPOINT_NAME
    generator = random.Random(1)
    for size in (1, 7, 64, 4096) * 25:
        path.write_bytes(generator.randbytes(size))
        with pytest.raises(CheckpointError, match="damaged or truncated"):
            load_checkpoint(path)


def test_config_that_disagrees_with_the_checkpoint_is_named(tmp_path, run_dir):
    target = _copy_run(run_dir, tmp_path)
    config = json.loads((target / "config.json").read_text())
    config["latent_dim"] = 5
    (target / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="latent_dim is 2 in the checkpoint but 5 in the config"):
        load(target)


def test_checkpoint_from_an_incompatible_version_is_refused(tmp_path, run_dir):
    target = _copy_run(run_dir, tmp_path)
    payload = torch.load(target / CHECKPOINT_NAME, weights_only=True)
    payload["format_version"] = 99
    torch.save(payload, target / CHECKPOINT_NAME)
    with pytest.raises(CheckpointError, match="format version 99"):
        load(target)


def test_weights_that_do_not_fit_the_architecture(tmp_path, run_dir):
    target = _copy_run(run_dir, tmp_path)
    payload = torch.load(target / CHECKPOINT_NAME, weights_only=True)
    # clone: a view of a larger storage is refused before shapes are even compared (test_trust_checkpoint.py)
    payload["state_dict"] = {k: v[..., :1].clone() if v.dim() else v for k, v in payload["state_dict"].items()}
    torch.save(payload, target / CHECKPOINT_NAME)
    with pytest.raises(CheckpointError, match="does not fit the architecture"):
        load(target)


def test_load_is_exported():
    assert ppl_vae.load is load


@pytest.mark.parametrize("suffix", [".json", ".toml"])
def test_crafted_config_files_do_not_execute_code(tmp_path, suffix, capsys):
    """A config file is read as JSON or TOML text, never unpickled or evaluated."""
    import pickle

    from ppl_vae.cli import main

    marker = tmp_path / "marker"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    pickled = tmp_path / f"pickled{suffix}"
    pickled.write_bytes(pickle.dumps(Payload()))
    code = tmp_path / f"code{suffix}"
    code.write_text(f'epochs = __import__("os").system("touch {marker}")\n')
    for path in (pickled, code):
        assert main(["train", "--config", str(path), "--quiet", "--out", str(tmp_path / "run")]) == 2
        err = capsys.readouterr().err
        assert "config file" in err and len(err.strip().splitlines()) == 1
    assert not marker.exists() and not (tmp_path / "run").exists()
