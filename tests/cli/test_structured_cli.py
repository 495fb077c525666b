"""Runs of models with labels, groups or an enumerated mixture, through the CLI: --labelled N|FILE,
--condition-on label, --groups COLUMN and --prior mixture:K train, evaluate and sample, and every
impossible combination is refused with one line, exit code 2 and nothing written."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ppl_vae.cli import main

TINY = ["--latent-dim", "2", "--hidden-dims", "16", "--epochs", "2", "--batch-size", "256", "--quiet"]


def _train(tmp_path, name, *flags):
    out = tmp_path / name
    assert main(["train", *TINY, *flags, "--out", str(out)]) == 0
    return out


def _refused(capsys, argv, fragment, written=None):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert fragment in err and len(err.splitlines()) == 1, err
    if written is not None:
        assert not written.exists()


@pytest.fixture(scope="module")
def semi(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("semi"), "run", "--labelled", "30", "--alpha", "5")


def test_semi_supervised_run_reports_accuracy_every_epoch_and_in_eval_json(semi, capsys):
    config = json.loads((semi / "config.json").read_text())
    assert config["prior"] == "semi-supervised:10:5" and config["labelled"] == 30 and config["alpha"] == 5
    history = json.loads((semi / "metrics.json").read_text())["history"]
    assert all(0 <= r["heldout_accuracy"] <= 1 and r["heldout_accuracy_se"] > 0 for r in history)
    capsys.readouterr()
    assert main(["evaluate", str(semi), "-k", "4", "--quiet"]) == 0
    table = capsys.readouterr().out
    assert "KL part, every latent site" in table and "accuracy of q(y | x)" in table  # y's KL is in that row
    result = json.loads((semi / "eval.json").read_text())
    acc, se = result["accuracy"], result["accuracy_se"]
    assert 0 <= acc <= 1 and se == pytest.approx((acc * (1 - acc) / result["num_examples"]) ** 0.5)
    assert (semi / "figures" / "samples.png").exists()


def test_semi_supervised_samples_for_a_class_and_refuses_other_classes(semi, capsys):
    assert main(["sample", str(semi), "--condition", "4", "-n", "3"]) == 0
    assert (semi / "figures" / "samples-c4-0.png").exists()
    _refused(capsys, ["sample", str(semi), "--condition", "10"], "choose a class or group in 0..9")


def test_the_labelled_choice_is_class_balanced_and_follows_the_seed():
    import torch

    from ppl_vae.data import load_dataset, select_labelled

    labels = load_dataset("digits").train_labels
    a, b, c = (select_labelled(labels, 25, seed=s) for s in (0, 0, 1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    counts = torch.bincount(a[a >= 0], minlength=10)
    assert int(counts.sum()) == 25 and set(counts.tolist()) == {2, 3}
    assert torch.equal(a[a >= 0], labels[a >= 0])  # kept labels are the true ones


def test_a_label_file_gives_the_labels_and_a_bad_one_is_refused(tmp_path, capsys):
    good = tmp_path / "labels.csv"
    good.write_text("index,label\n0,3\n5,1\n9,0\n")
    run = _train(tmp_path, "filed", "--labelled", str(good))
    assert json.loads((run / "config.json").read_text())["labelled"] == str(good)
    bad = tmp_path / "bad.csv"
    for text, fragment in (
        ("0,3\n0,2\n", "labelled twice"),
        ("0,x\n", "expected two integers"),
        ("99999,1\n", "outside 0..1437"),
        ("0,12\n", "not a class 0..9"),
    ):
        bad.write_text(text)
        _refused(capsys, ["train", *TINY, "--labelled", str(bad), "--out", str(tmp_path / "no")], fragment)
        assert not (tmp_path / "no").exists()


def test_conditional_run_samples_each_requested_class(tmp_path, capsys):
    run = _train(tmp_path, "cond", "--condition-on", "label")
    assert json.loads((run / "config.json").read_text())["prior"] == "conditional:10"
    assert main(["evaluate", str(run), "-k", "4", "--quiet"]) == 0
    assert "accuracy" not in json.loads((run / "eval.json").read_text())  # the class is observed, not predicted
    assert main(["sample", str(run), "--condition", "7", "-n", "4", "--out", str(tmp_path / "seven.png")]) == 0
    _refused(capsys, ["sample", str(run)], "pass --condition K with K in 0..9")
    _refused(capsys, ["interpolate", str(run)], "needs each example's label or group")
    _refused(capsys, ["grad-variance", str(run)], "conditional model")


def test_mixture_prior_from_the_cli(tmp_path, capsys):
    run = _train(tmp_path, "mix", "--prior", "mixture:4")
    assert main(["evaluate", str(run), "-k", "4", "--quiet"]) == 0
    objective = json.loads((run / "run.json").read_text())["objective"]
    assert objective["sites"] == {"z": "monte-carlo", "y": "enumerated"}
    _refused(capsys, ["sample", str(run), "--condition", "1"], "no label or group to condition on")
    _refused(capsys, ["train", *TINY, "--prior", "mixture:4", "--elbo", "iwae", "--out", str(tmp_path / "x")], "iwae")


def _group_table(path, rows=240, seed=0):
    rng = np.random.default_rng(seed)
    group = np.tile(np.arange(4), rows // 4)
    x = rng.normal(size=(rows, 4)) + 2.0 * group[:, None]
    with open(path, "w") as handle:
        handle.write("a,b,site,c,d\n")
        for g, row in zip(group, x):
            handle.write(f"{row[0]:.5f},{row[1]:.5f},{g},{row[2]:.5f},{row[3]:.5f}\n")
    return path


def test_group_effects_from_a_table_column(tmp_path, capsys):
    table = _group_table(tmp_path / "groups.csv")
    flags = ["--dataset", f"table:{table}", "--likelihood", "gaussian", "--groups", "site"]
    run = _train(tmp_path, "groups", *flags)
    config = json.loads((run / "config.json").read_text())
    assert config["prior"] == "groups:4"
    assert main(["evaluate", str(run), "-k", "4", "--quiet"]) == 0
    result = json.loads((run / "eval.json").read_text())
    assert result["elbo_kind"] == "per-example ELBO given q(global)" and result["global_kl"] > 0
    assert main(["sample", str(run), "--condition", "2", "-n", "3", "--out", str(tmp_path / "g.csv")]) == 0
    assert (tmp_path / "g.csv").read_text().splitlines()[0] == "a,b,c,d"  # the group column is not a feature
    _refused(capsys, ["sample", str(run)], "generates for a given group")
    base = ["train", *TINY, "--dataset", f"table:{table}", "--likelihood", "gaussian", "--out", str(tmp_path / "n")]
    _refused(capsys, [*base, "--groups", "nope"], "no such column", tmp_path / "n")
    _refused(capsys, ["train", *TINY, "--groups", "site", "--out", str(tmp_path / "n")], "holds images", tmp_path / "n")


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (["--labelled", "5"], "choose between 10 (one per class) and 1438"),
        (["--labelled", "99999"], "choose between 10"),
        (["--labelled", "20", "--condition-on", "label"], "cannot be combined"),
        (["--labelled", "20", "--prior", "mog"], "drop --prior mog or --labelled"),
        (["--prior", "semi-supervised"], "chosen by --labelled N"),
        (["--prior", "conditional:10"], "chosen by --condition-on label"),
        (["--prior", "mixture:1"], "at least 2 components"),
        (["--condition-on", "colour"], "columns are covariates of a table"),
        (["--alpha", "-1", "--labelled", "20"], "--alpha"),
        (["--labelled", "20", "--beta", "0.5"], "use --beta 1"),
    ],
)
def test_impossible_combinations_are_refused_before_anything_is_written(tmp_path, capsys, flags, fragment):
    out = tmp_path / "run"
    _refused(capsys, ["train", *TINY, *flags, "--out", str(out)], fragment, out)


def test_labelled_n_on_images_without_labels_is_refused_but_a_label_file_works(tmp_path, capsys):
    rng = np.random.default_rng(0)
    images = {k: (rng.random((n, 6, 6)) * 255).astype(np.uint8) for k, n in (("x_train", 60), ("x_test", 10))}
    np.savez(tmp_path / "d.npz", **images)
    argv = ["train", *TINY, "--dataset", f"npz:{tmp_path / 'd.npz'}"]
    _refused(capsys, [*argv, "--labelled", "10", "--out", str(tmp_path / "n")], "has none", tmp_path / "n")
    (tmp_path / "l.csv").write_text("index,label\n0,0\n1,1\n2,2\n")
    assert main([*argv, "--labelled", str(tmp_path / "l.csv"), "--out", str(tmp_path / "run")]) == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["prior"] == "semi-supervised:3:5"


def test_labels_on_a_table_without_labels_are_refused(tmp_path, capsys):
    table = _group_table(tmp_path / "t.csv")
    out = tmp_path / "run"
    argv = ["train", *TINY, "--dataset", f"table:{table}", "--likelihood", "gaussian", "--out", str(out)]
    _refused(capsys, [*argv, "--condition-on", "label"], "has none", out)


def test_a_config_json_from_before_the_label_fields_still_loads(tmp_path):
    run = _train(tmp_path, "old")
    config = json.loads((run / "config.json").read_text())
    for name in ("labelled", "alpha", "condition_on", "groups"):
        del config[name]
    (run / "config.json").write_text(json.dumps(config))
    assert main(["evaluate", str(run), "-k", "2", "--quiet"]) == 0
    assert "accuracy" not in json.loads((run / "eval.json").read_text())


def test_covariate_columns_condition_the_prior_and_the_decoder(tmp_path, capsys):
    """x's columns follow a covariate column (slope 2 for b); samples generated at covariate +2 and -2
    (in its own units) differ in b by about 2 x 4 = 8, far beyond their standard error."""
    rng = np.random.default_rng(1)
    u = rng.normal(size=400)
    rows = np.column_stack([rng.normal(size=400), 2 * u + 0.3 * rng.normal(size=400), u, rng.normal(size=400)])
    table = tmp_path / "cov.csv"
    table.write_text("a,b,u,c\n" + "".join(",".join(f"{v:.5f}" for v in row) + "\n" for row in rows))
    flags = ["--dataset", f"table:{table}", "--likelihood", "gaussian", "--condition-on", "u", "--lr", "3e-3"]
    run = tmp_path / "run"
    argv = ["train", "--latent-dim", "2", "--hidden-dims", "32", "--epochs", "40", "--batch-size", "64", "--quiet"]
    assert main([*argv, *flags, "--out", str(run)]) == 0
    assert json.loads((run / "config.json").read_text())["prior"] == "covariates:1"
    b = {}
    for value in ("2", "-2"):
        out = tmp_path / f"s{value}.csv"
        assert main(["sample", str(run), "--condition", value, "-n", "400", "--mean", "--out", str(out)]) == 0
        text = out.read_text().splitlines()
        assert text[0] == "a,b,c"  # the covariate is not a generated column
        b[value] = np.array([float(line.split(",")[1]) for line in text[1:]])
    diff = b["2"].mean() - b["-2"].mean()
    se = np.sqrt(b["2"].var(ddof=1) / 400 + b["-2"].var(ddof=1) / 400)
    assert diff > 4.0 and diff > 4 * se, (diff, se)
    _refused(capsys, ["sample", str(run), "--condition", "1,2"], "give 1 finite numbers for u")
    _refused(capsys, ["sample", str(run)], "pass --condition with 1 numbers for u")
