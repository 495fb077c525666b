"""The settings of one :func:`ppl_vae.infer.fit.fit` run: typed, frozen, checked once.

:meth:`FitSettings.from_arguments` checks fit's arguments and resolves the ones that depend on the VAE
(``binarize="auto"``) or are given as specs (``kl_schedule``); the training loop reads the settings
and derived sizes (per-process and global batch, steps per epoch) from here.
:meth:`FitSettings.state_settings` is the ``settings`` dict of the training state, which a resumed run
must match (see :meth:`ppl_vae.infer.state.TrainState.check_resumable`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ppl_vae.errors import ConfigError
from ppl_vae.infer.compiled import COMPILE_CHOICES
from ppl_vae.infer.objectives import resolve_binarize
from ppl_vae.infer.schedules import Constant, parse_schedule


@dataclass(frozen=True)
class FitSettings:
    """What one training run is (see :func:`ppl_vae.infer.fit.fit` for each argument).

    Attributes:
        epochs, batch_size, lr: the budget; ``batch_size`` as requested (per process), not capped.
        seed: seeds shuffling, binarization and the draws of z.
        binarize: the binarization actually used: ``"dynamic"``, ``"threshold"`` or ``"none"``.
        elbo, num_particles, beta: the objective.
        kl_schedule: the schedule as given (a spec string or None; ``repr`` of a callable).
        schedule: ``epoch_progress -> beta``, the parsed schedule.
        heldout_particles, heldout_seed: the per-epoch held-out evaluation.
        on_divergence: ``"stop"`` or ``"restore"``.
        num_data: training examples N.
        world_size: processes training together (1 unless data-parallel).
        compile: how steps run: ``"auto"``, ``"on"``, ``"trace"`` or ``"off"`` (:mod:`ppl_vae.infer.compiled`).
    """

    epochs: int
    batch_size: int
    lr: float
    seed: int
    binarize: str
    elbo: str
    num_particles: int
    beta: float
    kl_schedule: str | None
    schedule: Callable[[float], float] = field(repr=False)
    heldout_particles: int
    heldout_seed: int
    on_divergence: str
    num_data: int
    world_size: int = 1
    compile: str = "auto"

    @classmethod
    def from_arguments(
        cls,
        train: torch.Tensor,
        likelihood,
        *,
        epochs: int,
        batch_size: int,
        lr: float,
        seed: int,
        binarize: str,
        elbo: str,
        num_particles: int,
        beta: float,
        kl_schedule,
        heldout_particles: int,
        heldout_seed: int,
        on_divergence: str,
        world_size: int = 1,
        compile: str = "auto",
    ) -> FitSettings:
        """Check fit's arguments (ConfigError naming the first bad one) and resolve ``binarize`` for
        ``likelihood`` (``None`` counts as binary) and ``kl_schedule`` (None, a spec or a callable)."""
        for name, value in (("epochs", epochs), ("batch_size", batch_size), ("heldout_particles", heldout_particles)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise ConfigError(f"lr must be a positive number, got {lr!r}")
        if compile not in COMPILE_CHOICES:
            raise ConfigError(f"compile must be one of {', '.join(COMPILE_CHOICES)}, got {compile!r}")
        if on_divergence not in ("stop", "restore"):
            raise ConfigError(f"on_divergence must be 'stop' or 'restore', got {on_divergence!r}")
        num_data = train.shape[0]
        if num_data < 1:
            raise ConfigError("the training set is empty")
        binarize = resolve_binarize(binarize, likelihood)
        if kl_schedule is None or isinstance(kl_schedule, str):
            spec, schedule = kl_schedule, parse_schedule(kl_schedule or "constant", beta)
        else:
            spec, schedule = repr(kl_schedule), kl_schedule
        return cls(
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            binarize=binarize,
            elbo=elbo,
            num_particles=num_particles,
            beta=beta,
            kl_schedule=spec,
            schedule=schedule,
            heldout_particles=heldout_particles,
            heldout_seed=heldout_seed,
            on_divergence=on_divergence,
            num_data=num_data,
            world_size=world_size,
            compile=compile,
        )

    @property
    def process_batch(self) -> int:
        """Examples per process and step: ``batch_size``, at most the whole data set."""
        return min(self.batch_size, self.num_data)

    @property
    def global_batch(self) -> int:
        """Examples of one step over all processes."""
        return min(self.process_batch * self.world_size, self.num_data)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.num_data / self.global_batch)

    def planned_steps(self) -> dict[int, int]:
        """``{examples in a batch: steps of the whole run}`` in this process (full batches, and the last,
        smaller batch of each epoch when the data do not divide), for ``compile="auto"``."""
        full, last = divmod(self.num_data, self.process_batch) if self.world_size == 1 else (0, 0)
        planned = {self.process_batch: self.epochs * full} if full else {}
        if last:
            planned[last] = self.epochs
        return planned

    @property
    def varies(self) -> bool:
        """True when beta changes during training (a schedule other than a constant)."""
        return not isinstance(self.schedule, Constant)

    def state_settings(self, objective: dict) -> dict:
        """The ``settings`` dict of the training state (its keys and types are those of every earlier
        version: checkpoints store it). ``objective``: ``{"elbo": name, "sites": {site: term}}``."""
        return {
            "batch_size": self.batch_size,
            "seed": self.seed,
            "binarize": self.binarize,
            "elbo": self.elbo,
            "num_particles": self.num_particles,
            "beta": float(self.beta),
            "kl_schedule": self.kl_schedule,
            "num_data": self.num_data,
            "world_size": self.world_size,
            "objective": objective,
        }
