"""What happens around the training loop's steps and epochs: the callbacks of :func:`ppl_vae.infer.fit.fit`.

A :class:`Callback` is a context manager (entered for the whole loop) with hooks that do nothing unless
overridden; :class:`Callbacks` calls them in order. ``fit`` uses :class:`ProgressBar`,
:class:`StopRequests` (SIGINT/SIGTERM and the ``stop`` callable), :class:`HeldoutEvaluation`,
:class:`EpochEndHook` (``on_epoch_end``, where checkpoints are written) and :class:`StartHook` (``on_start``).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator

import torch

from ppl_vae.infer.labels import OBSERVED_ROLES, accuracy


class Callback:
    """Hooks of the training loop, in the order the loop calls them."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> bool:
        return False

    def on_start(self) -> None:
        """Once, after every callback was entered and before the first step."""

    def stop_requested(self, steps: int) -> bool:
        """After a step (``steps`` counting it) and after an epoch: True asks training to stop there."""
        return False

    @property
    def stop_reason(self) -> str | None:
        """What asked to stop (a signal's name), if this callback did."""
        return None

    def on_step(self) -> None:
        """After every step that was taken (not after a skipped divergent step)."""

    def warn(self, message: str) -> bool:
        """Show a one-line warning; True when shown (else it goes to standard error)."""
        return False

    def add_to_record(self, record: dict, epoch: int) -> None:
        """Add entries to the history record of ``epoch`` (1-based)."""

    def on_epoch_end(self, record: dict, state: dict) -> None:
        """After every epoch, with its complete history record and the training state."""


class Callbacks:
    """The callbacks of one run, called in order (``None`` entries are left out)."""

    def __init__(self, callbacks: list[Callback | None]):
        self.callbacks = [c for c in callbacks if c is not None]

    @contextlib.contextmanager
    def active(self) -> Iterator[Callbacks]:
        """Enter every callback (left in reverse order, however the loop ends), then call ``on_start``."""
        with contextlib.ExitStack() as stack:
            for callback in self.callbacks:
                stack.enter_context(callback)
            for callback in self.callbacks:
                callback.on_start()
            yield self

    def stop_requested(self, steps: int) -> bool:
        return any(callback.stop_requested(steps) for callback in self.callbacks)

    @property
    def stop_reason(self) -> str | None:
        return next((c.stop_reason for c in self.callbacks if c.stop_reason is not None), None)

    def on_step(self) -> None:
        for callback in self.callbacks:
            callback.on_step()

    def warn(self, message: str) -> None:
        if not any(callback.warn(message) for callback in self.callbacks):
            print(f"warning: {message}", file=sys.stderr)

    def add_to_record(self, record: dict, epoch: int) -> None:
        for callback in self.callbacks:
            callback.add_to_record(record, epoch)

    def on_epoch_end(self, record: dict, state: dict) -> None:
        for callback in self.callbacks:
            callback.on_epoch_end(record, state)


class ProgressBar(Callback):
    """A tqdm bar over all steps (only on process 0; by default when standard error is a terminal); the
    epoch's ELBOs as its postfix; warnings written above it.

    Args:
        progress: show it (None: when standard error is a terminal).
        rank: this process's rank (only rank 0 shows a bar).
        total: steps of the whole run.
        initial: steps already done (a resumed run).
    """

    def __init__(self, progress: bool | None, rank: int, total: int, initial: int):
        self.enabled = (sys.stderr.isatty() if progress is None else progress) and rank == 0
        self.total = total
        self.initial = initial
        self.bar = None

    def __enter__(self):
        if self.enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, initial=self.initial, desc="train", unit="step", dynamic_ncols=True)
        return self

    def __exit__(self, *exc) -> bool:
        if self.bar is not None:
            self.bar.close()
        return False

    def on_step(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def warn(self, message: str) -> bool:
        if self.bar is None:
            return False
        self.bar.write(message)
        return True

    def on_epoch_end(self, record: dict, state: dict) -> None:
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.2f}" for k, v in record.items() if k.endswith("elbo")})


class StopRequests(Callback):
    """Stop at a step boundary when asked: by SIGINT or SIGTERM (with ``handle_signals``) or by ``stop``.

    While entered with ``handle_signals``, SIGINT and SIGTERM set a flag that the loop reads after every
    step; a second SIGINT raises KeyboardInterrupt at once. Only the main thread can install handlers:
    elsewhere signals are left alone.

    Args:
        handle_signals: catch SIGINT and SIGTERM.
        stop: called after every step with the number of steps done (and again after every epoch);
            True stops as a signal would.
    """

    def __init__(self, handle_signals: bool, stop: Callable[[int], bool] | None = None):
        self.enabled = handle_signals and threading.current_thread() is threading.main_thread()
        self.stop = stop
        self.received: str | None = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.received == "SIGINT" and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def __enter__(self):
        if self.enabled:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> bool:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False

    def stop_requested(self, steps: int) -> bool:
        return bool(self.received) or (self.stop is not None and self.stop(steps))

    @property
    def stop_reason(self) -> str | None:
        return self.received


class HeldoutEvaluation(Callback):
    """The held-out ELBO after every epoch: ``heldout_elbo`` and ``heldout_elbo_se`` in the epoch's record;
    for a semi-supervised model with held-out labels also ``heldout_accuracy`` and ``heldout_accuracy_se``
    (the classifier's, :func:`ppl_vae.infer.labels.accuracy`).

    Args:
        vae: the VAE in training.
        heldout: ``(M, *data_shape)`` held-out examples, binarized once (fixed across epochs).
        particles: draws of z per example.
        seed: the run's seed; epoch ``e`` is evaluated with ``seed + e``.
        strategy: evaluates (sharded when data-parallel), see :mod:`ppl_vae.infer.strategy`.
        labels: ``(M,)`` held-out labels: a conditional model's classes (passed as ``c``), or a
            semi-supervised model's truth for the accuracy (its held-out ELBO leaves y latent).
    """

    def __init__(self, vae, heldout: torch.Tensor, particles: int, seed: int, strategy, labels=None):
        self.vae = vae
        self.heldout = heldout
        self.particles = particles
        self.seed = seed
        self.strategy = strategy
        self.labels = labels
        self.role = getattr(vae, "label_role", "none")

    def add_to_record(self, record: dict, epoch: int) -> None:
        c = self.labels if self.role in OBSERVED_ROLES else None
        record["heldout_elbo"], record["heldout_elbo_se"] = self.strategy.heldout_elbo(
            self.vae, self.heldout, self.particles, self.seed + epoch, c
        )
        if self.role == "semi" and self.labels is not None:
            record["heldout_accuracy"], record["heldout_accuracy_se"] = accuracy(self.vae, self.heldout, self.labels)


class EpochEndHook(Callback):
    """Calls ``hook`` with the training state after every epoch (:func:`ppl_vae.app.run.train_run` writes
    checkpoints from here)."""

    def __init__(self, hook: Callable[[dict], None]):
        self.hook = hook

    def on_epoch_end(self, record: dict, state: dict) -> None:
        self.hook(state)


class StartHook(Callback):
    """Calls ``hook`` once every input has been checked, before the first step."""

    def __init__(self, hook: Callable[[], None]):
        self.hook = hook

    def on_start(self) -> None:
        self.hook()
