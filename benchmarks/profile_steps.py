"""Where a training step's time goes: eager, recorded and compiled (``compile="off" | "trace" | "on"``).

    python -m benchmarks.profile_steps [--steps 200]

For 784-400-50 and the digits model (64-256-128-8), batch 128, Trace_ELBO, one thread: the wall time
per step without a profiler (median of 3 blocks), then, under ``torch.profiler``, the operators' own
time per step in three groups (matrix products; Adam; every other tensor operation, Inductor's fused
kernels included) and what is left of the wall time: Python and dispatch around the operators (the
profiler adds a little to the operator times, so this remainder is a lower bound). Prints a markdown table
(benchmarks/PROFILE.md quotes it).
"""

from __future__ import annotations

import argparse
import collections
import statistics
import time

import pyro
import torch
from torch.profiler import ProfilerActivity, profile

import ppl_vae
from ppl_vae.infer.step import TrainStep

MODELS = {"784-400-50": ((1, 28, 28), 50, (400,), 60000), "64-256-128-8": ((1, 8, 8), 8, (256, 128), 1438)}
MATRIX = {"aten::mm", "aten::addmm", "aten::bmm"}
GROUPS = ("matrix products", "Adam", "other tensor ops")


def group(name: str) -> str | None:
    """The group of a profiler event (None: a Python-level range, not an operator)."""
    if name in MATRIX:
        return "matrix products"
    if "adam" in name.lower() and name.startswith("aten::"):
        return "Adam"
    if name.startswith("aten::") or name.startswith("cpp_fused") or name.startswith("kernel"):
        return "other tensor ops"
    return None


def measure(shape, latent, hidden, num_data, mode: str, steps: int) -> tuple[float, dict]:
    """Wall ms/step and the operator groups' ms/step of one variant."""
    pyro.set_rng_seed(0)
    vae = ppl_vae.VAE(shape, latent_dim=latent, hidden_dims=hidden, name=f"profile_{mode}_{latent}")
    x = torch.bernoulli(torch.full((128, *shape), 0.5))
    step = TrainStep(vae, 1e-3, "trace", compile=mode)
    for _ in range(10):  # validation step, recording, compiling
        step(x, num_data=num_data, beta=1.0)
    walls = []
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(steps):
            step(x, num_data=num_data, beta=1.0)
        walls.append((time.perf_counter() - start) / steps * 1e3)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(50):
            step(x, num_data=num_data, beta=1.0)
    groups = collections.Counter()
    for event in prof.key_averages():
        name = group(event.key)
        if name is not None:
            groups[name] += event.self_cpu_time_total / 50 / 1e3
    return statistics.median(walls), groups


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile_steps", description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=200, help="steps per timed block (default 200)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    print("| model | compile | ms/step | matrix products | Adam | other tensor ops | Python and dispatch |")
    print("|---|---|---|---|---|---|---|")
    for label, spec in MODELS.items():
        for mode in ("off", "trace", "on"):
            wall, groups = measure(*spec, mode, args.steps)
            rest = max(0.0, wall - sum(groups.values()))
            cells = " | ".join(f"{groups[g]:.2f}" for g in GROUPS)
            print(f"| {label} | {mode} | {wall:.2f} | {cells} | {rest:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
