"""The parity benchmark (benchmarks/): a smoke run of the script, and the hand-written reference VAE
checked against ppl_vae with the same weights."""

import math
import re
import subprocess
import sys
from pathlib import Path

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO

import ppl_vae
from benchmarks.parity import copy_weights, ours_layers, reference_layers
from benchmarks.reference_vae import ReferenceVAE, reference_log_likelihood, train_reference
from ppl_vae.infer.fit import fixed_binarization

ROOT = Path(__file__).resolve().parents[2]
NUMBER = r"-?\d+\.\d+"


def test_parity_smoke_run_writes_a_report_with_both_models(tmp_path):
    out = tmp_path / "p.md"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.parity", "--smoke", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    for model in ("ppl_vae", "reference"):
        # | seed | model | ELBO ± se | log p(x) ± se | data se | train ELBO | ms | ms |
        rows = re.findall(
            rf"^\| (\d+) \| {model} \| ({NUMBER}) ± {NUMBER} \| ({NUMBER}) ± {NUMBER} \| "
            rf"{NUMBER} \| {NUMBER} \| {NUMBER} ms \| {NUMBER} ms \|$",
            text,
            flags=re.M,
        )
        assert [seed for seed, *_ in rows] == ["0", "1"], (model, text)
        for _, elbo, log_px in rows:
            assert -800 < float(elbo) <= float(log_px) < 0  # IWAE >= ELBO, both finite log-probabilities
    diff_row = rf"^\| 0 \| \*\*ours − ref\*\* \| {NUMBER} ± {NUMBER} \| {NUMBER} ± {NUMBER} \|"
    assert re.search(diff_row, text, flags=re.M)
    assert "Mean difference in held-out log p(x)" in text
    assert "**Identical up to float32 rounding**" in text  # the lockstep SVI epoch matched the reference
    assert "torch " in text and "pyro-ppl " in text and "--smoke" in text
    assert "reference" in proc.stdout and "ms/step" in proc.stdout


@pytest.fixture(scope="module")
def same_weights():
    """A reference trained for a few steps (so q is not the prior) and a ppl_vae.VAE holding its weights."""
    torch.manual_seed(0)
    split = ppl_vae.load_dataset("digits", image_size=28)
    ref = ReferenceVAE(784, 50, 400)
    train_reference(ref, split.train[:256], epochs=8, batch_size=128, lr=1e-3, seed=0)  # 16 steps
    vae = ppl_vae.VAE((1, 28, 28), latent_dim=50, hidden_dims=(400,))
    copy_weights(reference_layers(ref), ours_layers(vae))
    x = fixed_binarization(split.heldout[:20], "dynamic", seed=0)  # (20, 1, 28, 28) binary
    return ref, vae, x


def test_weight_copy_maps_every_parameter(same_weights):
    ref, vae, _ = same_weights
    ours = {n: p for n, p in vae.named_parameters()}
    assert len(ours) == 8 == sum(1 for _ in ref.parameters())  # 4 Linear layers, nothing else learnable
    for mine, theirs in zip(ours_layers(vae), reference_layers(ref)):
        assert torch.equal(mine.weight, theirs.weight) and torch.equal(mine.bias, theirs.bias)


@pytest.mark.parametrize("num_data", [None, 1438])
def test_reference_loss_is_pyro_trace_elbo_at_the_same_draw(same_weights, num_data):
    ref, vae, x = same_weights
    kwargs = {} if num_data is None else {"num_data": num_data}
    pyro.set_rng_seed(5)  # Pyro's guide draws eps = randn(20, 50) first, as does ReferenceVAE.loss
    expected = Trace_ELBO().loss(vae.model, vae.guide, x, **kwargs)
    torch.manual_seed(5)
    got = ref.loss(x, num_data=num_data).item()
    assert got == pytest.approx(expected, rel=1e-5)
    # The loss depends on the draw (another eps moves it far more than the tolerance): the check has teeth.
    torch.manual_seed(6)
    assert abs(ref.loss(x, num_data=num_data).item() - expected) > 1e-3 * abs(expected)


def test_reference_gradients_are_pyro_gradients_at_the_same_draw(same_weights):
    ref, vae, x = same_weights
    pyro.set_rng_seed(7)
    Trace_ELBO().differentiable_loss(vae.model, vae.guide, x, num_data=1438).backward()
    torch.manual_seed(7)
    ref.zero_grad()
    ref.loss(x, num_data=1438).backward()
    for mine, theirs in zip(ours_layers(vae), reference_layers(ref)):
        for a, b in ((mine.weight, theirs.weight), (mine.bias, theirs.bias)):
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-3 * b.grad.abs().max().item())
        mine.zero_grad()
    ref.zero_grad()


def test_reference_log_likelihood_agrees_with_ppl_vae_evaluate(same_weights):
    ref, vae, x = same_weights
    ours = ppl_vae.evaluate(vae, x, num_particles=500, seed=1)
    theirs = reference_log_likelihood(ref, x, num_particles=500, chunk=7, seed=2)  # 7: a ragged last chunk
    ll_se = math.hypot(ours.log_likelihood_se, theirs["log_likelihood_se"])
    elbo_se = math.hypot(ours.elbo_se, theirs["elbo_se"])
    assert 0 < ll_se < 1 and 0 < elbo_se < 1  # small enough that any error in the math would show
    # Different draws on each side. The delta-method s.e. is optimistic for heavy-tailed importance weights
    # (repeated evaluations of this model spread about 1.6x more than it says), so 4 s.e. is about 2.5 real s.d.
    assert abs(ours.log_likelihood - theirs["log_likelihood"]) < 4 * ll_se
    assert abs(ours.elbo - theirs["elbo"]) < 4 * elbo_se
    assert theirs["log_likelihood"] > theirs["elbo"] + 4 * theirs["elbo_se"]  # the IWAE bound is tighter here
    # The delta-method error and the spread over examples estimate the same quantities as ppl_vae's.
    assert 0.5 < theirs["log_likelihood_se"] / ours.log_likelihood_se < 2
    assert theirs["log_likelihood_data_se"] == pytest.approx(ours.log_likelihood_data_se, rel=0.05)
    assert theirs["per_example"]["log_likelihood"].shape == (20,)


def test_compare_priors_smoke(tmp_path):
    """The comparison table's command runs end to end (tiny budget) and lists every prior but the two
    that model labels."""
    from benchmarks.compare_priors import LABEL_MODELS
    from benchmarks.compare_priors import main as compare_main
    from ppl_vae.models import PRIORS

    out = tmp_path / "priors.md"
    assert compare_main(["--smoke", "--out", str(out)]) == 0
    text = out.read_text()
    for prior in PRIORS:
        assert (f"| {prior} |" in text) == (prior not in LABEL_MODELS), prior
    assert "Refused combinations" in text and "--guide normal" in text


def test_threads_benchmark_smoke_run_reports_every_thread_count():
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.threads", "--smoke"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = re.findall(r"^\| 8x8-16-2 \| 32 \| .* \|$", proc.stdout, flags=re.M)
    assert len(rows) == 1 and "1.00x" in rows[0], proc.stdout
