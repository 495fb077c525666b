"""The ppl-vae command: train, evaluate, sample; bad input exits with code 2 and one line."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from ppl_vae.cli import main

TINY = ["--epochs", "2", "--latent-dim", "2", "--hidden-dims", "32", "--quiet"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    return out


def test_train_writes_a_complete_run_folder(run_dir, capsys):
    for name in (
        "config.json",
        "checkpoint.pt",
        "metrics.json",
        "run.json",
        "figures/reconstructions.png",
        "figures/samples.png",
        "figures/elbo.png",
    ):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "figures/samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert [r["epoch"] for r in metrics["history"]] == [1, 2]
    assert all(np.isfinite(r["heldout_elbo"]) and r["heldout_elbo"] < 0 for r in metrics["history"])
    config = json.loads((run_dir / "config.json").read_text())
    assert config["epochs"] == 2 and config["hidden_dims"] == [32] and config["dataset"] == "digits"
    run = json.loads((run_dir / "run.json").read_text())
    assert run["versions"]["pyro-ppl"] and run["command"][:2] == ["ppl-vae", "train"]


def test_evaluate_prints_a_table_and_writes_eval_json(run_dir, capsys):
    assert main(["evaluate", str(run_dir), "--num-particles", "200", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "IWAE K=200" in out and "ELBO" in out
    result = json.loads((run_dir / "eval.json").read_text())
    for key in (
        "elbo",
        "elbo_se",
        "log_likelihood",
        "log_likelihood_se",
        "reconstruction",
        "kl",
        "num_particles",
        "num_examples",
    ):
        assert key in result
    assert result["num_particles"] == 200 and result["num_examples"] == 359
    assert np.isfinite(result["elbo"]) and result["elbo"] < 0
    assert result["log_likelihood"] >= result["elbo"] - 4 * np.hypot(result["elbo_se"], result["log_likelihood_se"])


def test_sample_writes_an_image(run_dir, tmp_path):
    out = tmp_path / "s.png"
    assert main(["sample", str(run_dir), "-n", "9", "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("flags, mean", [([], True), (["--mean"], True)])
def test_sample_images_show_the_mean_as_the_help_says(run_dir, tmp_path, monkeypatch, flags, mean):
    """Images show the mean of p(x | z) with or without --mean (a draw of binary pixels is noise)."""
    from ppl_vae.vae import VAE

    seen = []
    original = VAE.sample

    def recording(self, *args, **kwargs):
        seen.append(kwargs.get("mean"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(VAE, "sample", recording)
    assert main(["sample", str(run_dir), "-n", "4", "--out", str(tmp_path / "s.png"), *flags]) == 0
    assert seen == [mean]


def test_npz_28x28_end_to_end(tmp_path, capsys):
    digits = load_digits()
    images = torch.tensor(digits.images[:300], dtype=torch.float32)[:, None] / 16
    big = torch.nn.functional.interpolate(images, size=(28, 28), mode="bilinear", align_corners=False)[:, 0]
    big = (big.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    path = tmp_path / "digits28.npz"
    np.savez(path, x_train=big[:240], y_train=digits.target[:240], x_test=big[240:], y_test=digits.target[240:300])
    out = tmp_path / "run28"
    assert main(["train", *TINY, "--dataset", f"npz:{path}", "--out", str(out)]) == 0
    assert main(["evaluate", str(out), "-k", "100", "--quiet"]) == 0
    result = json.loads((out / "eval.json").read_text())
    assert result["num_examples"] == 60 and np.isfinite(result["elbo"])
    assert result["log_likelihood"] >= result["elbo"] - 4 * np.hypot(result["elbo_se"], result["log_likelihood_se"])
    assert json.loads((out / "run.json").read_text())["data"]["data_shape"] == [1, 28, 28]


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--prior", "cauchy"], "unknown prior 'cauchy'"),
        (["train", "--epochs", "0"], "--epochs: must be an integer >= 1"),
        (["train", "--lr", "-0.1"], "--lr: must be a number > 0"),
        (["train", "--latent-dim", "0"], "--latent-dim: must be an integer >= 1"),
        (["train", "--dataset", "npz:/nonexistent/file.npz"], "/nonexistent/file.npz"),
        (["train", "--dataset", "imagenet"], "imagenet"),
        (["evaluate", "/nonexistent/run"], "run folder /nonexistent/run does not exist"),
        (["sample", "/nonexistent/run"], "does not exist"),
    ],
)
def test_bad_input_exits_2_with_one_line(args, message, capsys, tmp_path):
    assert main([*args, "--out", str(tmp_path / "r")] if args[0] == "train" else args) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "r").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_a_clear_error(capsys, tmp_path):
    assert main(["train", *TINY, "--device", "cuda", "--out", str(tmp_path / "r")]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_existing_run_folder_is_not_overwritten(run_dir, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    before = (copy / "checkpoint.pt").read_bytes()
    assert main(["train", *TINY, "--out", str(copy)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (copy / "checkpoint.pt").read_bytes() == before
    assert main(["train", *TINY, "--seed", "3", "--out", str(copy), "--overwrite"]) == 0
    assert (copy / "checkpoint.pt").read_bytes() != before


def test_config_file_and_flag_override(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text("latent_dim = 3\nhidden_dims = [16]\nepochs = 1\nlr = 0.002\n")
    out = tmp_path / "r"
    assert main(["train", "--config", str(config), "--epochs", "2", "--quiet", "--out", str(out)]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert (saved["latent_dim"], saved["hidden_dims"], saved["epochs"], saved["lr"]) == (3, [16], 2, 0.002)


def test_config_file_with_unknown_key(tmp_path, capsys):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"latent_dims": 3}))
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "r")]) == 2
    assert "unknown keys ['latent_dims']" in capsys.readouterr().err


def test_console_script_and_module_entry_points():
    exe = shutil.which("ppl-vae", path=str(__import__("pathlib").Path(sys.executable).parent))
    assert exe, "the ppl-vae console script is not installed"
    for command in ([exe, "--help"], [sys.executable, "-m", "ppl_vae", "train", "--help"]):
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and "usage:" in done.stdout


def test_grad_variance_command_is_wired(run_dir, capsys):
    assert main(["grad-variance", str(run_dir), "--examples", "4", "--repeats", "5"]) == 0
    assert "reparam" in capsys.readouterr().out
    assert (run_dir / "grad_variance.json").is_file() and (run_dir / "figures" / "grad_variance.png").is_file()


def test_compare_ae_command_is_wired(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare-ae", "--epochs", "1", "--betas", "0", "1", "--out", str(out), "--quiet"]) == 0
    assert (out / "comparison.json").is_file() and (out / "comparison.md").is_file()
    assert "| AE |" in (out / "comparison.md").read_text()
    assert main(["compare-ae", "--epochs", "1", "--out", str(out), "--quiet"]) == 2  # never overwrite


def test_latent_commands_are_wired(run_dir, tmp_path, capsys):
    assert main(["interpolate", str(run_dir), "--pairs", "2", "--steps", "4", "--out", str(tmp_path / "i.png")]) == 0
    assert main(["traverse", str(run_dir), "--steps", "3", "--out", str(tmp_path / "t.png")]) == 0
    assert main(["latent-map", str(run_dir), "--grid", "3", "--out-dir", str(tmp_path / "maps")]) == 0
    assert (tmp_path / "i.png").is_file() and (tmp_path / "t.png").is_file()
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == ["latent-manifold.png", "latent-scatter.png"]
    assert main(["interpolate", str(run_dir), "--steps", "1"]) == 2


def test_threads_option_sets_torch_threads_on_every_command(capsys):
    before = torch.get_num_threads()
    try:
        assert main(["evaluate", "/nonexistent/run", "--threads", "2"]) == 2  # set before the run is read
        assert torch.get_num_threads() == 2
        assert main(["list", "--threads", "0"]) == 2
        assert "--threads: must be an integer >= 1" in capsys.readouterr().err
        from ppl_vae.cli import build_parser

        parser, handlers = build_parser()
        for command in handlers:
            assert "--threads" in parser._subparsers._group_actions[0].choices[command].format_help(), command
    finally:
        torch.set_num_threads(before)
