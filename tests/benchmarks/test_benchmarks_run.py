"""The side-by-side performance benchmark (benchmarks/run.py): a smoke run writes a report with every
section, numeric rows, finite ratios and a PASS/MISS verdict per target. No timing assertions: the
machines that run the tests are noisy."""

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.run import DIGITS, MNIST, DeepReferenceVAE, build_pair, linear_layers, ratio_stats
from benchmarks.run import status as render_status

ROOT = Path(__file__).resolve().parents[2]
NUM = r"-?\d+(?:\.\d+)?"
STATUS = r"(PASS|MISS)"


@pytest.fixture(scope="module")
def smoke_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "BENCH.md"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--smoke", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out.read_text(), proc.stdout


def _finite_positive(*values):
    for v in values:
        assert math.isfinite(float(v)) and float(v) > 0, values


def test_report_has_every_section_and_the_machine(smoke_report):
    text, stdout = smoke_report
    for heading in (
        "## Machine",
        "## Targets",
        "## 1. Training step",
        "## 2. Evaluation",
        "## 3. Peak memory of evaluation",
        "## 4. Quality parity",
    ):
        assert heading in text, heading
    assert "SMOKE RUN" in text and "--smoke" in text
    assert re.search(r"torch \S+, pyro-ppl \S+", text) and "torch threads = 1" in text
    assert "report:" in stdout


def test_training_rows_cover_both_batches_every_step_and_the_digits(smoke_report):
    text, _ = smoke_report
    rows = re.findall(
        rf"^\| ([\d-]+) \| (\d+) \| ([^|]+) \| ({NUM}) \| ({NUM}) \| ({NUM})× \| ({NUM})–({NUM}) \| — \|$",
        text,
        flags=re.M,
    )
    keys = {(arch, int(batch), variant.strip().split(" (")[0]) for arch, batch, variant, *_ in rows}
    assert keys == {
        (a, b, v)
        for a, b in (("784-400-50", 128), ("784-400-50", 256), ("64-256-128-8", 128))
        for v in ("the default step", "eager", "recorded", "plain SVI + pyro.optim.Adam, validation as set globally")
    }, rows
    for _, _, _, ours, ref, ratio, q1, q3 in rows:
        _finite_positive(ours, ref, ratio, q1, q3)
        assert float(q1) <= float(ratio) <= float(q3)
    # what auto runs for the run lengths of the default row: recorded at these sizes
    assert text.count("compile='auto' for the run length of AUTO_EPOCHS) → trace") == 3
    assert re.search(rf"^\| 784-400-50 \| 128 \| {NUM} \| — \| — \|$", text, re.M)  # recorded; no compile, no peer


def test_evaluation_rows_have_throughputs_ratios_and_matching_log_likelihoods(smoke_report):
    text, _ = smoke_report
    rows = re.findall(
        rf"^\| ([\d-]+) \| (\d+) \| (\d+) \| ({NUM}) \| ({NUM}) \| ({NUM}) \| ({NUM}) \| ({NUM})× \| "
        rf"({NUM})–({NUM}) \| ({NUM}) \| ({NUM}) \| ≤ 1\.20× \| {STATUS} \|$",
        text,
        flags=re.M,
    )
    assert [r[0] for r in rows] == ["784-400-50", "64-256-128-8"], text
    for arch, n, k, ours_s, ours_rate, ref_s, ref_rate, ratio, q1, q3, ours_ll, ref_ll, verdict in rows:
        _finite_positive(ours_s, ours_rate, ref_s, ref_rate, ratio, q1, q3)
        assert float(q1) <= float(ratio) <= float(q3)
        assert verdict == ("PASS" if float(ratio) < 1.2 else "MISS") or float(ratio) == 1.2
        assert float(ours_rate) == pytest.approx(int(n) * int(k) / float(ours_s), rel=0.01)
        assert float(ours_ll) < 0 and float(ref_ll) < 0
        # same weights, different draws: the two estimates of log p(x) agree to a few nats
        assert abs(float(ours_ll) - float(ref_ll)) < 0.02 * abs(float(ref_ll)) + 2


def test_memory_and_quality_rows(smoke_report):
    text, _ = smoke_report
    mem = re.findall(
        rf"^\| (ppl_vae|reference) \| (\d+) \| (\d+) \| ({NUM}) \| ({NUM}) \| ({NUM}) \| ({NUM}) \| "
        r"([^|]+) \| (PASS|MISS|—) \|$",
        text,
        flags=re.M,
    )
    assert [m[0] for m in mem] == ["ppl_vae", "reference"], text
    for name, n, k, base, peak, delta, seconds, _, verdict in mem:
        _finite_positive(base, peak, seconds)
        assert float(peak) >= float(base) and float(delta) >= 0
        assert 50 < float(peak) < 64000  # a process with torch loaded, in MB
        assert (verdict in ("PASS", "MISS")) == (name == "ppl_vae")
        if name == "ppl_vae":
            assert verdict == ("PASS" if float(peak) <= 2048 else "MISS")
    quality = re.findall(rf"^\| (\d+) \| ({NUM}) \| ({NUM}) \| ({NUM}) ± ({NUM}) \|$", text, flags=re.M)
    assert [q[0] for q in quality] == ["0", "1"]
    for _, ours, ref, diff, se in quality:
        assert float(ours) < 0 and float(ref) < 0
        assert float(diff) == pytest.approx(float(ours) - float(ref), abs=2e-3)
        assert float(se) > 0
    assert re.search(rf"Mean difference \(ours − reference\) over 2 seeds: \*\*{NUM} ± {NUM} nats\*\*", text)


def test_targets_table_judges_every_target(smoke_report):
    text, _ = smoke_report
    targets = text.split("## Targets", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(rf"^\| ([^|]+) \| ([^|]+) \| ([^|]+) \| {STATUS} \|$", targets, flags=re.M)
    names = [r[0] for r in rows]
    assert any("batch 128" in n for n in names) and any("batch 256" in n for n in names)
    assert any(n.startswith("evaluation") for n in names) and any(n.startswith("peak memory") for n in names)
    assert any(n.startswith("quality") for n in names)
    for name, measured, threshold, verdict in rows:
        value = float(re.match(NUM, measured.strip()).group())
        limit = float(re.search(NUM, threshold).group())
        if name.startswith("quality"):
            value = abs(value)
        assert verdict == ("PASS" if value <= limit else "MISS"), (name, measured, threshold, verdict)


# -- the helpers, without subprocesses --------------------------------------------------------------


@pytest.mark.parametrize("arch", [MNIST, DIGITS])
def test_reference_matches_ppl_vae_architecture_and_loss(arch):
    vae, ref = build_pair(arch)
    assert isinstance(ref, DeepReferenceVAE)
    shapes = [m.weight.shape for m in linear_layers(vae.encoder) + linear_layers(vae.decoder)]
    assert shapes == [m.weight.shape for m in linear_layers(ref.encoder) + linear_layers(ref.decoder)]
    assert len(shapes) == 2 * (len(arch.hidden) + 1)
    # same weights, same eps: Pyro's Trace_ELBO loss equals the reference loss
    import pyro
    from pyro.infer import Trace_ELBO

    x = torch.bernoulli(torch.full((16, *arch.data_shape), 0.5), generator=torch.Generator().manual_seed(1))
    pyro.set_rng_seed(3)
    expected = Trace_ELBO().loss(vae.model, vae.guide, x, num_data=arch.num_data)
    torch.manual_seed(3)
    assert ref.loss(x, num_data=arch.num_data).item() == pytest.approx(expected, rel=1e-5)


def test_ratio_stats_and_status():
    st = ratio_stats([2.0, 4.0, 6.0, 8.0, 10.0], [1.0, 2.0, 2.0, 2.0, 2.0])
    assert st["ratios"] == [2.0, 2.0, 3.0, 4.0, 5.0]
    assert st["median"] == 3.0 and st["q1"] == 2.0 and st["q3"] == 4.0
    assert render_status(0.99, 1.0) == "PASS" and render_status(1.01, 1.0) == "MISS"


def test_the_step_profile_groups_operators():
    from benchmarks.profile_steps import group

    assert group("aten::mm") == group("aten::addmm") == "matrix products"
    assert group("aten::_fused_adam_") == "Adam"
    assert group("aten::add_") == group("cpp_fused_add_mul_0") == "other tensor ops"
    assert group("Optimizer.step#Adam.step") is None and group("Torch-Compiled Region: 0/0") is None
