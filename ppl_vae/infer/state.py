"""The training state: everything that continues a :func:`ppl_vae.infer.fit.fit` run exactly.

:class:`TrainState` is the typed form of the dict that ``fit`` hands to ``on_epoch_end``, carries in
:class:`ppl_vae.errors.TrainingInterrupted` and ``FitResult.state``, and takes back as ``resume``.
The dict is what is stored (``torch.save``, loaded with ``weights_only=True``): tensors, numbers,
strings, lists and dicts only, with the same keys and types as in every earlier version.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ppl_vae.errors import ConfigError, TrainingInterrupted

#: Settings that must not change when a run is resumed (epochs may grow).
RESUME_SETTINGS = (
    "batch_size",
    "seed",
    "binarize",
    "elbo",
    "num_particles",
    "beta",
    "kl_schedule",
    "num_data",
    "world_size",
)


@dataclass(frozen=True)
class TrainState:
    """The state of training at a step boundary.

    Attributes:
        epoch: epochs completed.
        step: optimisation steps taken in all (skipped divergent steps not counted).
        step_in_epoch: batches of the current epoch already done (0 at an epoch's end).
        losses: ``(S,)`` float64, the loss per example (-ELBO / N, nats) of every step of the completed epochs.
        epoch_losses: ``(K,)`` float64, this process's losses of the steps of the current epoch so far.
        history: one record per completed epoch (see ``FitResult.history``).
        lr: the learning rate in force (lowered after divergences with ``on_divergence="restore"``).
        optimizer: :meth:`ppl_vae.infer.optim.GuardedAdam.get_state`.
        rng: the random streams (:meth:`ppl_vae.infer.batches.RandomStreams.snapshot`): ``shuffle`` and
            ``noise`` as at the start of the current epoch, ``torch`` (and ``cuda``) now, ``ranks`` with
            every process's ``torch``/``cuda`` streams when data-parallel.
        settings: :meth:`ppl_vae.infer.settings.FitSettings.state_settings` of the run.
    """

    epoch: int
    step: int
    step_in_epoch: int
    losses: torch.Tensor
    epoch_losses: torch.Tensor
    history: list[dict]
    lr: float
    optimizer: dict
    rng: dict
    settings: dict

    def to_dict(self) -> dict:
        """The state as the dict that is stored and resumed from (the fields in order, values as they are)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, state: dict) -> TrainState:
        """The state of a :meth:`to_dict` dict (extra keys are ignored); ConfigError when keys are missing."""
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [name for name in names if name not in state]
        if missing:
            raise ConfigError(
                f"the training state to resume is incomplete (missing {', '.join(missing)}); "
                "it was not written by ppl_vae's fit"
            )
        return cls(**{name: state[name] for name in names})

    def check_resumable(self, settings: dict, epochs: int) -> TrainState:
        """This state, when a run with ``settings`` (:meth:`FitSettings.state_settings`) and ``epochs`` in
        all may continue it; ConfigError naming the setting that differs, or saying there is nothing left."""
        for name in RESUME_SETTINGS:
            before = self.settings.get(name, 1 if name == "world_size" else None)
            if before != settings[name]:
                what = "processes" if name == "world_size" else name
                raise ConfigError(
                    f"cannot resume: {what} was {before!r} when training started and is "
                    f"{settings[name]!r} now; resume with the original settings"
                )
        if epochs < self.epoch or (epochs == self.epoch and self.step_in_epoch == 0):
            raise ConfigError(
                f"nothing to resume: {self.epoch} epochs are already done and epochs is {epochs}; "
                "ask for more epochs to train longer"
            )
        return self


def interrupted(reason: str | None, state: dict) -> TrainingInterrupted:
    """The error that ends training stopped by ``reason`` (a signal's name; None: the ``stop`` callable)
    with the state ``state`` (a :meth:`TrainState.to_dict` dict) to continue from."""
    name = reason or "stop"
    where = (
        f"after epoch {state['epoch']}"
        if state["step_in_epoch"] == 0
        else f"in epoch {state['epoch'] + 1} after step {state['step_in_epoch']}"
    )
    return TrainingInterrupted(f"training stopped by {name} {where} ({state['step']} steps in all)", state, name)
