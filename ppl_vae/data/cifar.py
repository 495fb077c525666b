"""CIFAR-10 in its binary format, read with plain byte reads (nothing is unpickled).

The binary distribution (``cifar-10-binary.tar.gz``) extracts to a folder ``cifar-10-batches-bin``
holding ``data_batch_1.bin`` ... ``data_batch_5.bin`` (training) and ``test_batch.bin`` (test). Every
file is a sequence of 3,073-byte records: one label byte (0..9), then the 32x32 image as three planes of
1,024 bytes, red, then green, then blue, each row-major. The official files hold 10,000 records each;
smaller files of whole records are accepted too.

Checks, all before any pixel is converted: every file is a regular file whose size is a positive
multiple of 3,073 bytes; the memory for the raw bytes and the float32 images fits the budget
(:mod:`ppl_vae.limits`) before anything is read; every label lies in 0..9. Files are read in chunks into
one buffer allocated once. The (pickled) Python version of CIFAR-10 is refused with a pointer to the
binary one: unpickling a file can run code.
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np
import torch

from ppl_vae.data.colour import luma_8bit
from ppl_vae.data.npz import READ_CHUNK, one_line, require_file
from ppl_vae.data.split import DataSplit
from ppl_vae.errors import DataError
from ppl_vae.limits import check_bytes

#: The folder ``cifar-10-binary.tar.gz`` extracts to.
CIFAR10_FOLDER = "cifar-10-batches-bin"

TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))

TEST_FILE = "test_batch.bin"

IMAGE_SHAPE = (3, 32, 32)

PIXEL_BYTES = 3 * 32 * 32

RECORD_BYTES = 1 + PIXEL_BYTES

NUM_CLASSES = 10

CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

_DOWNLOAD_FIX = (
    "download cifar-10-binary.tar.gz (the binary version) from https://www.cs.toronto.edu/~kriz/cifar.html "
    "and extract it"
)

# Starts of files that are sometimes found where a batch should be: named in the errors.
_SIGNATURES = (
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"\x1f\x8b", "a gzip archive (extract cifar-10-binary.tar.gz with tar xzf)"),
    (b"PK\x03\x04", "a zip archive"),
    (b"\x93NUMPY", "a numpy .npy file"),
    (b"\x80\x02", "a Python pickle (the Python version of CIFAR-10, which is not read: use the binary version)"),
    (b"\x80\x03", "a Python pickle"),
    (b"\x80\x04", "a Python pickle"),
    (b"\x80\x05", "a Python pickle"),
)


# --------------------------------------------------------------------------------------------------
# Finding the files
# --------------------------------------------------------------------------------------------------


def cifar10_folder(path: Optional[str], root: str) -> str:
    """The folder to read: ``<root>/cifar-10-batches-bin`` for the spec ``cifar10`` (``path`` None), else
    ``path`` itself, or ``path/cifar-10-batches-bin`` when ``path`` holds no batches but that folder."""
    if path is None:
        return os.path.join(root, CIFAR10_FOLDER)
    path = os.path.expanduser(path)
    nested = os.path.join(path, CIFAR10_FOLDER)
    if not _present(path, (*TRAIN_FILES, TEST_FILE)) and os.path.isdir(nested):
        return nested
    return path


def cifar10_files(folder: str) -> tuple[list[str], str]:
    """``(training files present, test file)`` of a CIFAR-10 binary folder, in the official order.

    DataError (one line, naming the missing files and the fix) unless the folder holds at least one
    ``data_batch_*.bin`` and ``test_batch.bin``.
    """
    fix = _DOWNLOAD_FIX
    if os.path.basename(os.path.normpath(folder)) == CIFAR10_FOLDER:
        fix += f" in {os.path.dirname(os.path.normpath(folder)) or '.'}"
    if not os.path.isdir(folder):
        raise DataError(f"CIFAR-10 folder {folder} does not exist{_folder_hint(folder)}; {fix}")
    train = [os.path.join(folder, name) for name in TRAIN_FILES if _present(folder, (name,))]
    missing = [] if train else [f"a training batch ({TRAIN_FILES[0]} ... {TRAIN_FILES[-1]}, at least one)"]
    if not _present(folder, (TEST_FILE,)):
        missing.append(f"the test batch {TEST_FILE}")
    if missing:
        raise DataError(
            f"CIFAR-10 folder {folder} lacks {' and '.join(missing)}{_folder_hint(folder)}; "
            f"{fix}, or point cifar10:PATH at the folder holding the .bin files"
        )
    return train, os.path.join(folder, TEST_FILE)


def _present(folder: str, names: tuple[str, ...]) -> bool:
    """True when any of ``names`` exists in ``folder`` (as anything: a folder is refused later, by name)."""
    return any(os.path.lexists(os.path.join(folder, name)) for name in names)


def _folder_hint(folder: str) -> str:
    """A hint for what stands where the batches were expected: the archive, or the pickled version."""
    parent = os.path.dirname(os.path.normpath(folder)) or "."
    for place in (folder, parent):
        if os.path.isfile(os.path.join(place, "cifar-10-binary.tar.gz")):
            return f" (cifar-10-binary.tar.gz is in {place}: extract it with tar xzf)"
        if os.path.isdir(os.path.join(place, "cifar-10-batches-py")) or os.path.isfile(
            os.path.join(place, "data_batch_1")
        ):
            return " (the Python version of CIFAR-10 is there; it is pickled and is not read)"
    return ""


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------


def load_cifar10(name: str, folder: str, *, grey: bool = False) -> DataSplit:
    """The CIFAR-10 binary batches of ``folder`` as a :class:`DataSplit`.

    ``train`` is ``(N_train, 3, 32, 32)`` float32 k/255 from the training batches present (in the order
    1..5), ``heldout`` the ``test_batch.bin`` images, labels int64 0..9 for both. With ``grey``, the images
    become ``(N, 1, 32, 32)``: ITU-R 601-2 luma of the 8-bit samples, rounded as Pillow does, / 255.
    """
    train_files, test_file = cifar10_files(folder)
    counts = [_record_count(file) for file in (*train_files, test_file)]
    n_train, n_test = sum(counts[:-1]), counts[-1]
    channels = 1 if grey else 3
    raw = max(n_train, n_test) * RECORD_BYTES  # one part's bytes at a time, plus the conversion's copies
    images = (n_train + n_test) * channels * 32 * 32 * 4
    check_bytes(
        3 * raw + images,
        f"CIFAR-10 in {folder} ({n_train} training and {n_test} test images of 32x32x3 bytes, read and "
        f"converted to float32{' grey' if grey else ''})",
        error=DataError,
    )
    x_train, y_train = _read_part(train_files, counts[:-1], grey)
    x_test, y_test = _read_part([test_file], counts[-1:], grey)
    return DataSplit(name, x_train, x_test, y_train, y_test)


def _record_count(file: str) -> int:
    """Records in a batch file, from its size; DataError unless it is a positive multiple of 3,073 bytes."""
    require_file(file, "CIFAR-10 file", _DOWNLOAD_FIX)
    try:
        size = os.path.getsize(file)
        with open(file, "rb") as handle:
            head = handle.read(8)
    except OSError as error:
        raise DataError(f"cannot read CIFAR-10 file {file} ({one_line(error)}); check its permissions") from error
    if size == 0 or size % RECORD_BYTES:
        looks = _looks_like(head)
        problem = f"it starts like {looks}" if looks else _size_problem(size)
        raise DataError(
            f"CIFAR-10 file {file} has {size} bytes, not a positive multiple of {RECORD_BYTES} (1 label byte "
            f"+ {PIXEL_BYTES} pixel bytes per image): {problem}; {_DOWNLOAD_FIX} again"
        )
    return size // RECORD_BYTES


def _size_problem(size: int) -> str:
    if size == 0:
        return "it is empty"
    whole, extra = divmod(size, RECORD_BYTES)
    if size % (RECORD_BYTES + 1) == 0:
        return "it is damaged, or CIFAR-100 (3074-byte records, 2 label bytes per image), which is not read"
    if whole:
        return f"{whole} whole image(s) and {extra} byte(s) more, so it is truncated or has extra bytes"
    return "it is shorter than one image, so it is truncated or not a CIFAR-10 batch"


def _looks_like(head: bytes) -> str:
    """What a file is, from its first bytes, when it is a known other format; else ''."""
    for signature, what in _SIGNATURES:
        if head.startswith(signature):
            return what
    return ""


def _read_part(files: list[str], counts: list[int], grey: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The records of ``files`` as float32 images ``(N, C, 32, 32)`` and int64 labels ``(N,)``."""
    records = np.empty((sum(counts), RECORD_BYTES), dtype=np.uint8)  # the budget was checked by the caller
    start = 0
    for file, count in zip(files, counts):
        part = records[start : start + count]
        _fill_from(file, memoryview(part.reshape(-1)))
        _check_labels(file, part)
        start += count
    labels = torch.from_numpy(records[:, 0].astype(np.int64))
    pixels = records[:, 1:].reshape(len(records), *IMAGE_SHAPE)  # R, G, B planes, each row-major
    if grey:
        pixels = luma_8bit(pixels, axis=1)
    images = torch.from_numpy(pixels).to(torch.float32)  # a strided view in, one contiguous copy out
    del records, pixels
    images /= 255.0
    return images, labels


def _fill_from(file: str, buffer: memoryview) -> None:
    """Fill ``buffer`` with the bytes of ``file`` in chunks; DataError if the file's size changed."""
    try:
        with open(file, "rb") as handle:
            filled = 0
            while filled < len(buffer):
                n = handle.readinto(buffer[filled : filled + READ_CHUNK])
                if not n:
                    break
                filled += n
            more = handle.read(1)
    except OSError as error:
        raise DataError(f"cannot read CIFAR-10 file {file} ({one_line(error)}); check its permissions") from error
    if filled < len(buffer) or more:
        raise DataError(f"CIFAR-10 file {file} changed size while it was read; run again once it is written")


def _check_labels(file: str, records: np.ndarray) -> None:
    """DataError naming the first record whose label byte is not a class 0..9."""
    bad = np.flatnonzero(records[:, 0] >= NUM_CLASSES)
    if len(bad):
        first = int(bad[0])
        looks = _looks_like(bytes(records[0, :8])) if first == 0 else ""
        raise DataError(
            f"CIFAR-10 file {file}: image {first} (counting from 0) has label {int(records[first, 0])}, not a "
            f"class 0..{NUM_CLASSES - 1}{f' (the file starts like {looks})' if looks else ''}, so the file is "
            f"damaged or not a CIFAR-10 batch; {_DOWNLOAD_FIX} again"
        )
