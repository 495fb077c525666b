"""One validation layer for every entry point: CLI flags, config files and run-folder files.

Every number a user can give has one entry in :data:`BOUNDS` (its type, its range and why), and the
same checks serve argparse (:func:`arg`) and :class:`ppl_vae.app.config.Config`
(:meth:`Config.validate <ppl_vae.app.config.Config.validate>`).
Sizes that allocate memory are bounded twice: by a range that no real use reaches, and by the memory
budget of :mod:`ppl_vae.limits` where the allocation depends on several values at once (for example
``num_samples`` times the size of one example). A value out of range is a one-line
:class:`~ppl_vae.errors.ConfigError` naming the field, the value and the accepted range. ``0`` never
means "the default": where a default exists, leave the flag out.

This module imports nothing heavy, so the CLI can check its flags before importing torch.
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass
from pathlib import Path

from ppl_vae.errors import ConfigError

#: Seeds go to Python's ``random``, NumPy's legacy ``np.random.seed`` (which accepts < 2**32) and
#: torch generators, some offset by small constants; 2**31 - 1 leaves room for the offsets.
MAX_SEED = 2**31 - 1


@dataclass(frozen=True)
class Bound:
    """An integer or real field's accepted range (``low``/``high`` inclusive unless ``open_low``)."""

    kind: type  # int or float
    low: float | None = None
    high: float | None = None
    open_low: bool = False  # exclusive lower bound (e.g. a learning rate > 0)

    def describe(self) -> str:
        kind = "an integer" if self.kind is int else "a number"
        if self.low is not None and self.high is not None:
            low = f"> {_show(self.low)}" if self.open_low else f">= {_show(self.low)}"
            return f"{kind} {low} and <= {_show(self.high)}"
        if self.low is not None:
            return f"{kind} {'>' if self.open_low else '>='} {_show(self.low)}"
        return kind


def _show(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() and abs(value) >= 1000 else f"{value:g}"


#: Every bounded number, by field name (config fields and CLI flags share names with ``_`` for ``-``).
BOUNDS: dict[str, Bound] = {
    "latent_dim": Bound(int, 1, 4096),
    "hidden_dim": Bound(int, 1, 65536),  # one entry of hidden_dims
    "epochs": Bound(int, 1, 1_000_000),
    "batch_size": Bound(int, 1, 1_048_576),
    "lr": Bound(float, 0, 10, open_low=True),
    "seed": Bound(int, 0, MAX_SEED),
    "split_seed": Bound(int, 0, MAX_SEED),
    "particles": Bound(int, 1, 100_000),
    "num_particles": Bound(int, 1, 1_000_000),
    "beta": Bound(float, 0, 1e6),
    "heldout_fraction": Bound(float, 0, 0.99, open_low=True),
    "image_size": Bound(int, 1, 4096),
    "checkpoint_every": Bound(int, 1, 1_000_000),
    "num_samples": Bound(int, 1, 1_000_000),
    "threads": Bound(int, 1, 1024),
    "labelled": Bound(int, 1, 1_000_000_000),
    "alpha": Bound(float, 0, 1e9),
    "condition": Bound(int, 0, 1_000_000),
}
MAX_HIDDEN_LAYERS = 32


def check_number(value, name: str, bound: Bound | None = None):
    """``value`` if it is a finite number of the right kind within ``bound`` (``BOUNDS[name]`` by
    default); :class:`ConfigError` naming ``name`` otherwise. Booleans are not numbers here."""
    bound = bound or BOUNDS[name]
    ok_type = isinstance(value, int) if bound.kind is int else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or not math.isfinite(value):
        raise ConfigError(f"{name} must be {bound.describe()}, got {value!r}")
    too_low = bound.low is not None and (value <= bound.low if bound.open_low else value < bound.low)
    too_high = bound.high is not None and value > bound.high
    if too_low or too_high:
        raise ConfigError(f"{name} must be {bound.describe()}, got {value!r}")
    return value


def check_string(value, name: str, *, choices=None, max_length: int = 4096) -> str:
    """``value`` if it is one line of text (at most ``max_length`` characters, no NUL), one of ``choices``
    when given; else a one-line :class:`~ppl_vae.errors.ConfigError` naming ``name``."""
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be a string, got {value!r}")
    if len(value) > max_length or "\x00" in value or "\n" in value:
        raise ConfigError(f"{name} must be one line of at most {max_length} characters without NUL bytes")
    if choices is not None and value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
    return value


def check_bool(value, name: str) -> bool:
    """``value`` if it is ``True`` or ``False`` (not 0/1 or a string); else a :class:`~ppl_vae.errors.ConfigError`."""
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    return value


def check_hidden_dims(value, name: str = "hidden_dims") -> list[int]:
    """``value`` as a list of layer widths, each within ``BOUNDS["hidden_dim"]``, at most ``MAX_HIDDEN_LAYERS``
    of them; else a :class:`~ppl_vae.errors.ConfigError`."""
    if not isinstance(value, (list, tuple)) or len(value) > MAX_HIDDEN_LAYERS:
        raise ConfigError(f"{name} must be a list of at most {MAX_HIDDEN_LAYERS} positive integers, got {value!r}")
    for width in value:
        check_number(width, f"each of {name}", BOUNDS["hidden_dim"])
    return list(value)


def check_path(value, name: str) -> str:
    """A path given as text: one line, no NUL bytes, not absurdly long."""
    return check_string(value if not isinstance(value, Path) else str(value), name, max_length=4096)


# -- argparse types: the same checks, for flags ---------------------------------------------------------------


def _parse_number(text: str, kind: type):
    text = text.strip()
    if kind is int:
        if not text.lstrip("+-").isdigit() or len(text) > 30:
            raise ValueError
        return int(text)
    value = float(text)
    return value


def arg(name: str, bound: Bound | None = None):
    """An argparse ``type=`` that parses a number and checks it against ``BOUNDS[name]`` (or ``bound``)."""
    bound = bound or BOUNDS[name]
    flag = "--" + name.replace("_", "-")

    def parse(text: str):
        try:
            value = _parse_number(text, bound.kind)
            return check_number(value, flag, bound)
        except (ValueError, ConfigError):  # argparse prefixes "argument --flag: "
            raise argparse.ArgumentTypeError(f"must be {bound.describe()}, got {text!r}") from None

    parse.__name__ = bound.kind.__name__  # argparse names the type in some messages
    return parse


def count(flag: str, low: int = 1, high: int = 1_000_000):
    """An argparse ``type=`` for a bounded integer flag that is not a config field."""
    return arg(flag.lstrip("-").replace("-", "_"), Bound(int, low, high))


def positive_real(flag: str, high: float = 1e6):
    """An argparse ``type=`` for a float in ``(0, high]``, named after ``flag`` in its error message."""
    return arg(flag.lstrip("-").replace("-", "_"), Bound(float, 0, high, open_low=True))


def path_arg(text: str) -> Path:
    """An argparse ``type=`` for paths: one line, no NUL bytes."""
    try:
        check_path(text, "path")
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return Path(text)


def max_threads() -> int:
    """The largest ``--threads`` accepted: four per CPU of this machine."""
    return max(1, (os.cpu_count() or 1) * 4)
