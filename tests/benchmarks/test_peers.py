"""The peer-system harness (benchmarks/peers): argument building, result parsing, env discovery and
error reporting, with fake interpreters -- no peer environment, no network. Plus the scripts'
importance-sampling summaries, which import with numpy alone."""

from __future__ import annotations

import ast
import importlib.util
import json
import math
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import benchmarks.peers as peers

SCRIPTS = {name: spec["script"] for name, spec in peers.PEERS.items()}


def load_script(name):
    spec = importlib.util.spec_from_file_location(f"_peer_script_{name}", SCRIPTS[name])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def env_root(tmp_path, monkeypatch):
    root = tmp_path / "peers"
    monkeypatch.setattr(peers, "ENV_ROOT", root)
    return root


@pytest.fixture
def npz(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x_train=np.full((4, 3), 0.5, np.float32), x_heldout=np.ones((2, 3), np.float32))
    return path


def make_executable(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def valid_result(m=2):
    return {
        "system": "numpyro",
        "versions": {},
        "objective": "x",
        "binarization": "dynamic",
        "log_px": [-1.0] * m,
        "log_px_se": [0.1] * m,
        "elbo": [-2.0] * m,
        "train_seconds": 1.0,
        "eval_seconds": 1.0,
        "train_examples_per_s": 1.0,
        "eval_samples_per_s": 1.0,
        "epochs": 1,
        "seed": 0,
        "k": 3,
        "notes": [],
    }


# A fake "env python": ignores the script path, checks the environment, writes a result.
FAKE_OK = f"""#!{sys.executable}
import json, os, sys
args = sys.argv[2:]
out = args[args.index("--out") + 1]
assert os.environ["OMP_NUM_THREADS"] == "1", os.environ.get("OMP_NUM_THREADS")
assert "intra_op_parallelism_threads=1" in os.environ["XLA_FLAGS"]
assert "PYTHONPATH" not in os.environ
result = {json.dumps(valid_result())}
result["argv"] = args
json.dump(result, open(out, "w"))
"""


# --- the contract helpers ---------------------------------------------------------------------


def test_build_args_follows_the_contract():
    args = peers.build_args("d.npz", "r.json", epochs=3, seed=7, k=100, hidden=(400, 200), eval_batch=4)
    assert args == [
        "--data",
        "d.npz",
        "--out",
        "r.json",
        "--epochs",
        "3",
        "--seed",
        "7",
        "--k",
        "100",
        "--batch-size",
        "128",
        "--lr",
        "0.001",
        "--latent",
        "50",
        "--hidden",
        "400",
        "--hidden",
        "200",
        "--eval-batch",
        "4",
    ]
    assert "--eval-batch" not in peers.build_args("d", "r", epochs=1, seed=0, k=1)


@pytest.mark.parametrize(
    "kwargs", [dict(hidden=()), dict(hidden=(0,)), dict(epochs=0), dict(k=0), dict(lr=0.0), dict(batch_size=0)]
)
def test_build_args_rejects_bad_values(kwargs):
    base = dict(epochs=1, seed=0, k=1)
    with pytest.raises(ValueError):
        peers.build_args("d", "r", **{**base, **kwargs})


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_scripts_parse_the_arguments_build_args_makes(name):
    module = load_script(name)
    args = module.parse_args(
        peers.build_args(
            "d.npz", "r.json", epochs=2, seed=3, k=10, batch_size=16, lr=3e-4, latent=8, hidden=(32, 16), eval_batch=5
        )
    )
    assert (args.data, args.out, args.epochs, args.seed, args.k) == ("d.npz", "r.json", 2, 3, 10)
    assert (args.batch_size, args.lr, args.latent, args.hidden, args.eval_batch) == (16, 3e-4, 8, [32, 16], 5)
    defaults = module.parse_args(["--data", "d", "--out", "o", "--epochs", "1", "--seed", "0", "--k", "1"])
    assert (defaults.batch_size, defaults.lr, defaults.latent, defaults.hidden, defaults.eval_batch) == (
        128,
        1e-3,
        50,
        [400],
        8,
    )


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_scripts_import_nothing_but_stdlib_and_numpy_at_top_level(name):
    tree = ast.parse(SCRIPTS[name].read_text())
    top = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            top.add(node.module.split(".")[0])
    allowed = {"__future__", "argparse", "json", "math", "os", "platform", "sys", "tempfile", "time", "numpy"}
    assert top <= allowed | {"contract"}
    contract = ast.parse((SCRIPTS[name].parent / "contract.py").read_text())
    assert {
        n.module if isinstance(n, ast.ImportFrom) else n.names[0].name
        for n in contract.body
        if isinstance(n, (ast.Import, ast.ImportFrom))
    } <= allowed
    assert "ppl_vae" not in SCRIPTS[name].read_text().replace("never imports ppl_vae", "")


def test_parse_result_accepts_a_valid_result(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(valid_result(3)))
    assert peers.parse_result(path)["log_px"] == [-1.0] * 3


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda r: r.pop("elbo"), "lacks keys"),
        (lambda r: r.update(log_px_se=[0.1]), "unequal length"),
        (lambda r: r.update(log_px=1.0), "unequal length or not lists"),
    ],
)
def test_parse_result_rejects_incomplete_results(tmp_path, mutate, match):
    result = valid_result()
    mutate(result)
    path = tmp_path / "r.json"
    path.write_text(json.dumps(result))
    with pytest.raises(RuntimeError, match=match):
        peers.parse_result(path)


def test_parse_result_rejects_bad_json_and_missing_files(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(RuntimeError, match="not valid JSON"):
        peers.parse_result(tmp_path / "bad.json")
    with pytest.raises(RuntimeError, match="could not be read"):
        peers.parse_result(tmp_path / "absent.json")


# --- env discovery ------------------------------------------------------------------------------


def test_python_for_is_none_without_an_env(env_root):
    for name in peers.PEERS:
        assert peers.python_for(name) is None
    assert all(not info["ready"] and not info["env_exists"] for info in peers.status().values())


def test_python_for_needs_the_marker_of_the_current_pins(env_root):
    env = env_root / "numpyro"
    python = make_executable(env / "bin" / "python", "#!/bin/sh\n")
    assert peers.python_for("numpyro") is None  # no marker: setup never finished
    marker = env / peers.MARKER
    marker.write_text(json.dumps({"requirements": ["numpyro==0.0.1"]}))
    assert peers.python_for("numpyro") is None  # marker of other pins
    marker.write_text("{truncated")
    assert peers.python_for("numpyro") is None
    marker.write_text(json.dumps({"requirements": peers.PEERS["numpyro"]["requirements"]}))
    assert peers.python_for("numpyro") == python
    assert peers.python_for("pythae") is None


def test_unknown_peer_is_a_value_error():
    with pytest.raises(ValueError, match="unknown peer"):
        peers.python_for("edward")


def test_status_cli_lists_every_peer(env_root, capsys):
    assert peers.main(["status"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in peers.PEERS) and "absent" in out


def test_setup_failure_is_a_one_line_runtime_error(env_root, monkeypatch):
    def failing_run(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, stdout="Collecting x\nERROR: No matching distribution found for x\n")

    monkeypatch.setattr(peers.subprocess, "run", failing_run)
    with pytest.raises(RuntimeError) as info:
        peers.setup("numpyro", quiet=True)
    message = str(info.value)
    assert "\n" not in message and "numpyro" in message and "No matching distribution" in message
    assert peers.python_for("numpyro") is None
    assert (env_root / "numpyro.setup.log").exists()


def test_setup_leaves_a_ready_env_alone_unless_forced(env_root, monkeypatch):
    env = env_root / "pythae"
    python = make_executable(env / "bin" / "python", "#!/bin/sh\n")
    (env / peers.MARKER).write_text(json.dumps({"requirements": peers.PEERS["pythae"]["requirements"]}))

    def no_subprocess(cmd, **kwargs):
        raise AssertionError(f"setup ran {cmd}")

    monkeypatch.setattr(peers.subprocess, "run", no_subprocess)
    assert peers.setup("pythae", quiet=True) == python
    with pytest.raises(AssertionError, match="setup ran"):
        peers.setup("pythae", force=True, quiet=True)
    assert peers.python_for("pythae") is None  # the marker goes before anything is reinstalled


# --- run_peer with fake interpreters --------------------------------------------------------------


def test_run_peer_without_an_env_says_how_to_set_it_up(env_root, npz, tmp_path):
    with pytest.raises(RuntimeError, match="python -m benchmarks.peers setup pythae"):
        peers.run_peer("pythae", npz, tmp_path / "r.json", epochs=1, seed=0, k=3)


def test_run_peer_reports_the_stderr_of_a_failing_script(npz, tmp_path):
    fake = make_executable(
        tmp_path / "fake_python",
        "#!/bin/sh\necho 'Traceback (most recent call last):' >&2\n"
        "echo 'ImportError: no module named jax' >&2\nexit 1\n",
    )
    with pytest.raises(RuntimeError, match=r"(?s)failed \(exit 1\).*ImportError: no module named jax"):
        peers.run_peer("numpyro", npz, tmp_path / "r.json", epochs=1, seed=0, k=3, python=fake)
    assert "ImportError" in (tmp_path / "r.json.log").read_text()


def test_run_peer_rejects_a_script_that_writes_nothing(npz, tmp_path):
    fake = make_executable(tmp_path / "fake_python", "#!/bin/sh\nexit 0\n")
    with pytest.raises(RuntimeError, match="wrote no result"):
        peers.run_peer("numpyro", npz, tmp_path / "r.json", epochs=1, seed=0, k=3, python=fake)


def test_run_peer_times_out_cleanly(npz, tmp_path):
    fake = make_executable(tmp_path / "fake_python", "#!/bin/sh\necho started >&2\nexec sleep 30\n")
    with pytest.raises(RuntimeError, match="timed out after 0.5 s"):
        peers.run_peer("numpyro", npz, tmp_path / "r.json", epochs=1, seed=0, k=3, python=fake, timeout=0.5)


def test_run_peer_missing_data_is_a_runtime_error(tmp_path):
    with pytest.raises(RuntimeError, match="does not exist"):
        peers.run_peer(
            "numpyro", tmp_path / "absent.npz", tmp_path / "r.json", epochs=1, seed=0, k=3, python=sys.executable
        )


def test_run_peer_runs_the_env_python_with_one_thread_and_parses_the_result(env_root, npz, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/somewhere/else")
    env = env_root / "pythae"
    make_executable(env / "bin" / "python", FAKE_OK)
    (env / peers.MARKER).write_text(json.dumps({"requirements": peers.PEERS["pythae"]["requirements"]}))
    out = tmp_path / "sub" / "r.json"
    result = peers.run_peer("pythae", npz, out, epochs=2, seed=5, k=30, hidden=(64,))
    assert result["log_px"] == [-1.0, -1.0]
    argv = result["argv"]
    assert argv[argv.index("--data") + 1] == str(npz.resolve())
    assert argv[argv.index("--out") + 1] == str(out.resolve())
    assert argv[argv.index("--k") + 1] == "30" and argv[argv.index("--hidden") + 1] == "64"


# --- the scripts' importance-sampling summaries (numpy only) --------------------------------------


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_summarize_log_weights_matches_the_definitions(name):
    summarize = load_script(name).summarize_log_weights
    rng = np.random.default_rng(0)
    logw = rng.normal(-300.0, 3.0, size=(5, 200))
    log_px, se, elbo = summarize(logw)
    k = logw.shape[1]
    # direct (long-double-free) forms: shift by a constant to avoid underflow, like any logsumexp
    for i in range(5):
        c = logw[i].max()
        w = np.exp(logw[i] - c)
        assert log_px[i] == pytest.approx(c + math.log(w.sum()) - math.log(k), abs=1e-10)
        assert se[i] == pytest.approx(w.std(ddof=1) / (math.sqrt(k) * w.mean()), rel=1e-10)
        assert elbo[i] == pytest.approx(logw[i].mean(), abs=1e-10)
    assert np.all(log_px >= elbo)  # Jensen: log mean exp >= mean


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_summarize_log_weights_edge_cases(name):
    summarize = load_script(name).summarize_log_weights
    log_px, se, elbo = summarize(np.full((2, 7), -50.0, np.float32))  # equal weights: exact, no error
    assert np.allclose(log_px, -50.0) and np.allclose(se, 0.0) and np.allclose(elbo, -50.0)
    log_px, se, elbo = summarize(np.array([[-3.0]]))  # K = 1
    assert (log_px[0], se[0], elbo[0]) == (-3.0, 0.0, -3.0)
    log_px, _, _ = summarize(np.array([[0.0, math.log(3.0)]]))  # mean(1, 3) = 2
    assert log_px[0] == pytest.approx(math.log(2.0))
    with pytest.raises(ValueError):
        summarize(np.zeros(3))


def test_summarize_log_weights_estimates_a_known_marginal():
    """Toy check of the estimator: z ~ N(0,1), x|z ~ N(z,1), q = N(0,1) (the prior) -> p(x) = N(x; 0, 2)."""
    summarize = load_script("numpyro").summarize_log_weights
    rng = np.random.default_rng(1)
    x = np.array([-1.0, 0.0, 2.0])
    z = rng.standard_normal((3, 20000))
    logw = -0.5 * (x[:, None] - z) ** 2 - 0.5 * math.log(2 * math.pi)  # log p(x|z); p(z)/q(z) = 1
    log_px, se, _ = summarize(logw)
    exact = -0.25 * x**2 - 0.5 * math.log(4 * math.pi)
    assert np.all(np.abs(log_px - exact) < 5 * se + 1e-6)


def test_pythae_nll_batch_size_divides_k():
    nll_batch_size = load_script("pythae").nll_batch_size
    assert nll_batch_size(100) == 100 and nll_batch_size(1000) == 1000
    assert nll_batch_size(5000) == 1000 and nll_batch_size(1234) == 617
    for k in (1, 999, 1001, 5000, 4096):
        b = nll_batch_size(k)
        assert k % b == 0 and b <= max(k, 1) and b <= 1000
