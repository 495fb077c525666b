"""Nothing of the user's is destroyed, every refusal is one line, and no flag reaches the allocator
unchecked (issue 12). Each test here failed before its fix."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ppl_vae.app import folders
from ppl_vae.cli import main

TINY = ["--epochs", "1", "--latent-dim", "2", "--hidden-dims", "16", "--quiet"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("trust") / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    return out


def _tree(folder: Path) -> dict:
    """Every file under ``folder`` with the hash of its bytes (to prove nothing changed)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != folders.LOCK
    }


def _one_line_error(capsys, *needles) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


# -- --overwrite replaces only run folders ---------------------------------------------------------------------


def test_overwrite_refuses_a_folder_ppl_vae_did_not_make(tmp_path, capsys):
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "chapter1.tex").write_text("years of work")
    assert main(["train", *TINY, "--out", str(mine), "--overwrite"]) == 2
    _one_line_error(capsys, "did not make")
    assert (mine / "chapter1.tex").read_text() == "years of work"


def test_overwrite_refuses_the_current_directory_and_links(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep.txt").write_text("x")
    assert main(["train", *TINY, "--out", ".", "--overwrite"]) == 2
    _one_line_error(capsys, "current directory")
    target = tmp_path / "real"
    target.mkdir()
    (tmp_path / "link").symlink_to(target)
    assert main(["train", *TINY, "--out", str(tmp_path / "link"), "--overwrite"]) == 2
    _one_line_error(capsys, "symbolic link")
    assert (tmp_path / "keep.txt").exists() and target.is_dir()


def test_overwrite_refuses_a_folder_that_holds_the_data(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    x = (np.random.default_rng(0).random((60, 8, 8)) * 255).astype(np.uint8)
    np.savez(data / "x.npz", x_train=x[:40], x_test=x[40:])
    assert main(["train", *TINY, "--dataset", f"npz:{data / 'x.npz'}", "--out", str(data), "--overwrite"]) == 2
    _one_line_error(capsys, "input")
    assert (data / "x.npz").is_file()


def test_overwrite_replaces_a_run_folder(run_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    assert folders.owned_kind(copy) == "run"
    before = (copy / "checkpoint.pt").read_bytes()
    assert main(["train", *TINY, "--seed", "3", "--out", str(copy), "--overwrite"]) == 0
    assert (copy / "checkpoint.pt").read_bytes() != before


def test_a_run_folder_in_use_is_not_replaced_or_shared(run_dir, tmp_path, capsys):
    copy = tmp_path / "busy"
    shutil.copytree(run_dir, copy)
    before = _tree(copy)
    with folders.locked(copy, "train"):  # another process is training into it
        assert main(["train", *TINY, "--out", str(copy), "--overwrite"]) == 2
        _one_line_error(capsys, "in use")
        assert main(["train", "--resume", str(copy)]) == 2
        _one_line_error(capsys, "in use")
    assert _tree(copy) == before


def test_two_trainings_racing_for_one_folder(tmp_path):
    """Two processes started together with the same --out: exactly one trains; the folder's config and
    checkpoint belong to the same run."""
    out = tmp_path / "race"
    cmd = [
        sys.executable,
        "-m",
        "ppl_vae",
        "train",
        "--epochs",
        "3",
        "--latent-dim",
        "2",
        "--hidden-dims",
        "16",
        "--quiet",
        "--out",
        str(out),
    ]
    procs = [
        subprocess.Popen([*cmd, "--seed", str(seed)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for seed in (1, 2)
    ]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert loser.count("\n") == 1 and "Traceback" not in loser
    winner_seed = 1 if results[0][0] == 0 else 2
    assert json.loads((out / "config.json").read_text())["seed"] == winner_seed
    assert json.loads((out / "run.json").read_text())["status"] == "complete"


# -- outputs are checked before any work ---------------------------------------------------------------------


def test_sample_refuses_a_special_file_and_the_run_inputs(run_dir, tmp_path, capsys):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    assert main(["sample", str(run_dir), "--out", str(fifo)]) == 2
    _one_line_error(capsys, "not a regular file")
    before = (run_dir / "config.json").read_bytes()
    assert main(["sample", str(run_dir), "--out", str(run_dir / "config.json")]) == 2
    _one_line_error(capsys)
    assert (run_dir / "config.json").read_bytes() == before


def test_unwritable_output_is_refused_before_training(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["train", "--epochs", "200", "--quiet", "--out", str(blocker / "run")]) == 2
    _one_line_error(capsys, "is a file")


def test_a_full_disk_is_one_line(tmp_path, capsys, monkeypatch):
    import errno

    import ppl_vae.app.checkpoint as checkpoint

    def full(path, write):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(checkpoint, "atomic_write", full)
    monkeypatch.setattr("ppl_vae.app.run.write_json", lambda *a, **k: full(a[0], None))
    assert main(["train", *TINY, "--out", str(tmp_path / "r")]) == 2
    _one_line_error(capsys, "No space left", "free disk space")


# -- run-folder files are validated -------------------------------------------------------------------------


def test_config_json_without_dataset_is_refused(run_dir, tmp_path, capsys):
    copy = tmp_path / "edited"
    shutil.copytree(run_dir, copy)
    config = json.loads((copy / "config.json").read_text())
    del config["dataset"]
    (copy / "config.json").write_text(json.dumps(config))
    assert main(["evaluate", str(copy), "-k", "4", "--quiet"]) == 2
    _one_line_error(capsys, "lacks dataset")


@pytest.mark.parametrize(
    "field, value",
    [
        ("lr", "fast"),
        ("latent_dim", 2.5),
        ("seed", -1),
        ("download", "yes"),
        ("hidden_dims", [16, "x"]),
        ("dataset", 7),
        ("batch_size", True),
    ],
)
def test_wrong_types_in_a_run_folder_config_are_one_line(run_dir, tmp_path, capsys, field, value):
    copy = tmp_path / "typed"
    shutil.copytree(run_dir, copy)
    config = json.loads((copy / "config.json").read_text())
    config[field] = value
    (copy / "config.json").write_text(json.dumps(config))
    assert main(["evaluate", str(copy), "-k", "4", "--quiet"]) == 2
    _one_line_error(capsys, field)


def test_resume_refuses_changed_data(tmp_path, capsys):
    x = (np.random.default_rng(0).random((80, 8, 8)) * 255).astype(np.uint8)
    path = tmp_path / "x.npz"
    np.savez(path, x_train=x[:60], x_test=x[60:])
    out = tmp_path / "run"
    assert main(["train", *TINY, "--dataset", f"npz:{path}", "--out", str(out)]) == 0
    x[0, 0, 0] ^= 1  # one value of one image, same length
    np.savez(path, x_train=x[:60], x_test=x[60:])
    assert main(["train", "--resume", str(out), "--epochs", "2"]) == 2
    _one_line_error(capsys, "changed")


# -- every size is bounded, 0 is never "the default" -------------------------------------------------------


@pytest.mark.parametrize(
    "args, needle",
    [
        (["train", "--latent-dim", "1000000000"], "--latent-dim"),
        (["train", "--hidden-dims", "100000"], "--hidden-dims"),
        (["train", "--particles", "1000000000"], "--particles"),
        (["train", "--image-size", "1000000"], "--image-size"),
        (["train", "--seed", "-1"], "--seed"),
        (["train", "--seed", str(2**40)], "--seed"),
        (["train", "--threads", "1000000"], "--threads"),
        (["evaluate", "RUN", "-k", "0"], "--num-particles"),
        (["evaluate", "RUN", "--batch-size", "0"], "--batch-size"),
        (["sample", "RUN", "-n", "1000000000"], "--num-samples"),
        (["sample", "RUN", "-n", "0"], "--num-samples"),
    ],
)
def test_absurd_or_zero_sizes_are_refused_by_the_parser(run_dir, tmp_path, capsys, args, needle):
    args = [str(run_dir) if a == "RUN" else a for a in args]
    if args[0] == "train":
        args += ["--out", str(tmp_path / "r")]
    assert main(args) == 2
    _one_line_error(capsys, needle)
    assert not (tmp_path / "r").exists()


def test_a_network_over_the_memory_budget_is_refused_before_it_is_built(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PPL_VAE_MAX_MEMORY", "64M")
    args = ["train", "--hidden-dims", "60000", "60000", "--out", str(tmp_path / "r"), "--quiet"]
    assert main(args) == 2
    _one_line_error(capsys, "limit", "--max-memory")
    assert not (tmp_path / "r").exists()


def test_config_file_values_are_checked_like_flags(tmp_path, capsys):
    config = tmp_path / "c.json"
    for values, needle in (
        ({"latent_dim": 10**9}, "latent_dim"),
        ({"seed": 2**40}, "seed"),
        ({"lr": float("nan")}, "lr"),
        ({"epochs": "10"}, "epochs"),
    ):
        config.write_text(json.dumps(values))
        assert main(["train", "--config", str(config), "--out", str(tmp_path / "r")]) == 2
        _one_line_error(capsys, needle)
    config.write_text("[" * 100000)
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "r")]) == 2
    _one_line_error(capsys, "config file")
    assert not (tmp_path / "r").exists()


# -- honest outputs -------------------------------------------------------------------------------------------


def test_count_samples_are_draws_unless_mean(tmp_path):
    counts = np.random.default_rng(1).poisson(3.0, size=(80, 5))
    path = tmp_path / "c.npz"
    np.savez(path, x=counts)
    out = tmp_path / "run"
    assert main(["train", "--dataset", f"table:{path}", "--likelihood", "poisson", *TINY, "--out", str(out)]) == 0
    assert main(["sample", str(out), "-n", "50", "--out", str(tmp_path / "draws.csv")]) == 0
    lines = (tmp_path / "draws.csv").read_text().splitlines()
    assert lines[0] == ",".join(f"x{j}" for j in range(5)) and len(lines) == 51  # a header, then 50 rows
    draws = np.loadtxt(tmp_path / "draws.csv", delimiter=",", skiprows=1)
    assert np.all(draws == np.round(draws)) and np.all(draws >= 0)
    assert main(["sample", str(out), "-n", "50", "--mean", "--out", str(tmp_path / "means.csv")]) == 0
    means = np.loadtxt(tmp_path / "means.csv", delimiter=",", skiprows=1)
    assert not np.all(means == np.round(means))


def test_table_runs_report_one_unit_everywhere(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = rng.normal([10.0, -3.0, 0.0], [5.0, 0.1, 2.0], size=(200, 3))
    path = tmp_path / "t.csv"
    np.savetxt(path, x, delimiter=",")
    out = tmp_path / "run"
    assert main(["train", "--dataset", f"table:{path}", "--likelihood", "gaussian", *TINY, "--out", str(out)]) == 0
    trained = capsys.readouterr().out
    assert "original units" in trained
    assert main(["evaluate", str(out), "-k", "50", "--quiet"]) == 0
    assert "original units" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert "STANDARDIZED" in metrics["units"] and np.isfinite(metrics["units_shift"])
    assert "original units" in json.loads((out / "eval.json").read_text())["units"]


def test_run_json_records_the_thread_choice(run_dir):
    threads = json.loads((run_dir / "run.json").read_text())["threads"]
    assert threads["intra_op"] >= 1 and threads["choice"]


def test_list_prints_whole_plain_lines_for_every_registered_name(capsys):
    from ppl_vae import catalog
    from ppl_vae.guides import GUIDES
    from ppl_vae.infer.objectives import OBJECTIVES
    from ppl_vae.models import LIKELIHOODS, PRIORS

    assert list(catalog.PRIORS) == list(PRIORS) and list(catalog.GUIDES) == list(GUIDES)
    assert list(catalog.LIKELIHOODS) == list(LIKELIHOODS) and list(catalog.OBJECTIVES) == list(OBJECTIVES)
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "``" not in out and ":class:" not in out
    for rows in catalog.CATALOG.values():
        for name, text in rows.items():
            assert f"  {name:<22}{text}\n" in out


def test_help_and_list_do_not_import_torch():
    code = (
        "import sys; from ppl_vae.cli import build_parser, main; build_parser(); main(['list']); "
        "heavy = [m for m in ('torch', 'pyro', 'arviz', 'matplotlib') if m in sys.modules]; "
        "sys.stderr.write(repr(heavy))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stderr.strip() == "[]", done.stderr


def test_a_closed_pipe_is_not_a_traceback():
    reader = subprocess.Popen([sys.executable, "-m", "ppl_vae", "list"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    reader.stdout.close()  # the reader left before the first line
    err = reader.stderr.read().decode()
    assert reader.wait(timeout=120) == 0 and "Traceback" not in err, err


def test_an_unexpected_exception_is_one_line_naming_a_bug(monkeypatch, capsys):
    import ppl_vae.cli.run_commands as commands

    def broken(args):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(commands, "_list", broken)
    assert main(["list"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bug in ppl_vae" in err and "Traceback" not in err
    with pytest.raises(RuntimeError):
        main(["list", "--debug"])
    torch.set_num_threads(1)


def test_public_names_survive_importing_their_submodules():
    import ppl_vae
    import ppl_vae.infer.evaluate  # noqa: F401 - the module that defines the public function

    assert callable(ppl_vae.evaluate) and ppl_vae.evaluate.__module__ == "ppl_vae.infer.evaluate"
    from ppl_vae import evaluate

    assert callable(evaluate)


def test_cli_copies_of_defaults_match_the_library():
    from ppl_vae.app import compare_ae as experiment
    from ppl_vae.cli import compare_ae, grad_variance
    from ppl_vae.diagnostics import gradients

    assert compare_ae.DEFAULT_EPOCHS == experiment.DEFAULT_EPOCHS
    assert compare_ae.DEFAULT_BETAS == experiment.DEFAULT_BETAS
    assert grad_variance.DEFAULT_LOO_PARTICLES == gradients.DEFAULT_LOO_PARTICLES


def test_diagnose_reports_a_table_in_the_units_evaluate_uses(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = rng.normal([100.0, -50.0, 0.0], [10.0, 10.0, 10.0], size=(150, 3))  # standardizing shifts by -6.9 nats
    path = tmp_path / "t.csv"
    np.savetxt(path, x, delimiter=",")
    out = tmp_path / "run"
    assert main(["train", "--dataset", f"table:{path}", "--likelihood", "gaussian", *TINY, "--out", str(out)]) == 0
    assert main(["evaluate", str(out), "-k", "200", "--quiet"]) == 0
    evaluated = json.loads((out / "eval.json").read_text())
    assert (
        main(
            [
                "diagnose",
                str(out),
                "--num-samples",
                "200",
                "--nuts-observations",
                "0",
                "--sbc-simulations",
                "20",
                "--gap-observations",
                "0",
                "--quiet",
            ]
        )
        == 0
    )
    diagnosed = json.loads((out / "diagnostics" / "diagnostics.json").read_text())
    shift = json.loads((out / "metrics.json").read_text())["units_shift"]
    assert abs(shift) > 5
    # Both are importance estimates of the same log p(x) with 200 draws: far closer than the shift.
    assert abs(diagnosed["psis"]["log_likelihood"] - evaluated["log_likelihood"]) < 0.5
    assert "original units" in diagnosed["units"]


def test_a_disk_too_small_for_the_run_is_refused_before_training(tmp_path, capsys, monkeypatch):
    import collections
    import shutil as shutil_module

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil_module, "disk_usage", lambda path: usage(10**6, 10**6 - 1000, 1000))
    assert main(["train", *TINY, "--out", str(tmp_path / "r")]) == 2
    _one_line_error(capsys, "of disk", "free disk space")
    assert not (tmp_path / "r").exists()


def test_evaluate_names_a_collapsed_model(tmp_path, capsys):
    out = tmp_path / "collapsed"  # beta = 20 pushes every q(z|x) onto the prior
    assert main(["train", *TINY, "--beta", "20", "--epochs", "3", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), "-k", "20", "--quiet"]) == 0
    printed = capsys.readouterr().out
    kl = json.loads((out / "eval.json").read_text())["kl"]
    assert kl < 0.05 and "posterior collapse" in printed
