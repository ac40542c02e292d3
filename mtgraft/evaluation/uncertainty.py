"""Uncertainty of results: aggregation over seeds (docs/method.md §5).

``aggregate`` summarises one quantity measured once per seed: mean, sample standard deviation (n − 1) and a
two-sided 95% Student-t confidence interval for the mean. ``aggregate_seeds`` does so for every numeric
field of per-seed result records, giving the ``--json`` shape every ``--seeds`` command shares:
``{"seeds": [...], "per_seed": {seed: record}, "mean": {...}, "sd": {...}, "ci95": {...}}``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

CONFIDENCE = 0.95


def aggregate(values: Sequence[float | None], confidence: float = CONFIDENCE) -> dict[str, Any]:
    """``{"n", "mean", "sd", "ci95": [lo, hi]}`` of the finite values (None and NaN are left out and not
    counted). With one value the sd and the interval are None; with none, the mean is None too."""
    from scipy import stats

    x = np.array([float(v) for v in values if v is not None and math.isfinite(float(v))], dtype=np.float64)
    n = int(x.size)
    if n == 0:
        return {"n": 0, "mean": None, "sd": None, "ci95": None}
    mean = float(x.mean())
    if n == 1:
        return {"n": 1, "mean": mean, "sd": None, "ci95": None}
    sd = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "ci95": [mean - half, mean + half]}


def _numeric_leaves(d: Mapping[str, Any], prefix: str = "") -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_numeric_leaves(v, f"{key}."))
        elif v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)):
            out[key] = None if v is None else float(v)
    return out


def aggregate_seeds(per_seed: Mapping[int, Mapping[str, Any]], confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Aggregate per-seed records (nested dicts of numbers) field by field.

    Fields are flattened with dots (``{"test": {"acc": …}}`` → ``"test.acc"``); a field missing or None in a
    seed is left out of that field's statistics (``n`` says how many seeds it has)."""
    seeds = list(per_seed)
    leaves = {s: _numeric_leaves(r) for s, r in per_seed.items()}
    keys: list[str] = []
    for s in seeds:
        keys += [k for k in leaves[s] if k not in keys]
    agg = {k: aggregate([leaves[s].get(k) for s in seeds], confidence) for k in keys}
    return {"seeds": seeds, "per_seed": {str(s): dict(r) for s, r in per_seed.items()},
            "n": {k: a["n"] for k, a in agg.items()},
            "mean": {k: a["mean"] for k, a in agg.items()},
            "sd": {k: a["sd"] for k, a in agg.items()},
            "ci95": {k: a["ci95"] for k, a in agg.items()}}


def format_ci(agg: Mapping[str, Any], digits: int = 3) -> str:
    """``0.620 ± 0.040`` (mean ± half-width of the interval); ``0.620`` for one seed; ``—`` for none."""
    mean, ci = agg.get("mean"), agg.get("ci95")
    if mean is None:
        return "—"
    if not ci:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {(ci[1] - ci[0]) / 2:.{digits}f}"
