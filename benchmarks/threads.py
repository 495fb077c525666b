"""How many intra-op threads pay for a ppl_vae training step: the measurement behind ``ppl_vae.threads``.

For each model size, the step of ``ppl_vae.fit`` (``TrainStep``) is timed with 1, 2, ... threads,
interleaved round by round in one process so that whatever else the machine does hits every setting
alike; the table gives the median milliseconds per step and the ratio to one thread. ``--busy N``
starts N processes that spin on a core for the whole run (a machine with other work on it).

    python -m benchmarks.threads [--busy 2] [--rounds 5] [--out benchmarks/THREADS.md]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import time
from pathlib import Path

import pyro
import torch

#: (data shape, latent_dim, hidden_dims, batch size): the digits default up to a large MLP.
SIZES = [
    ((1, 8, 8), 8, [256, 128], 128),
    ((1, 28, 28), 50, [400], 128),
    ((1, 28, 28), 32, [512, 256], 256),
    ((1, 64, 64), 32, [1024, 512], 128),
]
SMOKE_SIZES = [((1, 8, 8), 2, [16], 32)]


def _spin(stop) -> None:
    while not stop.is_set():
        pass


def measure(sizes, thread_counts, rounds: int, steps: int) -> list[dict]:
    from ppl_vae.infer.step import TrainStep
    from ppl_vae.vae import VAE

    pyro.enable_validation(False)
    rows = []
    for shape, latent_dim, hidden, batch in sizes:
        pyro.set_rng_seed(0)
        vae = VAE(shape, latent_dim, hidden)
        step = TrainStep(vae, 1e-3)
        x = torch.bernoulli(torch.rand(batch, *shape))
        times: dict[int, list[float]] = {t: [] for t in thread_counts}
        for _ in range(rounds):
            for threads in thread_counts:
                torch.set_num_threads(threads)
                for _ in range(2):  # warm-up at this thread count
                    step(x, num_data=10 * batch)
                start = time.perf_counter()
                for _ in range(steps):
                    step(x, num_data=10 * batch)
                times[threads].append((time.perf_counter() - start) / steps)
        medians = {t: statistics.median(v) for t, v in times.items()}
        params = sum(p.numel() for p in vae.parameters())
        rows.append(
            {
                "model": f"{'x'.join(map(str, shape[1:]))}-{'-'.join(map(str, hidden))}-{latent_dim}",
                "batch": batch,
                "work": params * batch,
                "ms": {t: 1e3 * m for t, m in medians.items()},
                "ratio": {t: medians[t] / medians[thread_counts[0]] for t in thread_counts},
            }
        )
    return rows


def report(rows: list[dict], thread_counts, busy: int, rounds: int) -> str:
    head = " | ".join(f"{t} thread{'s' if t > 1 else ''}" for t in thread_counts)
    lines = [
        f"# Threads per training step ({busy} spinning processes beside the benchmark; median of {rounds} "
        f"interleaved rounds; {os.cpu_count()} CPUs; torch {torch.__version__})",
        "",
        f"| model | batch | multiply-adds per step | {head} |",
        "|---|---|---|" + "---|" * len(thread_counts),
    ]
    for r in rows:
        cells = " | ".join(f"{r['ms'][t]:.2f} ms ({r['ratio'][t]:.2f}x)" for t in thread_counts)
        lines.append(f"| {r['model']} | {r['batch']} | {r['work']:.2g} | {cells} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busy", type=int, default=0, help="spinning processes to start beside the benchmark")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per round and setting")
    parser.add_argument("--smoke", action="store_true", help="one tiny model, one round (CI)")
    parser.add_argument("--out", type=Path, help="write the table here as well")
    args = parser.parse_args(argv)
    counts = [1, 2] if (os.cpu_count() or 1) >= 2 else [1]
    stop = multiprocessing.Event()
    spinners = [multiprocessing.Process(target=_spin, args=(stop,), daemon=True) for _ in range(args.busy)]
    for p in spinners:
        p.start()
    try:
        rounds, steps = (1, 2) if args.smoke else (args.rounds, args.steps)
        rows = measure(SMOKE_SIZES if args.smoke else SIZES, counts, rounds, steps)
    finally:
        stop.set()
        for p in spinners:
            p.join(timeout=5)
    text = report(rows, counts, args.busy, rounds)
    print(text)
    if args.out is not None:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
