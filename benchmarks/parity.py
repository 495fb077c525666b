"""Parity benchmark: ppl_vae (Pyro model + guide, SVI with Trace_ELBO) against a hand-written PyTorch VAE
of the same math (benchmarks/reference_vae.py), at equal epochs.

    python -m benchmarks.parity [--epochs N] [--num-particles K] [--seeds 0 1 ...] [--smoke] [--out FILE]

For every seed both models are trained on scikit-learn's digits resized to 28x28 (784-400-50 MLPs,
batch 128, Adam lr 1e-3, dynamic binarization), then evaluated on the same fixed binarization of the
held-out images with K importance samples: held-out ELBO and log p(x) (IWAE bound). Before that a
"lockstep" check runs one epoch of Pyro SVI on ppl_vae's model and guide next to the reference, from the
same weights, on the same mini-batches and with the same random stream, and compares the losses step by
step: they agree to float precision if the two compute the same loss, gradients and Adam updates.

Prints a table and writes a markdown report (default benchmarks/PARITY.md). ``--smoke`` is a
seconds-long run on a small subset (2 seeds, 2 epochs, K=16) that goes through every code path.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pyro
import pyro.optim
import torch
from pyro.infer import SVI, Trace_ELBO
from scipy.stats import t as student_t  # scipy comes with scikit-learn, a ppl_vae dependency

import ppl_vae
from benchmarks.reference_vae import ReferenceVAE, binarize_images, reference_log_likelihood, train_reference
from ppl_vae.infer.fit import fixed_binarization

ROOT = Path(__file__).resolve().parent.parent
LATENT, HIDDEN, BATCH, LR, IMAGE_SIZE = 50, 400, 128, 1e-3, 28
DEFAULTS = {"epochs": 400, "num_particles": 1000, "seeds": [0, 1, 2], "train_size": None, "heldout_size": None}
SMOKE = {"epochs": 2, "num_particles": 16, "seeds": [0, 1], "train_size": 128, "heldout_size": 32}
INIT_TEXT = {
    False: "Each model gets PyTorch's default `nn.Linear` init after seeding with the run's seed, in its own "
    "construction order, so the initial weights differ between the two (independent inits).",
    True: "`--same-init`: the reference starts from a copy of ppl_vae's initial weights.",
}
GOAL_NATS = 1.0  # the project's goal: |log p(x) ours - reference| within about 1 nat


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.parity", description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, help=f"training epochs for both models (default {DEFAULTS['epochs']})")
    p.add_argument("--num-particles", type=int, help="K, importance samples per held-out example (default 1000)")
    p.add_argument("--seeds", type=int, nargs="+", help="training seeds (default 0 1 2)")
    p.add_argument("--smoke", action="store_true", help="seconds-long run on a small subset (for the tests)")
    p.add_argument(
        "--same-init",
        action="store_true",
        help="start the reference from a copy of ppl_vae's initial weights (default: each its own init)",
    )
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "PARITY.md"), help="markdown report to write")
    args = p.parse_args(argv)
    base = SMOKE if args.smoke else DEFAULTS
    for key in ("epochs", "num_particles", "seeds"):
        if getattr(args, key) is None:
            setattr(args, key, base[key])
    args.train_size, args.heldout_size = base["train_size"], base["heldout_size"]
    if args.epochs < 1 or args.num_particles < 2:
        p.error("--epochs must be >= 1 and --num-particles >= 2")
    return args


# -- the two models ------------------------------------------------------------------------------


def build_ours(seed):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    return ppl_vae.VAE((1, IMAGE_SIZE, IMAGE_SIZE), latent_dim=LATENT, hidden_dims=(HIDDEN,))


def build_reference(seed):
    torch.manual_seed(seed)
    return ReferenceVAE(IMAGE_SIZE * IMAGE_SIZE, LATENT, HIDDEN)


def ours_layers(vae):
    """ppl_vae's four Linear layers: encoder in, encoder out, decoder in, decoder out."""
    enc, dec = vae.encoder.encoder.net, vae.decoder.net
    return [enc[0], enc[2], dec[0], dec[2]]


def reference_layers(ref):
    return [ref.encoder[0], ref.encoder[2], ref.decoder[0], ref.decoder[2]]


@torch.no_grad()
def copy_weights(src_layers, dst_layers):
    for src, dst in zip(src_layers, dst_layers, strict=True):
        dst.weight.copy_(src.weight)
        dst.bias.copy_(src.bias)


# -- the benchmark ---------------------------------------------------------------------------------


def load_data(args):
    split = ppl_vae.load_dataset("digits", image_size=IMAGE_SIZE)
    train, heldout = split.train, split.heldout
    if args.train_size:
        train, heldout = train[: args.train_size], heldout[: args.heldout_size]
    return train, fixed_binarization(heldout, "dynamic", seed=0)  # grey training images, binary held-out


def lockstep(train, seed):
    """One epoch of Pyro SVI (Trace_ELBO, pyro.optim.Adam) on ppl_vae's model and guide next to the reference,
    from identical weights, on identical mini-batches, with the same global random stream (the eps draws).

    Runs SVI directly rather than ``ppl_vae.fit`` so that the check stays exact whatever else ``fit`` may
    draw from the global stream; the mini-batches are built exactly as in ``fit`` and ``train_reference``.
    """
    vae, ref = build_ours(seed), build_reference(seed)
    copy_weights(ours_layers(vae), reference_layers(ref))
    ref_losses, _ = train_reference(ref, train, 1, BATCH, LR, seed, binarize="dynamic")

    num_data = train.shape[0]
    pyro.set_rng_seed(seed)
    order = torch.randperm(num_data, generator=torch.Generator().manual_seed(seed))
    data = binarize_images(train, "dynamic", torch.Generator().manual_seed(seed + 1))
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": LR}), loss=Trace_ELBO())
    ours = [svi.step(data[order[i : i + BATCH]], num_data=num_data) / num_data for i in range(0, num_data, BATCH)]

    diffs = [abs(a - b) for a, b in zip(ours, ref_losses, strict=True)]
    rel = max(d / abs(b) for d, b in zip(diffs, ref_losses))
    weight_diff = max((a.weight - b.weight).abs().max().item() for a, b in zip(ours_layers(vae), reference_layers(ref)))
    return {
        "steps": len(diffs),
        "first_loss": ours[0],
        "max_loss_diff": max(diffs),
        "max_rel_loss_diff": rel,
        "max_weight_diff": weight_diff,
        "identical": rel < 1e-5 and weight_diff < 1e-4,
    }


def per_step(epoch_seconds, steps_per_epoch):
    """(steady-state s/step = median epoch without the warm-up first epoch, overall mean s/step)."""
    steady = epoch_seconds[1:] or epoch_seconds
    return statistics.median(steady) / steps_per_epoch, sum(epoch_seconds) / (len(epoch_seconds) * steps_per_epoch)


def run_seed(train, heldout, args, seed):
    steps_per_epoch = math.ceil(train.shape[0] / BATCH)
    out = {"seed": seed}

    vae, ref = build_ours(seed), build_reference(seed)
    if args.same_init:
        copy_weights(ours_layers(vae), reference_layers(ref))
    start = time.perf_counter()
    fit = ppl_vae.fit(
        vae,
        train,
        None,
        epochs=args.epochs,
        batch_size=BATCH,
        lr=LR,
        seed=seed,
        binarize="dynamic",
        elbo="trace",
        progress=False,
    )  # the reference's Monte Carlo KL
    train_wall = time.perf_counter() - start
    ev = ppl_vae.evaluate(vae, heldout, num_particles=args.num_particles, seed=0)
    out["ours"] = {
        "elbo": ev.elbo,
        "elbo_se": ev.elbo_se,
        "ll": ev.log_likelihood,
        "ll_se": ev.log_likelihood_se,
        "ll_data_se": ev.log_likelihood_data_se,
        "train_wall": train_wall,
        "train_elbo": -statistics.fmean(fit.losses[-steps_per_epoch:]),
        "per_example": ev.per_example["log_likelihood"].double(),
    }
    out["ours"]["s_step"], out["ours"]["s_step_all"] = per_step([h["seconds"] for h in fit.history], steps_per_epoch)

    start = time.perf_counter()
    losses, seconds = train_reference(ref, train, args.epochs, BATCH, LR, seed, binarize="dynamic")
    train_wall = time.perf_counter() - start
    rv = reference_log_likelihood(ref, heldout, num_particles=args.num_particles, seed=0)
    out["ref"] = {
        "elbo": rv["elbo"],
        "elbo_se": rv["elbo_se"],
        "ll": rv["log_likelihood"],
        "ll_se": rv["log_likelihood_se"],
        "ll_data_se": rv["log_likelihood_data_se"],
        "train_elbo": -statistics.fmean(losses[-steps_per_epoch:]),
        "train_wall": train_wall,
        "per_example": rv["per_example"]["log_likelihood"].double(),
    }
    out["ref"]["s_step"], out["ref"]["s_step_all"] = per_step(seconds, steps_per_epoch)

    a, b = out["ours"], out["ref"]
    d = a["per_example"] - b["per_example"]
    out["diff"] = {
        "ll": a["ll"] - b["ll"],
        "mc_se": math.hypot(a["ll_se"], b["ll_se"]),
        "paired_data_se": (d.std() / math.sqrt(d.numel())).item() if d.numel() > 1 else float("nan"),
        "elbo": a["elbo"] - b["elbo"],
        "elbo_mc_se": math.hypot(a["elbo_se"], b["elbo_se"]),
    }
    return out


def summarize(results):
    """Mean over seeds of each model's numbers and of the difference, with seed-to-seed s.e."""

    def mean_se(values):
        se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
        return statistics.fmean(values), se

    s = {}
    for model in ("ours", "ref"):
        s[model] = {k: mean_se([r[model][k] for r in results]) for k in ("ll", "elbo", "train_elbo", "s_step")}
        s[model]["ll_sd"] = statistics.stdev([r[model]["ll"] for r in results]) if len(results) > 1 else float("nan")
    s["diff"] = {k: mean_se([r["diff"][k] for r in results]) for k in ("ll", "elbo")}
    s["speed_ratio"] = s["ours"]["s_step"][0] / s["ref"]["s_step"][0]
    return s


# -- output ------------------------------------------------------------------------------------------


def fmt(mean, se, digits=2):
    return f"{mean:.{digits}f} ± {se:.{digits}f}" if math.isfinite(se) else f"{mean:.{digits}f}"


def table(results):
    columns = [
        "seed",
        "model",
        "held-out ELBO ± MC s.e.",
        "log p(x) ± MC s.e.",
        "data s.e.",
        "train ELBO (last epoch)",
        "s/step (steady)",
        "s/step (all)",
    ]
    rows = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    for r in results:
        for key, name in (("ours", "ppl_vae"), ("ref", "reference")):
            m = r[key]
            rows.append(
                f"| {r['seed']} | {name} | {fmt(m['elbo'], m['elbo_se'], 3)} | {fmt(m['ll'], m['ll_se'], 3)} | "
                f"{m['ll_data_se']:.2f} | {m['train_elbo']:.2f} | {m['s_step'] * 1e3:.1f} ms | "
                f"{m['s_step_all'] * 1e3:.1f} ms |"
            )
        d = r["diff"]
        rows.append(
            f"| {r['seed']} | **ours − ref** | {fmt(d['elbo'], d['elbo_mc_se'], 3)} | "
            f"{fmt(d['ll'], d['mc_se'], 3)} | {d['paired_data_se']:.2f} (paired) | | | |"
        )
    return "\n".join(rows)


def verdict(summary, nseeds):
    """One sentence: the mean difference in log p(x), its seed-to-seed uncertainty and what that says about
    the 1-nat goal (95% Student-t interval over seeds, nseeds - 1 degrees of freedom)."""
    diff, se = summary["diff"]["ll"]
    words = f"Mean difference in held-out log p(x) (ours − reference) over {nseeds} seed(s): "
    if not math.isfinite(se):
        return words + (
            f"{diff:.3f} nats; one seed, so no estimate of the seed-to-seed spread: run more seeds "
            f"before judging the {GOAL_NATS:g}-nat goal (point estimate "
            f"{'within' if abs(diff) <= GOAL_NATS else 'outside'} it)"
        )
    t = float(student_t.ppf(0.975, nseeds - 1))
    low, high = diff - t * se, diff + t * se
    words += (
        f"{diff:.3f} ± {se:.3f} nats (seed-to-seed s.e.; 95% t interval [{low:.2f}, {high:.2f}], {nseeds - 1} d.o.f.): "
    )
    if -GOAL_NATS <= low and high <= GOAL_NATS:
        return words + f"WITHIN the {GOAL_NATS:g}-nat goal"
    if abs(diff) <= GOAL_NATS:
        return words + (
            f"point estimate within the {GOAL_NATS:g}-nat goal, but the uncertainty is too large to "
            "confirm it at that resolution (more seeds or epochs needed)"
        )
    if low <= 0 <= high:
        return words + f"point estimate OUTSIDE the {GOAL_NATS:g}-nat goal, though not distinguishable from 0"
    return words + f"NOT within the {GOAL_NATS:g}-nat goal: a significant difference"


def machine_info():
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
            ).stdout.strip()
            or "unknown"
        )
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "ppl_vae": ppl_vae.__version__,
        "git": commit,
    }


def report(args, argv, info, check, results, summary, train, heldout, wall, load):
    cmd = "python -m benchmarks.parity" + ("" if not argv else " " + shlex.join(argv))
    o, r = summary["ours"], summary["ref"]
    steps = math.ceil(train.shape[0] / BATCH) * args.epochs
    train_s = {key: sum(res[key]["train_wall"] for res in results) for key in ("ours", "ref")}
    smoke = " (SMOKE RUN: numbers not meaningful)" if args.smoke else ""
    lines = [
        f"# Parity: ppl_vae vs a hand-written PyTorch VAE{smoke}",
        "",
        f"Command (from the repository root): `{cmd}`  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; total wall time {wall:.0f} s ({load['cpu']:.0f} s of CPU time "
        f"in this process; 1-minute load average {load['start']:.1f} at the start and {load['end']:.1f} at the end: "
        "a load above ~1 means other processes competed for the 2 cores and the timings are inflated).",
        "",
        "## Machine",
        "",
        f"- CPU: {info['cpu']}; `os.cpu_count()` = {info['cpu_count']}; torch threads = {info['torch_threads']} "
        "(`torch.set_num_threads(1)`); no GPU; the machine may be shared with other processes",
        f"- {info['platform']}, Python {info['python']}",
        f"- torch {info['torch']}, pyro-ppl {info['pyro']}, ppl_vae {info['ppl_vae']} "
        f"(git {info['git']}; the working tree may hold uncommitted changes)",
        "",
        "## Setup",
        "",
        f"- Data: scikit-learn digits resized to 28x28, {train.shape[0]} training / {heldout.shape[0]} held-out "
        "images (`ppl_vae.load_dataset('digits', image_size=28)`, split seed 0). Training images are binarized "
        "afresh every epoch (dynamic binarization); the held-out images once, by "
        "`ppl_vae.infer.fit.fixed_binarization(x, 'dynamic', seed=0)`, and both models are evaluated on exactly those "
        "binary images.",
        f"- Both models: encoder 784-{HIDDEN}-(2x{LATENT}), decoder {LATENT}-{HIDDEN}-784, ReLU, Bernoulli logits, "
        f"N(0, I) prior, diagonal Normal guide (loc, log-scale). Batch {BATCH}, Adam lr {LR:g}, {args.epochs} "
        f"epochs = {steps} steps each; seeds {', '.join(map(str, args.seeds))}.",
        "- ppl_vae: `ppl_vae.fit` (Pyro `SVI` + `Trace_ELBO`, `pyro.optim.Adam`), evaluated by `ppl_vae.evaluate`. "
        "Reference: `benchmarks/reference_vae.py` (plain PyTorch, `torch.optim.Adam`, loss = single-draw "
        "log q(z|x) − log p(z) − log p(x|z) summed over the batch × num_data/batch), evaluated by "
        "`reference_log_likelihood`. " + INIT_TEXT[args.same_init] + " Shuffling and training binarization use "
        "the same seeded generators in both (the same mini-batches); ppl_vae is trained without per-epoch "
        "held-out evaluation (`heldout=None`), so its loop does no extra work.",
        f"- Held-out numbers: per-example means in nats, K = {args.num_particles} importance samples from q per "
        "example. log p(x) is the IWAE bound log (1/K) Σ_k p(x, z_k)/q(z_k|x). 'MC s.e.' is the Monte Carlo error "
        "for this fixed held-out set (delta method for log p(x)); 'data s.e.' is the standard error over examples; "
        "the difference's 'paired' data s.e. is the standard error over examples of the per-example difference "
        "(both models on the same images). The delta-method s.e. of log p(x) (the formula of `ppl_vae.evaluate`, "
        "used on both sides) is optimistic when the importance weights are heavy-tailed: in a side check, 8 "
        "repeated K=1000 evaluations of one trained reference spread about 1.8x more than it said.",
        "- s/step: wall time of the training steps only (shuffle, binarization, forward, backward, Adam); "
        "'steady' = median epoch after the first (warm-up) epoch / steps per epoch, 'all' = mean over every epoch.",
        "",
        "## Lockstep check (same weights, same mini-batches, same random stream)",
        "",
        f"Seed {args.seeds[0]}, one epoch ({check['steps']} steps) of Pyro `SVI` (`Trace_ELBO`, `pyro.optim.Adam`) on "
        "ppl_vae's model and guide next to the reference, which starts from a copy of ppl_vae's initial weights: "
        f"largest |loss difference| over the steps {check['max_loss_diff']:.2e} nats per example (relative "
        f"{check['max_rel_loss_diff']:.1e}; first loss {check['first_loss']:.3f}); largest |weight difference| after "
        f"the epoch {check['max_weight_diff']:.2e}. "
        + (
            "**Identical up to float32 rounding**: the two compute the same loss, gradients and Adam updates from the "
            "same draws of eps."
            if check["identical"]
            else "**NOT identical** (relative loss difference >= 1e-5 or weight difference >= 1e-4): the two compute "
            "different losses, gradients or updates, or draw eps differently."
        ),
        "",
        "## Results",
        "",
        table(results),
        "",
        f"**Summary over seeds (mean ± seed-to-seed s.e.)**: log p(x) ppl_vae {fmt(*o['ll'], 3)}, "
        f"reference {fmt(*r['ll'], 3)}; held-out ELBO ppl_vae {fmt(*o['elbo'], 3)}, reference {fmt(*r['elbo'], 3)}. "
        f"Seed-to-seed standard deviation of log p(x): ppl_vae {o['ll_sd']:.3f}, reference {r['ll_sd']:.3f} nats. "
        "The per-seed differences can exceed their Monte Carlo s.e. because the two models of a seed start from "
        "different weights (training noise); the seed-to-seed s.e. of the mean difference covers that.  ",
        f"**{verdict(summary, len(results))}.**  ",
        f"Difference in held-out ELBO: {fmt(*summary['diff']['elbo'], 3)} nats.  ",
        f"Training speed (steady): ppl_vae {o['s_step'][0] * 1e3:.1f} ms/step, reference "
        f"{r['s_step'][0] * 1e3:.1f} ms/step: ppl_vae takes {summary['speed_ratio']:.2f}x the reference's time per "
        f"step. Training wall time summed over seeds: ppl_vae {train_s['ours']:.0f} s, "
        f"reference {train_s['ref']:.0f} s.",
        "",
    ]
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    torch.set_num_threads(1)  # small MLPs: 1 thread is faster, and 2 threads on a shared 2-core machine are slow
    wall0, cpu0, load0 = time.perf_counter(), time.process_time(), os.getloadavg()[0]
    train, heldout = load_data(args)
    print(
        f"data: {tuple(train.shape)} train, {tuple(heldout.shape)} held-out; epochs {args.epochs}, "
        f"K {args.num_particles}, seeds {args.seeds}",
        flush=True,
    )

    check = lockstep(train, args.seeds[0])
    print(
        f"lockstep ({check['steps']} SVI steps, same init and batches): "
        f"max |loss diff| {check['max_loss_diff']:.2e}, "
        f"max |weight diff| {check['max_weight_diff']:.2e}: {'identical' if check['identical'] else 'NOT IDENTICAL'}",
        flush=True,
    )

    results = []
    for seed in args.seeds:
        start = time.perf_counter()
        r = run_seed(train, heldout, args, seed)
        results.append(r)
        print(
            f"seed {seed} ({time.perf_counter() - start:.0f} s): "
            f"log p(x) ours {fmt(r['ours']['ll'], r['ours']['ll_se'], 3)}, "
            f"reference {fmt(r['ref']['ll'], r['ref']['ll_se'], 3)}, "
            f"difference {fmt(r['diff']['ll'], r['diff']['mc_se'], 3)}",
            flush=True,
        )
    summary = summarize(results)
    wall = time.perf_counter() - wall0
    load = {"cpu": time.process_time() - cpu0, "start": load0, "end": os.getloadavg()[0]}

    print()
    print(table(results))
    print()
    print(verdict(summary, len(results)))
    print(
        f"speed: ppl_vae {summary['ours']['s_step'][0] * 1e3:.1f} ms/step, reference "
        f"{summary['ref']['s_step'][0] * 1e3:.1f} ms/step (ratio {summary['speed_ratio']:.2f}); total {wall:.0f} s "
        f"wall, {load['cpu']:.0f} s CPU; 1-min load average {load['start']:.1f} at the start, "
        f"{load['end']:.1f} at the end"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report(args, argv, machine_info(), check, results, summary, train, heldout, wall, load))
    print(f"report: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
