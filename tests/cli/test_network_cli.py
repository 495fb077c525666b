"""``--network`` and ``--grey``: flags, config.json, run folders written and read back."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ppl_vae.app.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from ppl_vae.app.config import Config
from ppl_vae.app.run import (
    build_vae,
    data_paths,
    evaluate_run,
    load,
    load_data,
    network_size,
    read_config,
    step_work,
)
from ppl_vae.cli import main
from ppl_vae.errors import CheckpointError, ConfigError
from ppl_vae.networks import ConvDecoder, ConvEncoder

TINY = ["--epochs", "1", "--latent-dim", "2", "--hidden-dims", "16", "--quiet"]


@pytest.fixture(scope="module")
def conv_run(tmp_path_factory):
    """One epoch of a conv VAE on the digits at 16 x 16, evaluated and sampled through the CLI."""
    out = tmp_path_factory.mktemp("network") / "conv"
    assert main(["train", *TINY, "--network", "conv", "--image-size", "16", "--out", str(out)]) == 0
    assert main(["evaluate", str(out), "-k", "16", "--seed", "3", "--quiet"]) == 0
    assert main(["sample", str(out), "-n", "4", "--out", str(out / "s.png")]) == 0
    return out


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory):
    """The default digits (8 x 8) with --network auto and --grey."""
    out = tmp_path_factory.mktemp("network") / "auto"
    assert main(["train", *TINY, "--network", "auto", "--grey", "--out", str(out)]) == 0
    return out


def test_a_conv_run_folder_round_trips(conv_run):
    config = json.loads((conv_run / "config.json").read_text())
    assert config["network"] == "conv" and config["grey"] is False
    payload = load_checkpoint(conv_run / CHECKPOINT_NAME)
    assert payload["model_spec"]["network"] == payload["model_spec"]["decoder"] == "conv"
    assert (conv_run / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    vae = load(conv_run)
    assert isinstance(vae.encoder.encoder, ConvEncoder) and isinstance(vae.decoder, ConvDecoder)
    saved = payload["state_dict"]
    assert saved.keys() == vae.state_dict().keys()
    assert all(torch.equal(saved[k], v) for k, v in vae.state_dict().items())
    first = json.loads((conv_run / "eval.json").read_text())
    again = evaluate_run(conv_run, num_particles=16, seed=3)
    assert (again.elbo, again.log_likelihood) == (first["elbo"], first["log_likelihood"])


def test_a_checkpoint_whose_network_is_not_the_configs_is_refused(conv_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(conv_run, copy)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "network": "resnet"}))
    with pytest.raises(CheckpointError, match="network is 'conv' in the checkpoint but 'resnet'"):
        load(copy)


def test_auto_is_recorded_as_resolved_and_grey_is_recorded(mlp_run):
    config = json.loads((mlp_run / "config.json").read_text())
    assert config["network"] == "mlp" and config["grey"] is True  # 8 x 8 grey digits: the MLP
    assert load(mlp_run).spec["network"] == "mlp"


def test_auto_resolves_to_conv_at_16x16(tmp_path):
    out = tmp_path / "r"
    assert main(["train", *TINY, "--image-size", "16", "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["network"] == "conv"


def test_an_older_run_folder_without_network_or_grey_still_loads(mlp_run, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(mlp_run, old)
    config = json.loads((old / "config.json").read_text())
    del config["network"], config["grey"]
    (old / "config.json").write_text(json.dumps(config))
    payload = load_checkpoint(old / CHECKPOINT_NAME)
    spec = {k: v for k, v in payload["model_spec"].items() if k != "network"}  # as written before networks
    save_checkpoint(old / CHECKPOINT_NAME, model_spec=spec, state_dict=payload["state_dict"])
    loaded = read_config(old)
    assert (loaded.network, loaded.grey) == ("mlp", False)
    vae = load(old)
    assert all(torch.equal(payload["state_dict"][k], v) for k, v in vae.state_dict().items())
    assert main(["evaluate", str(old), "-k", "4", "--quiet"]) == 0


def test_a_missing_network_means_mlp_in_a_run_folder_and_auto_in_a_config_file():
    values = {k: v for k, v in Config(image_size=28).to_dict().items() if k not in ("network", "grey")}
    assert Config.from_dict(values, complete=True).network == "mlp"  # an older 28 x 28 run was an MLP
    assert Config.from_dict(values).network == "auto"


@pytest.mark.parametrize("dataset, grey", [("folder:imgs", True), ("npz:x.npz", False), ("digits", False)])
def test_an_older_run_on_an_image_folder_was_grey(dataset, grey):
    """Image folders were read as grey before colour was kept: an older run folder on one must read its
    data as it was trained (npz kept its channels then too); a new config file means colour."""
    values = {k: v for k, v in Config(dataset=dataset).to_dict().items() if k != "grey"}
    assert Config.from_dict(values, complete=True).grey is grey
    assert Config.from_dict(values).grey is False


@pytest.mark.parametrize("field, value", [("network", "cnn"), ("grey", "yes"), ("network", 3)])
def test_config_refuses_bad_network_and_grey(field, value):
    with pytest.raises(ConfigError, match=field):
        Config.from_dict({field: value})


@pytest.mark.parametrize(
    "args, message",
    [
        (["--network", "cnn"], "invalid choice: 'cnn'"),
        (["--network", "conv", "--dataset", "table:{table}", "--likelihood", "gaussian"], "--network mlp"),
        (["--network", "resnet", "--image-size", "2"], "H and W >= 4"),
    ],
)
def test_bad_network_exits_2_with_one_line(args, message, tmp_path, capsys):
    table = tmp_path / "t.csv"
    np.savetxt(table, np.random.default_rng(0).normal(size=(40, 5)), delimiter=",", header="a,b,c,d,e", comments="")
    args = [a.format(table=table) for a in args]
    assert main(["train", *TINY, *args, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_load_data_passes_grey(monkeypatch):
    seen = {}

    def recording(spec, **kwargs):
        seen.update(kwargs)
        raise ConfigError("stop here")

    monkeypatch.setattr("ppl_vae.app.run.load_dataset", recording)
    for grey in (True, False):
        with pytest.raises(ConfigError):
            load_data(Config(grey=grey))
        assert seen["grey"] is grey


def test_data_paths_name_the_cifar10_folder():
    assert data_paths(Config(dataset="cifar10", data_root="/d")) == [Path("/d/cifar-10-batches-bin")]
    assert data_paths(Config(dataset="cifar10:/c/batches")) == [Path("/c/batches")]


@pytest.mark.parametrize("network", ["mlp", "conv", "resnet"])
def test_network_size_is_the_built_networks_size(network):
    config = Config(network=network, latent_dim=3, hidden_dims=[16, 8])
    shape = (3, 12, 20)
    vae = build_vae(config, shape)
    params, activations = network_size(config, shape)
    assert params == sum(p.numel() for p in vae.parameters())
    assert activations > 0
    work = step_work(vae, 10)
    assert work == 10 * params if network == "mlp" else work > 10 * params  # convolutions reuse weights


def test_list_shows_the_networks(capsys):
    from ppl_vae import catalog
    from ppl_vae.networks import NETWORK_CHOICES

    assert tuple(catalog.NETWORKS) == NETWORK_CHOICES
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "networks (--network)" in out and all(f"  {name:<22}" in out for name in NETWORK_CHOICES)
