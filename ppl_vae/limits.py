"""Resource limits for everything read from outside: data files, checkpoints, sizes asked for on the CLI.

A 64-byte npz member can declare terabytes, a few-kilobyte checkpoint can expand to gigabytes and a
flag such as ``--latent-dim 10**9`` reaches the allocator before anything fails. Every reader and every
size argument checks what it is about to allocate against one budget, *before* allocating, and refuses
with a one-line error that names the limit and how to raise it.

The budget is derived from the machine: a quarter of its physical memory (at most 64 GiB per single
array or tensor, and the same for a whole file). ``PPL_VAE_MAX_MEMORY`` (bytes, or with a suffix K, M,
G, T: ``PPL_VAE_MAX_MEMORY=16G``) replaces it explicitly; the CLI's ``--max-memory`` sets the same
(:func:`set_memory_limit`) and wins over the variable. A refusal names where its limit came from (the
machine's default, the flag or the variable) and the fix that fits it (:func:`memory_limit_source`).
This module imports nothing heavy, so the CLI can use it at start-up.
"""

from __future__ import annotations

import os
import re

from ppl_vae.errors import ConfigError, PplVaeError

#: The environment variable and the CLI flag that set the limit (the flag wins).
ENV_VAR = "PPL_VAE_MAX_MEMORY"
FLAG = "--max-memory"
_FRACTION_OF_RAM = 4  # the default budget is physical memory / 4
_FALLBACK_BYTES = 2 * 1024**3  # when the machine does not say how much memory it has
_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(text: str, what: str = ENV_VAR) -> int:
    """``"16G"`` -> 17179869184. Accepts an integer number of bytes or one with a K/M/G/T suffix."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", str(text), flags=re.IGNORECASE)
    if match is None or float(match.group(1)) <= 0:
        raise ConfigError(f"{what} must be a positive size such as 8G, 512M or 1000000 (bytes), got {text!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def physical_memory() -> int | None:
    """Bytes of physical memory, or None where the machine does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def memory_limit() -> int:
    """The largest number of bytes one input (file, array, tensor, requested buffer) may need."""
    given = os.environ.get(ENV_VAR)
    if given:
        return parse_size(given)
    total = physical_memory()
    return total // _FRACTION_OF_RAM if total else _FALLBACK_BYTES


#: The value the CLI's ``--max-memory`` wrote into the environment in this process (None: not given).
_flag = {"value": None}


def set_memory_limit(text: str, flag: str = FLAG) -> int:
    """Set the limit from the command-line ``flag`` (``"64M"``): parsed, written to ``PPL_VAE_MAX_MEMORY``
    (so that processes started from this one inherit it) and remembered as coming from the flag, so that
    refusals name the flag. Returns the limit in bytes."""
    nbytes = parse_size(text, flag)
    os.environ[ENV_VAR] = _flag["value"] = str(nbytes)
    return nbytes


def memory_limit_source() -> str:
    """Where :func:`memory_limit` comes from: ``"--max-memory"`` (the flag, in this process),
    ``"environment"`` (``PPL_VAE_MAX_MEMORY``), ``"machine"`` (a quarter of the physical memory) or
    ``"fallback"`` (the fixed default of a machine that does not report its memory)."""
    given = os.environ.get(ENV_VAR)
    if given:
        return FLAG if given == _flag["value"] else "environment"
    return "machine" if physical_memory() else "fallback"


def _origin_and_fix() -> tuple[str, str]:
    """How a refusal names the limit's origin, and the fix that fits that origin."""
    source = memory_limit_source()
    if source == FLAG:
        return f"set with {FLAG}", f"raise it with a larger {FLAG}"
    if source == "environment":
        given = os.environ.get(ENV_VAR, "").strip()
        return (
            f"set with {ENV_VAR}={given} in the environment",
            f"raise {ENV_VAR} (or pass a larger {FLAG}, which wins over it)",
        )
    both = f"raise it with {FLAG} SIZE or {ENV_VAR}=SIZE"
    if source == "machine":
        return "a quarter of this machine's memory", both
    return "the default where the machine does not report its memory", both


def describe_limit(limit: int | None = None) -> str:
    """``"the limit of 64.0 MiB (set with --max-memory); raise it with a larger --max-memory"``: the limit
    (default: :func:`memory_limit`), where it came from and how to raise it, for one-line refusals."""
    limit = memory_limit() if limit is None else limit
    origin, fix = _origin_and_fix()
    return f"the limit of {format_bytes(limit)} ({origin}); {fix}"


def format_bytes(n: float) -> str:
    """A byte count for messages, in binary units: ``"512 B"``, ``"1.5 GiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover - loop always returns


def check_bytes(nbytes: int | float, what: str, *, error: type[PplVaeError] = ConfigError) -> None:
    """Refuse ``what`` when it would need more than :func:`memory_limit` bytes.

    ``what`` names the thing, e.g. ``"npz member 'x_train' of data.npz (shape (10**9, 784), float64)"``.
    """
    limit = memory_limit()
    if nbytes > limit:
        raise error(f"{what} would need {format_bytes(nbytes)}, more than {describe_limit(limit)} if this is intended")


def check_elements(
    count: int | float, what: str, *, bytes_per_element: int = 4, error: type[PplVaeError] = ConfigError
) -> None:
    """:func:`check_bytes` for ``count`` elements of ``bytes_per_element`` bytes (float32 by default)."""
    check_bytes(count * bytes_per_element, what, error=error)


def check_disk(folder, nbytes: int | float, what: str, *, error: type[PplVaeError] = ConfigError) -> None:
    """Refuse to start work whose output (``nbytes``) would not fit the free space of the disk that
    holds ``folder`` (or its nearest existing parent)."""
    import shutil
    from pathlib import Path

    path = Path(os.path.abspath(folder))
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        return
    if nbytes > free:
        raise error(
            f"{what} needs about {format_bytes(nbytes)} of disk but {path} has {format_bytes(free)} free; "
            "free disk space or write elsewhere (--out)"
        )
