"""The training loop of :func:`ppl_vae.infer.fit.fit`: epochs of steps, and the state that continues it.

:class:`TrainingLoop` only sequences the parts: :class:`ppl_vae.infer.batches.Batches` (what to train on),
:class:`ppl_vae.infer.step.TrainStep` (one step), :class:`ppl_vae.infer.divergence.DivergencePolicy` (a
non-finite step), the strategy (what the processes agree on, :mod:`ppl_vae.infer.strategy`) and the
callbacks (progress, stop requests, held-out evaluation, hooks: :mod:`ppl_vae.infer.callbacks`).
"""

from __future__ import annotations

import copy
import math
import time

import torch

from ppl_vae.errors import TrainingDiverged
from ppl_vae.infer.batches import Batches, RandomStreams
from ppl_vae.infer.callbacks import Callbacks
from ppl_vae.infer.divergence import DivergencePolicy
from ppl_vae.infer.settings import FitSettings
from ppl_vae.infer.state import TrainState, interrupted
from ppl_vae.infer.step import TrainStep


class TrainingLoop:
    """Trains ``vae`` epoch by epoch and keeps the progress that the training state records.

    Args:
        vae: the VAE (``train()`` during epochs, ``eval()`` at the end).
        stepper: the :class:`ppl_vae.infer.step.TrainStep` (its ``optimizer`` holds the learning rate).
        settings: the run's :class:`ppl_vae.infer.settings.FitSettings`.
        objective: ``{"elbo": name, "sites": {site: term}}``, recorded in the state's settings.
        strategy: single-process or data-parallel (:mod:`ppl_vae.infer.strategy`).
        streams: the run's :class:`ppl_vae.infer.batches.RandomStreams`.
        batches: the run's :class:`ppl_vae.infer.batches.Batches`.

    Attributes:
        epoch, step: epochs and steps done; ``losses`` the loss per example (nats) of every step of the
        done epochs, ``history`` their records (see ``FitResult``).
    """

    def __init__(
        self,
        vae,
        stepper: TrainStep,
        settings: FitSettings,
        objective: dict,
        strategy,
        streams: RandomStreams,
        batches: Batches,
    ):
        self.vae = vae
        self.stepper = stepper
        self.optimizer = stepper.optimizer
        self.settings = settings
        self.state_settings = settings.state_settings(objective)
        self.strategy = strategy
        self.streams = streams
        self.batches = batches
        self.epoch, self.step, self.skip = 0, 0, 0  # skip: batches of the next epoch already done (resume)
        self.losses: list[float] = []
        self.epoch_losses: list[float] = []
        self.history: list[dict] = []
        self.beta: float | None = None  # at the last step: recorded in the history

    def restore(self, state: TrainState) -> None:
        """Continue from ``state`` (the VAE's parameters must already be those of the same moment)."""
        self.losses = state.losses.tolist()
        self.history = [dict(r) for r in state.history]
        self.step, self.epoch, self.skip = state.step, state.epoch, state.step_in_epoch
        self.epoch_losses = state.epoch_losses.tolist()
        self.optimizer.set_lr(state.lr)
        self.optimizer.set_state(state.optimizer)
        self.streams.restore(state.rng, state.step)

    def snapshot(self, step_in_epoch: int, epoch_start: tuple) -> dict:
        """The training state now, as a dict (:meth:`TrainState.to_dict`), with ``shuffle``/``noise`` at
        ``epoch_start``; data-parallel, a collective (every process's random stream is gathered)."""
        return TrainState(
            epoch=self.epoch,
            step=self.step,
            step_in_epoch=step_in_epoch,
            losses=torch.tensor(self.losses, dtype=torch.float64),
            epoch_losses=torch.tensor(self.epoch_losses, dtype=torch.float64),
            history=[dict(r) for r in self.history],
            lr=self.optimizer.lr,
            optimizer=copy.deepcopy(self.optimizer.get_state()),
            rng=self.streams.snapshot(epoch_start),
            settings=dict(self.state_settings),
        ).to_dict()

    def run(self, callbacks: Callbacks, divergence: DivergencePolicy) -> dict:
        """Train up to ``settings.epochs`` epochs in all; return the final state (:meth:`snapshot`).

        Raises :class:`ppl_vae.errors.TrainingInterrupted` when a callback asks to stop before the end and
        :class:`ppl_vae.errors.TrainingDiverged` (from ``divergence``) when a step cannot go on.
        """
        with callbacks.active():
            for epoch in range(self.epoch + 1, self.settings.epochs + 1):
                seconds = self._train_epoch(epoch, callbacks, divergence)
                self._end_epoch(epoch, seconds, callbacks, divergence)
        self.vae.eval()
        return self.snapshot(0, self.streams.position())

    def _train_epoch(self, epoch: int, callbacks: Callbacks, divergence: DivergencePolicy) -> float:
        """The steps of ``epoch``; the wall time they took, in seconds."""
        settings, steps_per_epoch = self.settings, self.settings.steps_per_epoch
        self.vae.train()
        start = time.perf_counter()
        epoch_start = self.streams.position()
        batches = self.batches.epoch(self.skip)
        self.streams.enter_epoch(self.step)  # resuming: the global stream as it was when stopped
        if not self.skip:
            self.epoch_losses = []
        for index, x, weight, side in batches:
            self.beta = float(settings.schedule(self.step / steps_per_epoch))  # epochs completed, as a float
            loss = self.stepper(x, weight, num_data=settings.num_data, beta=self.beta, **side) / settings.num_data
            # every process takes the same decisions
            bad, stopping = self.strategy.agree(
                bool(self.optimizer.nonfinite) or not math.isfinite(loss), callbacks.stop_requested(self.step + 1)
            )
            if bad:
                # The update was not applied when a gradient was non-finite: the parameters are still the
                # last good ones, and the sites can be named at those values.
                divergence.handle(
                    self.vae, loss, x, self.beta, epoch=epoch, step=self.step + 1, num_data=settings.num_data, side=side
                )
                continue
            self.step += 1
            self.epoch_losses.append(loss)
            callbacks.on_step()
            if index != steps_per_epoch - 1 and stopping:
                raise interrupted(callbacks.stop_reason, self.snapshot(index + 1, epoch_start))
        self.skip = 0
        if not self.epoch_losses:
            raise TrainingDiverged(f"training diverged: every step of epoch {epoch} had non-finite gradients")
        return time.perf_counter() - start

    def _end_epoch(self, epoch: int, seconds: float, callbacks: Callbacks, divergence: DivergencePolicy) -> None:
        """Record ``epoch`` (losses averaged over processes, held-out numbers), hand the state to the
        callbacks, and stop here if one asks to."""
        epoch_losses = self.strategy.mean(self.epoch_losses)  # the loss of a step: the mean over processes
        self.losses += epoch_losses
        record = {
            "epoch": epoch,
            "step": self.step,
            "train_elbo": -sum(epoch_losses) / len(epoch_losses),
            "beta": self.beta,
        }
        callbacks.add_to_record(record, epoch)
        record["seconds"] = seconds
        if divergence.restores:
            record["lr"] = self.optimizer.lr  # lowered after a divergence
        self.history.append(record)
        self.epoch = epoch
        self.epoch_losses = []
        state = self.snapshot(0, self.streams.position())
        callbacks.on_epoch_end(record, state)
        (stopping,) = self.strategy.agree(callbacks.stop_requested(self.step))
        if epoch < self.settings.epochs and stopping:
            raise interrupted(callbacks.stop_reason, state)
