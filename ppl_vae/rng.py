"""Seeded random streams that leave the caller's global torch stream as it was.

Only the streams of the device in use are saved and restored: a computation on the CPU never touches
a GPU's stream, so that a CPU run on a machine with GPUs behaves as on one without.
"""

from __future__ import annotations

import contextlib

import torch


def isolated(device: torch.device | str):
    """A context in whose end torch's global stream (CPU, and ``device``'s when it is a GPU) is back to
    what it was at the start: draws made inside it change nothing for the caller."""
    device = torch.device(device)
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [], device_type=device.type)


def seeded(seed: int | None, device: torch.device | str):
    """A context in which torch's global stream (CPU, and ``device``'s when it is a GPU) starts from
    ``seed``; on leaving it, the streams are as they were before. ``seed=None`` does nothing.

    Only the streams that are restored are seeded (see :func:`reseed`): the CPU draws are those after
    ``torch.manual_seed(seed)``, which would also reseed every GPU."""
    if seed is None:
        return contextlib.nullcontext()
    device = torch.device(device)
    fork = isolated(device)

    @contextlib.contextmanager
    def context():
        with fork:
            reseed(seed, device)
            yield

    return context()


def reseed(seed: int, device: torch.device | str) -> None:
    """Restart torch's global stream on the CPU, and on ``device`` when it is a GPU, from ``seed``; other
    devices' streams, Python's ``random`` and NumPy's are left alone. Meant inside :func:`seeded`, for a
    fresh stream per step (a chain, an estimator) that the caller does not see."""
    device = torch.device(device)
    if device.type == "cpu":
        torch.random.default_generator.manual_seed(seed)
    elif device.type == "cuda":
        torch.random.default_generator.manual_seed(seed)
        with torch.cuda.device(device):
            torch.cuda.manual_seed(seed)
    else:
        torch.manual_seed(seed)
