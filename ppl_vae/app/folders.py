"""Output folders and files that ppl_vae owns, and never touching anything else.

Every folder ppl_vae creates (a run folder, a diagnostics folder, a comparison folder) holds a marker,
``.ppl_vae.json``, written the moment the folder is made. ``--overwrite`` replaces only a folder that
carries the marker of the same kind (or, for run folders written before markers existed, a folder that
holds nothing but run-folder files). It never replaces the current directory, the home directory, a
symlink, a file, a parent of an input, or a folder the user made.

Output paths are checked before any work starts (:func:`check_output_dir`, :func:`check_output_file`):
an output never equals or contains an input, its parent must be writable, and only regular files are
replaced. A run folder is locked (:func:`locked`, ``fcntl.flock`` on ``RUN/.lock``) by every command
that writes into it, so two processes never write the same folder: the second is refused at once, in
one line. ``train`` holds it for the whole training, ``train --resume`` and ``diagnose`` for their work;
``evaluate``, ``sample``, ``interpolate``, ``traverse`` and ``latent-map`` hold it from loading the run
to their last write when they write into the run folder (:func:`writing_into`), and take no lock when
they only read it (outputs elsewhere). The kernel drops the lock when its process dies, so a killed run
never leaves a stale lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path

from ppl_vae.errors import ConfigError

MARKER = ".ppl_vae.json"
LOCK = ".lock"
#: Files a run folder written before markers existed may hold; such a folder may still be replaced.
LEGACY_RUN_FILES = {
    "config.json",
    "checkpoint.pt",
    "metrics.json",
    "run.json",
    "eval.json",
    "scaling.json",
    "best.pt",
    "figures",
    "diagnostics",
    "samples",
    "grad_variance.json",
    LOCK,
}


class FolderError(ConfigError):
    """An output path that ppl_vae refuses to write or replace."""


def _resolved(path: Path) -> Path:
    return Path(os.path.abspath(path))


def _real(path: Path) -> Path:
    """Where ``path`` really is: absolute, with every symbolic link on the way followed."""
    return Path(os.path.realpath(path))


def _contains(outer: Path, inner: Path) -> bool:
    """Whether ``inner`` is ``outer`` or lies inside it, as spelled or through symbolic links."""
    for resolve in (_resolved, _real):
        a, b = resolve(outer), resolve(inner)
        if b == a or a in b.parents:
            return True
    return False


def _same_place(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name the same folder, as spelled or through symbolic links."""
    return _resolved(a) == _resolved(b) or _real(a) == _real(b)


def _check_not_special(path: Path, what: str) -> None:
    """Refuse the current directory, the home directory and the root directory, however they are spelled
    (``//``, ``/tmp/..``, ``~/.``, a path through a symbolic link); even empty, they are never an output."""
    if str(path) in ("", ".") or _same_place(path, Path.cwd()):
        raise FolderError(f"the {what} cannot be the current directory; pass --out NEW_FOLDER")
    resolved = _resolved(path)
    if _same_place(path, Path.home()):
        raise FolderError(f"the {what} cannot be {resolved}, the home directory; pass --out NEW_FOLDER")
    if resolved == resolved.parent or _real(path) == _real(path).parent:
        raise FolderError(f"the {what} cannot be {resolved.anchor or '/'}, the root directory; pass --out NEW_FOLDER")


def _nearest_existing(path: Path) -> Path:
    path = _resolved(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_parent_writable(path: Path, what: str) -> None:
    parent = _nearest_existing(path.parent)
    if not parent.is_dir():
        raise FolderError(f"cannot write {what} {path}: {parent} is a file, not a folder; choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise FolderError(
            f"cannot write {what} {path}: {parent} is not writable; choose a path in a folder you can write"
        )


def is_empty_dir(path: str | Path, *, ignore=()) -> bool:
    """Whether the folder ``path`` holds nothing but entries named in ``ignore``; a folder that cannot be
    read is refused (:class:`FolderError`)."""
    try:
        return not any(entry.name not in ignore for entry in Path(path).iterdir())
    except OSError as error:
        raise FolderError(f"cannot read {path} ({error.strerror}); choose another --out") from None


def require_empty_dir(path: str | Path, refusal: str, *, ignore=()) -> None:
    """Refuse, with the one-line ``refusal``, a folder that holds anything but entries named in ``ignore``
    (see :func:`is_empty_dir`)."""
    if not is_empty_dir(path, ignore=ignore):
        raise FolderError(refusal)


def read_marker(folder: Path) -> dict | None:
    """The marker of a folder ppl_vae made, or None."""
    path = Path(folder) / MARKER
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > 65536:
            return None
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def owned_kind(folder: Path) -> str | None:
    """The kind of ppl_vae folder ``folder`` is (``run``, ``diagnostics``, ``compare-ae``...), or None."""
    marker = read_marker(folder)
    if marker is not None and isinstance(marker.get("kind"), str):
        return marker["kind"]
    try:
        names = {p.name for p in Path(folder).iterdir()}
    except OSError:
        return None
    if {"config.json", "checkpoint.pt"} <= names and names <= LEGACY_RUN_FILES:
        return "run"  # a run folder from before markers
    return None


def write_marker(folder: Path, kind: str) -> None:
    """Write the marker (``.ppl_vae.json``: kind, creation time, version) that makes ``folder`` ours."""
    from ppl_vae.app.checkpoint import write_json
    from ppl_vae.version import __version__

    write_json(
        Path(folder) / MARKER,
        {"kind": kind, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "ppl_vae_version": __version__},
    )


def check_output_dir(path: str | Path, kind: str, *, overwrite: bool = False, inputs=()) -> Path:
    """Check, before any work, that ``path`` may be created (or, with ``overwrite``, replaced) as a
    ppl_vae folder of ``kind``; ``inputs`` are paths the command reads, which the output must not equal
    or contain. Returns the path."""
    path = Path(path)
    what = f"{kind} folder"
    _check_not_special(path, what)
    for source in inputs:
        if source is not None and _contains(path, Path(source)):
            raise FolderError(f"the {what} {path} would hold or replace the input {source}; choose an --out outside it")
    if _contains(path, Path.cwd()):
        raise FolderError(f"the {what} {path} contains the current directory; choose another --out")
    if path.is_symlink():
        raise FolderError(f"{path} is a symbolic link; ppl_vae does not write through links, pass a real folder")
    if path.exists():
        if not path.is_dir():
            raise FolderError(f"{path} exists and is not a folder; choose another --out")
        if not overwrite:
            require_empty_dir(
                path, f"{what} {path} already exists and is not empty; choose another --out or pass --overwrite"
            )
        elif not is_empty_dir(path):
            found = owned_kind(path)
            if found != kind:
                held = "a folder ppl_vae did not make" if found is None else f"a ppl_vae {found} folder"
                raise FolderError(
                    f"--overwrite replaces only a {what} made by ppl_vae, and {path} is {held}; choose another --out"
                )
        if not os.access(path, os.W_OK | os.X_OK):
            raise FolderError(f"{what} {path} is not writable; choose another --out")
    _check_parent_writable(path, what)
    return path


@contextlib.contextmanager
def claimed_output_dir(path: Path, kind: str, *, replace: bool = False, action: str = "write"):
    """Make ``path`` (checked by :func:`check_output_dir`) with its marker and hold its lock until the
    block ends. With ``replace`` an existing folder of the same kind is moved aside (under its lock, so
    never while another process works in it) and deleted. Of two processes racing for one folder, the
    one that does not hold the lock is refused."""
    path = Path(path)
    if path.exists():
        if replace and owned_kind(path) == kind:  # a folder of this kind holds files: it is never empty
            aside = path.with_name(f".{path.name}.replaced-{os.getpid()}")
            with locked(path, f"replace the {kind} folder"):
                os.replace(path, aside)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            require_empty_dir(path, f"{kind} folder {path} was created by someone else meanwhile; choose another --out")
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        path.mkdir()
    with locked(path, action):
        require_empty_dir(
            path, f"{kind} folder {path} was created by another process meanwhile; choose another --out", ignore={LOCK}
        )  # the marker too: another process made it first
        write_marker(path, kind)
        yield path


def publish_folder(out: Path, kind: str, write) -> None:
    """Fill a folder all at once: ``write(staging)`` writes every file into a hidden sibling folder, which
    gets the marker of ``kind`` and is then renamed to ``out`` (checked by :func:`check_output_dir`: empty,
    missing, or a folder of ``kind`` to replace). Nothing is half-written: on any error the staging folder
    is removed and ``out`` is left as it was."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        write(staging)
        write_marker(staging, kind)
        aside = None
        if out.exists():  # checked before: empty, or a folder of this kind to replace
            aside = out.with_name(f".{out.name}.replaced-{os.getpid()}")
            os.replace(out, aside)
        staging.rename(out)
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def check_output_file(path: str | Path, *, inputs=(), suffixes=None) -> Path:
    """Check, before any work, that ``path`` may be written: a new file or an existing regular file
    (never a folder, link to elsewhere, device or pipe), not one of ``inputs``, in a writable folder,
    with one of ``suffixes`` when given."""
    path = Path(path)
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise FolderError(f"{path} must end in {' or '.join(suffixes)}")
    for source in inputs:
        if source is not None and _contains(path, Path(source)):
            raise FolderError(f"the output {path} would replace the input {source}; choose another file")
    if path.is_symlink():
        raise FolderError(f"{path} is a symbolic link; ppl_vae does not write through links, choose another file")
    if path.exists():
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode):
            kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file (a device, pipe or socket)"
            raise FolderError(f"{path} exists and is {kind}; ppl_vae only replaces regular files, choose another")
        if not os.access(path, os.W_OK):
            raise FolderError(f"{path} is not writable; choose another file")
    _check_parent_writable(path, "output file")
    return path


def check_figure_dir(path: str | Path, *, inputs=()) -> Path:
    """Check, before any work, a folder that figures are written into (made if missing; files in it are
    replaced only where they are regular files, see :func:`check_output_file`): not a file, not a link,
    not an input, in a writable place."""
    path = Path(path)
    for source in inputs:  # the folder is not replaced, only files in it: it may hold inputs, not be one
        if source is not None and _resolved(path) == _resolved(Path(source)):
            raise FolderError(f"the output folder {path} is the input {source}; choose another")
    if path.is_symlink():
        raise FolderError(f"{path} is a symbolic link; ppl_vae does not write through links, pass a real folder")
    if path.exists():
        if not path.is_dir():
            raise FolderError(f"{path} exists and is not a folder; choose another output folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise FolderError(f"output folder {path} is not writable; choose another")
    else:
        _check_parent_writable(path, "output folder")
    return path


@contextlib.contextmanager
def writing_into(run_dir: str | Path, outputs, action: str):
    """Hold the lock of the run folder ``run_dir`` (:func:`locked`: the lock that train, ``train --resume``
    and diagnose hold) for ``action`` while the block loads the run and writes ``outputs``, when any of
    them lies inside the folder; a block that writes elsewhere (or nothing: ``None`` entries) only reads the
    run and takes no lock. While another process holds the lock, refuses at once with one line. A
    ``run_dir`` that is not a folder is left to the loader to refuse (with its own message)."""
    run_dir = Path(run_dir)
    inside = run_dir.is_dir() and any(out is not None and _contains(run_dir, Path(out)) for out in outputs)
    if not inside:
        yield
        return
    with locked(run_dir, action):
        yield


@contextlib.contextmanager
def locked(folder: str | Path, action: str):
    """Hold an exclusive lock on ``folder`` (a run or output folder) for ``action``; refuse at once
    with one line if another process holds it. Does nothing where ``fcntl`` does not exist."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FolderError(f"folder {folder} does not exist; pass the run folder `ppl-vae train` printed")
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no locking
        yield
        return
    try:
        fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as error:
        raise FolderError(
            f"cannot lock {folder} to {action} ({error.strerror}); check the folder's permissions"
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            raise FolderError(
                f"{folder} is in use by {holder}; wait for it to finish, or choose another folder"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} ({action})".encode(), 0)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
