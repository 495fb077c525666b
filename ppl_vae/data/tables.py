"""Tables of numbers: ``table:PATH`` loads a CSV or an npz of real or count features ``(N, D)``.

* ``.csv``: comma-separated numbers, one example per row, an optional header row of column names.
  The held-out part is a seeded random split (``heldout_fraction``, ``split_seed``) like the digits.
  The text is UTF-8 (a byte-order mark is skipped), or UTF-16/UTF-32 with a byte-order mark; other
  encodings are refused with the command that converts them. The file is read line by line in
  blocks, within the memory budget of :mod:`ppl_vae.limits`.
* ``.npz``: ``x_train`` and ``x_test`` arrays ``(N, D)``, or a single array ``x`` that is split; read
  with the bounded npz reader of :mod:`ppl_vae.data` (sizes checked from the zip directory and the
  ``.npy`` headers before anything is unpacked).

Real-valued features are standardized with the training part's mean and standard deviation
(:class:`Scaling`); the run folder records the scaling (``scaling.json``) so that evaluation reports
log-densities of the *original* data (adding the Jacobian ``-sum_j log scale_j``) and samples are
mapped back to original units. Count features (Poisson, negative binomial) are used as they are.
"""

from __future__ import annotations

import codecs
import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, TextIO

import numpy as np
import torch

from ppl_vae.data.npz import check_npz_members, one_line, open_npz, read_npz_member, require_file
from ppl_vae.data.split import DataSplit, split_examples
from ppl_vae.errors import CheckpointError, DataError
from ppl_vae.limits import check_bytes, memory_limit

_FLOAT32_MAX = float(np.finfo(np.float32).max)
_BLOCK_CELLS = 1 << 16  # numbers parsed into Python objects before they are packed as float32
# Byte-order marks, longest first (the UTF-32 LE mark starts with the UTF-16 LE one).
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def load_table(name: str, path: str, heldout_fraction: float, split_seed: int) -> DataSplit:
    """A ``DataSplit`` of kind ``"table"``: float32 ``(N, D)`` finite values."""
    file = Path(os.path.expanduser(path))
    require_file(str(file), "table file", "pass table:PATH with a .csv or .npz file")
    if file.suffix.lower() == ".csv":
        x = torch.from_numpy(_read_csv(file))
        return split_examples(name, _check(file, "rows", x), None, heldout_fraction, split_seed, kind="table")
    if file.suffix.lower() == ".npz":
        arrays = _read_npz(file)
        if "x" not in arrays:
            train, test = (_check(file, key, _numeric(file, key, arrays[key])) for key in ("x_train", "x_test"))
            return DataSplit(name, train, test, kind="table")
        x = _check(file, "x", _numeric(file, "x", arrays["x"]))
        return split_examples(name, x, None, heldout_fraction, split_seed, kind="table")
    raise DataError(f"table file {file} has suffix {file.suffix!r}; use a .csv or .npz file")


def _read_npz(file: Path) -> dict[str, np.ndarray]:
    """``x_train`` and ``x_test``, or ``x``, of a table npz, within the memory budget."""
    with open_npz(str(file), "table file", "pass table:PATH with a .csv or .npz file") as (archive, members):
        if "x_train" in members and "x_test" in members:
            keys = ["x_train", "x_test"]
        elif "x" in members:
            keys = ["x"]
        else:
            raise DataError(f"table file {file} has arrays {sorted(members)}; save x_train and x_test, or a single x")
        check_npz_members(str(file), members, keys)
        fix = "store numbers (integers, floats or booleans)"
        return {key: read_npz_member(str(file), archive, members[key], key, fix) for key in keys}


def _numeric(file, key, array: np.ndarray) -> torch.Tensor:
    if array.dtype == object or not (array.dtype.kind in "iuf" or array.dtype == bool):
        raise DataError(f"table file {file}: {key} has dtype {array.dtype}; store real numbers")
    with np.errstate(over="ignore", invalid="ignore"):
        values = array.astype(np.float32)
    if array.dtype.kind == "f" and np.isfinite(array).all() and not np.isfinite(values).all():
        raise DataError(
            f"table file {file}: {key} has values beyond +-{_FLOAT32_MAX:.3g}, too large for float32; rescale them"
        )
    return torch.from_numpy(values)


def _check(file, key, x: torch.Tensor) -> torch.Tensor:
    if x.dim() != 2 or x.shape[1] < 1:
        raise DataError(f"table file {file}: {key} has shape {tuple(x.shape)}; a table is (examples, features)")
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        row, column = (~finite).nonzero()[0].tolist()
        raise DataError(
            f"table file {file}: {key} has NaN or infinite values (the first at row {row}, column "
            f"{column}, counting from 0); remove or impute them"
        )
    return x


# --------------------------------------------------------------------------------------------------
# CSV
# --------------------------------------------------------------------------------------------------


def _encoding(file: Path) -> str:
    """The text encoding of ``file``: from its byte-order mark, else UTF-8."""
    try:
        with open(file, "rb") as handle:
            start = handle.read(4)
    except OSError as error:
        raise DataError(f"cannot read table file {file} ({one_line(error)}); check its permissions") from error
    for bom, encoding in _BOMS:
        if start.startswith(bom):
            return encoding
    return "utf-8"


class _Lines:
    """The lines of a text file for csv.reader, each at most ``limit`` characters, counted."""

    def __init__(self, handle: TextIO, file: Path, limit: int):
        self.handle, self.file, self.limit, self.number = handle, file, limit, 0

    def __iter__(self) -> Iterator[str]:
        while line := self.handle.readline(self.limit + 1):
            self.number += 1
            if len(line) > self.limit:
                raise DataError(
                    f"table file {self.file}: line {self.number} is longer than {self.limit} characters; "
                    "write one example per line (or raise the memory limit with --max-memory)"
                )
            if "\x00" in line:
                raise DataError(
                    f"table file {self.file}: line {self.number} contains NUL characters, so it is not "
                    "UTF-8 text (UTF-16 without a byte-order mark?) or not text at all; save it as UTF-8"
                )
            yield line


def _parse(row: list[str]) -> Optional[list[float]]:
    try:
        return [float(cell) for cell in row]
    except ValueError:
        return None


def _read_csv(file: Path, parse=None) -> np.ndarray:
    """The numbers of a CSV file as float32 ``(N, D)``; an optional first row of column names is skipped.
    ``parse(file, csv_reader)`` replaces the parsing of the rows (default :func:`_parse_rows`)."""
    encoding = _encoding(file)
    lines: Optional[_Lines] = None
    try:
        with open(file, encoding=encoding, errors="strict", newline="") as handle:
            lines = _Lines(handle, file, max(1 << 16, memory_limit() // 64))
            return (parse or _parse_rows)(file, csv.reader(lines))
    except UnicodeError as error:
        where = f"line {lines.number + 1}" if lines is not None else "the start"
        if encoding != "utf-8":
            name = "UTF-8" if encoding == "utf-8-sig" else encoding.upper()
            raise DataError(
                f"table file {file} starts with a {name} byte-order mark but is not valid {name} text (cannot "
                f"decode {where}: {one_line(error)}); save it again as UTF-8"
            ) from None
        raise DataError(
            f"table file {file} is not UTF-8 text (cannot decode {where}: {one_line(error)}); save it as UTF-8, "
            f"e.g. iconv -f LATIN1 -t UTF-8 {file} > converted.csv if it is Latin-1"
        ) from None
    except csv.Error as error:
        line = lines.number if lines is not None else 0
        raise DataError(
            f"table file {file}: line {line} cannot be read as CSV ({one_line(error)}); "
            "write plain comma-separated numbers"
        ) from None
    except OSError as error:
        raise DataError(f"cannot read table file {file} ({one_line(error)}); check its permissions") from error


def column_names(path: str) -> Optional[list[str]]:
    """The names in the header row of a CSV table (``table:PATH``), or None when it has no header row
    or is an npz. Reads the first non-empty row only."""
    file = Path(os.path.expanduser(path))
    if file.suffix.lower() != ".csv":
        return None
    require_file(str(file), "table file", "pass table:PATH with a .csv or .npz file")
    header: list[Optional[list[str]]] = []

    def first_row(file: Path, reader) -> np.ndarray:
        for row in reader:
            if row and any(cell.strip() for cell in row):
                header.append(None if _parse(row) is not None else [cell.strip() for cell in row])
                break
        return np.zeros((0, 0), np.float32)

    _read_csv(file, first_row)
    return header[0] if header else None


def _parse_rows(file: Path, reader) -> np.ndarray:
    blocks: list[np.ndarray] = []
    block: list[list[float]] = []
    block_lines: list[int] = []
    width: Optional[int] = None
    first = ""
    header = False
    total = 0
    for row in reader:
        if not row or not any(cell.strip() for cell in row):
            continue
        line = reader.line_num
        numbers = _parse(row)
        if width is None:
            width, first = len(row), "header" if numbers is None else "first row"
            if numbers is None:  # a header row of column names
                header = True
                continue
        if len(row) != width:
            raise DataError(
                f"table file {file}: row {line} has {len(row)} columns, the {first} has {width}; "
                "give every row the same columns"
            )
        if numbers is None:
            column, cell = next((j, c) for j, c in enumerate(row) if _parse([c]) is None)
            raise DataError(
                f"table file {file}: row {line}, column {column + 1} holds {cell[:20]!r}, not a number; "
                "use numbers only (and at most one header row)"
            )
        block.append(numbers)
        block_lines.append(line)
        if len(block) * width >= _BLOCK_CELLS:
            total += len(block)
            blocks.append(_pack(file, block, block_lines, total * width))
            block, block_lines = [], []
    if block:
        total += len(block)
        blocks.append(_pack(file, block, block_lines, total * width))
    if not blocks:
        raise DataError(
            f"table file {file} {'has a header row but no numbers' if header else 'is empty'}; "
            "write one example per row"
        )
    return np.concatenate(blocks) if len(blocks) > 1 else blocks[0]


def _pack(file: Path, block: list[list[float]], lines: list[int], cells_so_far: int) -> np.ndarray:
    """Rows of Python floats as float32, refusing NaN, infinite and float32-overflowing values by row."""
    check_bytes(cells_so_far * 4, f"the numbers of table file {file} (as float32)", error=DataError)
    values = np.array(block, dtype=np.float64)
    bad = ~np.isfinite(values) | (np.abs(values) > _FLOAT32_MAX)
    if bad.any():
        row, column = np.argwhere(bad)[0]
        value = values[row, column]
        problem = (
            "is missing (NaN) or infinite; remove or impute it"
            if not math.isfinite(value)
            else f"is {value:g}, too large for float32; rescale the column"
        )
        raise DataError(f"table file {file}: row {lines[row]}, column {column + 1} {problem}")
    return values.astype(np.float32)


@dataclass(frozen=True)
class Scaling:
    """Per-feature standardization ``(x - loc) / scale``, fitted on the training part."""

    loc: list[float]
    scale: list[float]

    @classmethod
    def fit(cls, x: torch.Tensor) -> Scaling:
        scale = x.std(0)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # constant features stay put
        return cls(loc=x.mean(0).tolist(), scale=scale.tolist())

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return (x - x.new_tensor(self.loc)) / x.new_tensor(self.scale)

    def invert(self, x: torch.Tensor) -> torch.Tensor:
        return x * x.new_tensor(self.scale) + x.new_tensor(self.loc)

    @property
    def log_abs_det(self) -> float:
        """log ``|d x_scaled / d x|`` per example: add it to a log-density of scaled data to get the
        log-density of the original data."""
        return -sum(math.log(s) for s in self.scale)

    def to_dict(self) -> dict:
        return {"kind": "standardize", "loc": self.loc, "scale": self.scale}

    @classmethod
    def from_dict(cls, values: dict, *, source: str = "scaling.json", num_features: int | None = None) -> Scaling:
        """The scaling recorded in a run folder, checked: two equally long lists of finite numbers, the
        scales positive (and ``num_features`` long when given); :class:`CheckpointError` otherwise."""
        loc, scale = (values.get("loc"), values.get("scale")) if isinstance(values, dict) else (None, None)

        def numbers(value) -> bool:
            return isinstance(value, list) and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value
            )

        if not (
            numbers(loc)
            and numbers(scale)
            and len(loc) == len(scale)
            and len(loc) > 0
            and all(v > 0 for v in scale)
            and (num_features is None or len(loc) == num_features)
        ):
            raise CheckpointError(
                f"{source} is damaged: it must hold 'loc' and 'scale', lists of one finite number "
                "per feature (scales positive); restore it from a copy or train again"
            )
        return cls(loc=[float(v) for v in loc], scale=[float(v) for v in scale])
