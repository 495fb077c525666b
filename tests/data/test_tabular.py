"""Tables of real or count features: loading, standardization recorded in the run, original units."""

import json

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ppl_vae import DataError, load_dataset
from ppl_vae.app.run import evaluate_run, sample_run
from ppl_vae.cli import main

TINY = ["--latent-dim", "2", "--hidden-dims", "16", "--epochs", "3", "--quiet"]


def _table(n=120, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 2))
    return z @ rng.normal(size=(2, 4)) + 0.3 * rng.normal(size=(n, 4)) + np.array([10.0, -3.0, 0.0, 100.0])


def _write_csv(path, x, header=True):
    np.savetxt(path, x, delimiter=",", header="a,b,c,d" if header else "", comments="")


def test_csv_with_and_without_header_loads_the_same_numbers(tmp_path):
    x = _table()
    _write_csv(tmp_path / "h.csv", x)
    _write_csv(tmp_path / "n.csv", x, header=False)
    a = load_dataset(f"table:{tmp_path / 'h.csv'}")
    b = load_dataset(f"table:{tmp_path / 'n.csv'}")
    assert a.kind == "table" and a.data_shape == (4,)
    assert torch.equal(a.train, b.train) and len(a.train) + len(a.heldout) == 120
    torch.testing.assert_close(torch.cat([a.train, a.heldout]).sum(0), torch.tensor(x, dtype=torch.float32).sum(0))


@pytest.mark.parametrize(
    "content, message", [("1,2\n3\n", "row 2 has 1 columns"), ("1,2\nx,4\n", "not a number"), ("", "empty")]
)
def test_bad_csv_is_a_clear_error(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        load_dataset(f"table:{path}")


def test_real_table_reports_original_units(tmp_path):
    """Scaling the data by 10 leaves the standardized data, hence the model, unchanged, so every
    log-density in original units must drop by exactly D log 10."""
    x = _table()
    numbers = {}
    for factor in (1.0, 10.0):
        path = tmp_path / f"t{factor}.csv"
        _write_csv(path, x * factor)
        out = tmp_path / f"run{factor}"
        assert main(["train", "--dataset", f"table:{path}", "--likelihood", "gaussian", *TINY, "--out", str(out)]) == 0
        assert json.loads((out / "scaling.json").read_text())["kind"] == "standardize"
        numbers[factor] = evaluate_run(out, num_particles=50, seed=0)
    shift = 4 * np.log(10.0)
    assert numbers[10.0].log_likelihood == pytest.approx(numbers[1.0].log_likelihood - shift, abs=1e-3)
    assert numbers[10.0].elbo == pytest.approx(numbers[1.0].elbo - shift, abs=1e-3)
    assert numbers[10.0].kl == pytest.approx(numbers[1.0].kl, abs=1e-4)


def test_samples_come_back_in_original_units(tmp_path):
    x = _table(n=300)
    path = tmp_path / "t.csv"
    _write_csv(path, x)
    out = tmp_path / "run"
    assert main(["train", "--dataset", f"table:{path}", "--likelihood", "gaussian", *TINY, "--out", str(out)]) == 0
    samples = sample_run(out, 400, tmp_path / "s.csv")
    assert (tmp_path / "s.csv").read_text().splitlines()[0] == "a,b,c,d"  # the header row of the data
    written = np.loadtxt(tmp_path / "s.csv", delimiter=",", skiprows=1)
    assert written.shape == (400, 4)
    np.testing.assert_allclose(written, samples.numpy(), rtol=1e-5, atol=1e-4)
    # Column means of the data are 10, -3, 0, 100 with sds of a few units: the samples must be near.
    assert np.all(np.abs(written.mean(0) - x.mean(0)) < 0.5 * x.std(0) + 1e-9)
    assert main(["sample", str(out), "--out", str(tmp_path / "s.png")]) == 2


def test_count_table_with_poisson_is_not_rescaled(tmp_path):
    counts = np.random.default_rng(1).poisson(3.0, size=(80, 5))
    path = tmp_path / "c.npz"
    np.savez(path, x=counts)
    out = tmp_path / "run"
    assert main(["train", "--dataset", f"table:{path}", "--likelihood", "poisson", *TINY, "--out", str(out)]) == 0
    assert not (out / "scaling.json").exists()
    result = evaluate_run(out, num_particles=20, seed=0)
    assert np.isfinite(result.log_likelihood) and result.log_likelihood < 0


def test_table_with_an_image_likelihood_is_refused(tmp_path, capsys):
    path = tmp_path / "t.csv"
    _write_csv(path, _table())
    assert main(["train", "--dataset", f"table:{path}", *TINY, "--out", str(tmp_path / "r")]) == 2
    assert "--likelihood gaussian" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


# property: any CSV text either loads as a finite (N, D) table or raises DataError, never anything else

_CELL = (
    st.integers(-(10**6), 10**6).map(str)
    | st.floats(allow_nan=True, allow_infinity=True).map(repr)
    | st.sampled_from(["", "nan", "inf", "-", "abc", "1e400", " 3 ", "0x10", "1,5", '"2"', "\t"])
)


@st.composite
def _csv_text(draw):
    """CSV text, about half of it a valid table: well-formed rows of numbers, or rows broken some way."""
    width = draw(st.integers(1, 4))
    tame = draw(st.booleans())
    cell = st.integers(-50, 50).map(str) | st.floats(-1e3, 1e3).map(repr) if tame else _CELL
    sizes = (
        dict(min_size=width, max_size=width) if tame or draw(st.booleans()) else dict(min_size=1, max_size=width + 2)
    )
    rows = draw(st.lists(st.lists(cell, **sizes), min_size=3 if tame else 0, max_size=12))
    header = [",".join(f"c{j}" for j in range(width))] if draw(st.booleans()) else []
    return "\n".join(header + [",".join(r) for r in rows]) + draw(st.sampled_from(["", "\n", "\n\n"]))


@settings(max_examples=80, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=_csv_text())
def test_any_csv_loads_as_a_finite_table_or_raises_data_error(tmp_path, text):
    path = tmp_path / "t.csv"
    path.write_text(text)
    try:
        split = load_dataset(f"table:{path}")
    except DataError as error:
        assert str(error) and "\n" not in str(error)
        event("DataError")
        return
    event("loaded")
    for x in (split.train, split.heldout):
        assert x.dtype == torch.float32 and x.dim() == 2 and bool(torch.isfinite(x).all())
    assert split.train.shape[1] == split.heldout.shape[1] and len(split.train) >= 2 and len(split.heldout) >= 1
