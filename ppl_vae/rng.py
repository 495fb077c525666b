"""Seeded random streams that leave the caller's global torch stream as it was."""

from __future__ import annotations

import contextlib

import torch


def seeded(seed: int | None, device: torch.device):
    """A context in which torch's global stream (CPU, and ``device``'s when it is a GPU) starts from
    ``seed``; on leaving it, the streams are as they were before. ``seed=None`` does nothing."""
    if seed is None:
        return contextlib.nullcontext()
    fork = torch.random.fork_rng(devices=[device] if device.type == "cuda" else [], device_type=device.type)

    @contextlib.contextmanager
    def context():
        with fork:
            torch.manual_seed(seed)
            yield

    return context()
