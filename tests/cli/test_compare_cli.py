"""``ppl-vae compare``: the table, the documented files and their agreement, and runs that cannot be
compared refused with one line, exit 2 and nothing written."""

import contextlib
import io
import json

import numpy as np
import pytest

import ppl_vae
from ppl_vae.cli import main
from ppl_vae.diagnostics.arviz_bridge.posterior import read_netcdf
from ppl_vae.errors import ConfigError

TINY = ["--latent-dim", "2", "--hidden-dims", "16", "--epochs", "1", "--quiet"]
RUNS = {
    "normal": [],
    "laplace": ["--prior", "laplace"],
    "vamp": ["--prior", "vamp"],
    "threshold": ["--binarize", "threshold"],  # other held-out values: not comparable
    "delta": ["--guide", "delta"],  # a point mass: no estimate of log p(x)
}
RECORD_KEYS = {"run", "elpd", "elpd_diff", "dse", "weight", "khat_over_0.7", "dse_mc", "pseudo_bma_weight", "se"}


def _run(args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    for name, flags in RUNS.items():
        assert main(["train", *flags, *TINY, "--out", str(root / name)]) == 0
    return root


@pytest.fixture(scope="module")
def compared(runs):
    out = runs / "cmp"
    args = ["compare", *(str(runs / n) for n in ("normal", "laplace", "vamp")), "--num-samples", "30", "--quiet"]
    code, printed, err = _run([*args, "--out", str(out)])
    assert code == 0, err
    return out, printed


def test_prints_the_table_with_paired_errors(compared):
    _, printed = compared
    lines = printed.splitlines()
    header = next(line for line in lines if line.lstrip().startswith("rank"))
    for column in ("elpd", "elpd_diff", "dse", "MC part", "weight", "k-hat>0.7"):
        assert column in header
    assert "359 held-out examples of digits" in printed
    assert sum(" paired s.e." in line for line in lines) == 2  # one verdict per model below the best


def test_writes_the_documented_files_that_agree(compared, runs):
    out, _ = compared
    records = json.loads((out / "comparison.json").read_text())
    assert isinstance(records, list) and len(records) == 3
    for record in records:
        assert RECORD_KEYS <= set(record)
    assert {r["run"] for r in records} == {str(runs / n) for n in ("normal", "laplace", "vamp")}
    elpds = [r["elpd"] for r in records]
    assert elpds == sorted(elpds, reverse=True) and records[0]["elpd_diff"] == 0
    for r in records[1:]:
        assert r["elpd_diff"] == pytest.approx(records[0]["elpd"] - r["elpd"])
        assert 0 <= r["dse_mc"] and 0 < r["dse"]
    assert sum(r["weight"] for r in records) == pytest.approx(1.0)
    report = (out / "comparison.md").read_text()
    assert "| rank | model |" in report and "figures/comparison.png" in report
    assert (out / "figures" / "comparison.png").stat().st_size > 1000
    files = sorted((out / "inference_data").glob("*.nc"))
    assert len(files) == 3
    by_name = {r["name"]: r for r in records}
    for path in files:
        idata = read_netcdf(path)
        name = path.stem.split("_", 1)[1]
        values = idata.log_likelihood["x"].values
        assert values.shape == (1, 1, 359)
        assert float(values.sum()) == pytest.approx(by_name[name]["elpd"])
        assert np.all(idata.importance["log_likelihood_mcse"].values >= 0)


def test_an_existing_output_is_kept_unless_overwrite(compared, runs):
    out, _ = compared
    before = (out / "comparison.json").read_text()
    args = ["compare", str(runs / "normal"), str(runs / "laplace"), "--num-samples", "5", "--quiet", "--out", str(out)]
    code, _, err = _run(args)
    assert code == 2 and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert (out / "comparison.json").read_text() == before
    code, _, err = _run([*args, "--overwrite"])
    assert code == 0, err
    assert len(json.loads((out / "comparison.json").read_text())) == 2


@pytest.mark.parametrize(
    "names, message",
    [
        (("normal", "threshold"), "score different held-out examples (binarize 'dynamic' vs 'threshold')"),
        (("normal", "normal"), "given twice"),
        (("normal",), "at least two runs"),
        (("normal", "delta"), "point-mass guide"),
        (("normal", "missing"), "does not exist"),
    ],
)
def test_runs_that_cannot_be_compared_are_refused_before_any_write(runs, tmp_path, names, message):
    out = tmp_path / "never"
    code, printed, err = _run(["compare", *(str(runs / n) for n in names), "--quiet", "--out", str(out)])
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and printed == ""


def test_the_output_may_not_be_inside_a_run(runs):
    code, _, err = _run(["compare", str(runs / "normal"), str(runs / "laplace"), "--out", str(runs / "normal")])
    assert code == 2 and "input" in err


def test_the_python_entry_point_takes_runs_or_models(runs):
    result = ppl_vae.compare_models([runs / "normal", runs / "laplace"], num_samples=10)
    assert [r["name"] for r in result.records] and len(result.records) == 2
    with pytest.raises(ConfigError, match="own held-out data"):
        ppl_vae.compare_models([runs / "normal", runs / "laplace"], data=np.zeros(3))
    with pytest.raises(ConfigError, match="need the data"):
        ppl_vae.compare_models([ppl_vae.load(runs / "normal"), ppl_vae.load(runs / "laplace")])
