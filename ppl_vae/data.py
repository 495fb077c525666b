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
    converted to grey (Pillow mode ``"L"``; alpha is dropped, only the first frame of animated
    files is used). Either all images lie directly in PATH (no labels) or PATH holds one subfolder
    per class (labels = index of the class folder in the sorted list of subfolder names). Having
    both loose images and class subfolders is an error, as is a class subfolder without images;
    hidden entries (names starting with ".") and files with other extensions are ignored, and
    class folders are not searched recursively. Split like ``"digits"``.

``image_size`` resizes every image to ``image_size x image_size`` (bilinear, antialiased) after
loading; it is an error for flat vector data.
"""

from __future__ import annotations

import math
import numbers
import os
import zipfile
import zlib
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import torch
import torch.nn.functional as F

from ppl_vae.errors import DataError

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


def _resize_images(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize images ``(N, C, H, W)`` to ``(N, C, size, size)`` (bilinear, antialiased), in [0, 1]."""
    if tuple(x.shape[-2:]) == (size, size):
        return x
    resized = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return resized.clamp_(0.0, 1.0)


def _resize_split(split: DataSplit, size: int) -> DataSplit:
    """Resize both parts of an image split; DataError for flat vector data."""
    if len(split.data_shape) != 3:
        raise DataError(
            f"image_size only applies to images, but data set {split.name!r} holds flat vectors of shape "
            f"{split.data_shape}; drop image_size (--image-size) or store the data as images"
        )
    return DataSplit(
        name=split.name,
        train=_resize_images(split.train, size),
        heldout=_resize_images(split.heldout, size),
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
    import torchvision.datasets as tv_datasets

    root = os.path.abspath(os.path.expanduser(os.fspath(DEFAULT_ROOT if root is None else root)))
    class_name = _TORCHVISION_CLASSES[kind]
    raw_folder = os.path.join(root, class_name, "raw")
    if not download:
        _check_idx_files(kind, raw_folder)
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

# What reading a member of a damaged .npz can raise.
_NPZ_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, KeyError)


def _load_npz(name: str, path: str, image_size: Optional[int]) -> DataSplit:
    """A keras-style .npz file: ``x_train``/``x_test`` and optional ``y_train``/``y_test``."""
    path = os.path.expanduser(path)
    arrays = _read_npz(path)
    where = f"npz file {path}"
    x_train = _npz_images(where, "x_train", arrays["x_train"], image_size)
    x_test = _npz_images(where, "x_test", arrays["x_test"], image_size)
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
    if not os.path.isfile(path):
        raise DataError(f"npz file {path} does not exist; check the path after 'npz:'")
    try:
        npz = np.load(path, allow_pickle=False)
    except (*_NPZ_READ_ERRORS, zipfile.LargeZipFile) as error:
        # numpy's own text for non-zip files suggests unpickling them: never do that with a data file.
        reason = "not a zip archive of .npy arrays" if "pickle" in str(error) else _one_line(error)
        raise DataError(f"{path} is not a valid .npz file ({reason}); save it with numpy.savez") from error
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise DataError(f"{path} holds a single .npy array, not an .npz archive; save it with numpy.savez")
    with npz:
        keys = list(npz.files)
        for key in ("x_train", "x_test"):
            if key not in keys:
                raise DataError(
                    f"npz file {path} has no array {key!r} (found: {', '.join(keys) or 'nothing'}); "
                    f"save the {'training' if key == 'x_train' else 'held-out'} images under the key {key!r}"
                )
        wanted = [key for key in ("x_train", "x_test", "y_train", "y_test") if key in keys]
        return {key: _read_npz_member(path, npz, key) for key in wanted}


def _read_npz_member(path: str, npz: "np.lib.npyio.NpzFile", key: str) -> np.ndarray:
    """One array of an open .npz file; DataError for object (ragged) or damaged arrays."""
    try:
        return npz[key]
    except ValueError as error:
        if "allow_pickle" in str(error) or "pickled" in str(error):
            raise DataError(
                f"npz file {path}: {key!r} is an object array (ragged or mixed types); "
                "save it as one numeric array with all examples the same shape"
            ) from error
        raise DataError(_unreadable_member(path, key, error)) from error
    except _NPZ_READ_ERRORS as error:
        raise DataError(_unreadable_member(path, key, error)) from error


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
        x = _resize_images(x, image_size)
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
        return array.astype(np.float32) / 255.0
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
    """A folder of images (flat, or one subfolder per class) as grey ``(N, 1, H, W)``, split by seed."""
    path = os.path.expanduser(path)
    files, labels = _list_folder(path)
    images = [_read_image(file) for file in files]
    if image_size is not None:
        x = torch.cat([_resize_images(image[None], image_size) for image in images])
    else:
        _check_same_size(files, images)
        x = torch.stack(images)
    y = None if labels is None else torch.tensor(labels, dtype=torch.int64)
    return _split(name, x, y, heldout_fraction, split_seed)


def _list_folder(path: str) -> tuple[list[str], Optional[list[int]]]:
    """Image files in ``path`` (sorted) and their class labels, or None for a flat folder."""
    if not os.path.isdir(path):
        raise DataError(
            f"image folder {path} does not exist or is not a folder; check the path after 'folder:'"
        )
    entries = sorted(entry for entry in os.listdir(path) if not entry.startswith("."))
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


def _image_files(folder: str) -> list[str]:
    """Sorted paths of the non-hidden files in ``folder`` with an image extension (any case)."""
    return [
        os.path.join(folder, entry)
        for entry in sorted(os.listdir(folder))
        if not entry.startswith(".")
        and entry.lower().endswith(IMAGE_EXTENSIONS)
        and os.path.isfile(os.path.join(folder, entry))
    ]


def _read_image(file: str) -> torch.Tensor:
    """One image file as grey float32 ``(1, H, W)`` in [0, 1]; DataError naming the file if unreadable."""
    from PIL import Image

    try:
        with Image.open(file) as image:
            grey = np.asarray(image.convert("L"), dtype=np.uint8)
    except Exception as error:  # Pillow raises many types (OSError, SyntaxError, struct.error, ...)
        raise DataError(
            f"cannot read image {file} ({_one_line(error)}); replace or remove the file"
        ) from error
    return torch.from_numpy(grey.astype(np.float32) / 255.0)[None]


def _check_same_size(files: list[str], images: list[torch.Tensor]) -> None:
    """Raise DataError naming two files of different sizes, if there are any."""
    first = images[0].shape
    for file, image in zip(files, images):
        if image.shape != first:
            raise DataError(
                f"images differ in size: {files[0]} is {first[2]}x{first[1]} but {file} is "
                f"{image.shape[2]}x{image.shape[1]} (width x height); "
                "pass --image-size (image_size=...) to resize them all"
            )
