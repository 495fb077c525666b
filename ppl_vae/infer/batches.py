"""The random streams of training and the mini-batches they make.

:class:`RandomStreams` is the one place that seeds, saves and restores them: ``shuffle`` (the order of
the examples, CPU), ``noise`` (dynamic binarization, on the data's device) and the global torch stream
(the draws of z, one per process). :class:`Batches` draws an epoch's order and binarization and yields
this process's share of every global batch.
"""

from __future__ import annotations

from collections.abc import Iterator

import pyro
import torch

from ppl_vae.data.support import binarize as binarize_data

#: Offset between the seeds of the global torch streams of consecutive processes.
_RANK_STREAM = 1_000_003


class RandomStreams:
    """The random streams of one training run.

    The draws of z come from the global torch (and Pyro) stream, one per process: ``seed`` on process 0,
    ``seed + 1000003 x rank`` elsewhere (seeded when this is made). Shuffling (``shuffle``, CPU) and
    binarization (``noise``, on ``device``) are seeded from ``seed`` alone: the same on every process.

    Args:
        seed: the run's seed.
        device: the device of the training data.
        strategy: :class:`ppl_vae.infer.strategy.SingleProcess` or ``DataParallel`` (rank, gathering).
    """

    def __init__(self, seed: int, device: torch.device, strategy):
        rank = strategy.rank
        pyro.set_rng_seed(seed if rank == 0 else seed + _RANK_STREAM * rank)
        self.shuffle = torch.Generator(device="cpu").manual_seed(seed)
        self.noise = torch.Generator(device=device).manual_seed(seed + 1)
        self.device = device
        self.strategy = strategy
        self._resumed: tuple | None = None  # (step, torch state, cuda state or None) to restore at that step

    def position(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The states of ``shuffle`` and ``noise`` now (at an epoch's start, before its draws)."""
        return self.shuffle.get_state(), self.noise.get_state()

    def snapshot(self, epoch_start: tuple[torch.Tensor, torch.Tensor]) -> dict:
        """The ``rng`` entry of the training state: ``torch`` (and ``cuda`` on a GPU) as they are now,
        ``shuffle`` and ``noise`` as at ``epoch_start`` (:meth:`position`), so that a resumed run draws the
        same epoch again; data-parallel, ``ranks`` holds every process's ``torch``/``cuda`` (a collective)."""
        mine = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            mine["cuda"] = torch.cuda.get_rng_state(self.device)
        rng = {**mine, "shuffle": epoch_start[0], "noise": epoch_start[1]}
        ranks = self.strategy.gather(mine)  # every process's stream, for an exact resume
        if ranks is not None:
            rng["ranks"] = ranks
        return rng

    def restore(self, rng: dict, step: int) -> None:
        """Continue from a :meth:`snapshot` taken at ``step``: ``shuffle`` and ``noise`` now, this process's
        global stream when training reaches ``step`` again (:meth:`enter_epoch`)."""
        self.shuffle.set_state(rng["shuffle"])
        self.noise.set_state(rng["noise"])
        own = rng["ranks"][self.strategy.rank] if "ranks" in rng else rng
        self._resumed = (step, own["torch"], own["cuda"] if "cuda" in own else rng.get("cuda"))

    def enter_epoch(self, step: int) -> None:
        """At the start of an epoch: when resuming at ``step``, set the global stream as it was when stopped."""
        if self._resumed is None or step != self._resumed[0]:
            return
        torch.set_rng_state(self._resumed[1])
        if self.device.type == "cuda" and self._resumed[2] is not None:
            torch.cuda.set_rng_state(self._resumed[2], self.device)


class Batches:
    """The mini-batches of training: every epoch a fresh permutation (``streams.shuffle``) and, with
    ``binarize="dynamic"``, a fresh binarization of every example (``streams.noise``).

    Args:
        train: ``(N, *data_shape)`` training data on its device, in the likelihood's space.
        binarize: ``"dynamic"``, ``"threshold"`` or ``"none"``.
        global_batch: examples per step over all processes.
        streams: the run's :class:`RandomStreams`.
        strategy: takes this process's share of each global batch (``share``).
        labels: ``(N,)`` per-example labels, passed to the programs as ``c`` with their examples.
    """

    def __init__(
        self,
        train: torch.Tensor,
        binarize: str,
        global_batch: int,
        streams: RandomStreams,
        strategy,
        labels: torch.Tensor | None = None,
    ):
        self.train = train
        self.labels = labels
        self.binarize = binarize
        self.global_batch = global_batch
        self.streams = streams
        self.strategy = strategy

    def epoch(self, skip: int = 0) -> Iterator[tuple[int, torch.Tensor, float, dict]]:
        """Draw one epoch's order and data now; the iterator yields ``(index, x, weight, side)`` for every
        global batch from number ``skip`` on: ``x`` this process's ``(B, *data_shape)`` examples, ``weight``
        its loss's weight (see :meth:`ppl_vae.infer.strategy.DataParallel.share`), ``side`` the keyword
        arguments of the programs for those examples (``{"c": labels}``, or empty)."""
        num_data = self.train.shape[0]
        order = torch.randperm(num_data, generator=self.streams.shuffle).to(self.train.device)
        data = binarize_data(self.train, self.binarize, generator=self.streams.noise)  # dynamic: fresh every epoch
        return self._batches(data, order, skip)

    def _batches(self, data: torch.Tensor, order: torch.Tensor, skip: int):
        for index, first in enumerate(range(0, data.shape[0], self.global_batch)):
            if index >= skip:
                indices = order[first : first + self.global_batch]
                x, weight = self.strategy.share(data, indices)
                side = {} if self.labels is None else {"c": self.strategy.share(self.labels, indices)[0]}
                yield index, x, weight, side
