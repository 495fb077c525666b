"""The one result convention: every public computation returns a frozen dataclass.

Subclass :class:`Result` with ``@dataclass(frozen=True)``. :meth:`Result.to_dict` gives plain data
(numbers, strings, lists, nested dicts; tensors and arrays become lists) for JSON files and reports;
presentation lives in ``format_*`` functions, the app layer and the CLI. Results also read like the
mappings some of them used to be (``result["total"]``, ``"total" in result``, ``result.get(...)``), so
code written against the earlier dicts keeps working.

A field that is not data (an ArviZ object, bulky per-example tensors kept for further analysis) can be
left out of :meth:`Result.to_dict` with ``field(..., metadata=NOT_IN_DICT)``; it stays an attribute.
"""

from __future__ import annotations

import dataclasses
import math
from types import MappingProxyType
from typing import Any

#: ``dataclasses.field(metadata=NOT_IN_DICT)``: the field is left out of :meth:`Result.to_dict`.
NOT_IN_DICT = MappingProxyType({"in_dict": False})
#: Field metadata: left out of :meth:`Result.to_dict` while the value is None.
OMIT_NONE = MappingProxyType({"omit_none": True})


def plain(value: Any) -> Any:
    """``value`` as plain data: results and dataclasses to dicts, tensors and arrays to (nested) lists,
    tuples to lists, NaN kept as float('nan')."""
    if isinstance(value, Result):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    tolist = getattr(value, "tolist", None)  # torch tensors, numpy arrays and scalars
    if callable(tolist):
        return tolist()
    if isinstance(value, float) and math.isnan(value):
        return float("nan")
    return value


def json_ready(value: Any) -> Any:
    """Plain data (see :func:`plain`) with every non-finite float (NaN, infinities) as None, recursively:
    JSON has neither, and a number that does not exist reads as ``null``."""
    value = plain(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_ready(v) for v in value]
    return value


class Result:
    """Base of the frozen dataclasses that public computations return."""

    def to_dict(self) -> dict:
        """Every field as plain data (see :func:`plain`), but those marked :data:`NOT_IN_DICT`, and those
        marked :data:`OMIT_NONE` while they are None (a number measured only for some models)."""
        return {
            f.name: plain(getattr(self, f.name))
            for f in dataclasses.fields(self)
            if f.metadata.get("in_dict", True) and not (f.metadata.get("omit_none") and getattr(self, f.name) is None)
        }

    # -- read-only mapping access, for code written against the earlier dict results --------------

    def __getitem__(self, key: str) -> Any:
        if key not in self._names():
            raise KeyError(key)
        return getattr(self, key)

    def __contains__(self, key: object) -> bool:
        return key in self._names()

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key) if key in self._names() else default

    def keys(self) -> list[str]:
        return list(self._names())

    def items(self) -> list[tuple[str, Any]]:
        return [(name, getattr(self, name)) for name in self._names()]

    def _names(self) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(self))
