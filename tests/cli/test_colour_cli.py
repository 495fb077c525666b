"""Colour images end to end on the command line: a folder of 32x32 RGB images trains a conv VAE whose
figures are in colour; CIFAR-10 binary files written here train and evaluate, and an 8-bit likelihood
reports bits per dimension in the table and in eval.json."""

import contextlib
import io
import json
import math

import numpy as np
import pytest
from PIL import Image

from ppl_vae.cli import main

TINY = ["--latent-dim", "2", "--hidden-dims", "16", "--epochs", "1", "--batch-size", "16", "--quiet"]


def _run(args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    return code, out.getvalue(), err.getvalue()


def _colourful(rng, n: int) -> np.ndarray:
    """``(n, 32, 32, 3)`` uint8: each image a strong colour gradient (red, green or blue dominant)."""
    ramp = np.linspace(0, 255, 32, dtype=np.float64)
    images = np.zeros((n, 32, 32, 3))
    for i in range(n):
        images[i, :, :, i % 3] = ramp[None, :]
        images[i, :, :, (i + 1) % 3] = rng.uniform(0, 60)
    return images.astype(np.uint8)


def test_a_folder_of_rgb_images_trains_a_conv_vae_with_colour_figures(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "rgb"
    folder.mkdir()
    for i, image in enumerate(_colourful(rng, 24)):
        Image.fromarray(image, "RGB").save(folder / f"{i:02d}.png")
    run = tmp_path / "run"
    code, _, err = _run(["train", "--dataset", f"folder:{folder}", *TINY, "--out", str(run)])
    assert code == 0, err
    config = json.loads((run / "config.json").read_text())
    assert config["network"] == "conv"  # auto: colour images get the convolutional network
    figure = np.asarray(Image.open(run / "figures" / "reconstructions.png").convert("RGB")).astype(int)
    # Colour survives into the figure: the input row holds pixels whose channels differ strongly.
    assert np.abs(figure[..., 0] - figure[..., 2]).max() > 150


def _cifar_records(rng, n: int) -> bytes:
    labels = rng.integers(0, 10, size=(n, 1), dtype=np.uint8)
    pixels = _colourful(rng, n).transpose(0, 3, 1, 2).reshape(n, 3072)  # R, G, B planes, row-major
    return np.concatenate([labels, pixels], axis=1).tobytes()


@pytest.mark.parametrize("likelihood", ["discretized-logistic", "logistic-mixture:2"])
def test_cifar_binary_trains_and_evaluates_with_bits_per_dim(tmp_path, likelihood):
    rng = np.random.default_rng(1)
    batches = tmp_path / "data" / "cifar-10-batches-bin"
    batches.mkdir(parents=True)
    (batches / "data_batch_1.bin").write_bytes(_cifar_records(rng, 40))
    (batches / "test_batch.bin").write_bytes(_cifar_records(rng, 10))
    run = tmp_path / "run"
    args = ["train", "--dataset", "cifar10", "--data-root", str(tmp_path / "data"), "--likelihood", likelihood]
    code, trained, err = _run([*args, *TINY, "--out", str(run)])
    assert code == 0, err
    elbo = float(trained.split("held-out ELBO ")[1].split()[0])
    bound = float(trained.split("held-out ELBO in bits/dim: ")[1].split()[0])
    assert bound == pytest.approx(-elbo / (3072 * math.log(2)), abs=2e-3)  # printed to 2 and 3 decimals
    code, printed, err = _run(["evaluate", str(run), "--num-particles", "8"])
    assert code == 0, err
    result = json.loads((run / "eval.json").read_text())
    expected = -result["log_likelihood"] / (3 * 32 * 32 * math.log(2))
    assert result["bits_per_dim"] == pytest.approx(expected, rel=1e-9)
    assert 0 < result["bits_per_dim"] < 16  # a pmf over 256 levels: at most a few bits beyond 8 when untrained
    row = next(line for line in printed.splitlines() if "bits/dim" in line)
    assert f"{result['bits_per_dim']:.3f}" in row


def test_a_bernoulli_run_has_no_bits_per_dim(tmp_path):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(run)]) == 0
    code, printed, _ = _run(["evaluate", str(run), "--num-particles", "4"])
    assert code == 0 and "bits/dim" not in printed
    assert "bits_per_dim" not in json.loads((run / "eval.json").read_text())


def test_compare_of_8bit_runs_reports_bits_per_dim(tmp_path):
    rng = np.random.default_rng(2)
    batches = tmp_path / "data" / "cifar-10-batches-bin"
    batches.mkdir(parents=True)
    (batches / "data_batch_1.bin").write_bytes(_cifar_records(rng, 32))
    (batches / "test_batch.bin").write_bytes(_cifar_records(rng, 8))
    data = ["--dataset", "cifar10", "--data-root", str(tmp_path / "data")]
    runs = []
    for likelihood in ("discretized-logistic", "logistic-mixture:2"):
        runs.append(tmp_path / likelihood.replace(":", "_"))
        assert main(["train", *data, "--likelihood", likelihood, *TINY, "--out", str(runs[-1])]) == 0
    out = tmp_path / "cmp"
    code, printed, err = _run(["compare", *map(str, runs), "--num-samples", "4", "--quiet", "--out", str(out)])
    assert code == 0, err
    records = json.loads((out / "comparison.json").read_text())
    for r in records:
        assert r["bits_per_dim"] == pytest.approx(-r["elpd_per_example"] / (3072 * math.log(2)))
        assert r["bits_per_dim_diff"] == pytest.approx(r["elpd_diff_per_example"] / (3072 * math.log(2)))
    assert "bits per dimension" in printed


def test_diagnose_of_an_8bit_run_reports_bits_per_dim(tmp_path):
    rng = np.random.default_rng(3)
    batches = tmp_path / "data" / "cifar-10-batches-bin"
    batches.mkdir(parents=True)
    (batches / "data_batch_1.bin").write_bytes(_cifar_records(rng, 32))
    (batches / "test_batch.bin").write_bytes(_cifar_records(rng, 6))
    run = tmp_path / "run"
    data = ["--dataset", "cifar10", "--data-root", str(tmp_path / "data"), "--likelihood", "discretized-logistic"]
    assert main(["train", *data, *TINY, "--out", str(run)]) == 0
    small = ["--num-samples", "20", "--nuts-observations", "0", "--sbc-simulations", "20", "--sbc-draws", "9"]
    code, printed, err = _run(["diagnose", str(run), *small, "--gap-observations", "0", "--quiet"])
    assert code == 0, err
    psis = json.loads((run / "diagnostics" / "diagnostics.json").read_text())["psis"]
    assert psis["bits_per_dim"] == pytest.approx(-psis["log_likelihood"] / (3072 * math.log(2)))
    assert "bits/dim" in printed
    assert "bits per dimension" in (run / "diagnostics" / "report.md").read_text()
