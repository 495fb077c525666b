"""``ppl-vae diagnose``: every documented file, keys that agree with the stored arrays, and bad input
that exits 2 without writing anything."""

import json

import numpy as np
import pytest

from ppl_vae.cli import main
from ppl_vae.diagnostics.arviz_bridge import arviz as _arviz

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
        "figures/coverage.png",
        "figures/sbc_ecdf.png",
        "figures/ppc.png",
        "figures/ppc_pvalues.png",
    ):
        assert (out / name).stat().st_size > 0, name
    results = json.loads((out / "diagnostics.json").read_text())
    assert set(results) >= {
        "psis",
        "nuts",
        "sbc",
        "calibration",
        "amortization_gap",
        "collapse",
        "predictive_checks",
        "seconds",
        "settings",
    }
    assert set(results["calibration"]) == {"simulations", "ecdf", "nuts", "c2st"}
    assert set(results["predictive_checks"]) == {"posterior", "prior"}
    assert results["predictive_checks"]["posterior"]["data_kind"] == "image"
    assert results["predictive_checks"]["posterior"]["num_samples"] == 800  # the fewest that can flag, rounded up
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
        "Calibration of q(z | x)",
        "predictive",
    ):
        assert heading in report
    for figure in ("coverage.png", "sbc_ecdf.png", "ppc.png", "ppc_pvalues.png"):
        assert f"figures/{figure}" in report


def test_too_few_predictive_replicates_are_refused_before_any_work(diagnosed, tmp_path, capsys):
    run, _ = diagnosed
    out = tmp_path / "never"
    assert main(["diagnose", str(run), *SMALL, "--ppc-samples", "50", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "ppc_samples 50 is too few" in err and "799 or more" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


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


# -- structured models: what applies works, what does not is skipped with one line ----------------------

TINY = [
    "--num-samples",
    "30",
    "--nuts-observations",
    "1",
    "--nuts-chains",
    "2",
    "--nuts-warmup",
    "10",
    "--nuts-samples",
    "10",
    "--sbc-simulations",
    "40",
    "--sbc-draws",
    "9",
    "--gap-observations",
    "5",
    "--gap-steps",
    "2",
    "--class-particles",
    "10",
    "--quiet",
]

#: Training flags, and diagnose flags beyond TINY (NUTS on ten enumerated classes is slow: skipped for M2).
STRUCTURED_RUNS = {
    "mixture": (["--prior", "mixture:3"], []),
    "semi": (["--labelled", "30"], ["--nuts-observations", "0"]),
    "conditional": (["--condition-on", "label"], []),
}


@pytest.fixture(scope="module")
def structured(tmp_path_factory):
    """One tiny run per structured model, each diagnosed: ``{name: (run, printed output)}``."""
    import contextlib
    import io

    root = tmp_path_factory.mktemp("structured")
    out = {}
    for name, (flags, extra) in STRUCTURED_RUNS.items():
        run = root / name
        train = ["train", *flags, "--latent-dim", "2", "--hidden-dims", "16", "--epochs", "1", "--quiet"]
        assert main([*train, "--out", str(run)]) == 0
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            assert main(["diagnose", str(run), *TINY, *extra]) == 0
        out[name] = (run, printed.getvalue())
    return out


def _diagnosis(structured, name):
    run, printed = structured[name]
    return json.loads((run / "diagnostics" / "diagnostics.json").read_text()), run / "diagnostics", printed


def test_a_mixture_run_gets_every_part_and_the_calibration_of_its_components(structured):
    results, out, printed = _diagnosis(structured, "mixture")
    assert {"psis", "nuts", "sbc", "classification", "amortization_gap", "collapse"} <= set(results)
    assert "skipped" not in results["collapse"] and "skipped" not in results["amortization_gap"]
    sim = results["classification"]["simulated_posterior"]
    assert sim["num_examples"] == 40 and sum(sim["counts"]) == 40 and 0 <= sim["ece"] <= 1
    assert set(results["classification"]) == {"simulated_posterior"}  # q(z | x): no classifier to check
    idata = _arviz().from_netcdf(str(out / "inference_data.nc"))
    probs = idata.class_posterior["y"].values
    assert probs.shape == (results["num_heldout"], 3) and np.allclose(probs.sum(1), 1)
    assert (out / "figures" / "reliability.png").stat().st_size > 0
    report = (out / "report.md").read_text()
    assert "## Calibration of the class posterior" in report and "figures/reliability.png" in report
    assert "classes, p(y | x), simulated data: ECE" in printed


def test_a_semi_supervised_run_checks_its_classifier_against_the_heldout_labels(structured):
    results, out, printed = _diagnosis(structured, "semi")
    assert results["label_role"] == "semi"
    classes = results["classification"]
    assert set(classes) == {"simulated_posterior", "simulated_guide", "heldout_guide", "heldout_posterior"}
    held = classes["heldout_guide"]
    assert held["num_examples"] == results["num_heldout"] and held["num_classes"] == 10
    assert "nuts" not in results  # --nuts-observations 0
    for name in ("collapse", "amortization_gap"):
        reason = results[name]["skipped"]
        assert "q(z | x, label)" in reason and "\n" not in reason
        assert f"{name.replace('_', ' ')}: skipped:" in printed
    assert "Skipped:" in (out / "report.md").read_text()
    idata = _arviz().from_netcdf(str(out / "inference_data.nc"))
    assert {"y", "y_se", "q_y"} <= set(idata.class_posterior.data_vars)
    assert idata.posterior["y"].shape == (1, 100, results["num_heldout"])  # the guide's draws of the class


def test_a_conditional_run_is_diagnosed_given_its_labels(structured):
    results, out, printed = _diagnosis(structured, "conditional")
    assert results["label_role"] == "covariate" and "classification" not in results
    assert np.isfinite(results["psis"]["log_likelihood"]) and results["nuts"]["max_rhat"] is not None
    assert len(results["sbc"]["p_values"]) == 2
    assert "label c" in results["amortization_gap"]["skipped"]
    assert "collapse is measured on q(z | x), which this model does not have" in results["collapse"]["skipped"]
    assert "log p(x | c)" in (out / "report.md").read_text()
    assert not (out / "figures" / "reliability.png").exists()


def test_a_table_run_gets_table_statistics_loo_pit_and_its_units(tmp_path):
    """Heavy-tailed columns (Student-t, 3 degrees of freedom) under a Gaussian likelihood: the predictive
    checks use table statistics on the standardized features, say so, and LOO-PIT applies."""
    rng = np.random.default_rng(0)
    table = tmp_path / "t.csv"
    np.savetxt(table, rng.standard_t(3, size=(300, 4)) * 2 + 5, delimiter=",", header="a,b,c,d", comments="")
    run = tmp_path / "run"
    train = ["train", "--dataset", f"table:{table}", "--likelihood", "gaussian", "--latent-dim", "2"]
    assert main([*train, "--hidden-dims", "16", "--epochs", "5", "--quiet", "--out", str(run)]) == 0
    assert main(["diagnose", str(run), *SMALL]) == 0
    out = run / "diagnostics"
    checks = json.loads((out / "diagnostics.json").read_text())["predictive_checks"]
    assert checks["posterior"]["data_kind"] == "table" and "kurtosis" in checks["posterior"]["statistics"]
    assert "standardized" in checks["units"]
    pit = checks["posterior"]["loo_pit"]
    assert pit.get("reason") is None and pit["num_values"] > 0
    assert (out / "figures" / "loo_pit.png").stat().st_size > 0
    report = (out / "report.md").read_text()
    assert "Units of the statistics: the table's features" in report and "kurtosis †" in report
