"""The train/held-out split of a data set (DataSplit) and the checks every source's tensors pass."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from ppl_vae.errors import DataError

MAX_SEED = 2**64


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
            from ``table:PATH``; see :mod:`ppl_vae.data.tables`).

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
                f"data set {self.name!r} has labels for only one of its parts; give labels for both or neither"
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
            f"got {describe_value(x)}; convert it with torch.as_tensor(x, dtype=torch.float32)"
        )
    if not unit_interval:
        if x.numel() > 0 and not bool(torch.isfinite(x).all()):
            raise DataError(f"data set {name!r}: {part} has NaN or infinite values; remove or impute them")
        return
    if x.numel() > 0 and not _in_unit_interval(x):
        raise DataError(f"data set {name!r}: {part} has values outside [0, 1] (or NaN); scale the data into [0, 1]")


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
            f"data set {name!r}: {part} must be an int64 tensor of shape ({n},), got {describe_value(y)}; "
            "give one integer label per example"
        )


def describe_value(x: object) -> str:
    """A short description of a tensor or any other object for error messages."""
    if isinstance(x, torch.Tensor):
        return f"{x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__


# --------------------------------------------------------------------------------------------------
# Splitting and resizing
# --------------------------------------------------------------------------------------------------


def split_examples(
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
            f"data set {name!r} has {n} example(s); at least 3 are needed (2 for training, 1 held out), add more data"
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
