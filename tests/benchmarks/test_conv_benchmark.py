"""The conv benchmark: its hand-written reference computes ppl_vae's conv VAE loss (same architecture,
same math), and a smoke run writes every section of the report."""

import pyro
import pytest
import torch

from benchmarks import conv
from benchmarks.run import random_binary


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (1, 12, 20)])
def test_reference_loss_and_gradients_are_ppl_vaes_at_the_same_draw(shape):
    pyro.clear_param_store()
    vae, ref = conv.build_pair(shape, f"t_{'x'.join(map(str, shape))}")
    x = random_binary(4, shape, 0)
    torch.manual_seed(1)
    ours = pyro.infer.Trace_ELBO().differentiable_loss(vae.model, vae.guide, x)
    torch.manual_seed(1)
    theirs = ref.loss(x)
    assert abs(ours.item()) > 1.0
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)
    ours.backward()
    theirs.backward()
    for a, b in zip(conv.weighted_layers(vae), ref.weighted_layers()):
        torch.testing.assert_close(a.weight.grad, b.weight.grad, rtol=1e-4, atol=1e-5)


def test_smoke_run_writes_every_section(tmp_path):
    out = tmp_path / "CONV.md"
    assert conv.main(["--smoke", "--out", str(out), "--sections", "train", "eval", "quality"]) == 0
    text = out.read_text()
    for heading in ("## 1. Training step", "## 2. Evaluation: speed and memory", "## 3. Quality"):
        assert heading in text
    # training: threads x channels_last, 4 rows per image; evaluation: 1 row per image
    assert text.count("| 1x28x28 |") == 5 and text.count("| 3x32x32 |") == 5


def test_the_reference_estimate_of_log_px_agrees_with_evaluate():
    """The evaluation benchmark times two estimates of the same number: with many draws they agree within
    their Monte Carlo errors (same weights, independent draws)."""
    import ppl_vae
    from benchmarks.reference_vae import reference_log_likelihood

    pyro.clear_param_store()
    vae, ref = conv.build_pair((1, 12, 12), "agree")
    x = random_binary(6, (1, 12, 12), 5)
    ours = ppl_vae.evaluate(vae, x, num_particles=400, seed=0)
    theirs = reference_log_likelihood(ref, x, num_particles=400, seed=1)
    # Both are IWAE estimates with the same K of the same model: the same bias, independent noise.
    tolerance = 4 * (ours.log_likelihood_se**2 + theirs["log_likelihood_se"] ** 2) ** 0.5
    assert abs(ours.log_likelihood - theirs["log_likelihood"]) < tolerance
