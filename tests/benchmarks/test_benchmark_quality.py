"""The quality benchmark (benchmarks/quality.py): the textbook VAE it compares with, its paired
statistics, and a smoke run of the whole report."""

import math
import re

import numpy as np
import pyro
import pytest
import torch

import ppl_vae
from benchmarks import quality
from benchmarks.parity import copy_weights, ours_layers, reference_layers
from benchmarks.reference_vae import TextbookVAE
from ppl_vae.infer.step import make_elbo

NUMBER = r"-?\d+\.\d+"


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    vae = ppl_vae.VAE((1, 8, 8), latent_dim=5, hidden_dims=(32,))
    textbook = TextbookVAE(64, 5, 32)
    copy_weights(ours_layers(vae), reference_layers(textbook))
    x = torch.bernoulli(torch.full((12, 1, 8, 8), 0.3), generator=torch.Generator().manual_seed(1))
    return vae, textbook, x


@pytest.mark.parametrize("num_data", [None, 500])
def test_textbook_loss_is_ppl_vaes_default_objective_at_the_same_draw(pair, num_data):
    """The textbook's closed-form KL is what `auto` computes for N(0, I) and a diagonal Normal guide."""
    vae, textbook, x = pair
    kwargs = {} if num_data is None else {"num_data": num_data}
    pyro.set_rng_seed(3)
    expected = make_elbo("auto").loss(vae.model, vae.guide, x, **kwargs)
    torch.manual_seed(3)
    got = textbook.loss(x, num_data=num_data).item()
    assert got == pytest.approx(expected, rel=1e-5)
    pyro.set_rng_seed(3)  # the Monte Carlo KL at the same draw is far further away: the check can fail
    assert abs(make_elbo("trace").loss(vae.model, vae.guide, x, **kwargs) - expected) > 20 * abs(got - expected)


def test_textbook_gradients_are_the_default_objectives(pair):
    vae, textbook, x = pair
    pyro.set_rng_seed(9)
    make_elbo("auto").differentiable_loss(vae.model, vae.guide, x).backward()
    torch.manual_seed(9)
    textbook.zero_grad()
    textbook.loss(x).backward()
    for mine, theirs in zip(ours_layers(vae), reference_layers(textbook)):
        for a, b in ((mine.weight, theirs.weight), (mine.bias, theirs.bias)):
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-4 * b.grad.abs().max().item())
    vae.zero_grad()
    textbook.zero_grad()


def test_paired_difference_by_hand():
    ll = np.array([[1.0, 2.0, 3.0], [3.0, 4.0, 5.0]])  # 2 seeds x 3 examples
    ref = np.zeros_like(ll)
    d = quality.paired_difference(ll, ref)
    assert d["diff"] == pytest.approx(3.0)
    assert d["paired_se"] == pytest.approx(1 / math.sqrt(3))  # sd(2, 3, 4) / sqrt(3)
    assert d["seed_se"] == pytest.approx(1.0)  # sd(2, 4) / sqrt(2)
    assert math.isnan(quality.paired_difference(ll[:1], ref[:1])["seed_se"])


def test_verdicts_apply_the_two_criteria():
    rows = [
        {"system": "textbook"},
        {"system": "default", "diff": -0.5, "paired_se": 0.3, "seed_se": 0.1},
        {"system": "vamp", "diff": 1.5, "paired_se": 0.2, "seed_se": 0.1},
        {"system": "iaf", "diff": 1.2, "paired_se": 0.2, "seed_se": 0.1},
    ]
    text = "\n".join(quality.verdicts(rows))
    assert "**matches or beats it**" in text and "`vamp` (+1.50 ± 0.20)" in text and "`iaf`" not in text
    rows[1]["diff"] = -0.7  # beyond 2 paired s.e.
    assert "**loses**" in "\n".join(quality.verdicts(rows))
    assert "No ppl_vae configuration" in "\n".join(quality.verdicts(rows[:2]))


def test_smoke_run_writes_the_report(tmp_path, monkeypatch):
    from benchmarks import peers

    monkeypatch.setattr(peers, "python_for", lambda name: None)  # as on a machine without the envs
    out, js = tmp_path / "q.md", tmp_path / "q.json"
    assert (
        quality.main(
            [
                "--smoke",
                "--systems",
                "textbook",
                "default",
                "iwae-5",
                "numpyro",
                "--seeds",
                "0",
                "1",
                "--out",
                str(out),
                "--json",
                str(js),
            ]
        )
        == 0
    )
    text = out.read_text()
    assert "SMOKE RUN" in text and "K = 16" in text
    for system in ("textbook", "default", "iwae-5"):
        row = re.search(
            rf"^\| `{system}` \| [^|]+ \| ({NUMBER}) \| ({NUMBER}) \| ({NUMBER}) \| ({NUMBER}) \|", text, flags=re.M
        )
        assert row, (system, text)
        ll, _, mc_se, elbo = map(float, row.groups())
        assert elbo <= ll < 0 and mc_se > 0
    assert re.search(rf"^\| `default` .*\| [+-]{NUMBER[2:]} \| {NUMBER} \| {NUMBER} \|", text, flags=re.M)
    assert "ppl_vae's default vs the textbook VAE" in text
    assert "`numpyro` skipped" in text and "benchmarks.peers setup numpyro" in text
    assert "`default`: auto (z analytic)" in text
    assert "Burda et al. 2015" in text
    import json

    saved = json.loads(js.read_text())
    assert len(saved["runs"]["default"]) == 2 and len(saved["runs"]["default"][0]["ll"]) == 12
