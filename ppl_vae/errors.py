"""Errors that carry a message meant for the user.

Every error a user can cause by bad input derives from :class:`PplVaeError`. Its message is a single
line that names the problem and the fix; the CLI prints it without a traceback and exits with code 2.
Anything else that escapes is a bug in ppl_vae.
"""


class PplVaeError(Exception):
    """Base class of the errors caused by input: bad data, bad arguments, bad files."""


class DataError(PplVaeError, ValueError):
    """A data set could not be found, read or used as it is."""


class ConfigError(PplVaeError, ValueError):
    """A configuration value or a combination of values is invalid."""


class CheckpointError(PplVaeError):
    """A checkpoint or run folder is missing, damaged, or does not match its configuration."""


class TrainingDiverged(PplVaeError):
    """The ELBO or a gradient became NaN or infinite (:func:`ppl_vae.infer.fit.fit`)."""


class TrainingInterrupted(PplVaeError):
    """SIGINT or SIGTERM (or ``stop``) ended training at a step boundary; ``state`` continues it exactly.

    Attributes:
        state: the training state at the stop (the dict that ``fit``'s ``resume`` takes).
        signal_name: ``"SIGINT"``, ``"SIGTERM"`` or ``"stop"``.
    """

    def __init__(self, message: str, state: dict, signal_name: str):
        super().__init__(message)
        self.state = state
        self.signal_name = signal_name


class DistributedError(PplVaeError):
    """A collective failed or timed out: another process of the job died or stopped."""


def require_int(value, name: str, minimum: int = 1) -> int:
    """``value`` when it is an integer (not a bool) of at least ``minimum``; ConfigError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value
