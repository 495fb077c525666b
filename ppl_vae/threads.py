"""How many intra-op threads torch uses, chosen by measurement rather than left to torch.

Measured on the project's 2-core machine (``python -m benchmarks.threads``, step of ``fit`` timed per
thread count, interleaved; ``benchmarks/THREADS.md``):

* with the machine otherwise idle, two threads are 0.83x the time of one for the digits default
  (64-256-128-8, batch 128: 2.0 against 1.7 ms per step) and 0.6-0.66x for larger MLPs;
* with two other processes busy on the cores, two threads are 1.9x *slower* for the digits default and
  4-41x slower for the larger models (784-400-50 at batch 128: 570 against 14 ms per step); torch's
  default of two threads made the README's own ``ppl-vae train`` take 173 s against 21 s with one.

The risk is lopsided: one thread costs at most ~1.7x on an idle machine, two threads cost up to 40x
on a busy one. So the CLI's default, ``auto``, is one thread, raised to the number of idle cores (from the load
average) only when one step does enough work for threads to pay (:data:`WORK_PER_THREAD`) and those
cores are really idle. ``--threads N`` fixes the count. ``run.json`` records the count and why. The
Python API leaves torch's setting alone; call :func:`apply` yourself to get the same choice.
"""

from __future__ import annotations

import os

#: Multiply-adds per step (parameters x examples x particles) above which a second thread paid off in
#: the measurements above: the digits default does ~1.3e7, 784-400-50 at batch 128 ~9e7.
WORK_PER_THREAD = 5e7
#: Why ``auto`` runs one thread for small work, as ``run.json`` records it.
AUTO_ONE = "auto: one thread (small models are fastest on one)"

_state = {"mode": "torch", "threads": None, "reason": "torch's default (the Python API does not change it)"}


def idle_cores() -> int:
    """Cores not busy according to the 1-minute load average (at least 1)."""
    count = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (OSError, AttributeError):
        return 1
    return max(1, min(count, int(count - load + 0.5)))


def apply(threads: int | None) -> int:
    """Set torch's intra-op threads: ``threads`` if given, else one (the ``auto`` default, which
    :func:`adapt` may raise once the size of the work is known). Returns the count set."""
    import torch

    if threads is None:
        _state.update(mode="auto", threads=1, reason=AUTO_ONE)
    else:
        _state.update(mode="fixed", threads=threads, reason="--threads")
    torch.set_num_threads(_state["threads"])
    return _state["threads"]


def choose(work: float, idle: int) -> tuple[int, str]:
    """The ``auto`` rule: the intra-op threads for a step of ``work`` multiply-adds with ``idle`` idle cores,
    and why. One thread below :data:`WORK_PER_THREAD` (the digits default, ~1.3e7, gets one whatever the
    machine) or without a second idle core; else one per :data:`WORK_PER_THREAD` of work, at most ``idle``."""
    if work < WORK_PER_THREAD:
        return 1, AUTO_ONE
    if idle <= 1:
        return 1, f"auto: one thread ({work:.2g} multiply-adds per step, but no idle core)"
    count = min(idle, int(work // WORK_PER_THREAD) + 1)
    return count, f"auto: {count} threads for {work:.2g} multiply-adds per step with {idle} idle cores"


def adapt(work: float) -> int:
    """In ``auto`` mode, set the thread count :func:`choose` picks for ``work`` (multiply-adds per step) and
    the idle cores of the moment; a count fixed with ``--threads`` (or torch's own, from the Python API) is
    left alone. Returns the current count."""
    import torch

    if _state["mode"] == "auto" and work >= WORK_PER_THREAD:  # small work keeps apply's one thread
        count, reason = choose(work, idle_cores())
        _state.update(threads=count, reason=reason)
        torch.set_num_threads(count)
    return torch.get_num_threads()


def record() -> dict:
    """What ``run.json`` stores: the count in use and why."""
    import torch

    return {"intra_op": torch.get_num_threads(), "choice": _state["reason"]}
