"""The structured-priors benchmark (benchmarks/structured.py): its statistics by hand, and a smoke run of
the whole report."""

import json
import math
import re

import numpy as np
import pytest
import torch

from benchmarks import structured
from ppl_vae.networks import mlp

NUMBER = r"-?\d+\.\d+"


def test_purity_and_nmi_by_hand():
    truth = np.array([0, 0, 0, 1, 1, 1])
    assert structured.purity(np.array([5, 5, 5, 2, 2, 2]), truth) == 1.0
    assert structured.nmi(np.array([5, 5, 5, 2, 2, 2]), truth) == pytest.approx(1.0)
    assert structured.purity(np.array([0, 0, 1, 1, 1, 1]), truth) == pytest.approx(5 / 6)
    # One cluster for everything: purity is the majority share, and no information.
    assert structured.purity(np.zeros(6, dtype=int), truth) == 0.5
    assert structured.nmi(np.zeros(6, dtype=int), truth) == pytest.approx(0.0, abs=1e-12)


def test_paired_accuracy_by_hand():
    m2 = np.array([[1, 1, 0, 1], [1, 0, 0, 1]])  # 2 seeds x 4 examples
    base = np.array([[1, 0, 0, 0], [1, 0, 0, 1]])
    d = structured.paired_accuracy(m2, base)
    assert d["diff"] == pytest.approx(0.25)  # per seed: 0.5, 0.0
    assert d["seed_se"] == pytest.approx(0.25)  # sd(0.5, 0) / sqrt(2)
    per_example = np.array([0.0, 0.5, 0.0, 0.5])
    assert d["example_se"] == pytest.approx(per_example.std(ddof=1) / 2)
    assert d["wins"] == 1
    assert math.isnan(structured.paired_accuracy(m2[:1], base[:1])["seed_se"])


def test_folds_are_stratified_and_cover_every_example():
    y = np.repeat(np.arange(10), 10)
    fold = structured.stratified_folds(y, 5, seed=3)
    for f in range(5):
        assert np.bincount(y[fold == f], minlength=10).tolist() == [2] * 10
    assert not np.array_equal(fold, structured.stratified_folds(y, 5, seed=4))  # seeded


def test_labelled_classifier_reports_every_checkpoint_and_learns():
    torch.manual_seed(0)
    x = torch.cat([torch.full((10, 1, 2, 2), 0.05), torch.full((10, 1, 2, 2), 0.95)])
    y = torch.tensor([0] * 10 + [1] * 10)
    out = structured.train_labelled_classifier(mlp(4, (8,), 2), x, y, [1, 60], lr=1e-2, seed=0, evaluate_on=[(x, y)])
    assert sorted(out) == [1, 60] and out[60][0].shape == (20,)
    assert out[60][0].mean() >= 0.9


def test_smoke_run_writes_the_report(tmp_path):
    out, js = tmp_path / "s.md", tmp_path / "s.json"
    assert structured.main(["--smoke", "--out", str(out), "--json", str(js)]) == 0
    text = out.read_text()
    assert "SMOKE RUN" in text and "--smoke" in text and "torch " in text and "pyro-ppl " in text
    for heading in ("## A. Semi-supervised", "## B. Conditional generation", "## C. Mixture prior"):
        assert heading in text
    # A: one row per seed, M2 and baseline accuracies with their s.e.; the paired difference and a verdict.
    rows = re.findall(rf"^\| (\d+) \| ({NUMBER}) ± ({NUMBER}) \| \d+ \| \d+ \| {NUMBER} \| ({NUMBER}) ± ", text, re.M)
    assert [r[0] for r in rows] == ["0", "1"], text
    assert all(0 <= float(r[1]) <= 1 and 0 <= float(r[3]) <= 1 for r in rows)
    assert re.search(
        rf"^\| α=50 \| {NUMBER} ± {NUMBER} \| .*\| [+-]{NUMBER[2:]} \| {NUMBER} \| {NUMBER} \|", text, re.M
    )
    assert "M2 − baseline" in text and "2 s.e." in text
    # B: a share per class and overall, with the classifier's reference accuracy.
    share = re.search(r"^\| recognised as requested \|(.*)\|$", text, re.M)
    assert share and len(re.findall(rf"{NUMBER} ± {NUMBER}", share.group(1))) == 11
    assert "Goal ≥ 80% recognised overall" in text
    # C: purity/NMI rows, and the paired log p(x) difference in nats.
    for name in ("argmax p(y \\| x)", "`normal`, k-means", "k-means on pixels"):
        assert re.search(
            rf"^\| [^|]*{re.escape(name)}[^|]* \| {NUMBER} \| {NUMBER} \| {NUMBER} \| {NUMBER} \|", text, re.M
        )
    ll = dict(re.findall(rf"^\| `(mixture:10|normal)` \| ({NUMBER}) \|", text, re.M))
    assert set(ll) == {"mixture:10", "normal"} and all(float(v) < 0 for v in ll.values())
    assert re.search(rf"`mixture:10` − `normal`: \*\*[+-]{NUMBER[2:]} nats\*\* per example, paired s.e. {NUMBER}", text)
    for name in ("conditional_samples.png", "mixture_clusters.png", "semi_supervised_accuracy.png"):
        assert (tmp_path / "figures" / name).stat().st_size > 0
    saved = json.loads(js.read_text())
    assert len(saved["semi"]) == 2 and len(saved["mix"]) == 2 and len(saved["cond"][0]["hits"]) == 10
