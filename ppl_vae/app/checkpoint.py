"""Checkpoints and run-folder files: written atomically, read without executing code.

A checkpoint is a plain dictionary of tensors, numbers, strings, lists and dicts saved with
``torch.save`` and read with ``torch.load(..., weights_only=True)``, whose restricted unpickler refuses
anything that would run code. Every file is written to a temporary file in the same folder, flushed to
disk, then renamed over the target, so a reader sees the old file or the new one, never half of one.

Reading also never allocates more than the file honestly holds. A checkpoint of a few kilobytes can
otherwise expand to gigabytes: compressed zip members (torch.save writes none), storages declared
larger than their bytes, ``bytearray(10**10)`` or ``torch.FloatTensor(10**10)`` called by the pickle
(both allowed by torch's weights-only unpickler), one storage behind thousands of tensors or a
stride-0 tensor of a billion elements (each copied in full by ``load_state_dict``, ``clone`` or
Adam), or a pickle whose shared references make a small file a huge tree. So :func:`load_checkpoint`
checks, in order and before anything large exists:

1. the zip directory: members stored (not compressed) within the file, sizes summed under
   :func:`ppl_vae.limits.memory_limit`, a small ``data.pkl``;
2. the pickle, by a dry run whose only callables are stubs that record what torch would build
   (tensor rebuilds, ``OrderedDict``, storage types; any other global is refused) and whose storages
   must match their zip members byte for byte;
3. the resulting tree (on the dry run, then again on what ``torch.load`` returns): plain containers
   nested at most :data:`MAX_DEPTH` deep with at most :data:`MAX_NODES` nodes counting repeats,
   contiguous CPU tensors with no zero or overlapping strides that each own their storage exactly,
   no storage behind two tensors, and the bytes of everything reachable (repeats counted again)
   within the memory limit.
"""

from __future__ import annotations

import collections
import errno
import io
import json
import math
import os
import pickle
import re
import stat
import tempfile
import time
import zipfile
from pathlib import Path

import torch

from ppl_vae.errors import CheckpointError
from ppl_vae.limits import check_bytes, format_bytes, memory_limit

FORMAT = "ppl_vae.app.checkpoint"
FORMAT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class WriteError(CheckpointError, OSError):
    """A file could not be written: the disk is full, the folder is read-only, ... (one-line message).

    Also an :class:`OSError` (with the ``errno`` of the failure), so code that catches ``OSError``
    around a save keeps working."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG}
_DENIED = {errno.EACCES, errno.EPERM, errno.EROFS}


def _write_error(path: Path, error: OSError) -> WriteError:
    reason = (error.strerror or str(error) or type(error).__name__).strip().splitlines()[0]
    if error.errno in _FULL:
        fix = f"free space on the disk that holds {path.parent} (or choose another folder) and run again"
    elif error.errno in _DENIED:
        fix = f"make {path.parent} writable or choose another output folder"
    else:
        fix = f"check {path.parent} and run again"
    out = WriteError(f"could not write {path}: {reason}; {fix}; any previous {path.name} was left unchanged")
    out.errno = error.errno
    return out


def atomic_write(path: Path, write) -> None:
    """Write ``path`` by calling ``write(handle)`` on a temporary file in the same folder, then renaming it.

    A failure at any point leaves ``path`` as it was (the old file, or no file) and removes the temporary
    file; an :class:`OSError` (disk full, folder not writable, ...) becomes a one-line :class:`WriteError`.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException as error:
        if tmp is not None:
            try:
                Path(tmp).unlink(missing_ok=True)
            except OSError:
                pass
        if isinstance(error, OSError) and not isinstance(error, WriteError):
            raise _write_error(path, error) from None
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


#: The largest run-folder JSON file read (config.json, metrics.json, run.json, scaling.json, ...).
MAX_JSON_BYTES = 64 * 1024**2


def _refuse_constant(name: str):
    raise ValueError(f"the non-standard literal {name}")


def read_json(path: str | Path, what: str = "file", *, allow_nan: bool = False) -> dict:
    """A run-folder JSON object, read safely: at most ``min(64 MiB, memory limit / 8)`` bytes, strict
    UTF-8, a JSON object at the top, and (unless ``allow_nan``) no ``NaN``/``Infinity`` literals.
    Every failure is a one-line :class:`CheckpointError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist; is this a run folder written by `ppl-vae train`?")
    bound = min(MAX_JSON_BYTES, memory_limit() // 8)
    damaged = f"restore {path.name} from a copy or train again"
    try:
        with open(path, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise CheckpointError(f"{what} {path} is not a regular file; {damaged}")
            raw = handle.read(bound + 1)  # never more than the bound, even if the file grows
    except OSError as error:
        raise CheckpointError(
            f"{what} {path} cannot be read ({error.strerror or type(error).__name__}); check its permissions"
        ) from None
    if len(raw) > bound:
        raise CheckpointError(
            f"{what} {path} is larger than {format_bytes(bound)}, far more than ppl_vae writes; {damaged}"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise CheckpointError(f"{what} {path} is not UTF-8 text (byte {error.start}); {damaged}") from None
    try:
        data = json.loads(text, **({} if allow_nan else {"parse_constant": _refuse_constant}))
    except json.JSONDecodeError as error:
        raise CheckpointError(
            f"{what} {path} is not valid JSON ({error.msg} at line {error.lineno} column {error.colno}); {damaged}"
        ) from None
    except RecursionError:
        raise CheckpointError(f"{what} {path} is nested too deeply to be a ppl_vae file; {damaged}") from None
    except ValueError as error:  # NaN/Infinity, or an integer with too many digits
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{what} {path} is not valid JSON here ({first}); {damaged}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{what} {path} holds a JSON {type(data).__name__}, not an object; {damaged}")
    return data


def _compact(obj, memo: dict, storages: set):
    """``obj`` with every tensor detached, on the CPU, contiguous and owning exactly its own storage,
    which :func:`load_checkpoint` requires: views are copied, and so is a second tensor object on a
    storage already used (two state-dict entries may be one parameter). Containers and tensor objects
    referenced twice stay shared."""
    key = id(obj)
    if key in memo:
        return memo[key][1]
    if isinstance(obj, torch.Tensor):
        out = obj.detach().cpu()
        pointer = out.untyped_storage().data_ptr() if out.numel() else None
        if not _owns_storage(out) or pointer in storages:
            out = out.clone(memory_format=torch.contiguous_format)
            pointer = out.untyped_storage().data_ptr() if out.numel() else None
        if pointer is not None:
            storages.add(pointer)
    elif type(obj) in (dict, collections.OrderedDict):
        out = type(obj)((k, _compact(v, memo, storages)) for k, v in obj.items())
    elif type(obj) is list:
        out = [_compact(v, memo, storages) for v in obj]
    elif type(obj) is tuple:
        out = tuple(_compact(v, memo, storages) for v in obj)
    else:
        return obj
    memo[key] = (obj, out)  # keep obj alive so that its id is not reused
    return out


def _owns_storage(t: torch.Tensor) -> bool:
    return (
        t.layout == torch.strided
        and t.storage_offset() == 0
        and _is_dense(tuple(t.shape), t.stride())
        and t.untyped_storage().nbytes() == t.numel() * t.element_size()
    )


def save_checkpoint(path: str | Path, *, model_spec: dict, state_dict: dict, **extra) -> None:
    """Save a checkpoint atomically.

    Args:
        model_spec: what rebuilds the architecture (``VAE.spec``); checked again on load.
        state_dict: the VAE's ``state_dict()``.
        extra: anything else weights-only-safe (optimizer state, epoch, step, ...).

    Every tensor is saved contiguous and owning its storage (views are copied; two tensors that
    share a storage are saved as two), as :func:`load_checkpoint` requires.
    """
    from ppl_vae.version import __version__

    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "ppl_vae_version": __version__,
        "model_spec": model_spec,
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
    }
    payload.update(extra)
    payload = _compact(payload, {}, set())
    atomic_write(Path(path), lambda handle: torch.save(payload, handle))


# ----------------------------------------------------------------------------------------------------
# Reading: bounded before anything large is allocated.

#: Deepest nesting of containers in a checkpoint (ppl_vae writes 7 levels).
MAX_DEPTH = 32
#: Most containers, tensors and scalars reachable in a checkpoint, counting each shared reference again.
MAX_NODES = 1_000_000
#: Most members of the zip archive (two for every tensor saved is already generous).
MAX_MEMBERS = 200_000
#: The largest pickle (``data.pkl``) read: also at most a sixteenth of the memory limit.
MAX_PICKLE_BYTES = 64 * 1024**2

# torch's storage classes in the pickle -> the dtype of their elements
_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "ComplexFloatStorage": torch.complex64,
    "ComplexDoubleStorage": torch.complex128,
    "UntypedStorage": torch.uint8,
}
_ALLOWED_DTYPES = frozenset(_STORAGE_DTYPES.values())


class _Refused(Exception):
    """The checkpoint is well-formed but asks for something ppl_vae does not load (message: the reason)."""


class _Damaged(Exception):
    """The checkpoint's bytes do not make sense (message: the reason)."""


def _is_dense(size: tuple, stride: tuple) -> bool:
    """Row-major contiguous: every dimension longer than 1 has the stride of a C-ordered array (so no
    zero, negative or overlapping strides). Dimensions of length 0 or 1 are free, as in torch."""
    if len(size) != len(stride):
        return False
    expected = 1
    for n, s in zip(reversed(size), reversed(stride)):
        if n > 1 and s != expected:
            return False
        expected *= n
    return True


class _StorageRecord:
    __slots__ = ("key", "dtype", "numel", "nbytes", "tensors")

    def __init__(self, key: str, dtype, numel: int):
        self.key, self.dtype, self.numel = key, dtype, numel
        self.nbytes = numel * dtype.itemsize
        self.tensors = 0


class _TensorRecord:
    """What ``torch._utils._rebuild_tensor_v2`` would build, without building it."""

    __slots__ = ("storage", "shape", "dtype", "nbytes")

    def __init__(self, storage: _StorageRecord, shape: tuple):
        self.storage, self.shape, self.dtype = storage, shape, storage.dtype
        self.nbytes = math.prod(shape) * storage.dtype.itemsize


class _StorageKind:
    __slots__ = ("name", "dtype")

    def __init__(self, name: str):
        self.name, self.dtype = name, _STORAGE_DTYPES[name]


def _check_tensor_layout(shape, stride, offset, numel_bytes, storage_bytes) -> None:
    if any(not isinstance(n, int) or isinstance(n, bool) or n < 0 for n in shape):
        raise _Damaged(f"a tensor has the invalid shape {tuple(shape)!r}")
    if offset != 0:
        raise _Refused(f"a tensor of shape {tuple(shape)} starts at offset {offset} into its storage (a view)")
    if not _is_dense(tuple(shape), tuple(stride)):
        raise _Refused(
            f"a tensor of shape {tuple(shape)} has strides {tuple(stride)} (zero, overlapping or not contiguous)"
        )
    if numel_bytes != storage_bytes:
        raise _Refused(
            f"a tensor of shape {tuple(shape)} ({numel_bytes} bytes) does not own its storage of "
            f"{storage_bytes} bytes exactly"
        )


class _DryRun(pickle.Unpickler):
    """Unpickles ``data.pkl`` into :class:`_TensorRecord` placeholders: nothing but stubs is ever called."""

    def __init__(self, data: bytes, records: dict[str, int]):
        super().__init__(io.BytesIO(data))
        self.records = records  # storage key -> its zip member's size in bytes
        self.storages: dict[str, _StorageRecord] = {}

    def find_class(self, module, name):
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return self._rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return self._rebuild_parameter
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageKind(name)
        raise _Refused(f"unsupported global {module}.{name}"[:200])

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise _Damaged("a storage reference is malformed")
        _, kind, key, location, numel = pid
        if (
            not isinstance(kind, _StorageKind)
            or not isinstance(key, str)
            or not isinstance(location, str)
            or not isinstance(numel, int)
            or isinstance(numel, bool)
            or numel < 0
        ):
            raise _Damaged("a storage reference is malformed")
        if not re.fullmatch(r"cpu|cuda(:\d{1,4})?|mps", location):
            raise _Refused(f"a storage is on the unsupported device {location[:40]!r}")
        record = self.storages.get(key)
        if record is None:
            if key not in self.records:
                raise _Damaged(f"storage data/{key[:40]} is missing from the archive")
            record = _StorageRecord(key, kind.dtype, numel)
            if record.nbytes != self.records[key]:
                raise _Damaged(f"storage data/{key[:40]} declares {record.nbytes} bytes but holds {self.records[key]}")
            self.storages[key] = record
        elif record.numel != numel or record.dtype != kind.dtype:
            raise _Damaged(f"storage data/{key[:40]} is declared twice with different sizes")
        return record

    def _rebuild_tensor(self, storage, storage_offset, size, stride, *rest):
        if (
            not isinstance(storage, _StorageRecord)
            or not isinstance(size, tuple)
            or not isinstance(stride, tuple)
            or not isinstance(storage_offset, int)
            or len(rest) > 3
        ):
            raise _Damaged("a tensor record is malformed")
        if len(size) > 64:
            raise _Refused(f"a tensor has {len(size)} dimensions")
        _check_tensor_layout(size, stride, storage_offset, math.prod(size) * storage.dtype.itemsize, storage.nbytes)
        hooks = rest[1] if len(rest) > 1 else None
        if hooks:  # backward hooks are never saved by ppl_vae
            raise _Refused("a tensor carries backward hooks")
        storage.tensors += 1
        if storage.tensors > 1:
            raise _Refused(f"storage data/{storage.key[:40]} is shared by two tensors")
        return _TensorRecord(storage, size)

    def _rebuild_parameter(self, data, requires_grad=False, backward_hooks=None):
        if not isinstance(data, _TensorRecord):
            raise _Damaged("a parameter record is malformed")
        if backward_hooks:
            raise _Refused("a parameter carries backward hooks")
        return data


def _walk(payload, limit: int, path: Path) -> None:
    """Bound the tree: depth, node count and bytes (both counting repeated references again), the
    types in it, and (for real tensors) their layout and storage ownership."""
    nodes = 0
    total = 0
    owners: dict[int, int] = {}  # storage address -> id of the tensor that owns it
    stack = [(payload, 0)]
    while stack:
        obj, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise _Refused(f"it holds more than {MAX_NODES} values (counting shared references)")
        if depth > MAX_DEPTH:
            raise _Refused(f"it is nested more than {MAX_DEPTH} levels deep")
        if obj is None or isinstance(obj, (bool, float)):
            total += 8
        elif isinstance(obj, int):
            if obj.bit_length() > 128:
                raise _Refused("it holds an integer of more than 128 bits")
            total += 8
        elif isinstance(obj, str):
            total += 56 + len(obj)
        elif isinstance(obj, _TensorRecord):
            total += obj.nbytes
        elif isinstance(obj, torch.Tensor):
            if (
                type(obj) not in (torch.Tensor, torch.nn.Parameter)
                or obj.layout != torch.strided
                or obj.device.type != "cpu"
                or obj.dtype not in _ALLOWED_DTYPES
                or obj.is_quantized
            ):
                raise _Refused(f"it holds a {type(obj).__name__} that is not a dense CPU tensor")
            nbytes = obj.numel() * obj.element_size()
            storage = obj.untyped_storage()
            _check_tensor_layout(tuple(obj.shape), obj.stride(), obj.storage_offset(), nbytes, storage.nbytes())
            if storage.nbytes():
                owner = owners.setdefault(storage.data_ptr(), id(obj))
                if owner != id(obj):
                    raise _Refused(f"two tensors of shape {tuple(obj.shape)} share one storage")
            total += nbytes
        elif type(obj) in (dict, collections.OrderedDict):
            total += 64 + 16 * len(obj)
            for key, value in obj.items():
                if not (key is None or isinstance(key, (str, int, float, bool))):
                    raise _Refused(f"it holds a dictionary key of type {type(key).__name__}")
                stack.append((key, depth + 1))
                stack.append((value, depth + 1))
        elif type(obj) in (list, tuple):
            total += 56 + 8 * len(obj)
            stack.extend((value, depth + 1) for value in obj)
        else:
            raise _Refused(f"it holds a {type(obj).__name__}, which ppl_vae never saves")
        if total > limit:
            check_bytes(
                total,
                f"checkpoint {path} (every value it holds, shared references counted again)",
                error=CheckpointError,
            )


def _check_archive(handle, path: Path, limit: int) -> tuple[bytes, dict[str, int]]:
    """The zip directory, checked before anything is decompressed or allocated: ``data.pkl``'s bytes and
    the size of each storage member."""
    size = os.fstat(handle.fileno()).st_size
    check_bytes(size, f"checkpoint {path}", error=CheckpointError)
    try:
        archive = zipfile.ZipFile(handle)
        members = archive.infolist()
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as error:
        raise _Damaged(f"not a zip archive written by torch.save ({type(error).__name__})") from None
    if len(members) > MAX_MEMBERS:
        raise _Refused(f"its archive has {len(members)} members, more than {MAX_MEMBERS}")
    names = [m.filename for m in members]
    if len(set(names)) != len(names):
        raise _Refused("its archive names one member twice")
    pickles = [n for n in names if re.fullmatch(r"[^/]+/data\.pkl", n)]
    if len(pickles) != 1:
        raise _Damaged("its archive has no data.pkl")
    prefix = pickles[0][: -len("data.pkl")]
    records: dict[str, int] = {}
    total = 0
    for member in members:
        name = member.filename
        if not name.startswith(prefix) or name == prefix + "constants.pkl":
            raise _Refused(f"member {name[:80]!r} is not part of a torch.save archive")
        if member.flag_bits & 0x1:
            raise _Refused(f"member {name[:80]!r} is encrypted")
        if member.compress_type != zipfile.ZIP_STORED:
            raise _Refused(f"member {name[:80]!r} is compressed, which torch.save never does (a zip bomb?)")
        if member.compress_size != member.file_size or member.header_offset + member.file_size > size:
            raise _Damaged(f"member {name[:80]!r} declares {member.file_size} bytes that the file does not hold")
        total += member.file_size
        match = re.fullmatch(re.escape(prefix) + r"data/(\d{1,12})", name)
        if match:
            records[match.group(1)] = member.file_size
    check_bytes(total, f"the members of checkpoint {path}", error=CheckpointError)
    pickle_bound = min(MAX_PICKLE_BYTES, limit // 16)
    info = archive.getinfo(pickles[0])
    if info.file_size > pickle_bound:
        raise _Refused(f"its data.pkl has {format_bytes(info.file_size)}, more than {format_bytes(pickle_bound)}")
    try:
        data = archive.read(pickles[0])
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as error:
        raise _Damaged(f"its data.pkl cannot be read ({type(error).__name__})") from None
    return data, records


def load_checkpoint(path: str | Path, *, map_location="cpu") -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` without executing any code in it and without
    allocating more than the file holds (see the module docstring for every check)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; train first (`ppl-vae train --out {path.parent}`)")
    limit = memory_limit()
    damaged = "restore it from a copy or train again"
    try:
        with open(path, "rb") as handle:  # one handle: what is checked is what is loaded
            data, records = _check_archive(handle, path, limit)
            dry = _DryRun(data, records)
            tree = dry.load()
            del data
            _walk(tree, limit, path)
            del tree, dry
            handle.seek(0)
            payload = torch.load(handle, map_location=map_location, weights_only=True)
            _walk(payload, limit, path)
    except CheckpointError:
        raise
    except _Refused as error:
        raise CheckpointError(
            f"checkpoint {path} was refused: {str(error).splitlines()[0]}; only load checkpoints written by ppl_vae"
        ) from None
    except _Damaged as error:
        raise CheckpointError(
            f"checkpoint {path} is damaged or truncated ({str(error).splitlines()[0]}); {damaged}"
        ) from None
    except OSError as error:
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({error.strerror or type(error).__name__}); check its permissions"
        ) from None
    except RecursionError:
        raise CheckpointError(
            f"checkpoint {path} was refused: it is nested too deeply; only load checkpoints written by ppl_vae"
        ) from None
    except Exception as error:  # noqa: BLE001 - pickle and torch's readers raise many types on damaged bytes
        # (UnpicklingError, EOFError, RuntimeError, and from the weights-only unpickler IndexError, KeyError...)
        raise CheckpointError(
            f"checkpoint {path} is damaged or truncated ({type(error).__name__}); {damaged}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a ppl_vae checkpoint")
    if payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {payload.get('format_version')}, this ppl_vae reads version "
            f"{FORMAT_VERSION}; use the ppl_vae release that wrote it"
        )
    return payload


def validate_state_dict(state_dict, expected, path: str | Path) -> None:
    """Check a checkpoint's state dict against the module it is about to be loaded into, before any copy.

    ``expected`` maps every parameter/buffer name to a tensor (e.g. ``vae.state_dict()``) or a shape.
    Keys must match exactly, each value must be a tensor of exactly the expected shape (and, when a
    tensor is given, a floating dtype when the expected one is floating). Raises a one-line
    :class:`CheckpointError` naming ``path`` otherwise.
    """
    fix = "does not fit the architecture in its config"
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"checkpoint {path} {fix} (its state_dict is a {type(state_dict).__name__}); train again")
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        detail = "; ".join(
            part
            for part in (
                f"missing {', '.join(map(str, missing[:3]))}" + (" ..." if len(missing) > 3 else "") if missing else "",
                f"unexpected {', '.join(map(str, unexpected[:3]))}" + (" ..." if len(unexpected) > 3 else "")
                if unexpected
                else "",
            )
            if part
        )
        raise CheckpointError(f"checkpoint {path} {fix} ({detail[:300]}); train again")
    for name, want in expected.items():
        got = state_dict[name]
        shape = tuple(want.shape) if isinstance(want, torch.Tensor) else tuple(want)
        if not isinstance(got, torch.Tensor):
            raise CheckpointError(
                f"checkpoint {path} {fix} ({name} is a {type(got).__name__}, not a tensor); train again"
            )
        if tuple(got.shape) != shape:
            raise CheckpointError(
                f"checkpoint {path} {fix} ({name} has shape {tuple(got.shape)}, the model needs {shape}); train again"
            )
        if isinstance(want, torch.Tensor) and want.is_floating_point() and not got.is_floating_point():
            raise CheckpointError(
                f"checkpoint {path} {fix} ({name} is {got.dtype}, the model needs {want.dtype}); train again"
            )
