"""Peer VAE systems for the quality benchmark, each in its own virtual environment.

A *peer* is another library's VAE of the same architecture (NumPyro, Pythae), trained and evaluated
by a standalone script (``numpyro_vae.py``, ``pythae_vae.py`` beside this file) that runs inside a
virtual environment of its own under :data:`ENV_ROOT`. Nothing here is a dependency of ppl_vae: the
environments are made on demand,

    python -m benchmarks.peers setup numpyro|pythae|all
    python -m benchmarks.peers status

and a benchmark calls :func:`run_peer`, which runs the script as a subprocess with one thread and
returns its JSON result.

The scripts' command-line contract::

    python SCRIPT --data PATH.npz --out PATH.json --epochs E --seed S --k K
                  [--batch-size 128] [--lr 1e-3] [--latent 50] [--hidden 400 [--hidden 400 ...]]
                  [--eval-batch 8]

where the npz holds ``x_train`` (N, D) float32 grey levels in [0, 1] (binarized afresh for every
batch) and ``x_heldout`` (M, D) float32 in {0, 1}. The output JSON has the keys of
:data:`RESULT_KEYS`; ``log_px``, ``log_px_se`` and ``elbo`` are per held-out example.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
ENV_ROOT = REPO / "benchmarks" / ".peers"

# Pins verified to install and run on CPython 3.11 (x86-64 Linux). Changing a pin invalidates the
# env's marker, so python_for() returns None until `setup` runs again.
PEERS: dict[str, dict[str, Any]] = {
    "numpyro": {
        "requirements": [
            "numpyro==0.22.0",
            "jax[cpu]==0.10.2",
            "jaxlib==0.10.2",
            "numpy==2.4.6",
        ],
        # networks are jax.example_libraries.stax MLPs (part of jax), so no flax/haiku is needed
        "imports": ["numpyro", "jax", "jaxlib", "numpy"],
        "script": HERE / "numpyro_vae.py",
    },
    "pythae": {
        "requirements": [
            "pythae==0.1.2",
            "torch==2.14.1",
            "numpy==2.4.6",
            "pydantic==2.14.4",
        ],
        "imports": ["pythae", "torch", "numpy", "pydantic"],
        "script": HERE / "pythae_vae.py",
    },
}

MARKER = "ppl_vae_peer.json"

RESULT_KEYS = (
    "system",
    "versions",
    "objective",
    "binarization",
    "log_px",
    "log_px_se",
    "elbo",
    "train_seconds",
    "eval_seconds",
    "train_examples_per_s",
    "eval_samples_per_s",
    "epochs",
    "seed",
    "k",
    "notes",
)
PER_EXAMPLE_KEYS = ("log_px", "log_px_se", "elbo")

# One thread everywhere: the machine is shared, and peers must be compared at equal parallelism.
SINGLE_THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "NUMEXPR_NUM_THREADS": "1",
    "VECLIB_MAXIMUM_THREADS": "1",
    "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
    "JAX_PLATFORMS": "cpu",
    "CUDA_VISIBLE_DEVICES": "",
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "PYTHONNOUSERSITE": "1",
    "PYTHONUNBUFFERED": "1",
}


def _check_name(name: str) -> dict[str, Any]:
    if name not in PEERS:
        raise ValueError(f"unknown peer {name!r}; expected one of {sorted(PEERS)}")
    return PEERS[name]


def env_dir(name: str) -> Path:
    """The folder of the peer's virtual environment (it may not exist)."""
    _check_name(name)
    return ENV_ROOT / name


def _env_python(env: Path) -> Path:
    return env / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def read_marker(name: str) -> Optional[dict[str, Any]]:
    """The marker written by a successful :func:`setup`, or None."""
    try:
        return json.loads((env_dir(name) / MARKER).read_text())
    except (OSError, ValueError):
        return None


def python_for(name: str) -> Optional[Path]:
    """The peer environment's python if :func:`setup` completed for the current pins, else None.

    Cheap: checks that the interpreter exists and that the marker written after a successful
    install (and import check) names the same requirements as :data:`PEERS` does now.
    """
    spec = _check_name(name)
    python = _env_python(env_dir(name))
    marker = read_marker(name)
    if marker is None or not python.exists():
        return None
    if marker.get("requirements") != list(spec["requirements"]):
        return None
    return python


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def setup(name: str, *, force: bool = False, quiet: bool = False) -> Path:
    """Create (or re-create) the peer's venv, pip install its pins, check the imports, write the marker.

    Does nothing when the env is already ready for the current pins, unless ``force``.
    Returns the env's python. Raises RuntimeError with a one-line message on failure; pip's whole
    output is kept in ``ENV_ROOT/<name>.setup.log``.
    """
    spec = _check_name(name)
    ready = python_for(name)
    if ready is not None and not force:
        if not quiet:
            print(f"[{name}] already set up: {ready} (use --force to reinstall)", file=sys.stderr)
        return ready
    env = env_dir(name)
    ENV_ROOT.mkdir(parents=True, exist_ok=True)
    log_path = ENV_ROOT / f"{name}.setup.log"
    (env / MARKER).unlink(missing_ok=True)
    python = _env_python(env)
    t0 = time.perf_counter()

    def step(cmd: Sequence[str], what: str) -> str:
        if not quiet:
            print(f"[{name}] {what}", file=sys.stderr, flush=True)
        with open(log_path, "a") as log:
            log.write(f"$ {' '.join(map(str, cmd))}\n")
            log.flush()
            proc = subprocess.run(
                list(map(str, cmd)),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
            )
            log.write(proc.stdout)
        if proc.returncode != 0:
            last = _tail(proc.stdout, 1) or "(no output)"
            raise RuntimeError(f"peer {name!r}: {what} failed (exit {proc.returncode}): {last} [full log: {log_path}]")
        return proc.stdout

    log_path.write_text("")
    if env.exists():
        shutil.rmtree(env)
    step([sys.executable, "-m", "venv", env], f"creating venv {env}")
    step(
        [python, "-m", "pip", "install", "--no-input", *spec["requirements"]],
        "pip install " + " ".join(spec["requirements"]),
    )
    probe = (
        "import importlib.metadata as m, json, importlib; "
        f"mods = {list(spec['imports'])!r}; [importlib.import_module(x) for x in mods]; "
        f"print(json.dumps({{x: m.version(x) for x in mods}}))"
    )
    out = step([python, "-c", probe], "import check")
    versions = json.loads(out.strip().splitlines()[-1])
    seconds = time.perf_counter() - t0
    marker = {
        "name": name,
        "requirements": list(spec["requirements"]),
        "versions": versions,
        "python": sys.version.split()[0],
        "install_seconds": round(seconds, 1),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    (env / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    if not quiet:
        print(f"[{name}] ready in {seconds:.0f} s: {versions}", file=sys.stderr, flush=True)
    return python


def build_args(
    data_npz: os.PathLike | str,
    out_json: os.PathLike | str,
    *,
    epochs: int,
    seed: int,
    k: int,
    batch_size: int = 128,
    lr: float = 1e-3,
    latent: int = 50,
    hidden: Sequence[int] = (400,),
    eval_batch: Optional[int] = None,
) -> list[str]:
    """The peer scripts' command-line arguments (the contract in the module docstring)."""
    hidden = [int(h) for h in hidden]
    if not hidden or min(hidden) < 1:
        raise ValueError(f"hidden must be a non-empty sequence of positive widths, got {hidden}")
    for key, value in (("epochs", epochs), ("k", k), ("batch_size", batch_size), ("latent", latent)):
        if int(value) < 1:
            raise ValueError(f"{key} must be >= 1, got {value}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    args = [
        "--data",
        str(data_npz),
        "--out",
        str(out_json),
        "--epochs",
        str(int(epochs)),
        "--seed",
        str(int(seed)),
        "--k",
        str(int(k)),
        "--batch-size",
        str(int(batch_size)),
        "--lr",
        repr(float(lr)),
        "--latent",
        str(int(latent)),
    ]
    for h in hidden:
        args += ["--hidden", str(h)]
    if eval_batch is not None:
        args += ["--eval-batch", str(int(eval_batch))]
    return args


def parse_result(path: os.PathLike | str) -> dict[str, Any]:
    """Read and check a peer's output JSON: all of :data:`RESULT_KEYS`, per-example lists of equal length."""
    path = Path(path)
    try:
        result = json.loads(path.read_text())
    except OSError as exc:
        raise RuntimeError(f"peer result {path} could not be read: {exc}") from None
    except ValueError as exc:
        raise RuntimeError(f"peer result {path} is not valid JSON: {exc}") from None
    if not isinstance(result, dict):
        raise RuntimeError(f"peer result {path} is not a JSON object")
    missing = [key for key in RESULT_KEYS if key not in result]
    if missing:
        raise RuntimeError(f"peer result {path} lacks keys {missing}")
    lengths = {key: len(result[key]) if isinstance(result[key], list) else None for key in PER_EXAMPLE_KEYS}
    if None in lengths.values() or len(set(lengths.values())) != 1:
        raise RuntimeError(f"peer result {path}: per-example lists of unequal length or not lists: {lengths}")
    return result


def peer_env(base: Optional[dict[str, str]] = None) -> dict[str, str]:
    """The subprocess environment: the caller's, minus anything pointing into our venv, plus one thread."""
    env = dict(os.environ if base is None else base)
    for key in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "__PYVENV_LAUNCHER__"):
        env.pop(key, None)
    env.update(SINGLE_THREAD_ENV)
    return env


def run_peer(
    name: str,
    data_npz: os.PathLike | str,
    out_json: os.PathLike | str,
    *,
    epochs: int,
    seed: int,
    k: int,
    batch_size: int = 128,
    lr: float = 1e-3,
    latent: int = 50,
    hidden: Sequence[int] = (400,),
    eval_batch: Optional[int] = None,
    timeout: Optional[float] = None,
    python: Optional[os.PathLike | str] = None,
) -> dict[str, Any]:
    """Train and evaluate a peer VAE in its own env; return its parsed JSON result.

    ``python`` overrides the interpreter (default: :func:`python_for`). Raises RuntimeError when the
    peer is not set up, times out, exits non-zero (with the last lines of its stderr) or writes no
    valid result. The script's stdout and stderr are also kept in ``<out_json>.log``.
    """
    spec = _check_name(name)
    if python is None:
        python = python_for(name)
        if python is None:
            raise RuntimeError(f"peer {name!r} is not set up: run `python -m benchmarks.peers setup {name}`")
    data_npz = Path(data_npz).resolve()
    if not data_npz.is_file():
        raise RuntimeError(f"peer {name!r}: data file {data_npz} does not exist")
    out_json = Path(out_json).resolve()
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.unlink(missing_ok=True)
    cmd = [
        str(python),
        str(spec["script"]),
        *build_args(
            data_npz,
            out_json,
            epochs=epochs,
            seed=seed,
            k=k,
            batch_size=batch_size,
            lr=lr,
            latent=latent,
            hidden=hidden,
            eval_batch=eval_batch,
        ),
    ]
    log_path = out_json.with_name(out_json.name + ".log")
    try:
        proc = subprocess.run(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=peer_env(),
            cwd=str(out_json.parent),
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        raise RuntimeError(f"peer {name!r} timed out after {timeout} s; last stderr:\n{_tail(err)}") from None
    except OSError as exc:
        raise RuntimeError(f"peer {name!r} could not start {python}: {exc}") from None
    log_path.write_text(f"$ {' '.join(cmd)}\n--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}")
    if proc.returncode != 0:
        tail = _tail(proc.stderr) or _tail(proc.stdout) or "(no output)"
        raise RuntimeError(f"peer {name!r} failed (exit {proc.returncode}); last stderr:\n{tail}")
    if not out_json.exists():
        raise RuntimeError(
            f"peer {name!r} exited 0 but wrote no result to {out_json}; last stderr:\n{_tail(proc.stderr)}"
        )
    return parse_result(out_json)


def status() -> dict[str, dict[str, Any]]:
    """For each peer: whether it is ready, its python, and the marker's versions."""
    report = {}
    for name in PEERS:
        python = python_for(name)
        marker = read_marker(name) or {}
        report[name] = {
            "ready": python is not None,
            "python": str(python) if python else None,
            "versions": marker.get("versions"),
            "install_seconds": marker.get("install_seconds"),
            "env": str(env_dir(name)),
            "env_exists": env_dir(name).exists(),
        }
    return report


def main(argv: Optional[Sequence[str]] = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_setup = sub.add_parser("setup", help="create a peer's virtual environment")
    p_setup.add_argument("name", choices=[*PEERS, "all"])
    p_setup.add_argument("--force", action="store_true", help="reinstall even if the env is ready")
    sub.add_parser("status", help="show which peers are ready")
    args = parser.parse_args(argv)
    if args.command == "status":
        for name, info in status().items():
            state = "ready" if info["ready"] else ("broken/incomplete" if info["env_exists"] else "absent")
            print(f"{name:8s} {state:18s} {info['env']}  {info['versions'] or ''}")
        return 0
    names = list(PEERS) if args.name == "all" else [args.name]
    failed = 0
    for name in names:
        try:
            setup(name, force=args.force)
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0
