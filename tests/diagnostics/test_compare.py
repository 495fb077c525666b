"""Known-answer checks of the AE-vs-VAE metrics, and a smoke run of ``compare_ae_run`` and its CLI."""

import argparse
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ppl_vae.app.compare_ae import collapse_reason, compare_ae_run
from ppl_vae.diagnostics.kl import active_units, activity, kl_per_dimension
from ppl_vae.diagnostics.sample_quality import frechet_distance, mmd, mmd_test, path_smoothness
from ppl_vae.errors import ConfigError, PplVaeError
from ppl_vae.vae import VAE

# -- path smoothness ---------------------------------------------------------------------------


def test_linear_decoder_is_perfectly_smooth():
    a = torch.randn(3, 10)
    z0, z1 = torch.randn(5, 3), torch.randn(5, 3)
    out = path_smoothness(lambda z: z @ a, z0, z1, num_steps=16)
    assert out["num_pairs"] == 5
    assert out["end_distance"] == pytest.approx(float((z1 @ a - z0 @ a).norm(dim=1).mean()), rel=1e-5)
    assert out["ratio"] == pytest.approx(1.0, abs=1e-6)
    assert out["max_step_ratio"] == pytest.approx(1.0, abs=1e-6)


def test_half_circle_detour_has_the_chord_ratio():
    # z in [0, 1] -> (cos(pi z), sin(pi z)): a half circle between (1, 0) and (-1, 0). The decoded
    # polygon has n chords of length 2 sin(pi / (2n)), the ends are 2 apart: ratio n sin(pi / (2n)).
    n = 16
    out = path_smoothness(
        lambda z: torch.cat([torch.cos(math.pi * z), torch.sin(math.pi * z)], -1),
        torch.zeros(1, 1),
        torch.ones(1, 1),
        num_steps=n,
    )
    assert out["ratio"] == pytest.approx(n * math.sin(math.pi / (2 * n)), rel=1e-6)  # about pi / 2
    assert out["ratio"] > 1.5
    assert out["max_step_ratio"] == pytest.approx(1.0, abs=1e-6)


def test_step_decoder_is_one_jump():
    # sign-like decoder: all the change happens in one of the 16 steps, along a straight line.
    n = 16
    out = path_smoothness(
        lambda z: (z[..., :1] > 0.5).double().expand(-1, 4), torch.zeros(2, 1), torch.ones(2, 1), num_steps=n
    )
    assert out["ratio"] == pytest.approx(1.0, abs=1e-9)
    assert out["max_step_ratio"] == pytest.approx(n, abs=1e-9)


def test_jump_out_and_back_is_a_detour_with_jumps():
    # x = (z, 5 * 1[0.3 < z < 0.7]): the path jumps up and back down; the ends are 1 apart.
    n = 16
    out = path_smoothness(
        lambda z: torch.cat([z, 5.0 * ((z > 0.3) & (z < 0.7)).double()], -1),
        torch.zeros(1, 1, dtype=torch.float64),
        torch.ones(1, 1, dtype=torch.float64),
        num_steps=n,
    )
    jump = math.sqrt((1 / n) ** 2 + 25)
    length = (n - 2) / n + 2 * jump
    assert out["ratio"] == pytest.approx(length, rel=1e-9)
    assert out["max_step_ratio"] == pytest.approx(jump / (length / n), rel=1e-9)


def test_pairs_with_equal_decoded_ends_are_left_out():
    out = path_smoothness(
        lambda z: torch.cat([z, z**2], -1), torch.tensor([[-1.0], [0.0]]), torch.tensor([[1.0], [1.0]]), num_steps=4
    )
    # first pair: ends (-1, 1) and (1, 1) differ, fine; make a pair whose ends decode to the same point:
    out2 = path_smoothness(lambda z: z**2, torch.tensor([[-1.0], [0.0]]), torch.tensor([[1.0], [1.0]]), num_steps=4)
    assert out["num_pairs"] == 2
    assert out2["num_pairs"] == 1
    assert out2["ratio"] == pytest.approx(1.0)


# -- Fréchet distance --------------------------------------------------------------------------


def test_frechet_is_zero_for_identical_sets():
    x = np.random.default_rng(0).normal(size=(500, 6))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)


def test_frechet_of_a_shift_is_the_squared_shift():
    rng = np.random.default_rng(1)
    d, n = 4, 20000
    m = np.array([1.0, 2.0, 0.0, -1.0])
    a = rng.normal(size=(n, d))
    assert frechet_distance(a, a + m) == pytest.approx(m @ m, abs=1e-8)  # same points shifted
    b = rng.normal(size=(n, d)) + m  # independent sample
    # cross term 2 m.(mean_a - mean_b) has sd 2 |m| sqrt(2 / n); the covariance term's bias is O(d^2 / n)
    tolerance = 4 * 2 * math.sqrt(m @ m) * math.sqrt(2 / n) + 10 * d * d / n
    assert abs(frechet_distance(a, b) - m @ m) < tolerance


def test_frechet_of_a_scaled_gaussian():
    # N(0, I) vs N(0, 4 I) in d dims: tr(I + 4 I - 2 * 2 I) = d
    rng = np.random.default_rng(2)
    d, n = 3, 20000
    fd = frechet_distance(rng.normal(size=(n, d)), 2 * rng.normal(size=(n, d)))
    assert fd == pytest.approx(d, abs=0.15)


# -- MMD ---------------------------------------------------------------------------------------


def _mmd_brute_force(x, y, h):
    k = lambda a, b: math.exp(-float(((a - b) ** 2).sum()) / (2 * h * h))  # noqa: E731
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_mmd_matches_the_definition():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(7, 2)), rng.normal(size=(9, 2)) + 0.5
    assert mmd(x, y, bandwidths=[0.8]) == pytest.approx(_mmd_brute_force(x, y, 0.8), rel=1e-9)
    both = _mmd_brute_force(x, y, 0.8) + _mmd_brute_force(x, y, 2.0)
    assert mmd(x, y, bandwidths=[0.8, 2.0]) == pytest.approx(both, rel=1e-9)


def test_mmd_is_zero_for_one_distribution_and_positive_for_a_shift():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(200, 2)), rng.normal(size=(200, 2))
    same = mmd_test(x, y, num_permutations=100)
    assert same["mmd2"] < same["threshold"]
    shifted = mmd_test(x, y + 1.0, num_permutations=100)
    assert shifted["mmd2"] > 5 * shifted["threshold"]
    assert shifted["p_value"] < 0.02
    # unbiased: over replicates, the mean MMD^2 of one distribution is 0 within its standard error
    values = [mmd(rng.normal(size=(60, 2)), rng.normal(size=(60, 2)), bandwidths=[1.0]) for _ in range(40)]
    assert abs(np.mean(values)) < 3 * np.std(values) / math.sqrt(len(values))


# -- KL per dimension and active units --------------------------------------------------------


def test_active_units_counts_a_collapsed_dimension():
    torch.manual_seed(0)
    vae = VAE((1, 4, 4), latent_dim=3, hidden_dims=(8,), guide="normal")
    last = (
        vae.encoder.encoder.net[-1]
        if hasattr(vae.encoder.encoder, "net")
        else [m for m in vae.encoder.encoder.modules() if isinstance(m, torch.nn.Linear)][-1]
    )
    with torch.no_grad():
        last.weight[1].zero_()  # loc of dimension 1 ignores x
        last.bias[1] = 0.7
        last.weight[0].mul_(20)  # make dimensions 0 and 2 clearly active
        last.weight[2].mul_(20)
    x = torch.rand(200, 1, 4, 4)
    act = activity(vae, x)
    assert act[1].item() == pytest.approx(0.0, abs=1e-10)
    assert act[0].item() > 0.01 and act[2].item() > 0.01
    assert active_units(vae, x) == 2
    assert active_units(vae, x, threshold=1e6) == 0


def test_active_units_threshold_on_a_stub_encoder():
    x = torch.linspace(-1, 1, 101)[:, None]
    stub = SimpleNamespace(encode=lambda x: (torch.cat([x, 0.05 * x, torch.ones_like(x)], 1), None))
    # variances: var(x) ~ 0.34, var(0.05 x) ~ 0.00085, 0
    assert active_units(stub, x) == 1
    assert active_units(stub, x, threshold=1e-4) == 2


def test_kl_per_dimension_is_the_closed_form_kl():
    torch.manual_seed(0)
    vae = VAE((1, 4, 4), latent_dim=3, hidden_dims=(8,), guide="normal")
    x = torch.rand(50, 1, 4, 4)
    mean, sd = vae.encode(x)
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean, sd), torch.distributions.Normal(0.0, 1.0)
    ).mean(0)
    got = kl_per_dimension(vae, x)
    assert got.shape == (3,)
    assert torch.allclose(got, expected, atol=1e-5)
    assert kl_per_dimension(VAE((1, 4, 4), latent_dim=3, hidden_dims=(8,), guide="delta"), x) is None


# -- the run folder and the CLI ---------------------------------------------------------------


def test_compare_ae_run_writes_json_markdown_and_figures(tmp_path):
    out = tmp_path / "cmp"
    result = compare_ae_run(out, epochs=1, betas=(0, 1), hidden_dims=(16,), max_train=120, max_heldout=40)
    names = [r["name"] for r in result["models"]]
    assert names == ["AE", "VAE β=0", "VAE β=1"]
    saved = json.loads((out / "comparison.json").read_text())
    assert [r["name"] for r in saved["models"]] == names
    ae, vae = saved["models"][0], saved["models"][2]
    assert ae["rate"] is None and ae["kl_per_dimension"] is None
    assert vae["rate"] == pytest.approx(sum(vae["kl_per_dimension"]))
    for row in saved["models"]:
        assert row["smoothness_ratio"] >= 1 - 1e-6 and row["max_step_ratio"] >= 1 - 1e-6
        assert 0 < row["confidence"] <= 1 and row["frechet"] >= 0 and row["distortion"] > 0
        assert 0 <= row["active_units"] <= 2
    assert "not Inception" in saved["notes"]["sample_quality"]
    text = (out / "comparison.md").read_text()
    assert text.count("\n| ") >= 5  # header, rule, 3 models, real data
    assert "| AE |" in text and "| VAE β=1 |" in text
    # One epoch on 120 examples: the VAE may well have collapsed; then the report says so and judges nothing.
    if collapse_reason(vae, 2) is None:
        assert "on smoothness" in text.lower() and "coverage" in text and "sample quality" in text
    else:
        assert "VAE β=1 collapsed" in text and "say nothing about the encoder" in text and "beats" not in text
    for name in ("interpolations", "samples", "latent_scatter", "rate_distortion", "posterior_clouds"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000
    with pytest.raises(ConfigError, match="not empty"):
        compare_ae_run(out, epochs=1, betas=(1,), max_train=120, max_heldout=40)


def test_register_adds_compare_ae(tmp_path, capsys):
    from ppl_vae.cli import build_parser
    from ppl_vae.cli.compare_ae import register

    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="command")
    handlers = register(sub)
    assert set(handlers) == {"compare-ae"}
    args = p.parse_args(["compare-ae", "--epochs", "3", "--betas", "0.5", "1", "--seed", "2", "--out", str(tmp_path)])
    assert (args.dataset, args.epochs, args.betas, args.seed, args.overwrite) == ("digits", 3, [0.5, 1.0], 2, False)
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(ConfigError, match="--overwrite"):  # refused before any training
        handlers[args.command](args)
    parser, _ = build_parser()
    with pytest.raises(PplVaeError, match="--betas: must be a number >= 0"):
        parser.parse_args(["compare-ae", "--betas", "-1", "--out", str(tmp_path / "new")])


def _row(name, guide, beta, ratio, step, conf, fd, mmd2):
    return {
        "name": name,
        "guide": guide,
        "beta": beta,
        "smoothness_ratio": ratio,
        "max_step_ratio": step,
        "confidence": conf,
        "frechet": fd,
        "mmd2": mmd2,
        "mmd2_threshold": 0.01,
    }


def test_verdict_states_the_winner_from_the_numbers():
    from ppl_vae.app.compare_ae import verdict

    ae = _row("AE", "delta", 0.0, 1.7, 1.7, 0.8, 15.0, 0.4)
    better = {"models": [ae, _row("VAE β=1", "normal", 1.0, 1.3, 1.3, 0.9, 5.0, 0.003)]}
    worse = {"models": [ae, _row("VAE β=1", "normal", 1.0, 1.9, 1.9, 0.7, 25.0, 0.5)]}
    text = verdict(better)
    assert text.count("beats the AE") == 3 and "does not beat" not in text
    text = verdict(worse)
    assert text.count("does not beat the AE") == 3
    mixed = {"models": [ae, _row("VAE β=1", "normal", 1.0, 1.3, 1.9, 0.7, 5.0, 0.003)]}
    text = verdict(mixed)
    assert "mixed" in text and "confidence is lower" in text
