"""What the data must be for a likelihood (support checks, in chunks) and binarization."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from ppl_vae.data.npz import one_line
from ppl_vae.errors import DataError, PplVaeError

#: How grey images become binary (``binarize``, ``--binarize``; ``auto`` is resolved before this).
BINARIZE_MODES = ("dynamic", "threshold", "none")


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
# Content fingerprint
# --------------------------------------------------------------------------------------------------


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
    "unit": (
        lambda x: (x >= 0) & (x <= 1),
        "a grey level in [0, 1]",
        "rescale the data to [0, 1] (divide 8-bit images by 255) and remove NaN values",
    ),
    "8bit": (
        _on_8bit_grid,
        "an 8-bit grey level k/255",
        "quantize it with torch.round(x * 255) / 255 (after any resizing)",
    ),
    "real": (torch.isfinite, "a finite number", "remove or impute NaN and infinite values"),
    "count": (
        lambda x: (x >= 0) & (x == x.round()) & torch.isfinite(x),
        "a non-negative integer count",
        "pass the raw count table (no binarizing, rescaling or normalizing) without NaN values",
    ),
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
        chunk = x[start : start + chunk_rows]
        flat = chunk.reshape(len(chunk), -1)
        ok = None if test is None else test(chunk).reshape(len(chunk), -1)
        if own_check is None:  # the data kind's test decides
            if not bool(ok.all()):
                row, feature = (~ok).nonzero()[0].tolist()
                raise DataError(
                    f"{what}, row {start + row} (counting from 0), {_feature(x, flat, row, feature)} is "
                    f"outside the support: {need}; {fix}"
                )
            continue
        try:  # the likelihood's own check decides (it may be laxer or stricter than its data kind)
            own_check(chunk)
        except PplVaeError as error:
            row = _first_failing_row(own_check, chunk, ok)
            if row is None:
                raise DataError(f"{what}, rows {start} to {start + len(chunk) - 1}: {one_line(error)}") from None
            place = f"row {start + row} (counting from 0)"
            if ok is not None and not bool(ok[row].all()):
                feature = int((~ok[row]).nonzero()[0])
                place += f", {_feature(x, flat, row, feature)} is outside the support"
            raise DataError(f"{what}, {place}: {one_line(error)}") from None


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
                check(chunk[row : row + 1])
            except PplVaeError:
                return row
    return None
