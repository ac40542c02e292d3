"""How the report writes numbers in prose, tables and figure labels: p-values, enrichments, counts, ranges."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def fmt_p(p: float | None, log10_p: float | None = None) -> str:
    """A p-value for prose: ``0.31``, ``0.004``, ``3e-12``, ``1e-412`` (from log10 p when p underflows)."""
    if p is None:
        return "n/a"
    if p == 0.0 and log10_p is not None and math.isfinite(log10_p):
        e = math.floor(log10_p)
        return f"{10 ** (log10_p - e):.0f}e{e}"
    if p >= 0.01:
        return f"{p:.2g}"
    if p >= 0.001:
        return f"{p:.1g}"
    return f"{p:.0e}".replace("e-0", "e-")


def fmt_x(e: float | None) -> str:
    """An enrichment: ``3.1×``, ``0×``, ``n/a``."""
    if e is None:
        return "n/a"
    if e == 0:
        return "0×"
    return f"{e:.2g}×" if e < 10 else f"{e:.0f}×"


def fmt_num(x: Any, fmt: str = ".3f") -> str:
    """A table cell: ``–`` for None, integers with thousands separators, other numbers with ``fmt``."""
    if x is None:
        return "–"
    if isinstance(x, (int, np.integer)):
        return f"{int(x):,}"
    return format(float(x), fmt)


def finite_interval(ci: Any) -> list[float] | None:
    """A recorded [lo, hi] of finite numbers, else None (results written before intervals existed, or damaged)."""
    if not isinstance(ci, (list, tuple)) or len(ci) != 2:
        return None
    try:
        lo, hi = float(ci[0]), float(ci[1])
    except (TypeError, ValueError):
        return None
    return [lo, hi] if math.isfinite(lo) and math.isfinite(hi) else None


def fmt_ci(x: Any, ci: Any, fmt: str = ".3f") -> str:
    """A number with its 95% interval, ``0.850 [0.780, 0.910]``; the plain ``fmt_num`` without one."""
    iv = finite_interval(ci)
    if x is None or iv is None:
        return fmt_num(x, fmt)
    return f"{format(float(x), fmt)} [{format(iv[0], fmt)}, {format(iv[1], fmt)}]"


def fmt_range(xs: Sequence[float], fmt: str = "{}") -> str:
    """'a–b' with ``fmt``, or one value when all are equal once formatted."""
    lo, hi = fmt.format(min(xs)), fmt.format(max(xs))
    return lo if lo == hi else f"{lo}–{hi}"


def fmt_pairs(n: int) -> str:
    """``1 pair``, ``3 pairs``."""
    return f"{n} pair" if n == 1 else f"{n} pairs"


def fmt_communities(comms: Sequence[Sequence[str]]) -> str:
    """Groups of tasks: ``{a, b}; {c}``."""
    return "; ".join("{" + ", ".join(c) + "}" for c in comms)
