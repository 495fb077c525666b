"""``ppl-vae diagnose``: every documented file, keys that agree with the stored arrays, and bad input
that exits 2 without writing anything."""

import json

import numpy as np
import pytest

from ppl_vae.cli import main
from ppl_vae.diagnostics import _arviz

SMALL = ["--num-samples", "50", "--nuts-observations", "2", "--nuts-warmup", "30", "--nuts-samples", "30",
         "--sbc-simulations", "100", "--sbc-draws", "19", "--gap-observations", "10", "--gap-steps", "5", "--quiet"]


@pytest.fixture(scope="module")
def diagnosed(tmp_path_factory):
    root = tmp_path_factory.mktemp("diagnose")
    run = root / "run"
    assert main(["train", "--epochs", "2", "--latent-dim", "3", "--hidden-dims", "16", "--quiet", "--out", str(run)]) == 0
    assert main(["diagnose", str(run), *SMALL]) == 0
    return run, run / "diagnostics"


def test_writes_every_documented_file(diagnosed):
    _, out = diagnosed
    for name in ("diagnostics.json", "inference_data.nc", "nuts.nc", "log_ratios.npy", "report.md",
                 "figures/khat.png", "figures/sbc_ranks.png"):
        assert (out / name).stat().st_size > 0, name
    results = json.loads((out / "diagnostics.json").read_text())
    assert set(results) >= {"psis", "nuts", "sbc", "amortization_gap", "collapse", "seconds", "settings"}
    for index in results["nuts"]["observations"]:
        assert (out / "figures" / f"nuts_pair_{index}.png").stat().st_size > 0
    assert len(results["nuts"]["observations"]) == 2
    report = (out / "report.md").read_text()
    for heading in ("PSIS", "NUTS reference posterior", "Simulation-based calibration", "Amortization gap",
                    "Posterior collapse"):
        assert heading in report


def test_json_agrees_with_the_stored_arrays(diagnosed):
    run, out = diagnosed
    results = json.loads((out / "diagnostics.json").read_text())
    log_ratios = np.load(out / "log_ratios.npy")
    assert log_ratios.shape == (50, results["num_heldout"])
    _, khat = _arviz().psislw(log_ratios.T.copy())
    assert results["psis"]["khat_quantiles"]["max"] == pytest.approx(float(np.max(khat)))
    assert results["psis"]["khat_quantiles"]["50%"] == pytest.approx(float(np.median(khat)))
    # the worst observations by k-hat are the first half of the NUTS observations
    assert results["nuts"]["observations"][0] == int(np.argmax(khat))
    idata = _arviz().from_netcdf(str(out / "inference_data.nc"))
    assert idata.posterior["z"].sizes["obs"] == results["num_heldout"]
    nuts = _arviz().from_netcdf(str(out / "nuts.nc"))
    assert dict(nuts.posterior["z"].sizes) == {"chain": 4, "draw": 30, "obs": 2, "latent_dim": 3}
    sbc = results["sbc"]
    assert len(sbc["p_values"]) == 3 and 0 <= sbc["p_value"] <= 1


def test_existing_output_is_kept_unless_overwrite(diagnosed, capsys):
    run, out = diagnosed
    before = (out / "diagnostics.json").read_bytes()
    assert main(["diagnose", str(run), *SMALL]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "diagnostics.json").read_bytes() == before


@pytest.mark.parametrize("args, message", [
    (["--num-samples", "1"], "num_samples must be an integer >= 2"),
    (["--nuts-chains", "1"], "nuts_chains must be an integer >= 2"),
    (["--sbc-simulations", "5"], "sbc_simulations must be an integer >= 20"),
])
def test_bad_numbers_exit_2_and_write_nothing(diagnosed, tmp_path, capsys, args, message):
    run, _ = diagnosed
    out = tmp_path / "d"
    assert main(["diagnose", str(run), "--out", str(out), *SMALL, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_missing_run_folder(tmp_path, capsys):
    assert main(["diagnose", str(tmp_path / "nope"), "--quiet"]) == 2
    assert "does not exist" in capsys.readouterr().err
