"""How training is spread over processes: :class:`SingleProcess` or :class:`DataParallel`.

Both have the same small interface, so that the training loop never asks which one it has:
``share`` (this process's part of a global batch), ``agree`` (decisions every process takes alike),
``mean`` (per-step losses averaged over processes), ``gather`` (every process's random streams, for the
training state), ``heldout_elbo`` (held-out evaluation) and ``train_step`` (the step, DDP-wrapped or not).
"""

from __future__ import annotations

import math

import torch

from ppl_vae.infer import distributed as dist
from ppl_vae.infer.evaluate import evaluate
from ppl_vae.infer.step import TrainStep

#: Offset between the held-out evaluation seeds of consecutive processes.
_RANK_EVAL_STREAM = 7919


class SingleProcess:
    """Training in this process alone."""

    rank = 0
    world_size = 1

    def train_step(self, vae, lr: float, elbo: str, num_particles: int, enumerated: int = 0, **compiling) -> TrainStep:
        """The step; ``compiling``: TrainStep's ``compile``, ``planned`` and ``varies``."""
        return TrainStep(vae, lr, elbo, num_particles, enumerated=enumerated, **compiling)

    def share(self, data: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, float]:
        """The examples ``data[indices]`` of a global batch this process trains on, and its loss's weight."""
        return data[indices], 1.0

    def agree(self, *flags: bool) -> tuple[bool, ...]:
        """Each flag, True on every process when it is True on any."""
        return flags

    def mean(self, values: list[float]) -> list[float]:
        """Per-step values averaged over processes."""
        return values

    def gather(self, obj) -> list | None:
        """Every process's ``obj`` in rank order; None with one process (nothing to keep per process)."""
        return None

    def heldout_elbo(self, vae, heldout: torch.Tensor, particles: int, seed: int, c=None) -> tuple[float, float]:
        """The held-out ELBO per example (nats) and its Monte Carlo standard error (``c``: per-example
        labels of a conditional model)."""
        result = evaluate(vae, heldout, num_particles=particles, seed=seed, c=c)
        return result.elbo, result.elbo_se


class DataParallel:
    """Data-parallel training over the processes of ``context`` (see :mod:`ppl_vae.infer.distributed`).

    Args:
        context: this process's :class:`ppl_vae.infer.distributed.Context`.
    """

    def __init__(self, context: dist.Context):
        self.context = context
        self.rank = context.rank
        self.world_size = context.world_size

    def train_step(self, vae, lr: float, elbo: str, num_particles: int, enumerated: int = 0, **compiling) -> TrainStep:
        """A step whose loss is wrapped in ``DistributedDataParallel`` (gradients averaged in backward;
        always eager: ``compiling`` only says whether the reason is to be shown)."""
        return TrainStep(vae, lr, elbo, num_particles, distributed=self.context, enumerated=enumerated, **compiling)

    def share(self, data: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, float]:
        """This process's contiguous share of the global batch ``data[indices]`` and the weight of its loss.

        The weight ``share x world / batch`` makes the average over processes of the weighted gradients
        (the plate scales each share by num_data / share) equal the gradient of the whole batch in one
        process. With fewer examples than processes a process without any takes part with weight 0.
        """
        m = indices.numel()
        start, stop = dist.shard_bounds(m, self.context)
        if stop == start:
            return data[indices[:1]], 0.0
        return data[indices[start:stop]], (stop - start) * self.world_size / m

    def agree(self, *flags: bool) -> tuple[bool, ...]:
        """Each flag, True on every process when it is True on any (one all-reduce)."""
        sums = dist.all_reduce_sum(torch.tensor([float(f) for f in flags], device=self.context.device))
        return tuple(bool(s > 0) for s in sums)

    def mean(self, values: list[float]) -> list[float]:
        """Per-step values averaged over processes (one all-reduce in float64)."""
        total = dist.all_reduce_sum(torch.tensor(values, dtype=torch.float64, device=self.context.device))
        return (total / self.world_size).tolist()

    def gather(self, obj) -> list:
        """Every process's ``obj`` (picklable, small) in rank order, on every process."""
        return dist.gather_objects(obj, self.context)

    def heldout_elbo(self, vae, heldout: torch.Tensor, particles: int, seed: int, c=None) -> tuple[float, float]:
        """Each process evaluates its share (seeded by ``seed`` and its rank); the per-example results are
        combined: the ELBO per example (nats) of the whole held-out set and its Monte Carlo standard error."""
        start, stop = dist.shard_bounds(heldout.shape[0], self.context)
        part = (0.0, 0.0, 0)
        if stop > start:
            result = evaluate(
                vae,
                heldout[start:stop],
                num_particles=particles,
                seed=seed + _RANK_EVAL_STREAM * self.rank,
                c=None if c is None else c[start:stop],
            )
            n = stop - start
            part = (result.elbo * n, (result.elbo_se * n) ** 2, n)
        parts = self.gather(part)
        total = sum(p[2] for p in parts)
        return sum(p[0] for p in parts) / total, math.sqrt(sum(p[1] for p in parts)) / total


def make_strategy(context: dist.Context | None) -> SingleProcess | DataParallel:
    """:class:`DataParallel` over ``context``'s processes, or :class:`SingleProcess` without one."""
    return SingleProcess() if context is None else DataParallel(context)
