"""Numbers as the app's reports write them (``report.md``, ``comparison.md``, figure labels, verdicts)."""

from __future__ import annotations

import math


def format_number(value, digits: int = 3, *, fixed: bool = False, missing: str = "—") -> str:
    """One number for a report; ``None`` (a value that does not exist, e.g. an infinite rate stored as
    null) is ``missing``.

    ``fixed``: exactly ``digits`` decimals (``3.000``; what ``report.md`` of ``ppl-vae diagnose`` uses).
    Otherwise ``digits`` significant digits (``0.123``, ``12.3``), integers as they are, non-finite values
    as ``nan``/``inf``, and scientific notation from 10 000 on (``1.235e+04``)."""
    if value is None:
        return missing
    if fixed:
        return f"{value:.{digits}f}"
    if isinstance(value, int) or not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:.3e}"
