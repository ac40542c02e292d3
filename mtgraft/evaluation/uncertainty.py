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


# ------------------------------------------------------------------------------ paired bootstrap (one run)

N_BOOT = 1000


def bootstrap_accuracies(labels: Sequence[int] | np.ndarray, preds: Mapping[str, Sequence[int] | np.ndarray],
                         n_boot: int = N_BOOT, seed: int = 0) -> dict[str, np.ndarray]:
    """Paired bootstrap over test examples: ``n_boot`` resamples (with replacement, seeded) of the example
    indices, the *same* resamples for every model in ``preds`` (name → predicted labels on the same
    examples); returns name → the ``n_boot`` resampled accuracies. Derived quantities (Rel, gains,
    differences) are then computed per resample, so their intervals keep the pairing."""
    y = np.asarray(labels)
    n = int(y.size)
    if n == 0:
        raise ValueError("no test examples to bootstrap")
    correct = {k: (np.asarray(p) == y).astype(np.float64) for k, p in preds.items()}
    for k, c in correct.items():
        if c.shape != y.shape:
            raise ValueError(f"predictions of '{k}' have shape {c.shape}, the labels {y.shape}")
    counts = bootstrap_counts(n, n_boot, seed)
    return {k: counts @ c / n for k, c in correct.items()}


def bootstrap_counts(n: int, n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """The resamples of ``bootstrap_accuracies`` as an [n_boot, n] matrix of multinomial counts (how often
    each example is drawn), so that any model's resampled accuracies are one product ``counts @ correct / n``
    and several models scored at different times still share the same resamples."""
    rng = np.random.default_rng(seed)
    counts = np.zeros((n_boot, n), dtype=np.float64)  # multinomial counts = resampling with replacement
    for b in range(n_boot):
        counts[b] = np.bincount(rng.integers(0, n, n), minlength=n)
    return counts


def percentile_interval(samples: np.ndarray, confidence: float = CONFIDENCE) -> list[float] | None:
    """The two-sided percentile interval of bootstrap samples (NaN samples, e.g. an undefined Rel, left out);
    None if fewer than half the samples are defined."""
    s = np.asarray(samples, dtype=np.float64)
    s = s[np.isfinite(s)]
    if s.size < max(1, np.asarray(samples).size // 2):
        return None
    a = (1 - confidence) / 2
    return [float(np.quantile(s, a)) + 0.0, float(np.quantile(s, 1 - a)) + 0.0]  # + 0.0: no "-0.0" in files


def rel_samples(acc_graft: np.ndarray, acc_pre: np.ndarray, acc_ft: np.ndarray) -> np.ndarray:
    """Rel = (acc_graft − acc_pre) / (acc_ft − acc_pre) per resample (NaN where the gain is 0)."""
    gain = acc_ft - acc_pre
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(gain != 0, (acc_graft - acc_pre) / np.where(gain != 0, gain, 1.0), np.nan)


def bootstrap_p(diffs: np.ndarray) -> float | None:
    """Two-sided bootstrap p-value of "no difference": 2·min(P(d ≤ 0), P(d ≥ 0)) over the resampled
    differences, each share counted as (1 + #) / (B + 1) so that it is never 0 (the smallest p is 2 / (B + 1));
    capped at 1. A difference that is 0 in every resample gives 1. NaN resamples are left out."""
    d = np.asarray(diffs, dtype=np.float64)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return None
    b = d.size
    le, ge = (1 + int((d <= 0).sum())) / (b + 1), (1 + int((d >= 0).sum())) / (b + 1)
    return float(min(1.0, 2 * min(le, ge)))


def paired_difference(a: np.ndarray, b: np.ndarray, point_a: float | None, point_b: float | None,
                      confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Paired comparison of two models scored on the same resamples (``a``, ``b``: their per-resample values,
    e.g. from one ``bootstrap_accuracies`` call): ``diff`` = point_a − point_b (on the full test set), ``ci95``
    the percentile interval of the resampled a − b, ``p`` the two-sided ``bootstrap_p``."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    diff = None if point_a is None or point_b is None else float(point_a) - float(point_b)
    return {"diff": diff, "ci95": percentile_interval(d, confidence), "p": bootstrap_p(d)}


def intervals(labels: Sequence[int] | np.ndarray, preds: np.ndarray, pre_preds: np.ndarray | None = None,
              ft_preds: np.ndarray | None = None, n_boot: int = N_BOOT, seed: int = 0) -> dict[str, Any]:
    """``{"accuracy_ci95": [lo, hi], "rel_ci95": [lo, hi] | None}`` of one model's predictions ``preds``; Rel's
    interval needs the pretrained and fine-tuned predictions on the same examples (paired: all three scored
    on the same resamples), else it is None."""
    models = {"m": preds}
    if pre_preds is not None and ft_preds is not None:
        models.update(pre=pre_preds, ft=ft_preds)
    acc = bootstrap_accuracies(labels, models, n_boot, seed)
    rel = percentile_interval(rel_samples(acc["m"], acc["pre"], acc["ft"])) if "pre" in acc else None
    return {"accuracy_ci95": percentile_interval(acc["m"]), "rel_ci95": rel}


def format_interval(value: float | None, ci: Sequence[float] | None, digits: int = 3) -> str:
    """``0.620 [0.580, 0.660]`` (a point estimate and its interval); the plain number without an interval
    (results written before intervals existed); ``—`` for None."""
    if value is None:
        return "—"
    if not ci or ci[0] is None or ci[1] is None:
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


# ------------------------------------------------------------------------------ paired comparison over seeds


def compare_over_seeds(a: Mapping[Any, float | None], b: Mapping[Any, float | None],
                       confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Paired comparison of two methods (or settings) measured on the same seeds: the per-seed differences
    a − b, their mean with a 95% t-interval, and the two-sided Wilcoxon signed-rank p-value (exact for small
    n; with n seeds it cannot go below 2 / 2ⁿ, e.g. 0.25 for 3 seeds and 0.0625 for 5 — say so when it
    matters). Seeds missing in either side are left out."""
    from scipy import stats

    seeds = [s for s in a if s in b and a[s] is not None and b[s] is not None]
    diffs = [float(a[s]) - float(b[s]) for s in seeds]  # type: ignore[arg-type]
    agg = aggregate(diffs, confidence)
    p: float | None = None
    if len(diffs) >= 2 and any(d != 0 for d in diffs):
        p = float(stats.wilcoxon(diffs, zero_method="wilcox", alternative="two-sided").pvalue)
    return {"seeds": seeds, "diffs": diffs, "mean_diff": agg["mean"], "sd": agg["sd"], "ci95": agg["ci95"],
            "wilcoxon_p": p, "min_possible_p": (2.0 / 2 ** len(diffs)) if diffs else None}
