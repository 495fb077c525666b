"""Reading .npz archives without unpickling and without unbounded allocation: members are checked against
their headers and the memory budget before they are read."""

from __future__ import annotations

import math
import os
import struct
import zipfile
import zlib
from typing import Any

import numpy as np

from ppl_vae.errors import DataError
from ppl_vae.limits import check_bytes

# --------------------------------------------------------------------------------------------------
# npz files
# --------------------------------------------------------------------------------------------------

# What opening or reading a damaged or unusual zip archive can raise (encrypted members: RuntimeError;
# unknown compression methods: NotImplementedError).
_NPZ_READ_ERRORS = (
    OSError,
    ValueError,
    EOFError,
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    KeyError,
    RuntimeError,
    NotImplementedError,
    struct.error,
    SyntaxError,
)


READ_CHUNK = 1 << 20


_NPY_MAGIC = b"\x93NUMPY"


def read_npz(path: str) -> dict[str, np.ndarray]:
    """Read ``x_train``, ``x_test`` and, if present, ``y_train``, ``y_test`` from an .npz file."""
    with open_npz(path, "npz file", "check the path after 'npz:'") as (archive, members):
        for key in ("x_train", "x_test"):
            if key not in members:
                raise DataError(
                    f"npz file {path} has no array {key!r} (found: {', '.join(members) or 'nothing'}); "
                    f"save the {'training' if key == 'x_train' else 'held-out'} images under the key {key!r}"
                )
        wanted = [key for key in ("x_train", "x_test", "y_train", "y_test") if key in members]
        check_npz_members(path, members, wanted)
        fix = "save images as uint8 0..255 or floats in [0, 1]"
        # Labels of any plain dtype are read (within the budget) so that _npz_labels can say what is wrong.
        return {
            key: read_npz_member(path, archive, members[key], key, fix, "biuf" if key[0] == "x" else "biufcSU")
            for key in wanted
        }


class open_npz:
    """``with open_npz(path, what) as (archive, members):`` an .npz archive and its members by key.

    ``members`` maps each array name (the member name without ``.npy``, as numpy names them) to its
    ``ZipInfo`` from the zip directory; nothing is decompressed. ``what`` names the file in errors
    (``"npz file"``, ``"table file"``). DataError for a missing path, a folder, a plain .npy file or
    anything that is not a zip archive.
    """

    def __init__(self, path: str, what: str, fix: str = "check the path"):
        self.path, self.what = path, what
        require_file(path, what, fix)
        try:
            with open(path, "rb") as handle:
                start = handle.read(len(_NPY_MAGIC))
        except OSError as error:
            raise DataError(f"cannot read {what} {path} ({one_line(error)}); check its permissions") from error
        if start == _NPY_MAGIC:
            raise DataError(f"{path} holds a single .npy array, not an .npz archive; save it with numpy.savez")
        try:
            self.archive = zipfile.ZipFile(path)
        except _NPZ_READ_ERRORS as error:
            raise DataError(f"{path} is not a valid .npz file ({one_line(error)}); save it with numpy.savez") from error
        self.members: dict[str, zipfile.ZipInfo] = {}
        for info in self.archive.infolist():
            if not info.is_dir():
                name = info.filename
                self.members.setdefault(name[:-4] if name.endswith(".npy") else name, info)

    def __enter__(self) -> tuple[zipfile.ZipFile, dict[str, zipfile.ZipInfo]]:
        return self.archive, self.members

    def __exit__(self, *exc_info: Any) -> None:
        self.archive.close()


def check_npz_members(path: str, members: dict[str, zipfile.ZipInfo], keys: list[str]) -> None:
    """Refuse, from the zip directory alone, members that would unpack to more than the budget."""
    for key in keys:
        info = members[key]
        check_bytes(
            info.file_size,
            f"npz member {key!r} of {path} (unpacks to {info.file_size} bytes from "
            f"{info.compress_size} in the archive)",
            error=DataError,
        )
    total = sum(members[key].file_size for key in keys)
    check_bytes(
        total,
        f"the arrays {', '.join(repr(key) for key in keys)} of {path} together (unpacking to {total} bytes)",
        error=DataError,
    )


def read_npz_member(
    path: str, archive: zipfile.ZipFile, info: zipfile.ZipInfo, key: str, fix: str, kinds: str = "biuf"
) -> np.ndarray:
    """One array of an open .npz archive, read within the memory budget.

    The ``.npy`` header is read and checked first: object arrays and dtypes whose kind is not in
    ``kinds`` are refused (``fix`` says what to save instead), and the declared shape must fit the
    budget (raw and as float32) and match the member's size in the zip directory. Only then is the
    array allocated and filled, in chunks.
    """
    try:
        with archive.open(info) as member:
            shape, fortran, dtype = _read_npy_header(member)
            _check_npy_header(path, key, info, member.tell(), shape, dtype, fix, kinds)
            array = np.empty(math.prod(shape), dtype=dtype)
            _fill(member, memoryview(array).cast("B"))
            while member.read(READ_CHUNK):  # drain trailing bytes so that the CRC is checked
                pass
    except DataError:
        raise
    except _NPZ_READ_ERRORS as error:
        raise DataError(_unreadable_member(path, key, error)) from error
    return array.reshape(shape, order="F" if fortran else "C")


def _read_npy_header(member: Any) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(member)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(member)
    if version in ((2, 0), (3, 0)):  # 3.0 only differs in allowing utf-8 field names (refused anyway)
        return np.lib.format.read_array_header_2_0(member)
    raise ValueError(f"unknown .npy format version {version}")


def _check_npy_header(
    path: str,
    key: str,
    info: zipfile.ZipInfo,
    header_bytes: int,
    shape: tuple[int, ...],
    dtype: np.dtype,
    fix: str,
    kinds: str,
) -> None:
    if dtype.hasobject:
        raise DataError(
            f"npz file {path}: {key!r} is an object array (ragged or mixed types); "
            "save it as one numeric array with all examples the same shape"
        )
    if dtype.kind not in kinds or dtype.fields is not None or dtype.subdtype is not None:
        raise DataError(f"npz file {path}: {key!r} has dtype {dtype}, not real numbers; {fix}")
    if any(not isinstance(n, int) or n < 0 for n in shape):
        raise DataError(f"npz file {path}: {key!r} declares an invalid shape {shape}; save the file again")
    count = math.prod(shape)
    described = f"npz member {key!r} of {path} (shape {shape}, {dtype})"
    check_bytes(count * dtype.itemsize, described, error=DataError)
    check_bytes(count * 4, f"{described} as float32", error=DataError)
    if count * dtype.itemsize > info.file_size - header_bytes:
        raise DataError(
            f"npz file {path}: {key!r} declares shape {shape} ({dtype}) but holds only "
            f"{max(info.file_size - header_bytes, 0)} bytes of data; the file is truncated, save it again"
        )


def _fill(stream: Any, buffer: memoryview) -> None:
    """Fill ``buffer`` from ``stream`` in chunks; ValueError if the stream ends first."""
    filled = 0
    while filled < len(buffer):
        n = stream.readinto(buffer[filled : filled + READ_CHUNK])
        if not n:
            raise ValueError(f"the data ends after {filled} of {len(buffer)} bytes")
        filled += n


def require_file(path: str, what: str, fix: str) -> None:
    """DataError unless ``path`` is an existing regular file (a folder, a device, a dangling or looping
    symlink is not)."""
    if os.path.isfile(path):
        return
    if os.path.isdir(path):
        raise DataError(f"{what} {path} does not exist as a file (it is a folder); {fix}")
    if os.path.lexists(path) and not os.path.exists(path):
        raise DataError(f"{what} {path} does not exist (it is a broken or looping symbolic link); {fix}")
    if os.path.exists(path):
        raise DataError(f"{what} {path} is not a regular file; {fix}")
    raise DataError(f"{what} {path} does not exist; {fix}")


def _unreadable_member(path: str, key: str, error: BaseException) -> str:
    return f"npz file {path}: cannot read {key!r} ({one_line(error)}); save the file again"


def one_line(error: BaseException) -> str:
    """An error's message on one line, or its class name when the message is empty."""
    return " ".join(str(error).split()) or type(error).__name__
