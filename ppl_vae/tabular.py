"""Tables of numbers: ``table:PATH`` loads a CSV or an npz of real or count features ``(N, D)``.

* ``.csv``: comma-separated numbers, one example per row, an optional header row of column names.
  The held-out part is a seeded random split (``heldout_fraction``, ``split_seed``) like the digits.
* ``.npz``: ``x_train`` and ``x_test`` arrays ``(N, D)``, or a single array ``x`` that is split.

Real-valued features are standardized with the training part's mean and standard deviation
(:class:`Scaling`); the run folder records the scaling (``scaling.json``) so that evaluation reports
log-densities of the *original* data (adding the Jacobian ``-sum_j log scale_j``) and samples are
mapped back to original units. Count features (Poisson, negative binomial) are used as they are.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ppl_vae.data import DataSplit, _split
from ppl_vae.errors import DataError


def load_table(name: str, path: str, heldout_fraction: float, split_seed: int) -> DataSplit:
    """A ``DataSplit`` of kind ``"table"``: float32 ``(N, D)`` finite values."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"table file {file} does not exist; pass table:PATH with a .csv or .npz file")
    if file.suffix.lower() == ".csv":
        x = torch.as_tensor(_read_csv(file), dtype=torch.float32)
        return _split(name, _check(file, "rows", x), None, heldout_fraction, split_seed, kind="table")
    if file.suffix.lower() == ".npz":
        try:
            arrays = dict(np.load(file, allow_pickle=False))
        except Exception as error:  # noqa: BLE001 - any reader failure is a bad file
            raise DataError(f"table file {file} is not a readable npz ({type(error).__name__}); save it with numpy.savez") from None
        if "x_train" in arrays and "x_test" in arrays:
            train, test = (_check(file, key, _numeric(file, key, arrays[key])) for key in ("x_train", "x_test"))
            return DataSplit(name, train, test, kind="table")
        if "x" in arrays:
            x = _check(file, "x", _numeric(file, "x", arrays["x"]))
            return _split(name, x, None, heldout_fraction, split_seed, kind="table")
        raise DataError(f"table file {file} has arrays {sorted(arrays)}; save x_train and x_test, or a single x")
    raise DataError(f"table file {file} has suffix {file.suffix!r}; use a .csv or .npz file")


def _numeric(file, key, array: np.ndarray) -> torch.Tensor:
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise DataError(f"table file {file}: {key} has dtype {array.dtype}; store numbers")
    return torch.as_tensor(array.astype(np.float32))


def _check(file, key, x: torch.Tensor) -> torch.Tensor:
    if x.dim() != 2 or x.shape[1] < 1:
        raise DataError(f"table file {file}: {key} has shape {tuple(x.shape)}; a table is (examples, features)")
    if not bool(torch.isfinite(x).all()):
        raise DataError(f"table file {file}: {key} has NaN or infinite values; remove or impute them")
    return x


def _read_csv(file: Path) -> list[list[float]]:
    with open(file, newline="") as handle:
        rows = [row for row in csv.reader(handle) if row and any(cell.strip() for cell in row)]
    if not rows:
        raise DataError(f"table file {file} is empty; write one example per row")
    try:
        [float(cell) for cell in rows[0]]
    except ValueError:
        rows = rows[1:]                                   # a header row of column names
    values = []
    for i, row in enumerate(rows, start=1):
        if len(row) != len(rows[0]):
            raise DataError(f"table file {file}: row {i} has {len(row)} columns, the first has {len(rows[0])}; "
                            "give every row the same columns")
        try:
            values.append([float(cell) for cell in row])
        except ValueError:
            raise DataError(f"table file {file}: row {i} holds a value that is not a number; "
                            "use numbers only (and at most one header row)") from None
    return values


@dataclass(frozen=True)
class Scaling:
    """Per-feature standardization ``(x - loc) / scale``, fitted on the training part."""

    loc: list[float]
    scale: list[float]

    @classmethod
    def fit(cls, x: torch.Tensor) -> Scaling:
        scale = x.std(0)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))   # constant features stay put
        return cls(loc=x.mean(0).tolist(), scale=scale.tolist())

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return (x - x.new_tensor(self.loc)) / x.new_tensor(self.scale)

    def invert(self, x: torch.Tensor) -> torch.Tensor:
        return x * x.new_tensor(self.scale) + x.new_tensor(self.loc)

    @property
    def log_abs_det(self) -> float:
        """log |d x_scaled / d x| per example: add it to a log-density of scaled data to get the
        log-density of the original data."""
        return -sum(math.log(s) for s in self.scale)

    def to_dict(self) -> dict:
        return {"kind": "standardize", "loc": self.loc, "scale": self.scale}

    @classmethod
    def from_dict(cls, values: dict) -> Scaling:
        return cls(loc=list(values["loc"]), scale=list(values["scale"]))
