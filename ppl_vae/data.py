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
    A folder of image files (.png .jpg .jpeg .bmp .gif .tif .tiff, any case), read with Pillow and
    converted to grey values in [0, 1] by the image's own depth: 8-bit, palette (through the palette)
    and colour images become Pillow mode ``"L"`` (ITU-R 601-2 luma) / 255; 16-bit images are divided
    by 65535; 32-bit integer images by the largest value of their bit depth (negative values are an
    error); 32-bit float images must already lie in [0, 1]. Alpha is dropped and only the first frame
    of animated files is used. Either all images lie directly in PATH (no labels) or PATH holds one subfolder
    per class (labels = index of the class folder in the sorted list of subfolder names). Having
    both loose images and class subfolders is an error, as is a class subfolder without images;
    hidden entries (names starting with ".") and files with other extensions are ignored, and
    class folders are not searched recursively. Split like ``"digits"``.

``image_size`` resizes every image to ``image_size x image_size`` (bilinear, antialiased) after
loading; it is an error for flat vector data.

Reading is bounded (:mod:`ppl_vae.limits`): every size is checked against the memory budget from the
file's own headers *before* anything is decoded or allocated -- the zip directory and the ``.npy``
headers of an npz, the dimensions in an image header, the IDX header of MNIST files, and the size
asked for by ``image_size``. A file that is damaged, of the wrong type or too big is refused with a
one-line :class:`DataError` that names the file and the fix.

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
import zipfile
import zlib
from dataclasses import dataclass
from typing import Any, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F

from ppl_vae.errors import DataError, PplVaeError
from ppl_vae.limits import check_bytes

DATASETS = ("digits", "mnist", "fashion-mnist", "kmnist")
"""Named data sets; ``load_dataset`` also accepts the prefixes in :data:`SPEC_PREFIXES`."""

SPEC_PREFIXES = ("npz:", "folder:", "table:")
"""Prefixes of data set specs that name a file (``npz:PATH``) or a folder (``folder:PATH``)."""

BINARIZE_MODES = ("dynamic", "threshold", "none")

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
_MAX_SEED = 2**64

PathLike = Union[str, "os.PathLike[str]"]


# --------------------------------------------------------------------------------------------------
# The result type
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataSplit:
    """A data set split into a training part and a held-out part.

    Attributes:
        name: the spec it was loaded from, e.g. ``"digits"`` or ``"npz:/path/file.npz"``.
        train: ``(N_train, *data_shape)`` float32 in [0, 1].
        heldout: ``(N_heldout, *data_shape)`` float32 in [0, 1].
        train_labels: ``(N_train,)`` int64 class labels, or None.
        heldout_labels: ``(N_heldout,)`` int64 class labels, or None.
        kind: ``"image"`` (values in [0, 1]) or ``"table"`` (``(N, D)`` finite real or count features,
            from ``table:PATH``; see :mod:`ppl_vae.tabular`).

    Construction checks these invariants and raises :class:`DataError` when one is broken, so a
    ``DataSplit`` built by hand (e.g. in a notebook) is as safe to use as a loaded one.
    """

    name: str
    train: torch.Tensor
    heldout: torch.Tensor
    train_labels: Optional[torch.Tensor] = None
    heldout_labels: Optional[torch.Tensor] = None
    kind: str = "image"

    def __post_init__(self) -> None:
        if self.kind not in ("image", "table"):
            raise DataError(f"data set {self.name!r}: kind must be 'image' or 'table', got {self.kind!r}")
        for part in ("train", "heldout"):
            _check_part(self.name, part, getattr(self, part), unit_interval=self.kind == "image")
        if self.train.shape[1:] != self.heldout.shape[1:]:
            raise DataError(
                f"data set {self.name!r}: training examples have shape {tuple(self.train.shape[1:])} "
                f"but held-out examples {tuple(self.heldout.shape[1:])}; give both parts the same shape"
            )
        if len(self.train) < 2 or len(self.heldout) < 1:
            raise DataError(
                f"data set {self.name!r} has {len(self.train)} training and {len(self.heldout)} held-out "
                "examples; at least 2 training examples and 1 held-out example are needed, add more data"
            )
        if (self.train_labels is None) != (self.heldout_labels is None):
            raise DataError(
                f"data set {self.name!r} has labels for only one of its parts; "
                "give labels for both or neither"
            )
        _check_labels(self.name, "train_labels", self.train_labels, len(self.train))
        _check_labels(self.name, "heldout_labels", self.heldout_labels, len(self.heldout))

    @property
    def data_shape(self) -> tuple[int, ...]:
        """Shape of one example, e.g. ``(1, 8, 8)`` for images or ``(D,)`` for flat vectors."""
        return tuple(self.train.shape[1:])


def _check_part(name: str, part: str, x: torch.Tensor, unit_interval: bool = True) -> None:
    """Raise DataError unless ``x`` is a float32 tensor ``(N, ...)`` with values in [0, 1] (images) or
    finite values (tables)."""
    if not isinstance(x, torch.Tensor) or x.dtype != torch.float32 or x.dim() < 2:
        raise DataError(
            f"data set {name!r}: {part} must be a float32 tensor of shape (N, ...) with at least 2 dims, "
            f"got {_describe(x)}; convert it with torch.as_tensor(x, dtype=torch.float32)"
        )
    if not unit_interval:
        if x.numel() > 0 and not bool(torch.isfinite(x).all()):
            raise DataError(f"data set {name!r}: {part} has NaN or infinite values; remove or impute them")
        return
    if x.numel() > 0 and not _in_unit_interval(x):
        raise DataError(
            f"data set {name!r}: {part} has values outside [0, 1] (or NaN); scale the data into [0, 1]"
        )


def _in_unit_interval(x: torch.Tensor) -> bool:
    """True if every value of the non-empty tensor ``x`` lies in [0, 1] (False if any is NaN)."""
    low, high = torch.aminmax(x)  # NaN propagates into both, and NaN fails both comparisons
    return bool(low >= 0) and bool(high <= 1)


def _check_labels(name: str, part: str, y: Optional[torch.Tensor], n: int) -> None:
    """Raise DataError unless ``y`` is None or an int64 tensor of shape ``(n,)``."""
    if y is None:
        return
    if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or tuple(y.shape) != (n,):
        raise DataError(
            f"data set {name!r}: {part} must be an int64 tensor of shape ({n},), got {_describe(y)}; "
            "give one integer label per example"
        )


def _describe(x: object) -> str:
    """A short description of a tensor or any other object for error messages."""
    if isinstance(x, torch.Tensor):
        return f"{x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__


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
) -> DataSplit:
    """Load a data set as a :class:`DataSplit` (see the module docstring for the sources).

    Args:
        spec: ``"digits"``, ``"mnist"``, ``"fashion-mnist"``, ``"kmnist"`` (case-insensitive),
            ``"npz:PATH"`` or ``"folder:PATH"``.
        root: folder holding the torchvision data sets (``<root>/MNIST/raw`` ...); defaults to
            ``"./data"``. Ignored by the other sources.
        download: let torchvision download missing MNIST-family files into ``root``. Never
            downloads anything when False. Ignored by the other sources.
        image_size: if given, resize every image to ``(image_size, image_size)``.
        heldout_fraction: share of the examples held out by the sources without their own test
            set (``digits``, ``folder:``); rounded to the nearest count, at least 1 example in each
            part. Must lie strictly between 0 and 1 for every source.
        split_seed: seed of that split (0 <= split_seed < 2**64). The same seed gives the same split
            on every call (for a given data set and torch version), independent of and without
            touching the global torch random state.

    Returns:
        The split; ``train`` is ``(N_train, *data_shape)``, ``heldout`` is ``(N_heldout, *data_shape)``.

    Raises:
        DataError: for any problem with the arguments or the data, with a one-line message.
    """
    _check_arguments(spec, image_size, heldout_fraction, split_seed)
    image_size = None if image_size is None else int(image_size)
    heldout_fraction, split_seed = float(heldout_fraction), int(split_seed)
    try:
        return _load(spec, root, download, image_size, heldout_fraction, split_seed)
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
) -> DataSplit:
    kind, _, path = spec.partition(":")
    kind = kind.strip().lower()
    if kind == "npz" and path:
        return _load_npz(spec, path, image_size)
    if kind == "folder" and path:
        return _load_folder(spec, path, image_size, heldout_fraction, split_seed)
    if kind == "table" and path:
        if image_size is not None:
            raise DataError(f"data set {spec!r} is a table; --image-size applies to images only, drop it")
        from ppl_vae.tabular import load_table

        return load_table(spec, path, heldout_fraction, split_seed)
    if kind == "digits" and not path:
        split = _load_digits(heldout_fraction, split_seed)
    elif kind in _TORCHVISION_CLASSES and not path:
        split = _load_torchvision(kind, root, download)
    else:
        raise DataError(_unknown_spec_message(spec))
    return split if image_size is None else _resize_split(split, image_size)


def binarize(x: torch.Tensor, mode: str, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Turn grey values in [0, 1] into binary values.

    Args:
        x: tensor of any shape with values in [0, 1].
        mode: ``"dynamic"``: draw each value from Bernoulli(x) afresh on every call (the usual
            "dynamically binarized" setting for likelihood numbers); uses ``generator`` if given,
            else the global torch random state. ``"threshold"``: 1 where x > 0.5, else 0 (0.5 itself
            maps to 0). ``"none"``: x unchanged.
        generator: optional torch.Generator on x's device, for reproducible dynamic binarization.

    Returns:
        A tensor with x's shape, device and floating dtype (float32 for integer input).
    """
    if mode not in BINARIZE_MODES:
        raise DataError(f"unknown binarization mode {mode!r}; use one of: {', '.join(BINARIZE_MODES)}")
    if not x.is_floating_point():
        x = x.to(torch.float32)
    if mode == "dynamic":
        return torch.bernoulli(x, generator=generator)
    if mode == "threshold":
        return (x > 0.5).to(x.dtype)
    return x


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
            f"heldout_fraction must be a number strictly between 0 and 1, got {heldout_fraction!r}; "
            "pass e.g. 0.2"
        )
    if not _is_int(split_seed) or not 0 <= split_seed < _MAX_SEED:
        raise DataError(f"split_seed must be an integer in [0, 2**64), got {split_seed!r}; pass e.g. 0")


def _is_int(value: object) -> bool:
    """True for Python and numpy integers, False for bools."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _valid_specs() -> str:
    return f"use one of: {', '.join(DATASETS)}, npz:PATH, folder:PATH, table:PATH"


def _unknown_spec_message(spec: str) -> str:
    """Error message for an unknown spec, with a hint when it names an existing file or folder."""
    hint = ""
    if spec and os.path.isdir(spec):
        hint = f" (to read images from that folder, write folder:{spec})"
    elif spec and os.path.isfile(spec):
        hint = f" (to read that file, write npz:{spec})"
    return f"unknown data set {spec!r}; {_valid_specs()}{hint}"


# --------------------------------------------------------------------------------------------------
# Splitting and resizing
# --------------------------------------------------------------------------------------------------


def _split(
    name: str,
    x: torch.Tensor,
    y: Optional[torch.Tensor],
    heldout_fraction: float,
    split_seed: int,
    kind: str = "image",
) -> DataSplit:
    """Split ``x`` ``(N, ...)`` and labels ``y`` ``(N,)`` by a seeded random permutation.

    ``round(N * heldout_fraction)`` examples (at least 1, at most N - 2) are held out. Each part keeps
    the original order of its examples.
    """
    n = len(x)
    if n < 3:
        raise DataError(
            f"data set {name!r} has {n} example(s); at least 3 are needed "
            "(2 for training, 1 held out), add more data"
        )
    n_heldout = min(max(int(math.floor(n * heldout_fraction + 0.5)), 1), n - 2)
    generator = torch.Generator().manual_seed(split_seed)
    perm = torch.randperm(n, generator=generator)
    heldout_idx = perm[:n_heldout].sort().values
    train_idx = perm[n_heldout:].sort().values
    return DataSplit(
        name=name,
        train=x[train_idx],
        heldout=x[heldout_idx],
        train_labels=None if y is None else y[train_idx],
        heldout_labels=None if y is None else y[heldout_idx],
        kind=kind,
    )


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
    return _split("digits", x, y, heldout_fraction, split_seed)


# --------------------------------------------------------------------------------------------------
# MNIST, Fashion-MNIST, KMNIST (torchvision)
# --------------------------------------------------------------------------------------------------

# What torchvision's IDX reader raises for damaged files (it uses asserts and tensor views).
_IDX_READ_ERRORS = (AssertionError, RuntimeError, ValueError, TypeError, KeyError, IndexError, OSError)


def _load_torchvision(kind: str, root: Optional[PathLike], download: bool) -> DataSplit:
    """An MNIST-family data set: train = official training set, held-out = official test set.

    Images become ``(N, 1, 28, 28)`` float32 (uint8 / 255), labels ``(N,)`` int64.
    """
    root = os.path.abspath(os.path.expanduser(os.fspath(DEFAULT_ROOT if root is None else root)))
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
        gz_hint = (
            " (the .gz archives are there: uncompress them with gunzip, or pass --download to extract them)"
        )
    expected = "" if len(missing) == len(_IDX_FILES) else f" (expects {', '.join(_IDX_FILES)})"
    raise DataError(
        f"{kind} files not found in {raw_folder}: missing {', '.join(missing)}{expected}{gz_hint}; "
        "pass --download (download=True) to fetch them, or copy the uncompressed files there"
    )


# IDX element types: type code -> (bytes per element, name).
_IDX_TYPES = {0x08: (1, "uint8"), 0x09: (1, "int8"), 0x0B: (2, "int16"), 0x0C: (4, "int32"),
              0x0D: (4, "float32"), 0x0E: (8, "float64")}


def _check_idx_header(kind: str, file: str, ndim: int) -> None:
    """Check an IDX file's header against its size and the memory budget, reading 16 bytes at most."""
    fix = "delete it and pass --download, or copy the intact uncompressed file there"
    try:
        size = os.path.getsize(file)
        with open(file, "rb") as handle:
            head = handle.read(4 + 4 * ndim)
    except OSError as error:
        raise DataError(f"cannot read the {kind} file {file} ({_one_line(error)}); check its permissions") from error
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
            f"the {kind} file {file} holds {type_name} values, but MNIST-family files hold uint8 (0..255); "
            f"{fix}"
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
    check_bytes(count * max(itemsize, 4), f"the {kind} file {file} ({' x '.join(map(str, dims))} values, "
                f"read whole and converted to float32)", error=DataError)


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
            f"the {kind} files in {raw_folder} hold {_describe(data)} images and {_describe(targets)} "
            "labels, not N uint8 images with N labels; replace them with the original files (--download)"
        )
    return data.unsqueeze(1).to(torch.float32) / 255.0, targets.to(torch.int64)


# --------------------------------------------------------------------------------------------------
# npz files
# --------------------------------------------------------------------------------------------------

# What opening or reading a damaged or unusual zip archive can raise (encrypted members: RuntimeError;
# unknown compression methods: NotImplementedError).
_NPZ_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, KeyError,
                    RuntimeError, NotImplementedError, struct.error, SyntaxError)

_READ_CHUNK = 1 << 20
_NPY_MAGIC = b"\x93NUMPY"


def _load_npz(name: str, path: str, image_size: Optional[int]) -> DataSplit:
    """A keras-style .npz file: ``x_train``/``x_test`` and optional ``y_train``/``y_test``."""
    path = os.path.expanduser(path)
    arrays = _read_npz(path)
    where = f"npz file {path}"
    x_train = _npz_images(where, "x_train", arrays.pop("x_train"), image_size)
    x_test = _npz_images(where, "x_test", arrays.pop("x_test"), image_size)
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


def _read_npz(path: str) -> dict[str, np.ndarray]:
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
        return {key: read_npz_member(path, archive, members[key], key, fix, "biuf" if key[0] == "x" else "biufcSU")
                for key in wanted}


class open_npz:
    """``with open_npz(path, what) as (archive, members):`` an .npz archive and its members by key.

    ``members`` maps each array name (the member name without ``.npy``, as numpy names them) to its
    ``ZipInfo`` from the zip directory; nothing is decompressed. ``what`` names the file in errors
    (``"npz file"``, ``"table file"``). DataError for a missing path, a folder, a plain .npy file or
    anything that is not a zip archive.
    """

    def __init__(self, path: str, what: str, fix: str = "check the path"):
        self.path, self.what = path, what
        _require_file(path, what, fix)
        try:
            with open(path, "rb") as handle:
                start = handle.read(len(_NPY_MAGIC))
        except OSError as error:
            raise DataError(f"cannot read {what} {path} ({_one_line(error)}); check its permissions") from error
        if start == _NPY_MAGIC:
            raise DataError(f"{path} holds a single .npy array, not an .npz archive; save it with numpy.savez")
        try:
            self.archive = zipfile.ZipFile(path)
        except _NPZ_READ_ERRORS as error:
            raise DataError(
                f"{path} is not a valid .npz file ({_one_line(error)}); save it with numpy.savez"
            ) from error
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
        check_bytes(info.file_size, f"npz member {key!r} of {path} (unpacks to {info.file_size} bytes from "
                    f"{info.compress_size} in the archive)", error=DataError)
    total = sum(members[key].file_size for key in keys)
    check_bytes(total, f"the arrays {', '.join(repr(key) for key in keys)} of {path} together (unpacking to "
                f"{total} bytes)", error=DataError)


def read_npz_member(path: str, archive: zipfile.ZipFile, info: zipfile.ZipInfo, key: str, fix: str,
                    kinds: str = "biuf") -> np.ndarray:
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
            while member.read(_READ_CHUNK):  # drain trailing bytes so that the CRC is checked
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


def _check_npy_header(path: str, key: str, info: zipfile.ZipInfo, header_bytes: int, shape: tuple[int, ...],
                      dtype: np.dtype, fix: str, kinds: str) -> None:
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
        n = stream.readinto(buffer[filled:filled + _READ_CHUNK])
        if not n:
            raise ValueError(f"the data ends after {filled} of {len(buffer)} bytes")
        filled += n


def _require_file(path: str, what: str, fix: str) -> None:
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
    return f"npz file {path}: cannot read {key!r} ({_one_line(error)}); save the file again"


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _npz_images(where: str, key: str, array: np.ndarray, image_size: Optional[int]) -> torch.Tensor:
    """An .npz image array to float32 ``(N, C, H, W)`` or ``(N, D)`` in [0, 1], resized if asked."""
    values = _npz_values(where, key, array)
    x = torch.from_numpy(np.ascontiguousarray(_npz_layout(where, key, values)))
    if image_size is not None:
        if x.dim() != 4:
            raise DataError(
                f"image_size only applies to images, but {where} holds flat vectors of shape "
                f"{tuple(x.shape[1:])} in {key!r}; drop image_size (--image-size) or save the data as images"
            )
        x = _resize_images(x, image_size, f"{key!r} of {where}")
    return x


def _npz_values(where: str, key: str, array: np.ndarray) -> np.ndarray:
    """Check the dtype and values of an image array; return it as float32 in [0, 1] (same shape)."""
    if array.size == 0:
        raise DataError(
            f"{where}: {key!r} is empty (shape {array.shape}); save at least one non-empty example"
        )
    kind = array.dtype.kind
    if kind == "b":
        return array.astype(np.float32)
    if kind in "iu":
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            raise DataError(
                f"{where}: integer array {key!r} has values from {low} to {high}; integer images must lie in "
                "0..255 (or save floats in [0, 1])"
            )
        values = array.astype(np.float32)
        values /= 255.0
        return values
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
        return array.astype(np.float32)
    raise DataError(
        f"{where}: {key!r} has dtype {array.dtype}, not numbers; "
        "save images as uint8 0..255 or floats in [0, 1]"
    )


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
            f"{where}: {key!r} has shape {y.shape} but there are {n} images; "
            f"save one label per image, shape ({n},)"
        )
    whole_floats = y.dtype.kind == "f" and bool(np.isfinite(y).all() and (y == np.round(y)).all())
    if y.dtype.kind not in "biu" and not whole_floats:
        raise DataError(
            f"{where}: {key!r} holds non-integer labels (dtype {y.dtype}); save integer class indices"
        )
    if n and (y.min() < 0 or y.max() > np.iinfo(np.int64).max):
        raise DataError(f"{where}: {key!r} has labels outside 0..2**63-1; save class indices 0, 1, 2, ...")
    return torch.from_numpy(y.astype(np.int64))


# --------------------------------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------------------------------


def _load_folder(
    name: str, path: str, image_size: Optional[int], heldout_fraction: float, split_seed: int
) -> DataSplit:
    """A folder of images (flat, or one subfolder per class) as grey ``(N, 1, H, W)``, split by seed.

    Every image's size is read from its header first (nothing decoded), so that too big images and
    too many images are refused before any is decoded; then the images are decoded one at a time
    into the result (resized one at a time when ``image_size`` is given).
    """
    path = os.path.expanduser(path)
    files, labels = _list_folder(path)
    sizes = [_image_header(file) for file in files]
    n = len(files)
    if image_size is None:
        _check_same_size(files, sizes)
        width, height = sizes[0]
        check_bytes(n * width * height * 4, f"{n} images of {width}x{height} pixels from image folder {path} "
                    "(as float32)", error=DataError)
    else:
        width = height = image_size
        _check_resize(f"the {n} images of image folder {path}", n, 1, image_size)
    x = torch.empty((n, 1, height, width), dtype=torch.float32)
    for i, file in enumerate(files):
        image = torch.from_numpy(_read_image(file))[None, None]
        if image_size is not None:
            image = _resize_images(image, image_size, f"image {file}")
        elif tuple(image.shape[-2:]) != (height, width):
            raise DataError(f"image {file} changed size while the folder was read; run again once it is written")
        x[i] = image[0]
    y = None if labels is None else torch.tensor(labels, dtype=torch.int64)
    return _split(name, x, y, heldout_fraction, split_seed)


def _list_folder(path: str) -> tuple[list[str], Optional[list[int]]]:
    """Image files in ``path`` (sorted) and their class labels, or None for a flat folder."""
    if not os.path.isdir(path):
        raise DataError(
            f"image folder {path} does not exist or is not a folder; check the path after 'folder:'"
        )
    entries = [entry for entry in _listdir(path, "image folder") if not entry.startswith(".")]
    classes = [entry for entry in entries if os.path.isdir(os.path.join(path, entry))]
    loose = _image_files(path)
    if not classes:
        if not loose:
            raise DataError(
                f"image folder {path} has no images ({' '.join(IMAGE_EXTENSIONS)}); "
                "add images or class subfolders"
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
        raise DataError(f"cannot list {what} {folder} ({_one_line(error)}); check that it is a readable folder") \
            from error


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
            f"({_one_line(error)}); shrink the image (a VAE trains on small images), or raise "
            "PIL.Image.MAX_IMAGE_PIXELS in Python if it is genuine"
        )
    return DataError(f"cannot read image {file} ({_one_line(error)}); replace or remove the file")


def _image_header(file: str) -> tuple[int, int]:
    """``(width, height)`` of an image from its header, checked against the memory budget; nothing is
    decoded."""
    from PIL import Image

    try:
        with _PillowBombsAreErrors(), Image.open(file) as image:
            width, height = image.size
            bands, mode = len(image.getbands()), image.mode
    except Exception as error:  # Pillow raises many types (OSError, SyntaxError, struct.error, ...)
        raise _pillow_failure(file, error) from error
    if width < 1 or height < 1:
        raise DataError(f"image {file} has no pixels ({width}x{height}); replace or remove the file")
    # Pillow holds up to 4 bytes per band and pixel while decoding, then the grey float32 copy.
    check_bytes(width * height * (4 * bands + 4), f"decoding image {file} ({width}x{height} pixels, mode {mode})",
                error=DataError)
    return width, height


def _read_image(file: str) -> np.ndarray:
    """One image file as grey float32 ``(H, W)`` in [0, 1]; DataError naming the file if unreadable."""
    from PIL import Image

    try:
        with _PillowBombsAreErrors(), Image.open(file) as image:
            return _grey_values(file, image)
    except DataError:
        raise
    except Exception as error:  # Pillow raises many types (OSError, SyntaxError, struct.error, ...)
        raise _pillow_failure(file, error) from error


def _grey_values(file: str, image: Any) -> np.ndarray:
    """A Pillow image as grey float32 ``(H, W)`` in [0, 1], scaled by the image's own depth."""
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
            f"image {file} has Pillow mode {mode}, which cannot be converted to grey ({_one_line(error)}); "
            "save it as a grey or RGB image"
        ) from error
    values = np.asarray(grey, dtype=np.uint8).astype(np.float32)
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


# --------------------------------------------------------------------------------------------------
# Content fingerprint
# --------------------------------------------------------------------------------------------------


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
        _require_file(file, f"{kind} file", f"check the path after '{kind}:'")
        digest = hashlib.sha256()
        size = _hash_file(digest, file)
        return {"spec": spec, "sha256": digest.hexdigest(), "files": 1, "bytes": size}
    if kind == "folder" and path:
        folder = os.path.expanduser(path)
        files, _ = _list_folder(folder)
        return _hash_files(spec, folder, files)
    if kind in _TORCHVISION_CLASSES and not path:
        base = os.path.abspath(os.path.expanduser(os.fspath(DEFAULT_ROOT if root is None else root)))
        raw_folder = os.path.join(base, _TORCHVISION_CLASSES[kind], "raw")
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
            while chunk := handle.read(_READ_CHUNK):
                digest.update(chunk)
                size += len(chunk)
    except OSError as error:
        raise DataError(f"cannot read {file} to fingerprint it ({_one_line(error)}); check its permissions") \
            from error
    return size


# --------------------------------------------------------------------------------------------------
# Support checks over all rows
# --------------------------------------------------------------------------------------------------


def _on_8bit_grid(x: torch.Tensor) -> torch.Tensor:
    scaled = x * 255
    return (x >= 0) & (x <= 1) & ((scaled - scaled.round()).abs() <= 1e-3)


# data kind -> (elementwise test, what a value must be, how to fix the data); the kinds of
# ppl_vae.models.likelihoods.DATA_KINDS, with the same tests as its check_data_kind.
_SUPPORT = {
    "binary": (lambda x: (x == 0) | (x == 1), "0 or 1", "binarize it (--binarize dynamic or threshold)"),
    "unit": (lambda x: (x >= 0) & (x <= 1), "a grey level in [0, 1]",
             "rescale the data to [0, 1] (divide 8-bit images by 255) and remove NaN values"),
    "8bit": (_on_8bit_grid, "an 8-bit grey level k/255",
             "quantize it with torch.round(x * 255) / 255 (after any resizing)"),
    "real": (torch.isfinite, "a finite number", "remove or impute NaN and infinite values"),
    "count": (lambda x: (x >= 0) & (x == x.round()) & torch.isfinite(x), "a non-negative integer count",
              "pass the raw count table (no binarizing, rescaling or normalizing) without NaN values"),
}


def check_data_support(
    x: torch.Tensor,
    likelihood: Any,
    what: str = "data",
    *,
    binarize: Optional[str] = "none",
    chunk_rows: int = 4096,
) -> None:
    """Check that every row of ``x`` lies in the support of ``likelihood``, in chunks of ``chunk_rows`` rows.

    Args:
        x: ``(N, ...)`` data as the likelihood will score it (after any quantizing, before binarizing).
        likelihood: a likelihood with ``data_kind`` (``"binary"``, ``"unit"``, ``"8bit"``, ``"real"``,
            ``"count"``) and/or its own ``check_support(x)``, or a data kind given as a string.
        what: names the data in the message, e.g. ``"training data"``.
        binarize: the binarization that will be applied (``"dynamic"``, ``"threshold"``) or ``"none"``.
            A binarized value is 0 or 1, so then the check is that binarizing is possible: every value
            in [0, 1]; the likelihood's own check is not run.
        chunk_rows: rows per chunk; the extra memory is about one chunk.

    Raises:
        DataError: one line naming ``what``, the first offending row (counting from 0) and feature
            (its index, or its ``(channel, row, column)`` for images), the value, and the fix.
    """
    if isinstance(likelihood, str):
        kind, name, own_check = likelihood, f"{likelihood!r} data", None
    else:
        kind = getattr(likelihood, "data_kind", None)
        name = getattr(likelihood, "name", type(likelihood).__name__)
        own_check = getattr(likelihood, "check_support", None)
    binarized = binarize not in (None, "none")
    if binarized:  # the likelihood then sees 0/1 values; binarizing needs probabilities
        test, _, fix = _SUPPORT["unit"]
        need = f"binarizing it (--binarize {binarize}) for the {name} likelihood needs values in [0, 1]"
        own_check = None
    elif kind in _SUPPORT:
        test, needed, fix = _SUPPORT[kind]
        need = f"the {name} likelihood needs {needed}"
    elif own_check is not None:
        test = fix = need = None
    elif isinstance(likelihood, str):
        raise ValueError(f"unknown data kind {kind!r}; one of {', '.join(_SUPPORT)}")
    else:
        return  # a likelihood that declares no support has nothing to check
    if not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise ValueError(f"chunk_rows must be a positive integer, got {chunk_rows!r}")
    n = x.shape[0] if x.dim() else 0
    for start in range(0, n, chunk_rows):
        chunk = x[start:start + chunk_rows]
        flat = chunk.reshape(len(chunk), -1)
        ok = None if test is None else test(chunk).reshape(len(chunk), -1)
        if own_check is None:  # the data kind's test decides
            if not bool(ok.all()):
                row, feature = (~ok).nonzero()[0].tolist()
                raise DataError(f"{what}, row {start + row} (counting from 0), {_feature(x, flat, row, feature)} is "
                                f"outside the support: {need}; {fix}")
            continue
        try:  # the likelihood's own check decides (it may be laxer or stricter than its data kind)
            own_check(chunk)
        except PplVaeError as error:
            row = _first_failing_row(own_check, chunk, ok)
            if row is None:
                raise DataError(f"{what}, rows {start} to {start + len(chunk) - 1}: {_one_line(error)}") from None
            place = f"row {start + row} (counting from 0)"
            if ok is not None and not bool(ok[row].all()):
                feature = int((~ok[row]).nonzero()[0])
                place += f", {_feature(x, flat, row, feature)} is outside the support"
            raise DataError(f"{what}, {place}: {_one_line(error)}") from None


def _feature(x: torch.Tensor, flat: torch.Tensor, row: int, feature: int) -> str:
    """``feature 3: the value 0.5`` (or ``feature (c, h, w): ...`` for images), for messages."""
    where = feature if x.dim() <= 2 else tuple(int(i) for i in np.unravel_index(feature, tuple(x.shape[1:])))
    return f"feature {where}: the value {float(flat[row, feature]):g}"


def _first_failing_row(check: Any, chunk: torch.Tensor, ok: Optional[torch.Tensor]) -> Optional[int]:
    """The first row of ``chunk`` that ``check`` refuses on its own (rows the data-kind test flags are
    tried first), or None when no single row fails."""
    flagged = [] if ok is None else (~ok).any(1).nonzero().flatten().tolist()
    for rows in (flagged, range(len(chunk))):
        for row in rows:
            try:
                check(chunk[row:row + 1])
            except PplVaeError:
                return row
    return None
