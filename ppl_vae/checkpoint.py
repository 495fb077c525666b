"""Checkpoints and run-folder files: written atomically, read without executing code.

A checkpoint is a plain dictionary of tensors, numbers, strings, lists and dicts saved with
``torch.save`` and read with ``torch.load(..., weights_only=True)``, whose restricted unpickler refuses
anything that would run code. Every file is written to a temporary file in the same folder, flushed to
disk, then renamed over the target, so a reader sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
import time
from pathlib import Path

import torch

from ppl_vae.errors import CheckpointError

FORMAT = "ppl_vae.checkpoint"
FORMAT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())          # mkstemp creates 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _remove_stale_temporaries(path)


#: A temporary file older than this was left by a writer that was killed before it could rename it.
STALE_SECONDS = 60.0


def _remove_stale_temporaries(path: Path) -> None:
    now = time.time()
    for old in path.parent.glob(f".{path.name}.*.tmp"):
        try:
            if now - old.stat().st_mtime > STALE_SECONDS:
                old.unlink()
        except OSError:
            pass


def write_json(path: str | Path, data) -> None:
    """Write ``data`` as indented JSON, atomically."""
    text = json.dumps(data, indent=2, sort_keys=False) + "\n"
    atomic_write(Path(path), lambda handle: handle.write(text.encode()))


def read_json(path: str | Path, what: str = "file") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist; is this a run folder written by `ppl-vae train`?")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{what} {path} is not valid JSON ({error}); restore it or train again") from None


def save_checkpoint(path: str | Path, *, model_spec: dict, state_dict: dict, **extra) -> None:
    """Save a checkpoint atomically.

    Args:
        model_spec: what rebuilds the architecture (``VAE.spec``); checked again on load.
        state_dict: the VAE's ``state_dict()``.
        extra: anything else weights-only-safe (optimizer state, epoch, step, ...).
    """
    from ppl_vae import __version__

    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "ppl_vae_version": __version__,
               "model_spec": model_spec, "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()}}
    payload.update(extra)
    atomic_write(Path(path), lambda handle: torch.save(payload, handle))


def load_checkpoint(path: str | Path, *, map_location="cpu") -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` without executing any code in it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; train first (`ppl-vae train --out {path.parent}`)")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        if "unsupported global" not in str(error).lower():    # not a refused object: unreadable bytes
            raise CheckpointError(f"checkpoint {path} is damaged or truncated ({type(error).__name__}); "
                                  "restore it from a copy or train again") from None
        first = str(error).strip().splitlines()[0]
        raise CheckpointError(
            f"checkpoint {path} was refused: it holds objects other than tensors and plain data ({first}); "
            "only load checkpoints written by ppl_vae") from None
    except Exception as error:  # noqa: BLE001 - torch's readers raise many types on damaged bytes
        # (RuntimeError, EOFError, BadZipFile, and from the weights-only unpickler IndexError, KeyError...)
        raise CheckpointError(f"checkpoint {path} is damaged or truncated ({type(error).__name__}); "
                              "restore it from a copy or train again") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a ppl_vae checkpoint")
    if payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {payload.get('format_version')}, this ppl_vae reads version "
            f"{FORMAT_VERSION}; use the ppl_vae release that wrote it")
    return payload
