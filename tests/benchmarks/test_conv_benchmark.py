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
    assert conv.main(["--smoke", "--out", str(out), "--sections", "train", "quality"]) == 0
    text = out.read_text()
    for heading in ("## 1. Training step", "## 2. Evaluation memory", "## 3. Quality"):
        assert heading in text
    assert text.count("| 1x28x28 |") == 4 and text.count("| 3x32x32 |") == 4  # threads x channels_last
