"""Quality against the references users know: held-out log p(x) at an equal budget, paired per example.

    python -m benchmarks.quality                       # the digits at 28x28, 3 seeds, K = 5000 -> QUALITY.md
    python -m benchmarks.quality --data npz:mnist.npz --train-size 8000 --heldout-size 2000
    python -m benchmarks.quality --smoke --out /tmp/q.md   # seconds; numbers not meaningful (CI)

Every system gets the same MLP widths (D-400-50 unless a configuration says otherwise), batch 128,
Adam(1e-3), the same epochs and seeds, dynamic binarization of the training images, and is scored on
the same held-out examples binarized once (ppl_vae's fixed binarization, seed 0) by importance
sampling with K draws from its own q(z|x):

- ``textbook``: a hand-written PyTorch VAE with the closed-form KL (``benchmarks/reference_vae.py``,
  ``TextbookVAE``), starting from a copy of ppl_vae's initial weights for the same seed, so that its
  difference to ``default`` measures the objective and the training code rather than the luck of an init;
- ``default``: ``ppl_vae.fit`` with no objective argument (``elbo="auto"``); ``trace``: the Monte
  Carlo KL; and the better configurations at the same budget (VampPrior, IAF guide, IWAE K = 5 and
  50, two hidden layers);
- peers (NumPyro, Pythae) when their environments exist (``python -m benchmarks.peers setup all``),
  each in its own virtual environment, never a dependency of ppl_vae; skipped with a note otherwise.

Differences are paired: per held-out example, the difference of the log p(x) estimates averaged over
seeds; its standard error over examples is the "paired s.e."; the spread of the per-seed mean
differences gives the seed s.e. (training noise, with only a few seeds).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BATCH, LR, LATENT, HIDDEN = 128, 1e-3, 50, 400

#: ppl_vae configurations: name -> (what it is, keyword arguments of ppl_vae.VAE, keyword arguments of fit).
OURS = {
    "default": ("ppl_vae, no objective flag (elbo=auto: closed-form KL for N(0, I))", {}, {}),
    "trace": ("ppl_vae --elbo trace (Monte Carlo KL)", {}, {"elbo": "trace"}),
    "vamp": ("ppl_vae --prior vamp (VampPrior, 50 pseudo-inputs)", {"prior": "vamp"}, {}),
    "iaf": ("ppl_vae --guide iaf", {"guide": "iaf"}, {}),
    "iwae-5": ("ppl_vae --elbo iwae --particles 5", {}, {"elbo": "iwae", "num_particles": 5}),
    "iwae-50": ("ppl_vae --elbo iwae --particles 50", {}, {"elbo": "iwae", "num_particles": 50}),
    "two-layer": ("ppl_vae --hidden-dims 400 400", {"hidden_dims": (HIDDEN, HIDDEN)}, {}),
}
TEXTBOOK = "textbook"
PEERS = ("numpyro", "pythae")
FULL = {"epochs": 50, "seeds": [0, 1, 2], "k": 5000}
SMOKE = {
    "epochs": 1,
    "seeds": [0],
    "k": 16,
    "train_size": 48,
    "heldout_size": 12,
    "systems": [TEXTBOOK, "default", "iwae-5"],
}
ANCHORS = (
    "Literature, for context only (dynamically binarized MNIST, 60,000 training images, thousands of "
    "epochs, K = 5000): Burda et al. 2015, Table 1: one-stochastic-layer VAE −86.76 and IWAE k = 50 −84.78 "
    "nats; Tomczak & Welling 2018: VampPrior −85.57 nats. The numbers above are at a different, much "
    "smaller budget (and, by default, on the 1,797 scikit-learn digits resized to 28×28, not MNIST), so "
    "only their differences are meaningful."
)


# -- data ------------------------------------------------------------------------------------------------


def load(spec: str, train_size: int | None, heldout_size: int | None):
    """(train grey levels (N, 1, H, W), held-out binarized once (M, 1, H, W), a description)."""
    import ppl_vae
    from ppl_vae.infer.fit import fixed_binarization

    if spec == "digits28":
        split, name = ppl_vae.load_dataset("digits", image_size=28), "scikit-learn digits resized to 28×28"
    else:
        split, name = ppl_vae.load_dataset(spec), spec
    train, heldout = split.train, split.heldout
    if train_size:
        train = train[:train_size]
    if heldout_size:
        heldout = heldout[:heldout_size]
    return train, fixed_binarization(heldout, "dynamic", seed=0), name


# -- one system, one seed (run in a worker process) ---------------------------------------------------------


def _scores(per_example_ll, per_example_elbo, ll_se, seconds_train, seconds_eval, n_train, epochs, n_heldout, k):
    return {
        "ll": [float(v) for v in per_example_ll],
        "elbo": [float(v) for v in per_example_elbo],
        "ll_mc_se": float(ll_se),
        "train_seconds": seconds_train,
        "eval_seconds": seconds_eval,
        "train_examples_per_s": n_train * epochs / seconds_train,
        "eval_samples_per_s": n_heldout * k / seconds_eval,
    }


_WARM = []


def _warm_up() -> None:
    """One tiny step of each kind, once per process, so that no timed run pays torch's first-call costs."""
    if _WARM:
        return
    import pyro
    import torch

    import ppl_vae
    from benchmarks.reference_vae import TextbookVAE, train_reference

    x = torch.rand(4, 1, 4, 4)
    train_reference(TextbookVAE(16, 2, 8), x, 1, batch_size=4)
    ppl_vae.fit(ppl_vae.VAE((1, 4, 4), 2, hidden_dims=(8,)), x, epochs=1, batch_size=4, progress=False)
    pyro.clear_param_store()
    _WARM.append(True)


def run_one(job: dict) -> dict:
    """Train and score one system for one seed; returns per-example scores (plain lists)."""
    import logging

    import pyro
    import torch

    torch.set_num_threads(1)
    logging.getLogger("pyro").setLevel(logging.WARNING)  # no "Guessed max_plate_nesting" lines
    _warm_up()
    import ppl_vae
    from benchmarks.parity import copy_weights, ours_layers, reference_layers
    from benchmarks.reference_vae import TextbookVAE, reference_log_likelihood, train_reference

    train, heldout, _ = load(job["data"], job["train_size"], job["heldout_size"])
    shape, seed, epochs, k = tuple(train.shape[1:]), job["seed"], job["epochs"], job["k"]
    name = job["system"]
    vae_kwargs, fit_kwargs = ({}, {}) if name == TEXTBOOK else OURS[name][1:]
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    vae = ppl_vae.VAE(shape, latent_dim=LATENT, hidden_dims=vae_kwargs.pop("hidden_dims", (HIDDEN,)), **vae_kwargs)
    if name == TEXTBOOK:
        model = TextbookVAE(int(np.prod(shape)), LATENT, HIDDEN)
        copy_weights(ours_layers(vae), reference_layers(model))  # ppl_vae's initial weights for this seed
        start = time.perf_counter()
        train_reference(model, train, epochs, BATCH, LR, seed, binarize="dynamic")
        seconds = time.perf_counter() - start
        start = time.perf_counter()
        scored = reference_log_likelihood(model, heldout, num_particles=k, seed=seed)
        return _scores(
            scored["per_example"]["log_likelihood"],
            scored["per_example"]["elbo"],
            scored["log_likelihood_se"],
            seconds,
            time.perf_counter() - start,
            train.shape[0],
            epochs,
            heldout.shape[0],
            k,
        )
    start = time.perf_counter()
    result = ppl_vae.fit(
        vae,
        train,
        None,
        epochs=epochs,
        batch_size=BATCH,
        lr=LR,
        seed=seed,
        binarize="dynamic",
        progress=False,
        **fit_kwargs,
    )
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    scored = ppl_vae.evaluate(vae, heldout, num_particles=k, seed=seed)
    out = _scores(
        scored.per_example["log_likelihood"],
        scored.per_example["elbo"],
        scored.log_likelihood_se,
        seconds,
        time.perf_counter() - start,
        train.shape[0],
        epochs,
        heldout.shape[0],
        k,
    )
    out["objective"] = result.objective
    return out


def run_peer_job(job: dict) -> dict:
    """One peer for one seed, through its own environment (benchmarks.peers)."""
    import torch

    from benchmarks import peers

    train, heldout, _ = load(job["data"], job["train_size"], job["heldout_size"])
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data.npz"
        np.savez(
            data,
            x_train=train.flatten(1).numpy().astype(np.float32),
            x_heldout=heldout.flatten(1).numpy().astype(np.float32),
        )
        del torch
        result = peers.run_peer(
            job["system"],
            data,
            Path(tmp) / "out.json",
            epochs=job["epochs"],
            seed=job["seed"],
            k=job["k"],
            batch_size=BATCH,
            lr=LR,
            latent=LATENT,
            hidden=(HIDDEN,),
        )
    out = _scores(
        result["log_px"],
        result["elbo"],
        math.sqrt(sum(s * s for s in result["log_px_se"])) / len(result["log_px_se"]),
        result["train_seconds"],
        result["eval_seconds"],
        train.shape[0],
        job["epochs"],
        heldout.shape[0],
        job["k"],
    )
    out["notes"] = [
        f"objective: {result.get('objective', '?')}",
        f"binarization: {result.get('binarization', '?')}",
        *result.get("notes", []),
    ]
    out["versions"] = result.get("versions", {})
    return out


def _dispatch(job: dict) -> dict:
    return run_peer_job(job) if job["system"] in PEERS else run_one(job)


# -- statistics -------------------------------------------------------------------------------------------


def summarize(runs: dict[str, list[dict]], reference: str = TEXTBOOK) -> list[dict]:
    """One row per system from its per-seed runs (aligned by seed with the reference's)."""
    ref = np.array([r["ll"] for r in runs[reference]]) if reference in runs else None  # (S, M)
    rows = []
    for system, per_seed in runs.items():
        ll = np.array([r["ll"] for r in per_seed])  # (S, M)
        elbo = np.array([r["elbo"] for r in per_seed])
        seed_means = ll.mean(1)
        row = {
            "system": system,
            "seeds": len(per_seed),
            "ll": float(seed_means.mean()),
            "ll_seed_se": float(seed_means.std(ddof=1) / math.sqrt(len(seed_means)))
            if len(seed_means) > 1
            else float("nan"),
            "ll_mc_se": float(math.sqrt(sum(r["ll_mc_se"] ** 2 for r in per_seed)) / len(per_seed)),
            "elbo": float(elbo.mean()),
            "train_examples_per_s": float(np.median([r["train_examples_per_s"] for r in per_seed])),
            "eval_samples_per_s": float(np.median([r["eval_samples_per_s"] for r in per_seed])),
        }
        if ref is not None and system != reference and ll.shape == ref.shape:
            row.update(paired_difference(ll, ref))
        rows.append(row)
    return rows


def paired_difference(ll: np.ndarray, ref: np.ndarray) -> dict:
    """Difference of two systems' (S seeds, M examples) log p(x) estimates on the same examples.

    ``diff`` is the mean over seeds and examples; ``paired_se`` the standard error over examples of the
    per-example difference averaged over seeds; ``seed_se`` the standard error over seeds of the
    per-seed mean difference (NaN with one seed)."""
    d = ll - ref  # (S, M)
    per_example, per_seed = d.mean(0), d.mean(1)
    return {
        "diff": float(per_example.mean()),
        "paired_se": float(per_example.std(ddof=1) / math.sqrt(per_example.size)),
        "seed_se": float(per_seed.std(ddof=1) / math.sqrt(per_seed.size)) if per_seed.size > 1 else float("nan"),
    }


def verdicts(rows: list[dict]) -> list[str]:
    by = {r["system"]: r for r in rows}
    out = []
    if "default" in by and "diff" in by["default"]:
        r = by["default"]
        ok = r["diff"] >= -2 * r["paired_se"]
        out.append(
            f"- ppl_vae's default vs the textbook VAE: {r['diff']:+.2f} nats per example (paired s.e. "
            f"{r['paired_se']:.2f}, seed s.e. {r['seed_se']:.2f}): "
            + (
                "**matches or beats it** (within 2 paired s.e. or in our favour)."
                if ok
                else "**loses** by more than 2 paired s.e."
            )
        )
    better = [r for r in rows if r["system"] in OURS and "diff" in r and r["diff"] - 2 * r["paired_se"] >= 1.0]
    if better:
        best = max(better, key=lambda r: r["diff"])
        listed = ", ".join(f"`{r['system']}` ({r['diff']:+.2f} ± {r['paired_se']:.2f})" for r in better)
        out.append(
            f"- Configurations at least 1 nat better than the textbook VAE (difference minus 2 paired s.e. "
            f"≥ 1): {listed}; the best is `{best['system']}`."
        )
    else:
        out.append("- No ppl_vae configuration is ≥ 1 nat (beyond 2 paired s.e.) better than the textbook VAE here.")
    return out


# -- report -----------------------------------------------------------------------------------------------


def _git() -> str:
    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
            ).stdout.strip()
            or "?"
        )
    except OSError:
        return "?"


def describe(system: str) -> str:
    if system == TEXTBOOK:
        return "hand-written PyTorch VAE, closed-form KL, same initial weights as `default`"
    if system in OURS:
        return OURS[system][0]
    return {"numpyro": "NumPyro SVI (own environment)", "pythae": "Pythae VAE, its own trainer (own environment)"}.get(
        system, system
    )


def _busy(peak_load: float, jobs: int) -> str:
    if peak_load <= jobs + 0.5:
        return ""
    return (
        " — **other work shared the cores during this run, so the speed columns are noisy and only roughly "
        "comparable between rows; the quality columns do not depend on it**"
    )


def _num(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.2f}"


def render(args, argv, data_name, n_train, n_heldout, rows, runs, skipped, wall, load_avg) -> str:
    import pyro
    import torch

    import ppl_vae

    smoke = " (SMOKE RUN: numbers not meaningful)" if args.smoke else ""
    cmd = "python -m benchmarks.quality" + ("" if not argv else " " + shlex.join(argv))
    out = [
        f"# Quality: held-out log p(x) against the textbook VAE and the peers{smoke}",
        "",
        f"Command (from the repository root): `{cmd}`  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M %Z')}; wall time {wall / 60:.1f} min with {args.jobs} worker "
        f"process(es), one torch thread each; 1-minute load average {load_avg[0]:.2f} at the start, {load_avg[1]:.2f} "
        f"at the end, {load_avg[2]:.2f} at most (after each job){_busy(load_avg[2], args.jobs)}; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, no GPU. torch "
        f"{torch.__version__}, pyro-ppl {pyro.__version__}, ppl_vae {ppl_vae.__version__} (git {_git()}).",
        "",
        "## Budget",
        "",
        f"- Data: {data_name}; {n_train} training images (grey levels, a fresh Bernoulli draw every epoch) and "
        f"{n_heldout} held-out images binarized once (the same binary images for every system).",
        f"- Every system: MLP D-{HIDDEN}-{LATENT} unless its row says otherwise, batch {BATCH}, Adam "
        f"({LR:g}), {args.epochs} epoch(s) ({math.ceil(n_train / BATCH) * args.epochs} steps), seeds "
        f"{', '.join(map(str, args.seeds))}.",
        f"- Score: importance-sampled log p(x) with K = {args.k} draws from each model's own q(z|x), in nats per "
        "held-out example (higher is better); the ELBO column is the mean of the same K log-weights.",
        "- Δ vs textbook: mean over examples of the per-example difference (seeds averaged); *paired s.e.* "
        "is its standard error over the held-out examples, *seed s.e.* the standard error of the per-seed "
        "mean differences (training noise; few seeds). *MC s.e.* is the importance sampler's error of the row's "
        "mean. Speeds are medians over seeds: training examples per second (the training loop, data "
        "preparation excluded, first-step overhead included) and evaluation draws per second (N·K / seconds).",
        "",
        "## Results",
        "",
        "| system | what | log p(x) (nats) | seed s.e. | MC s.e. | ELBO (nats) | Δ log p(x) vs textbook | "
        "paired s.e. | seed s.e. of Δ | train examples/s | eval draws/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: -r["ll"]):
        diff = f"{r['diff']:+.2f} | {r['paired_se']:.2f} | {_num(r['seed_se'])}" if "diff" in r else "— | — | —"
        out.append(
            f"| `{r['system']}` | {describe(r['system'])} | {r['ll']:.2f} | {_num(r['ll_seed_se'])} | "
            f"{r['ll_mc_se']:.3f} | {r['elbo']:.2f} | {diff} | {r['train_examples_per_s']:.0f} | "
            f"{r['eval_samples_per_s']:.0f} |"
        )
    out += ["", "## Verdict", "", *verdicts(rows)]
    if args.smoke:
        out.append("- Smoke run: a handful of steps and draws; the verdict above is not meaningful.")
    objectives = {s: runs[s][0].get("objective") for s in runs if runs[s] and runs[s][0].get("objective")}
    out += [
        "",
        "## Notes",
        "",
        "- Objective used per latent site (from `FitResult.objective`): "
        + "; ".join(
            f"`{s}`: {o['elbo']} (" + ", ".join(f"{k} {v}" for k, v in o["sites"].items()) + ")"
            for s, o in objectives.items()
        )
        + ".",
    ]
    for system in PEERS:
        if system in runs:
            notes = runs[system][0].get("notes", [])
            versions = runs[system][0].get("versions", {})
            out.append(f"- `{system}`: {'; '.join(notes)}; versions {versions}.")
    for system, why in skipped.items():
        out.append(f"- `{system}` skipped: {why}.")
    out += ["", ANCHORS, ""]
    return "\n".join(out)


# -- main -------------------------------------------------------------------------------------------------


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__.split("\n")[0])
    p.add_argument(
        "--data",
        default="digits28",
        help="digits28 (default), or any ppl_vae data spec such as "
        "npz:PATH (keras-style MNIST npz), mnist, folder:PATH",
    )
    p.add_argument("--train-size", type=int, default=None, help="use the first N training images")
    p.add_argument("--heldout-size", type=int, default=None, help="use the first M held-out images")
    p.add_argument("--epochs", type=int, default=None, help=f"default {FULL['epochs']}")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help=f"default {FULL['seeds']}")
    p.add_argument("--k", type=int, default=None, help=f"importance draws per held-out example (default {FULL['k']})")
    p.add_argument(
        "--systems",
        nargs="+",
        default=None,
        help=f"subset of: {TEXTBOOK} {' '.join(OURS)} {' '.join(PEERS)} (default: all; peers if set up)",
    )
    p.add_argument("--jobs", type=int, default=1, help="worker processes (one torch thread each)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "QUALITY.md")
    p.add_argument("--json", type=Path, default=None, help="also write every per-seed result here")
    p.add_argument("--smoke", action="store_true", help="tiny settings, for CI: seconds, numbers not meaningful")
    args = p.parse_args(argv)
    preset = SMOKE if args.smoke else FULL
    args.epochs = args.epochs or preset["epochs"]
    args.seeds = args.seeds or preset["seeds"]
    args.k = args.k or preset["k"]
    if args.smoke:
        args.train_size = args.train_size or SMOKE["train_size"]
        args.heldout_size = args.heldout_size or SMOKE["heldout_size"]
    known = (TEXTBOOK, *OURS, *PEERS)
    args.systems = args.systems or (SMOKE["systems"] if args.smoke else list(known))
    unknown = [s for s in args.systems if s not in known]
    if unknown:
        p.error(f"unknown system(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    if min(args.epochs, args.k, args.jobs) < 1:
        p.error("--epochs, --k and --jobs must be at least 1")
    return args


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    from benchmarks import peers

    started, load_start = time.perf_counter(), os.getloadavg()[0]
    train, heldout, data_name = load(args.data, args.train_size, args.heldout_size)
    skipped = {}
    systems = []
    for system in args.systems:
        if system in PEERS and peers.python_for(system) is None:
            skipped[system] = (
                f"its environment is not set up (`python -m benchmarks.peers setup {system}` "
                "installs it into benchmarks/.peers/)"
            )
            continue
        systems.append(system)
    jobs = [
        {
            "system": s,
            "seed": seed,
            "data": args.data,
            "train_size": args.train_size,
            "heldout_size": args.heldout_size,
            "epochs": args.epochs,
            "k": args.k,
        }
        for seed in args.seeds
        for s in systems
    ]
    runs: dict[str, list[dict]] = {s: [] for s in systems}
    # The slowest jobs first, so that the last worker does not wait alone on an IWAE-50 run.
    order = sorted(range(len(jobs)), key=lambda i: jobs[i]["system"] != "iwae-50")
    loads = [load_start]  # the 1-minute load average after every job: was the machine shared?
    if args.jobs == 1:
        results = {}
        for i in order:
            results[i] = _dispatch(jobs[i])
            loads.append(os.getloadavg()[0])
    else:
        with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(_dispatch, jobs[i]): i for i in order}
            results = {}
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                loads.append(os.getloadavg()[0])
                job = jobs[futures[future]]
                print(f"done {job['system']} seed {job['seed']} ({len(results)}/{len(jobs)})", file=sys.stderr)
    for i, job in enumerate(jobs):
        runs[job["system"]].append(results[i])
        r = results[i]
        print(
            f"{job['system']:>10} seed {job['seed']}: log p(x) {np.mean(r['ll']):.2f}, "
            f"train {r['train_seconds']:.0f} s, eval {r['eval_seconds']:.0f} s",
            file=sys.stderr,
        )
    rows = summarize(runs)
    text = render(
        args,
        argv,
        data_name,
        train.shape[0],
        heldout.shape[0],
        rows,
        runs,
        skipped,
        time.perf_counter() - started,
        (load_start, os.getloadavg()[0], max(loads)),
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                    "rows": rows,
                    "runs": runs,
                }
            )
        )
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
