"""What every peer script shares: its command line, reading the data file and the importance-sampling
summary of log-weights. Standard library and numpy only, so that it imports in every peer environment
(the scripts run with their own folder on ``sys.path``); it never imports ppl_vae."""

from __future__ import annotations

import argparse
import json
import math
import sys

import numpy as np


def parser(description: str) -> argparse.ArgumentParser:
    """The command line every peer script takes (see ``benchmarks/peers/__init__.py``)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--data", required=True, help="npz with x_train (N, D) in [0, 1], x_heldout (M, D) in {0, 1}")
    p.add_argument("--out", required=True, help="output JSON path")
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--k", type=int, required=True, help="importance samples per held-out example")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--latent", type=int, default=50)
    p.add_argument(
        "--hidden",
        type=int,
        action="append",
        default=None,
        help="hidden width; repeat for several layers (default: one layer of 400)",
    )
    p.add_argument("--eval-batch", type=int, default=8, help="held-out examples per evaluation chunk")
    return p


def checked(p: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Parse ``argv`` with ``p`` and check the ranges (argparse's one-line error and exit code 2)."""
    args = p.parse_args(argv)
    args.hidden = args.hidden or [400]
    for name in ("epochs", "k", "batch_size", "latent", "eval_batch"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if min(args.hidden) < 1:
        p.error("--hidden widths must be >= 1")
    if not args.lr > 0:
        p.error("--lr must be > 0")
    return args


def load_data(path):
    with np.load(path) as f:
        x_train = np.asarray(f["x_train"], dtype=np.float32)
        x_heldout = np.asarray(f["x_heldout"], dtype=np.float32)
    if x_train.ndim != 2 or x_heldout.ndim != 2 or x_train.shape[1] != x_heldout.shape[1]:
        raise ValueError(f"x_train {x_train.shape} and x_heldout {x_heldout.shape} must be (N, D) and (M, D)")
    if x_train.min() < 0 or x_train.max() > 1:
        raise ValueError("x_train must lie in [0, 1]")
    if not np.all((x_heldout == 0) | (x_heldout == 1)):
        raise ValueError("x_heldout must be binary {0, 1}")
    return x_train, x_heldout


def summarize_log_weights(logw):
    """Per-example importance-sampling summaries from log-weights ``logw`` of shape (B, K).

    Returns three float64 arrays of shape (B,):
      log_px  = logsumexp_k logw - log K           (the IS estimate of log p(x))
      se      = sd_k(w) / (sqrt(K) * mean_k(w)),   w = exp(logw - max_k logw)
                (delta-method standard error of log_px; sd with ddof=1, 0 when K = 1)
      elbo    = mean_k logw                        (the ELBO estimate)
    """
    logw = np.asarray(logw, dtype=np.float64)
    if logw.ndim != 2 or logw.shape[1] < 1:
        raise ValueError(f"logw must have shape (B, K) with K >= 1, got {logw.shape}")
    k = logw.shape[1]
    top = logw.max(axis=1, keepdims=True)
    w = np.exp(logw - top)
    mean_w = w.mean(axis=1)
    log_px = top[:, 0] + np.log(mean_w)
    sd_w = w.std(axis=1, ddof=1) if k > 1 else np.zeros_like(mean_w)
    se = sd_w / (math.sqrt(k) * mean_w)
    elbo = logw.mean(axis=1)
    return log_px, se, elbo


def run_settings(args, n_train: int, n_heldout: int, data_dim: int) -> dict:
    """The settings every peer's result records, from its parsed command line and the data's sizes."""
    return {
        "epochs": args.epochs,
        "seed": args.seed,
        "k": args.k,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "latent": args.latent,
        "hidden": args.hidden,
        "eval_batch": min(args.eval_batch, n_heldout),
        "n_train": n_train,
        "n_heldout": n_heldout,
        "data_dim": data_dim,
    }


def write_result(path: str, system: str, result: dict) -> None:
    """Write a peer's result as JSON and say one line about it on stderr."""
    with open(path, "w") as f:
        json.dump(result, f)
    print(
        f"{system}: mean log p(x) = {result['mean_log_px']:.3f}, train {result['train_seconds']:.1f} s, "
        f"eval {result['eval_seconds']:.1f} s",
        file=sys.stderr,
    )
