"""``ppl-vae diagnose``: every documented file, keys that agree with the stored arrays, and bad input
that exits 2 without writing anything."""

import json

import numpy as np
import pytest

from ppl_vae.cli import main
from ppl_vae.diagnostics.posterior import _arviz

SMALL = [
    "--num-samples",
    "50",
    "--nuts-observations",
    "2",
    "--nuts-warmup",
    "30",
    "--nuts-samples",
    "30",
    "--sbc-simulations",
    "100",
    "--sbc-draws",
    "19",
    "--gap-observations",
    "10",
    "--gap-steps",
    "5",
    "--quiet",
]


@pytest.fixture(scope="module")
def diagnosed(tmp_path_factory):
    root = tmp_path_factory.mktemp("diagnose")
    run = root / "run"
    assert (
        main(["train", "--epochs", "2", "--latent-dim", "3", "--hidden-dims", "16", "--quiet", "--out", str(run)]) == 0
    )
    assert main(["diagnose", str(run), *SMALL]) == 0
    return run, run / "diagnostics"


def test_writes_every_documented_file(diagnosed):
    _, out = diagnosed
    for name in (
        "diagnostics.json",
        "inference_data.nc",
        "nuts.nc",
        "log_ratios.npy",
        "report.md",
        "figures/khat.png",
        "figures/sbc_ranks.png",
    ):
        assert (out / name).stat().st_size > 0, name
    results = json.loads((out / "diagnostics.json").read_text())
    assert set(results) >= {"psis", "nuts", "sbc", "amortization_gap", "collapse", "seconds", "settings"}
    for index in results["nuts"]["observations"]:
        assert (out / "figures" / f"nuts_pair_{index}.png").stat().st_size > 0
    assert len(results["nuts"]["observations"]) == 2
    report = (out / "report.md").read_text()
    for heading in (
        "PSIS",
        "NUTS reference posterior",
        "Simulation-based calibration",
        "Amortization gap",
        "Posterior collapse",
    ):
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


@pytest.mark.parametrize(
    "args, message",
    [
        (["--num-samples", "1"], "--num-samples: must be an integer >= 2"),
        (["--nuts-chains", "1"], "--nuts-chains: must be an integer >= 2"),
        (["--sbc-simulations", "5"], "--sbc-simulations: must be an integer >= 20"),
    ],
)
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


def _results(*, collapse: dict, fraction_above=None) -> dict:
    """A diagnostics.json as report() reads it, without NUTS and the amortization gap."""
    return {
        "run_dir": "run",
        "dataset": "toy",
        "num_heldout": 50,
        "psis": {
            "num_samples": 100,
            "num_observations": 50,
            "log_likelihood": -10.0,
            "log_likelihood_se": 0.1,
            "khat_quantiles": dict.fromkeys(("min", "5%", "25%", "50%", "75%", "95%", "max"), 0.2),
            "fraction_above": fraction_above or {"0.5": 0.0, "0.7": 0.0, "sample_size": 0.0},
            "sample_size_threshold": 0.5,
            "worst": [[0, 0.2]],
        },
        "sbc": {
            "num_simulations": 100,
            "num_draws": 19,
            "num_bins": 5,
            "p_value": 0.5,
            "verdict": "calibrated",
            "shift": [0.01, -0.02],
            "width_ratio": [1.0, 0.98],
        },
        "collapse": {
            "activity": [0.5, 0.4],
            "latent_dim": 2,
            "mutual_information": 1.2,
            "mutual_information_se": 0.01,
            "log_num_examples": 3.9,
            **collapse,
        },
        "seconds": {"psis": 1.0},
    }


HEALTHY = {
    "active_units": 2,
    "kl_per_dimension": [1.0, 2.0],
    "kl_total": 3.0,
    "kl_total_se": 0.0,
    "collapsed": False,
    "mostly_inactive": False,
    "warning": None,
}


def test_report_of_a_healthy_model_has_no_warning():
    from ppl_vae.app.diagnose import report

    text = report(_results(collapse=HEALTHY))
    assert "Warning" not in text and "Not collapsed" in text
    assert "KL(q(z | x) || p(z)) to the model's own prior: 3.000" in text


@pytest.mark.parametrize(
    "collapse",
    [
        {
            **HEALTHY,
            "active_units": 0,
            "collapsed": True,
            "warning": "the model is collapsed (0 of 2 latent units active; I(x; z) 0 ± 0 nats): q(z | x) ignores x",
        },
        {"active_units": 0, "kl_per_dimension": [0.0, 0.0]},  # a diagnostics.json written before the flag
    ],
)
def test_report_names_a_collapsed_model_before_any_conclusion(collapse):
    from ppl_vae.app.diagnose import report

    text = report(_results(collapse=collapse))
    warning = text.index("**Warning: collapsed model.**")
    assert warning < text.index("## The guide as an importance proposal")  # before the numbers it qualifies
    assert "0 of 2 latent units active" in text[warning : text.index("\n", warning)]
    assert "calibrated trivially" in text and "**Collapsed:**" in text


def test_report_warns_when_most_units_are_inactive():
    from ppl_vae.app.diagnose import report

    text = report(
        _results(
            collapse={
                **HEALTHY,
                "active_units": 0 + 1,
                "latent_dim": 4,
                "mostly_inactive": True,
                "warning": "most latent units are inactive (1 of 4 active)",
            }
        )
    )
    assert "**Warning: most latent units are inactive** (1 of 4 active)" in text


@pytest.mark.parametrize("fraction, share", [(0.3, "some"), (0.8, "most")])
def test_report_warns_when_khat_says_the_importance_estimate_is_unreliable(fraction, share):
    from ppl_vae.app.diagnose import report

    text = report(_results(collapse=HEALTHY, fraction_above={"0.5": 0.9, "0.7": fraction / 2, "sample_size": fraction}))
    line = next(line for line in text.splitlines() if "importance estimate is unreliable" in line)
    assert f"unreliable for {share} examples" in line and f"{fraction:.1%} with k-hat above" in line
    assert text.index(line) < text.index("## The guide as an importance proposal")


def test_report_of_a_real_run_agrees_with_its_collapse_numbers(diagnosed):
    _, out = diagnosed
    results = json.loads((out / "diagnostics.json").read_text())
    c = results["collapse"]
    assert {"collapsed", "warning", "kl_total", "kl_per_dimension"} <= set(c)
    report = (out / "report.md").read_text()
    assert ("**Warning: collapsed model.**" in report) == c["collapsed"]
    assert "to the model's own prior" in report
    assert len(results["sbc"]["shift"]) == len(results["sbc"]["width_ratio"]) == 3
