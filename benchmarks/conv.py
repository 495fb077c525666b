"""Convolutional VAEs: ppl_vae's ``network="conv"`` against a hand-written PyTorch conv VAE of the same
architecture, side by side in one run, and the conv network against the MLP on 28x28 digits.

    python -m benchmarks.conv [--smoke] [--out benchmarks/CONV.md]

1. **Training step** (28x28x1 and 32x32x3 random binary images, batch 128, Bernoulli likelihood, latent
   16, fully connected widths 256): ppl_vae's step as ``fit`` runs it (``TrainStep``: Pyro's Trace_ELBO
   on the VAE's model and guide) against :class:`benchmarks.reference_conv_vae.ConvReferenceVAE` holding a
   copy of the same weights (loss, backward, torch Adam). Interleaved blocks, rotating order; ratio =
   median over rounds of ours / reference. Measured with 1 and 2 torch threads, and with the networks and
   inputs in ``channels_last`` memory format.
2. **Evaluation memory**: peak RSS of ``ppl_vae.evaluate`` (K importance draws) on 32x32x3 images with the
   conv network, in a fresh process.
3. **Quality**: held-out log p(x) of conv and MLP VAEs trained for the same epochs on the digits resized
   to 28x28 (dynamic binarization), several seeds, paired differences on the same held-out examples
   (:func:`ppl_vae.diagnostics.comparison.paired_difference`).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pyro
import torch

import ppl_vae
from benchmarks.reference_conv_vae import ConvReferenceVAE, copy_conv_weights
from benchmarks.reference_vae import reference_log_likelihood
from benchmarks.run import OursStep, RefStep, Variant, interleaved, random_binary, ratio_stats
from ppl_vae.diagnostics import comparison
from ppl_vae.infer.fit import fixed_binarization

ROOT = Path(__file__).resolve().parent.parent
SHAPES = [(1, 28, 28), (3, 32, 32)]
LATENT, HIDDEN, BATCH, NUM_DATA = 16, (256,), 128, 50000
FULL = {
    "rounds": 8,
    "steps": 20,
    "quality_epochs": 30,
    "seeds": [0, 1, 2],
    "eval_n": 200,
    "eval_k": 1000,
    "speed_n": 20,
    "speed_rounds": 3,
}
SMOKE = {
    "rounds": 2,
    "steps": 2,
    "quality_epochs": 1,
    "seeds": [0],
    "eval_n": 8,
    "eval_k": 16,
    "speed_n": 4,
    "speed_rounds": 1,
}


def weighted_layers(vae) -> list:
    kinds = (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear)
    return [m for part in (vae.encoder, vae.decoder) for m in part.modules() if isinstance(m, kinds)]


def build_pair(shape, name: str, seed: int = 0):
    """ppl_vae's conv VAE and the reference holding a copy of its weights."""
    pyro.set_rng_seed(seed)
    vae = ppl_vae.VAE(shape, LATENT, HIDDEN, network="conv", name=name)
    ref = ConvReferenceVAE(shape, LATENT, HIDDEN)
    copy_conv_weights(weighted_layers(vae), ref.weighted_layers())
    return vae, ref


def parity(shape) -> float:
    """|ours - reference| of the negative ELBO at the same draw of eps (same weights): the architectures agree."""
    vae, ref = build_pair(shape, "parity")
    x = random_binary(4, shape, 0)
    torch.manual_seed(1)
    ours = pyro.infer.Trace_ELBO().differentiable_loss(vae.model, vae.guide, x).item()
    torch.manual_seed(1)
    theirs = ref.loss(x).item()
    assert abs(ours) > 1.0, ours  # a real loss was computed, not a trivial zero
    return abs(ours - theirs)


def bench_train(cfg, log) -> list[dict]:
    rows = []
    for shape in SHAPES:
        for threads in (1, 2):
            for channels_last in (False, True):
                torch.set_num_threads(threads)
                pyro.clear_param_store()
                vae, ref = build_pair(shape, f"vae_{threads}_{int(channels_last)}")
                batches = [random_binary(BATCH, shape, s) for s in range(4)]
                if channels_last:
                    fmt = torch.channels_last
                    vae.to(memory_format=fmt)
                    ref.to(memory_format=fmt)
                    batches = [b.contiguous(memory_format=fmt) for b in batches]
                variants = [Variant("ours", OursStep(vae, NUM_DATA)), Variant("ref", RefStep(ref, NUM_DATA))]
                times = interleaved(variants, batches, cfg["steps"], cfg["rounds"])
                st = ratio_stats(times["ours"], times["ref"])
                row = {
                    "shape": "x".join(map(str, shape)),
                    "threads": threads,
                    "channels_last": channels_last,
                    "ours_ms": statistics.median(times["ours"]) * 1e3,
                    "ref_ms": statistics.median(times["ref"]) * 1e3,
                    **st,
                }
                rows.append(row)
                log(
                    f"train {row['shape']} threads {threads} channels_last {channels_last}: ours "
                    f"{row['ours_ms']:.1f} ms, ref {row['ref_ms']:.1f} ms, ratio {st['median']:.2f} "
                    f"[{st['q1']:.2f}, {st['q3']:.2f}]"
                )
    torch.set_num_threads(1)
    return rows


def bench_eval_speed(cfg, log) -> list[dict]:
    """Importance-sampled log p(x) with K draws: ``ppl_vae.evaluate`` against the reference's vectorized
    estimate (:func:`benchmarks.reference_vae.reference_log_likelihood`), same weights, alternating order."""
    rows = []
    n, k = cfg["speed_n"], cfg["eval_k"]
    for shape in SHAPES:
        pyro.clear_param_store()
        vae, ref = build_pair(shape, f"eval_{'x'.join(map(str, shape))}")
        x = random_binary(n, shape, 123)
        calls = {
            "ours": lambda: ppl_vae.evaluate(vae, x, num_particles=k).log_likelihood,
            "ref": lambda: reference_log_likelihood(ref, x, num_particles=k)["log_likelihood"],
        }
        times, values = {"ours": [], "ref": []}, {"ours": [], "ref": []}
        for r in range(cfg["speed_rounds"] + 1):  # round 0 warms up
            for name in ("ours", "ref") if r % 2 else ("ref", "ours"):
                start = time.perf_counter()
                values[name].append(calls[name]())
                if r:
                    times[name].append(time.perf_counter() - start)
        st = ratio_stats(times["ours"], times["ref"])
        row = {
            "shape": "x".join(map(str, shape)),
            "n": n,
            "k": k,
            "ours_s": statistics.median(times["ours"]),
            "ref_s": statistics.median(times["ref"]),
            "ours_ll": statistics.fmean(values["ours"]),
            "ref_ll": statistics.fmean(values["ref"]),
            **st,
        }
        rows.append(row)
        log(
            f"eval {row['shape']} N={n} K={k}: ours {row['ours_s']:.2f} s, ref {row['ref_s']:.2f} s, "
            f"ratio {st['median']:.2f}"
        )
    return rows


MEMORY_SCRIPT = """
import resource, sys, torch, ppl_vae
torch.set_num_threads(1)
n, k = int(sys.argv[1]), int(sys.argv[2])
vae = ppl_vae.VAE((3, 32, 32), 16, (256,), network="conv")
x = torch.bernoulli(torch.full((n, 3, 32, 32), 0.5))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
r = ppl_vae.evaluate(vae, x, num_particles=k, seed=0)
print(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, r.log_likelihood)
"""


def bench_memory(cfg, log) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, str(cfg["eval_n"]), str(cfg["eval_k"])],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        cwd=ROOT,
    )
    before, peak, _ = out.stdout.split()
    result = {"n": cfg["eval_n"], "k": cfg["eval_k"], "before_mb": int(before) / 1024, "peak_mb": int(peak) / 1024}
    log(f"evaluate conv 3x32x32, N={result['n']}, K={result['k']}: peak RSS {result['peak_mb']:.0f} MB")
    return result


def bench_quality(cfg, log) -> list[dict]:
    data = ppl_vae.load_dataset("digits", image_size=28)
    heldout = fixed_binarization(data.heldout, "dynamic")
    rows = []
    for seed in cfg["seeds"]:
        scores, seconds = {}, {}
        for network in ("mlp", "conv"):
            pyro.set_rng_seed(seed)
            vae = ppl_vae.VAE(data.data_shape, LATENT, HIDDEN, network=network, name=f"q_{network}_{seed}")
            start = time.perf_counter()
            ppl_vae.fit(vae, data.train, epochs=cfg["quality_epochs"], batch_size=128, seed=seed, progress=False)
            seconds[network] = time.perf_counter() - start
            scores[network] = comparison.score_model(
                vae.model, vae.guide, heldout, name=network, num_samples=cfg["eval_k"], seed=seed
            )
        d = comparison.paired_difference(scores["conv"], scores["mlp"])
        n = heldout.shape[0]
        row = {
            "seed": seed,
            "mlp": float(scores["mlp"].log_likelihood.mean()),
            "conv": float(scores["conv"].log_likelihood.mean()),
            "diff": d["diff_per_example"],
            "dse": d["dse"] / n,
            "dse_mc": d["dse_mc"] / n,
            "mlp_seconds": seconds["mlp"],
            "conv_seconds": seconds["conv"],
        }
        rows.append(row)
        log(
            f"quality seed {seed}: mlp {row['mlp']:.3f}, conv {row['conv']:.3f}, "
            f"conv - mlp {row['diff']:+.3f} ± {row['dse']:.3f}"
        )
    return rows


def render(args, argv, res, wall) -> str:
    lines = [
        "# Convolutional VAEs: ppl_vae vs a hand-written PyTorch conv VAE, and conv vs MLP",
        "",
        f"Command: `python -m benchmarks.conv {' '.join(argv)}`  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}; wall time {wall:.0f} s; load average "
        f"{os.getloadavg()[0]:.2f} at the end (2 cores shared with other work: timings are noisy).  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, pyro {pyro.__version__}, "
        "no GPU (`--device cuda` was not measured).",
        "",
        "Parity: |negative ELBO of ppl_vae - reference| at the same weights and draw: "
        + ", ".join(f"{k} {v:.2e}" for k, v in res["parity"].items())
        + " nats (same architecture and math).",
        "",
        "## 1. Training step (batch 128, latent 16, fully connected 256, Bernoulli)",
        "",
        "| image | threads | channels_last | ppl_vae ms/step | reference ms/step | ratio ours/ref | IQR |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in res["train"]:
        lines.append(
            f"| {r['shape']} | {r['threads']} | {'yes' if r['channels_last'] else 'no'} | {r['ours_ms']:.1f} | "
            f"{r['ref_ms']:.1f} | {r['median']:.2f}× | {r['q1']:.2f}–{r['q3']:.2f} |"
        )
    m = res["memory"]
    lines += [
        "",
        "## 2. Evaluation: speed and memory",
        "",
        "| image | N | K | ppl_vae s | reference s | ratio ours/ref | log p(x) ours / ref (nats per example) |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {r['shape']} | {r['n']} | {r['k']} | {r['ours_s']:.2f} | {r['ref_s']:.2f} | {r['median']:.2f}× | "
            f"{r['ours_ll']:.2f} / {r['ref_ll']:.2f} |"
            for r in res.get("eval", [])
        ),
        "",
        *(
            [
                f"`ppl_vae.evaluate` of the conv VAE on {m['n']} images 3x32x32 with K = {m['k']}: peak RSS "
                f"{m['peak_mb']:.0f} MB; the process's high-water mark before evaluating (imports, data) was "
                f"{m['before_mb']:.0f} MB"
                + (", so the chunked evaluation stayed below it." if m["peak_mb"] <= m["before_mb"] else "."),
            ]
            if m["n"]
            else []
        ),
        "",
        f"## 3. Quality: conv vs MLP on the digits at 28x28, {args.quality_epochs} epochs, "
        "held-out log p(x) per example (nats, K = 1000)",
        "",
        "| seed | MLP | conv | conv − MLP | paired s.e. | MC part | train s (MLP / conv) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in res["quality"]:
        lines.append(
            f"| {r['seed']} | {r['mlp']:.3f} | {r['conv']:.3f} | {r['diff']:+.3f} | {r['dse']:.3f} | "
            f"{r['dse_mc']:.3f} | {r['mlp_seconds']:.0f} / {r['conv_seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m benchmarks.conv", description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "CONV.md"))
    p.add_argument("--quality-epochs", type=int, default=None)
    p.add_argument("--sections", nargs="*", default=["train", "eval", "memory", "quality"])
    args = p.parse_args(argv)
    cfg = dict(SMOKE if args.smoke else FULL)
    if args.quality_epochs is not None:
        cfg["quality_epochs"] = args.quality_epochs
    args.quality_epochs = cfg["quality_epochs"]
    torch.set_num_threads(1)
    start = time.perf_counter()

    def log(text):
        print(text, flush=True)

    res = {"parity": {"x".join(map(str, s)): parity(s) for s in SHAPES}, "train": [], "memory": None, "quality": []}
    if "train" in args.sections:
        res["train"] = bench_train(cfg, log)
    res["eval"] = bench_eval_speed(cfg, log) if "eval" in args.sections else []
    res["memory"] = (
        bench_memory(cfg, log) if "memory" in args.sections else {"n": 0, "k": 0, "before_mb": 0, "peak_mb": 0}
    )
    if "quality" in args.sections:
        res["quality"] = bench_quality(cfg, log)
    Path(args.out).write_text(render(args, argv, res, time.perf_counter() - start))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
