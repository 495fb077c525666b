"""KL schedules: the weight beta of the KL part of the ELBO as a function of training progress.

The VAE applies beta with ``poutine.scale`` on the latent site in model and guide (``poutine.mask``
at beta = 0), so a schedule only decides the number; ``fit`` passes it to every training step. A schedule is
any callable ``schedule(epoch_progress) -> beta`` where ``epoch_progress`` counts epochs as a float
(0.5 = half-way through the first epoch); the ones here are small frozen dataclasses that also
describe themselves for the run config.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ppl_vae.errors import ConfigError


@dataclass(frozen=True)
class Constant:
    """beta = ``beta`` throughout (1 is the ELBO itself)."""

    beta: float = 1.0

    def __call__(self, epoch_progress: float) -> float:
        return self.beta


@dataclass(frozen=True)
class LinearWarmup:
    """beta rises linearly from 0 to ``beta`` over the first ``epochs`` epochs, then stays there
    (KL annealing against early posterior collapse)."""

    epochs: float = 10.0
    beta: float = 1.0

    def __call__(self, epoch_progress: float) -> float:
        return self.beta * min(1.0, epoch_progress / self.epochs)


@dataclass(frozen=True)
class Cyclical:
    """Cyclical annealing (Fu et al. 2019): in every period of ``period`` epochs beta rises linearly
    from 0 to ``beta`` during the first ``ratio`` of the period, then stays at ``beta``."""

    period: float = 10.0
    ratio: float = 0.5
    beta: float = 1.0

    def __call__(self, epoch_progress: float) -> float:
        phase = (epoch_progress % self.period) / self.period
        return self.beta * min(1.0, phase / self.ratio)


def describe(schedule) -> dict:
    """The schedule as plain data for ``config.json`` / ``metrics.json``."""
    try:
        return {"kind": type(schedule).__name__, **asdict(schedule)}
    except TypeError:
        return {"kind": type(schedule).__name__}


def parse_schedule(spec: str, beta: float = 1.0):
    """``constant``, ``warmup:EPOCHS`` or ``cyclical:PERIOD[:RATIO]`` -> a schedule reaching ``beta``."""
    name, *values = spec.split(":")
    try:
        numbers = [float(v) for v in values]
    except ValueError:
        raise ConfigError(
            f"KL schedule {spec!r} has a value that is not a number; e.g. warmup:10 or cyclical:10:0.5"
        ) from None
    if name == "constant" and not numbers:
        return Constant(beta)
    if name == "warmup" and len(numbers) == 1 and numbers[0] > 0:
        return LinearWarmup(numbers[0], beta)
    if name == "cyclical" and len(numbers) in (1, 2) and numbers[0] > 0 and (len(numbers) == 1 or 0 < numbers[1] <= 1):
        return Cyclical(numbers[0], numbers[1] if len(numbers) == 2 else 0.5, beta)
    raise ConfigError(
        f"unknown KL schedule {spec!r}; use constant, warmup:EPOCHS (e.g. warmup:10) or "
        "cyclical:PERIOD[:RATIO] (e.g. cyclical:10:0.5)"
    )
