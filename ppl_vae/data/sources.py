"""Data sets for the VAE: loading, checking, splitting and binarizing images.

Every loader returns a :class:`DataSplit` whose tensors are float32 with values in [0, 1]. Image data
is channel-first, ``(N, C, H, W)`` with ``C`` = 1 (grey) or 3 (RGB); flat vectors that are not square
images stay ``(N, D)``.

Data sources (the ``spec`` argument of :func:`load_dataset`):

``"digits"`` (default)
    scikit-learn's bundled 8x8 digits (1,797 images, no download). Split into training and held-out
    parts by a seeded random permutation (see :func:`load_dataset`).
``"mnist"``, ``"fashion-mnist"``, ``"kmnist"``
    28x28 grey images read by torchvision from ``<root>/MNIST/raw``, ``<root>/FashionMNIST/raw`` or
    ``<root>/KMNIST/raw`` (``root`` defaults to ``"./data"``). The held-out part is the official test
    set. Nothing is downloaded unless ``download=True``.
``"npz:PATH"``
    A keras-style ``.npz`` file with arrays ``x_train`` and ``x_test`` and, optionally, both of
    ``y_train`` and ``y_test`` (class labels). The held-out part is ``x_test``. Layout rules:

    * ``(N, D)``: flat vectors; if ``D`` is a perfect square ``s*s`` they become ``(N, 1, s, s)``
      grey images, otherwise they stay ``(N, D)``.
    * ``(N, H, W)``: grey images, become ``(N, 1, H, W)``.
    * ``(N, A, B, C)``: if the last axis has size 1 or 3 it is the channel axis (keras' channel-last
      layout, ``(N, H, W, C)``); otherwise, if axis 1 has size 1 or 3 the array is already
      channel-first ``(N, C, H, W)``; otherwise it is an error. Channel-last wins when both could
      be channels (e.g. ``(N, 3, 8, 3)`` is read as 3x8 RGB images).
    * any other number of axes is an error.

    Values: ``uint8`` 0..255 and other integer arrays whose values all lie in 0..255 are divided by
    255; ``bool`` becomes 0/1; float arrays must already be in [0, 1]. Labels must be whole numbers
    >= 0 (integer dtype, or floats holding whole numbers), shaped ``(N,)`` or ``(N, 1)``.
``"folder:PATH"``
    A folder of image files (.png .jpg .jpeg .bmp .gif .tif .tiff, any case), read with Pillow into
    values in [0, 1] by the image's own depth, keeping colour. Colour images (RGB, RGBA, CMYK, YCbCr,
    ..., and palette images, through their palette) become 3 channels R, G, B of 8 bits / 255; grey
    images 1 channel: 8-bit / 255, 16-bit / 65535, 32-bit integers by the largest value of their bit
    depth (negative values are an error), 32-bit floats must already lie in [0, 1]. Alpha is dropped
    and only the first frame of animated files is used. A folder mixing grey and colour images loads
    as colour: each grey image is repeated in R, G and B (exact, and its luma is the grey level again).
    Either all images lie directly in PATH (no labels) or PATH holds one subfolder
    per class (labels = index of the class folder in the sorted list of subfolder names). Having
    both loose images and class subfolders is an error, as is a class subfolder without images;
    hidden entries (names starting with ".") and files with other extensions are ignored, and
    class folders are not searched recursively. Split like ``"digits"``.
``"cifar10"``, ``"cifar10:PATH"``
    CIFAR-10 in its binary format (:mod:`ppl_vae.data.cifar`), read without unpickling anything:
    ``data_batch_1.bin`` ... ``data_batch_5.bin`` (training; at least one) and ``test_batch.bin``
    (held out), from ``<root>/cifar-10-batches-bin`` (where ``cifar-10-binary.tar.gz`` extracts to) or
    from the folder PATH. ``(N, 3, 32, 32)`` images k/255 with labels 0..9.
``"table:PATH"``
    A table of numbers, a CSV file or an npz archive of columns (:mod:`ppl_vae.data.tables`): one row per
    example, ``(N, D)`` values for the real-valued and count likelihoods. Split like ``"digits"``, unless an
    npz holds its own ``x_train`` and ``x_test``.

``grey=True`` turns colour into one channel after loading, by ITU-R 601-2 luma with Pillow's mode "L"
weights (:mod:`ppl_vae.data.colour`): 8-bit sources (images, uint8 arrays, CIFAR) are rounded as
Pillow rounds, so their grey levels stay k/255; float arrays are weighted without rounding. Sources that
are grey already are unchanged; it is an error for tables and flat vectors that are not square images.

``image_size`` resizes every image to ``image_size x image_size`` (bilinear, antialiased) after
loading; it is an error for flat vector data.

Reading is bounded (:mod:`ppl_vae.limits`): every size is checked against the memory budget from the
file's own headers *before* anything is decoded or allocated -- the zip directory and the ``.npy``
headers of an npz, the dimensions in an image header, the IDX header of MNIST files, the size of every
CIFAR batch, and the size asked for by ``image_size``. A file that is damaged, of the wrong type or too
big is refused with a one-line :class:`DataError` that names the file and the fix.

:func:`data_fingerprint` hashes the bytes a spec reads (recorded in run folders so that a resumed run
can refuse changed data) and :func:`check_data_support` checks, in chunks over all rows, that data lie
in a likelihood's support.
"""

from __future__ import annotations

import hashlib
import math
import numbers
import os
import struct
import warnings
from typing import Any, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F

from ppl_vae.data.cifar import cifar10_files, cifar10_folder, load_cifar10
from ppl_vae.data.colour import luma, luma_8bit
from ppl_vae.data.npz import READ_CHUNK, one_line, read_npz, require_file
from ppl_vae.data.split import MAX_SEED, DataSplit, describe_value, split_examples
from ppl_vae.errors import DataError
from ppl_vae.limits import check_bytes

DATASETS = ("digits", "mnist", "fashion-mnist", "kmnist", "cifar10")


"""Named data sets; ``load_dataset`` also accepts the prefixes in :data:`SPEC_PREFIXES`."""


SPEC_PREFIXES = ("npz:", "folder:", "table:", "cifar10:")


"""Prefixes of data set specs that name a file (``npz:PATH``, ``table:PATH``) or a folder (``folder:PATH``,
``cifar10:PATH``)."""


#: File name endings read from an image folder (``folder:PATH``), compared case-insensitively.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")


DEFAULT_ROOT = "./data"


"""Where the torchvision data sets are looked for when ``root`` is None."""


_TORCHVISION_CLASSES = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "kmnist": "KMNIST"}


_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


#: A path argument: a string or any ``os.PathLike`` (e.g. ``pathlib.Path``).
PathLike = Union[str, "os.PathLike[str]"]


# --------------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------------


def load_dataset(
    spec: str = "digits",
    *,
    root: Optional[PathLike] = None,
    download: bool = False,
    image_size: Optional[int] = None,
    heldout_fraction: float = 0.2,
    split_seed: int = 0,
    grey: bool = False,
) -> DataSplit:
    """Load a data set as a :class:`DataSplit` (see the module docstring for the sources).

    Args:
        spec: ``"digits"``, ``"mnist"``, ``"fashion-mnist"``, ``"kmnist"``, ``"cifar10"``
            (case-insensitive), ``"npz:PATH"``, ``"folder:PATH"``, ``"cifar10:PATH"`` or ``"table:PATH"``
            (a CSV or npz table, see :mod:`ppl_vae.data.tables`).
        root: folder holding the torchvision data sets (``<root>/MNIST/raw`` ...) and CIFAR-10
            (``<root>/cifar-10-batches-bin``); defaults to ``"./data"``. Ignored by the other sources.
        download: let torchvision download missing MNIST-family files into ``root``. Never
            downloads anything when False. Ignored by the other sources.
        image_size: if given, resize every image to ``(image_size, image_size)``.
        heldout_fraction: share of the examples held out by the sources without their own test
            set (``digits``, ``folder:``); rounded to the nearest count, at least 1 example in each
            part. Must lie strictly between 0 and 1 for every source.
        split_seed: seed of that split (0 <= split_seed < 2**64). The same seed gives the same split
            on every call (for a given data set and torch version), independent of and without
            touching the global torch random state.
        grey: convert colour images to one grey channel (ITU-R 601-2 luma, after loading, before any
            resizing). By default colour is kept: RGB images are ``(N, 3, H, W)``, grey ones ``(N, 1, H, W)``.

    Returns:
        The split; ``train`` is ``(N_train, *data_shape)``, ``heldout`` is ``(N_heldout, *data_shape)``.

    Raises:
        DataError: for any problem with the arguments or the data, with a one-line message.
    """
    _check_arguments(spec, image_size, heldout_fraction, split_seed)
    if not isinstance(grey, (bool, np.bool_)):
        raise DataError(f"grey must be True or False, got {grey!r}; pass grey=True to convert colour to grey")
    image_size = None if image_size is None else int(image_size)
    heldout_fraction, split_seed = float(heldout_fraction), int(split_seed)
    try:
        return _load(spec, root, download, image_size, heldout_fraction, split_seed, bool(grey))
    except MemoryError:
        # The budget checks come first, so this is a machine with less free memory than its budget.
        raise DataError(
            f"data set {spec!r} did not fit in the free memory while loading; free some memory, or use a "
            "smaller data set or --image-size"
        ) from None


def _load(
    spec: str,
    root: Optional[PathLike],
    download: bool,
    image_size: Optional[int],
    heldout_fraction: float,
    split_seed: int,
    grey: bool = False,
) -> DataSplit:
    kind, _, path = spec.partition(":")
    kind = kind.strip().lower()
    if kind == "npz" and path:
        return _load_npz(spec, path, image_size, grey)
    if kind == "folder" and path:
        return _load_folder(spec, path, image_size, heldout_fraction, split_seed, grey)
    if kind == "table" and path:
        for flag, given in (("--image-size", image_size is not None), ("--grey", grey)):
            if given:
                raise DataError(f"data set {spec!r} is a table; {flag} applies to images only, drop it")
        from ppl_vae.data.tables import load_table

        return load_table(spec, path, heldout_fraction, split_seed)
    if kind == "digits" and not path:  # grey already: grey=True changes nothing
        split = _load_digits(heldout_fraction, split_seed)
    elif kind in _TORCHVISION_CLASSES and not path:  # grey already
        split = _load_torchvision(kind, root, download)
    elif kind == "cifar10" and (path or ":" not in spec):  # "cifar10" or "cifar10:PATH", not "cifar10:"
        folder = cifar10_folder(path or None, _root_folder(root))
        split = load_cifar10(spec, folder, grey=grey)
    else:
        raise DataError(_unknown_spec_message(spec))
    return split if image_size is None else _resize_split(split, image_size)


# --------------------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------------------


def _check_arguments(spec: object, image_size: object, heldout_fraction: object, split_seed: object) -> None:
    """Raise DataError for arguments of the wrong type or out of range."""
    if not isinstance(spec, str):
        raise DataError(f"data set spec must be a string, got {type(spec).__name__}; {_valid_specs()}")
    if image_size is not None and (not _is_int(image_size) or image_size < 1):
        raise DataError(f"image_size must be a positive integer, got {image_size!r}; pass e.g. 28")
    if (
        isinstance(heldout_fraction, (bool, np.bool_))
        or not isinstance(heldout_fraction, numbers.Real)
        or not 0 < heldout_fraction < 1
    ):
        raise DataError(
            f"heldout_fraction must be a number strictly between 0 and 1, got {heldout_fraction!r}; pass e.g. 0.2"
        )
    if not _is_int(split_seed) or not 0 <= split_seed < MAX_SEED:
        raise DataError(f"split_seed must be an integer in [0, 2**64), got {split_seed!r}; pass e.g. 0")


def _is_int(value: object) -> bool:
    """True for Python and numpy integers, False for bools."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _valid_specs() -> str:
    return f"use one of: {', '.join(DATASETS)}, npz:PATH, folder:PATH, cifar10:PATH, table:PATH"


def _root_folder(root: Optional[PathLike]) -> str:
    """The absolute data root (``root``, or :data:`DEFAULT_ROOT` when None)."""
    return os.path.abspath(os.path.expanduser(os.fspath(DEFAULT_ROOT if root is None else root)))


def _unknown_spec_message(spec: str) -> str:
    """Error message for an unknown spec, with a hint when it names an existing file or folder."""
    hint = ""
    if spec and os.path.isdir(spec) and os.path.lexists(os.path.join(spec, "test_batch.bin")):
        hint = f" (to read the CIFAR-10 batches in that folder, write cifar10:{spec})"
    elif spec and os.path.isdir(spec):
        hint = f" (to read images from that folder, write folder:{spec})"
    elif spec and os.path.isfile(spec):
        hint = f" (to read that file, write npz:{spec})"
    return f"unknown data set {spec!r}; {_valid_specs()}{hint}"


def _check_resize(what: str, n: int, channels: int, size: int) -> None:
    """Refuse resizing ``n`` images of ``channels`` channels to ``size x size`` float32 over the budget."""
    check_bytes(
        n * channels * size * size * 4,
        f"resizing {what} to {size}x{size} (--image-size {size}: {n} image(s) of {channels} channel(s), float32)",
        error=DataError,
    )


def _resize_images(x: torch.Tensor, size: int, what: str = "images") -> torch.Tensor:
    """Resize images ``(N, C, H, W)`` to ``(N, C, size, size)`` (bilinear, antialiased), in [0, 1]."""
    if tuple(x.shape[-2:]) == (size, size):
        return x
    _check_resize(what, x.shape[0], x.shape[1], size)
    resized = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return resized.clamp_(0.0, 1.0)


def _resize_split(split: DataSplit, size: int) -> DataSplit:
    """Resize both parts of an image split; DataError for flat vector data."""
    if len(split.data_shape) != 3:
        raise DataError(
            f"image_size only applies to images, but data set {split.name!r} holds flat vectors of shape "
            f"{split.data_shape}; drop image_size (--image-size) or store the data as images"
        )
    what = f"data set {split.name!r}"
    _check_resize(what, len(split.train) + len(split.heldout), split.data_shape[0], size)
    return DataSplit(
        name=split.name,
        train=_resize_images(split.train, size, what),
        heldout=_resize_images(split.heldout, size, what),
        train_labels=split.train_labels,
        heldout_labels=split.heldout_labels,
    )


# --------------------------------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------------------------------


def _load_digits(heldout_fraction: float, split_seed: int) -> DataSplit:
    """scikit-learn's 8x8 digits as ``(N, 1, 8, 8)`` in [0, 1], split by ``split_seed``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.as_tensor(digits.target, dtype=torch.int64)
    return split_examples("digits", x, y, heldout_fraction, split_seed)


# --------------------------------------------------------------------------------------------------
# MNIST, Fashion-MNIST, KMNIST (torchvision)
# --------------------------------------------------------------------------------------------------

# What torchvision's IDX reader raises for damaged files (it uses asserts and tensor views).
_IDX_READ_ERRORS = (AssertionError, RuntimeError, ValueError, TypeError, KeyError, IndexError, OSError)


def _load_torchvision(kind: str, root: Optional[PathLike], download: bool) -> DataSplit:
    """An MNIST-family data set: train = official training set, held-out = official test set.

    Images become ``(N, 1, 28, 28)`` float32 (uint8 / 255), labels ``(N,)`` int64.
    """
    root = _root_folder(root)
    class_name = _TORCHVISION_CLASSES[kind]
    raw_folder = os.path.join(root, class_name, "raw")
    if not download:
        _check_idx_files(kind, raw_folder)
    for name in _IDX_FILES:  # bounded reading: torchvision reads each file whole, then converts it
        file = os.path.join(raw_folder, name)
        if os.path.isfile(file):
            _check_idx_header(kind, file, ndim=1 if "labels" in name else 3)
    import torchvision.datasets as tv_datasets

    dataset_class = getattr(tv_datasets, class_name)
    parts = []
    for train in (True, False):
        try:
            dataset = dataset_class(root, train=train, download=bool(download) and train)
        except _IDX_READ_ERRORS as error:
            raise DataError(_torchvision_failure(kind, raw_folder, download, error)) from error
        parts.append(_torchvision_tensors(kind, raw_folder, dataset.data, dataset.targets))
    (x_train, y_train), (x_test, y_test) = parts
    return DataSplit(kind, x_train, x_test, y_train, y_test)


def _check_idx_files(kind: str, raw_folder: str) -> None:
    """Raise DataError naming the folder and the missing files unless all four IDX files exist."""
    missing = [name for name in _IDX_FILES if not os.path.isfile(os.path.join(raw_folder, name))]
    if not missing:
        return
    gz_hint = ""
    if all(os.path.isfile(os.path.join(raw_folder, name + ".gz")) for name in missing):
        gz_hint = " (the .gz archives are there: uncompress them with gunzip, or pass --download to extract them)"
    expected = "" if len(missing) == len(_IDX_FILES) else f" (expects {', '.join(_IDX_FILES)})"
    raise DataError(
        f"{kind} files not found in {raw_folder}: missing {', '.join(missing)}{expected}{gz_hint}; "
        "pass --download (download=True) to fetch them, or copy the uncompressed files there"
    )


# IDX element types: type code -> (bytes per element, name).
_IDX_TYPES = {
    0x08: (1, "uint8"),
    0x09: (1, "int8"),
    0x0B: (2, "int16"),
    0x0C: (4, "int32"),
    0x0D: (4, "float32"),
    0x0E: (8, "float64"),
}


def _check_idx_header(kind: str, file: str, ndim: int) -> None:
    """Check an IDX file's header against its size and the memory budget, reading 16 bytes at most."""
    fix = "delete it and pass --download, or copy the intact uncompressed file there"
    try:
        size = os.path.getsize(file)
        with open(file, "rb") as handle:
            head = handle.read(4 + 4 * ndim)
    except OSError as error:
        raise DataError(f"cannot read the {kind} file {file} ({one_line(error)}); check its permissions") from error
    if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _IDX_TYPES:
        raise DataError(f"the {kind} file {file} is damaged (it does not start with an IDX header); {fix}")
    if head[3] != ndim:
        raise DataError(
            f"the {kind} file {file} is damaged (its header declares {head[3]} dimension(s), the file type has "
            f"{ndim}); {fix}"
        )
    if len(head) < 4 + 4 * ndim:
        raise DataError(f"the {kind} file {file} is damaged (it ends inside its header); {fix}")
    itemsize, type_name = _IDX_TYPES[head[2]]
    if type_name != "uint8":
        raise DataError(
            f"the {kind} file {file} holds {type_name} values, but MNIST-family files hold uint8 (0..255); {fix}"
        )
    dims = struct.unpack(f">{ndim}I", head[4:])
    count = math.prod(dims)
    if dims[0] == 0:
        raise DataError(f"the {kind} file {file} holds no examples (its header declares 0); {fix}")
    if 4 + 4 * ndim + count * itemsize != size:
        raise DataError(
            f"the {kind} file {file} is damaged: its header declares {' x '.join(map(str, dims))} {type_name} "
            f"values but it holds {size - 4 - 4 * ndim} bytes of data; {fix}"
        )
    check_bytes(
        count * max(itemsize, 4),
        f"the {kind} file {file} ({' x '.join(map(str, dims))} values, read whole and converted to float32)",
        error=DataError,
    )


def _torchvision_failure(kind: str, raw_folder: str, download: bool, error: Exception) -> str:
    """One-line message for a failed torchvision download or read."""
    detail = " ".join(str(error).split()) or type(error).__name__
    if download:
        return (
            f"could not download or read {kind} into {raw_folder}: {detail}; check the network connection, "
            "or copy the uncompressed IDX files there and run without --download"
        )
    return (
        f"could not read the {kind} files in {raw_folder} ({detail}); they look damaged: delete them and "
        "pass --download, or copy intact uncompressed IDX files there"
    )


def _torchvision_tensors(
    kind: str, raw_folder: str, data: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images ``(N, H, W)`` and labels ``(N,)`` to float32 ``(N, 1, H, W)`` / 255 and int64."""
    if data.dim() != 3 or data.dtype != torch.uint8 or targets.dim() != 1 or len(targets) != len(data):
        raise DataError(
            f"the {kind} files in {raw_folder} hold {describe_value(data)} images and {describe_value(targets)} "
            "labels, not N uint8 images with N labels; replace them with the original files (--download)"
        )
    return data.unsqueeze(1).to(torch.float32) / 255.0, targets.to(torch.int64)


def _load_npz(name: str, path: str, image_size: Optional[int], grey: bool = False) -> DataSplit:
    """A keras-style .npz file: ``x_train``/``x_test`` and optional ``y_train``/``y_test``."""
    path = os.path.expanduser(path)
    arrays = read_npz(path)
    where = f"npz file {path}"
    x_train = _npz_images(where, "x_train", arrays.pop("x_train"), image_size, grey)
    x_test = _npz_images(where, "x_test", arrays.pop("x_test"), image_size, grey)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(
            f"{where}: x_train examples have shape {tuple(x_train.shape[1:])} but x_test examples "
            f"{tuple(x_test.shape[1:])}; save both at the same size and channel count"
            + (" (or pass --image-size to resize images)" if image_size is None else "")
        )
    y_train, y_test = arrays.get("y_train"), arrays.get("y_test")
    if (y_train is None) != (y_test is None):
        present, absent = ("y_train", "y_test") if y_test is None else ("y_test", "y_train")
        raise DataError(f"{where} has {present} but no {absent}; save labels for both parts or for neither")
    if y_train is not None:
        y_train = _npz_labels(where, "y_train", y_train, len(x_train))
        y_test = _npz_labels(where, "y_test", y_test, len(x_test))
    return DataSplit(name, x_train, x_test, y_train, y_test)


def _npz_images(where: str, key: str, array: np.ndarray, image_size: Optional[int], grey: bool) -> torch.Tensor:
    """An .npz image array to float32 ``(N, C, H, W)`` or ``(N, D)`` in [0, 1], grey and resized if asked."""
    _check_npz_values(where, key, array)
    x = _npz_layout(where, key, array)
    if grey:
        x = _npz_grey(where, key, x)
    x = torch.from_numpy(np.ascontiguousarray(_unit_float(x)))
    if image_size is not None:
        if x.dim() != 4:
            raise DataError(
                f"image_size only applies to images, but {where} holds flat vectors of shape "
                f"{tuple(x.shape[1:])} in {key!r}; drop image_size (--image-size) or save the data as images"
            )
        x = _resize_images(x, image_size, f"{key!r} of {where}")
    return x


def _check_npz_values(where: str, key: str, array: np.ndarray) -> None:
    """DataError unless an image array is non-empty with bools, integers in 0..255 or floats in [0, 1]."""
    if array.size == 0:
        raise DataError(f"{where}: {key!r} is empty (shape {array.shape}); save at least one non-empty example")
    kind = array.dtype.kind
    if kind == "b":
        return
    if kind in "iu":
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            raise DataError(
                f"{where}: integer array {key!r} has values from {low} to {high}; integer images must lie in "
                "0..255 (or save floats in [0, 1])"
            )
        return
    if kind == "f":
        if not np.isfinite(array).all():
            raise DataError(f"{where}: {key!r} contains NaN or infinite values; replace them before saving")
        low, high = float(array.min()), float(array.max())
        if low < 0 or high > 1:
            fix = "divide by 255" if low >= 0 and high <= 255 else "rescale the data"
            raise DataError(
                f"{where}: float array {key!r} has values from {low:g} to {high:g} but must lie in [0, 1]; "
                f"{fix} (or save uint8 0..255)"
            )
        return
    raise DataError(
        f"{where}: {key!r} has dtype {array.dtype}, not numbers; save images as uint8 0..255 or floats in [0, 1]"
    )


def _unit_float(x: np.ndarray) -> np.ndarray:
    """Checked image values as float32 in [0, 1]: integers 0..255 divided by 255, bools 0/1, floats as
    they are."""
    values = x.astype(np.float32)
    if x.dtype.kind in "iu":
        values /= 255.0
    return values


def _npz_grey(where: str, key: str, x: np.ndarray) -> np.ndarray:
    """``(N, 3, H, W)`` to one grey channel ``(N, 1, H, W)`` (ITU-R 601-2 luma; integer samples rounded as
    Pillow rounds, so they stay integers 0..255); grey images unchanged; DataError for flat vectors."""
    if x.ndim != 4:
        raise DataError(
            f"grey only applies to images, but {where} holds flat vectors of shape {tuple(x.shape[1:])} in "
            f"{key!r}; drop grey (--grey) or save the data as images"
        )
    if x.shape[1] == 1:
        return x
    if x.dtype.kind in "iu":
        return luma_8bit(x, axis=1)
    return luma(x.astype(np.float32, copy=False), axis=1)


def _npz_layout(where: str, key: str, x: np.ndarray) -> np.ndarray:
    """Reorder an array to ``(N, C, H, W)`` or ``(N, D)`` following the rules in the module docstring."""
    if x.ndim == 2:
        side = math.isqrt(x.shape[1])
        if side * side == x.shape[1]:
            return x.reshape(len(x), 1, side, side)
        return x
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4:
        if x.shape[3] in (1, 3):
            return np.moveaxis(x, 3, 1)
        if x.shape[1] in (1, 3):
            return x
        raise DataError(
            f"{where}: {key!r} has shape {x.shape} with no channel axis of size 1 or 3; "
            "save images as (N, H, W), (N, H, W, C) or (N, C, H, W) with C = 1 or 3"
        )
    raise DataError(
        f"{where}: {key!r} has {x.ndim} dimension(s) (shape {x.shape}); save images as (N, H, W), "
        "(N, H, W, C), (N, C, H, W) or flat vectors (N, D)"
    )


def _npz_labels(where: str, key: str, y: np.ndarray, n: int) -> torch.Tensor:
    """Check a label array of ``n`` whole numbers >= 0, shaped (n,) or (n, 1); return it as int64 (n,)."""
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or len(y) != n:
        raise DataError(
            f"{where}: {key!r} has shape {y.shape} but there are {n} images; save one label per image, shape ({n},)"
        )
    whole_floats = y.dtype.kind == "f" and bool(np.isfinite(y).all() and (y == np.round(y)).all())
    if y.dtype.kind not in "biu" and not whole_floats:
        raise DataError(f"{where}: {key!r} holds non-integer labels (dtype {y.dtype}); save integer class indices")
    if n and (y.min() < 0 or y.max() > np.iinfo(np.int64).max):
        raise DataError(f"{where}: {key!r} has labels outside 0..2**63-1; save class indices 0, 1, 2, ...")
    return torch.from_numpy(y.astype(np.int64))


# --------------------------------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------------------------------


def _load_folder(
    name: str, path: str, image_size: Optional[int], heldout_fraction: float, split_seed: int, grey: bool = False
) -> DataSplit:
    """A folder of images (flat, or one subfolder per class) as ``(N, C, H, W)``, split by seed.

    ``C`` is 3 when any image is in colour (grey images are then repeated in R, G and B), 1 when all are
    grey or ``grey`` is set (colour by ITU-R 601-2 luma). Every image's size and mode are read from its
    header first (nothing decoded), so that too big images and too many images are refused before any
    is decoded; then the images are decoded one at a time into the result (resized one at a time when
    ``image_size`` is given).
    """
    path = os.path.expanduser(path)
    files, labels = _list_folder(path)
    headers = [_image_header(file) for file in files]
    sizes = [(width, height) for width, height, _ in headers]
    channels = 1 if grey else max(image_channels for _, _, image_channels in headers)
    n = len(files)
    if image_size is None:
        _check_same_size(files, sizes)
        width, height = sizes[0]
        check_bytes(
            n * channels * width * height * 4,
            f"{n} images of {width}x{height} pixels and {channels} channel(s) from image folder {path} (as float32)",
            error=DataError,
        )
    else:
        width = height = image_size
        _check_resize(f"the {n} images of image folder {path}", n, channels, image_size)
    x = torch.empty((n, channels, height, width), dtype=torch.float32)
    for i, file in enumerate(files):
        image = torch.from_numpy(_read_image(file, channels))[None]
        if image_size is not None:
            image = _resize_images(image, image_size, f"image {file}")
        elif tuple(image.shape[-2:]) != (height, width):
            raise DataError(f"image {file} changed size while the folder was read; run again once it is written")
        x[i] = image[0]
    y = None if labels is None else torch.tensor(labels, dtype=torch.int64)
    return split_examples(name, x, y, heldout_fraction, split_seed)


def _list_folder(path: str) -> tuple[list[str], Optional[list[int]]]:
    """Image files in ``path`` (sorted) and their class labels, or None for a flat folder."""
    if not os.path.isdir(path):
        raise DataError(f"image folder {path} does not exist or is not a folder; check the path after 'folder:'")
    entries = [entry for entry in _listdir(path, "image folder") if not entry.startswith(".")]
    classes = [entry for entry in entries if os.path.isdir(os.path.join(path, entry))]
    loose = _image_files(path)
    if not classes:
        if not loose:
            raise DataError(
                f"image folder {path} has no images ({' '.join(IMAGE_EXTENSIONS)}); add images or class subfolders"
            )
        return loose, None
    if loose:
        raise DataError(
            f"image folder {path} mixes class subfolders ({', '.join(classes[:3])}) with loose images "
            f"({os.path.basename(loose[0])}, ...); "
            "move the loose images into a class subfolder or remove them"
        )
    files, labels = [], []
    for label, class_name in enumerate(classes):
        class_files = _image_files(os.path.join(path, class_name))
        if not class_files:
            raise DataError(
                f"class folder {os.path.join(path, class_name)} has no images "
                f"({' '.join(IMAGE_EXTENSIONS)}); "
                "add images or remove the folder"
            )
        files += class_files
        labels += [label] * len(class_files)
    return files, labels


def _listdir(folder: str, what: str) -> list[str]:
    """Sorted entries of ``folder``; DataError (not a traceback) when it cannot be listed."""
    try:
        return sorted(os.listdir(folder))
    except OSError as error:
        raise DataError(
            f"cannot list {what} {folder} ({one_line(error)}); check that it is a readable folder"
        ) from error


def _image_files(folder: str) -> list[str]:
    """Sorted paths of the non-hidden regular files in ``folder`` with an image extension (any case);
    folders, devices, pipes and broken or looping symbolic links are skipped."""
    return [
        os.path.join(folder, entry)
        for entry in _listdir(folder, "folder")
        if not entry.startswith(".")
        and entry.lower().endswith(IMAGE_EXTENSIONS)
        and os.path.isfile(os.path.join(folder, entry))
    ]


class _PillowBombsAreErrors(warnings.catch_warnings):
    """Within the block, Pillow's DecompressionBombWarning (an image over ``PIL.Image.MAX_IMAGE_PIXELS``)
    is raised like its DecompressionBombError (over twice that), instead of decoding the image anyway."""

    def __enter__(self) -> Any:
        from PIL import Image

        result = super().__enter__()
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return result


def _pillow_failure(file: str, error: BaseException) -> DataError:
    """The DataError for an image Pillow refused or could not read."""
    from PIL import Image

    if isinstance(error, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return DataError(
            f"image {file} has more pixels than Pillow decodes safely, a possible decompression bomb "
            f"({one_line(error)}); shrink the image (a VAE trains on small images), or raise "
            "PIL.Image.MAX_IMAGE_PIXELS in Python if it is genuine"
        )
    return DataError(f"cannot read image {file} ({one_line(error)}); replace or remove the file")


def _image_header(file: str) -> tuple[int, int, int]:
    """``(width, height, channels)`` of an image from its header (channels: 1 grey, 3 colour, see
    :func:`_mode_channels`), checked against the memory budget; nothing is decoded."""
    from PIL import Image

    try:
        with _PillowBombsAreErrors(), Image.open(file) as image:
            width, height = image.size
            bands, mode = len(image.getbands()), image.mode
    except Exception as error:  # Pillow raises many types (OSError, SyntaxError, struct.error, ...)
        raise _pillow_failure(file, error) from error
    if width < 1 or height < 1:
        raise DataError(f"image {file} has no pixels ({width}x{height}); replace or remove the file")
    channels = _mode_channels(mode)
    # Pillow holds up to 4 bytes per band and pixel while decoding, then the float32 copy of each channel.
    check_bytes(
        width * height * (4 * bands + 4 * channels),
        f"decoding image {file} ({width}x{height} pixels, mode {mode})",
        error=DataError,
    )
    return width, height, channels


def _mode_channels(mode: str) -> int:
    """1 for Pillow's grey modes (1, L, LA, La, I, I;16..., F), 3 for the others (RGB, RGBA, P, PA, CMYK,
    YCbCr, LAB, HSV, ...): a palette image counts as colour, whatever its palette holds."""
    return 1 if mode in ("1", "L", "LA", "La", "I", "F") or mode.startswith("I;") else 3


def _read_image(file: str, channels: int) -> np.ndarray:
    """One image file as float32 ``(channels, H, W)`` in [0, 1]; DataError naming the file if unreadable.

    ``channels`` 1: grey (colour by ITU-R 601-2 luma); 3: RGB (a grey image repeated in R, G and B)."""
    from PIL import Image

    try:
        with _PillowBombsAreErrors(), Image.open(file) as image:
            if channels == 1 or _mode_channels(image.mode) == 1:
                grey = _grey_values(file, image)[None]
                return grey if channels == 1 else np.repeat(grey, channels, axis=0)
            return _colour_values(file, image)
    except DataError:
        raise
    except Exception as error:  # Pillow raises many types (OSError, SyntaxError, struct.error, ...)
        raise _pillow_failure(file, error) from error


def _grey_values(file: str, image: Any) -> np.ndarray:
    """A Pillow image as grey float32 ``(H, W)`` in [0, 1], scaled by the image's own depth (colour by
    ITU-R 601-2 luma, Pillow's mode "L")."""
    mode = image.mode
    if mode.startswith("I;16"):  # 16-bit grey, either byte order
        values = np.asarray(image).astype(np.float32)
        values /= 65535.0
        return values
    if mode == "I":  # 32-bit signed integers holding samples of some bit depth
        values = np.asarray(image)
        bits, signed = _integer_depth(image)
        top = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
        low, high = int(values.min()), int(values.max())
        if low < 0 or high > top:
            problem = f"negative values (down to {low})" if low < 0 else f"values up to {high}"
            raise DataError(
                f"image {file} ({bits}-bit integer samples) has {problem}, outside 0..{top}; save grey levels "
                f"0..{top} (or 8/16-bit images)"
            )
        scaled = values.astype(np.float32)
        scaled /= np.float32(top)
        return np.minimum(scaled, 1.0, out=scaled)
    if mode == "F":  # 32-bit floats: must already be grey levels in [0, 1]
        values = np.array(image, dtype=np.float32)
        if not np.isfinite(values).all():
            raise DataError(f"image {file} (32-bit floats) has NaN or infinite values; replace them and save again")
        low, high = float(values.min()), float(values.max())
        if low < 0 or high > 1:
            raise DataError(
                f"image {file} holds 32-bit floats from {low:g} to {high:g}, but float images must lie in "
                "[0, 1]; rescale it (or save an 8- or 16-bit image)"
            )
        return values
    if mode == "PA" or (mode == "P" and "transparency" in image.info) or mode == "La":
        image = image.convert("RGBA" if mode != "La" else "LA")  # the palette's colours; alpha dropped below
    try:
        grey = image.convert("L")  # palette through its colours, colour by ITU-R 601-2 luma, alpha dropped
    except ValueError as error:
        raise DataError(
            f"image {file} has Pillow mode {mode}, which cannot be converted to grey ({one_line(error)}); "
            "save it as a grey or RGB image"
        ) from error
    values = np.asarray(grey, dtype=np.uint8).astype(np.float32)
    values /= 255.0
    return values


def _colour_values(file: str, image: Any) -> np.ndarray:
    """A Pillow colour image as float32 ``(3, H, W)`` R, G, B in [0, 1]: through the palette for palette
    images, alpha dropped, other colour spaces (CMYK, YCbCr, ...) converted by Pillow."""
    mode = image.mode
    if mode == "PA" or (mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")  # the palette's colours; alpha dropped below
    try:
        rgb = image.convert("RGB")
    except ValueError as error:
        raise DataError(
            f"image {file} has Pillow mode {mode}, which cannot be converted to RGB ({one_line(error)}); "
            "save it as an RGB or grey image"
        ) from error
    values = np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32)
    values /= 255.0
    return values


def _integer_depth(image: Any) -> tuple[int, bool]:
    """``(bits, signed)`` of the samples of a Pillow mode-"I" image: from a TIFF's BitsPerSample and
    SampleFormat tags; 16 unsigned for PNG (its deepest grey); else Pillow's own 32-bit signed."""
    tags = getattr(image, "tag_v2", None)
    if tags is not None:
        bits, sample_format = tags.get(258), tags.get(339)
        bits = bits[0] if isinstance(bits, tuple) and bits else bits
        sample_format = sample_format[0] if isinstance(sample_format, tuple) and sample_format else sample_format
        if isinstance(bits, int) and 1 <= bits <= 32:
            return bits, sample_format == 2
    if image.format == "PNG":
        return 16, False
    return 32, True


def _check_same_size(files: list[str], sizes: list[tuple[int, int]]) -> None:
    """Raise DataError naming two files of different sizes (width, height), if there are any."""
    first = sizes[0]
    for file, size in zip(files, sizes):
        if size != first:
            raise DataError(
                f"images differ in size: {files[0]} is {first[0]}x{first[1]} but {file} is "
                f"{size[0]}x{size[1]} (width x height); "
                "pass --image-size (image_size=...) to resize them all"
            )


def data_fingerprint(spec: str, root: Optional[PathLike] = None) -> dict:
    """A content hash of exactly the data ``load_dataset(spec, root=root)`` reads, computed streaming.

    Returns ``{"spec": spec, "sha256": hex digest, "files": number of files hashed, "bytes": their
    total size}``:

    * ``npz:PATH`` and ``table:PATH``: the SHA-256 of the file's bytes (what ``sha256sum PATH`` prints);
    * ``folder:PATH``: a SHA-256 over the image files the loader reads, in its order, each entered as
      its path relative to PATH (so class folder names, i.e. labels, count), its size and the
      SHA-256 of its bytes; other files (notes, hidden files) do not count;
    * ``mnist``, ``fashion-mnist``, ``kmnist``: the same over the four IDX files in
      ``<root>/<Name>/raw``;
    * ``cifar10``, ``cifar10:PATH``: the same over the batch files the loader reads (the training
      batches present, then ``test_batch.bin``);
    * ``digits``: the SHA-256 of the loaded arrays (shape, dtype and bytes of images and labels);
      ``files`` is 0 and ``bytes`` their size.

    Files are read in 1 MiB chunks, so memory stays bounded whatever their size. The same content
    gives the same fingerprint, and any changed byte (or a renamed or moved image) another. Arguments
    such as ``image_size`` or the split are not part of it: record them separately.

    Raises:
        DataError: for an unknown spec or files that are missing or unreadable (one line).
    """
    if not isinstance(spec, str):
        raise DataError(f"data set spec must be a string, got {type(spec).__name__}; {_valid_specs()}")
    kind, _, path = spec.partition(":")
    kind = kind.strip().lower()
    if kind in ("npz", "table") and path:
        file = os.path.expanduser(path)
        require_file(file, f"{kind} file", f"check the path after '{kind}:'")
        digest = hashlib.sha256()
        size = _hash_file(digest, file)
        return {"spec": spec, "sha256": digest.hexdigest(), "files": 1, "bytes": size}
    if kind == "folder" and path:
        folder = os.path.expanduser(path)
        files, _ = _list_folder(folder)
        return _hash_files(spec, folder, files)
    if kind == "cifar10" and (path or ":" not in spec):
        folder = cifar10_folder(path or None, _root_folder(root))
        train_files, test_file = cifar10_files(folder)
        return _hash_files(spec, folder, [*train_files, test_file])
    if kind in _TORCHVISION_CLASSES and not path:
        raw_folder = os.path.join(_root_folder(root), _TORCHVISION_CLASSES[kind], "raw")
        _check_idx_files(kind, raw_folder)
        return _hash_files(spec, raw_folder, [os.path.join(raw_folder, name) for name in _IDX_FILES])
    if kind == "digits" and not path:
        from sklearn.datasets import load_digits

        digits = load_digits()
        digest = hashlib.sha256()
        size = 0
        for array in (np.ascontiguousarray(digits.images), np.ascontiguousarray(digits.target)):
            digest.update(f"{array.dtype.str}{array.shape}".encode())
            digest.update(memoryview(array).cast("B"))
            size += array.nbytes
        return {"spec": spec, "sha256": digest.hexdigest(), "files": 0, "bytes": size}
    raise DataError(_unknown_spec_message(spec))


def _hash_files(spec: str, base: str, files: list[str]) -> dict:
    """SHA-256 over ``(relative name, size, sha256 of bytes)`` of each file, each field length-prefixed."""
    digest = hashlib.sha256()
    total = 0
    for file in files:
        name = os.path.relpath(file, base).replace(os.sep, "/").encode("utf-8", "surrogateescape")
        inner = hashlib.sha256()
        size = _hash_file(inner, file)
        digest.update(struct.pack(">Q", len(name)) + name + struct.pack(">Q", size) + inner.digest())
        total += size
    return {"spec": spec, "sha256": digest.hexdigest(), "files": len(files), "bytes": total}


def _hash_file(digest: Any, file: str) -> int:
    """Feed ``file`` to ``digest`` in chunks; return its size. DataError if it cannot be read."""
    size = 0
    try:
        with open(file, "rb") as handle:
            while chunk := handle.read(READ_CHUNK):
                digest.update(chunk)
                size += len(chunk)
    except OSError as error:
        raise DataError(f"cannot read {file} to fingerprint it ({one_line(error)}); check its permissions") from error
    return size
