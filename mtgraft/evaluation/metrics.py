"""Classification metrics: accuracy, F1, ECE, Brier, agreement, relative gain, reliability diagrams.

All functions take numpy arrays (``probs`` [N, C] softmax probabilities, ``labels`` [N] class
indices) and return plain python values. Definitions are in ``docs/metrics.md``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mtgraft.errors import MtgraftError
from mtgraft.utils import atomic_file

DEFAULT_BINS = 10
_PROB_TOL = 1e-4


def _check(probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert (probs [N, C], labels [N]) to float64 / int64 arrays."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels)
    if p.ndim != 2:
        raise MtgraftError(f"probs must be a 2-D array [examples, classes], got shape {p.shape}")
    if y.ndim != 1 or y.shape[0] != p.shape[0]:
        raise MtgraftError(f"labels must be a 1-D array of {p.shape[0]} class indices, got shape {y.shape}")
    if p.shape[0] == 0:
        raise MtgraftError("no examples to score (empty probs/labels)")
    if p.shape[1] == 0:
        raise MtgraftError("probs has no classes")
    if not np.all(np.isfinite(p)):
        raise MtgraftError("probs contains NaN or infinite values")
    if p.min() < -_PROB_TOL or p.max() > 1 + _PROB_TOL:
        raise MtgraftError("probs must be probabilities in [0, 1] (softmax the logits first)")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise MtgraftError("labels must be integer class indices")
    y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= p.shape[1]:
        raise MtgraftError(f"labels must be class indices in [0, {p.shape[1] - 1}]")
    return p, y


def _check_bins(n_bins: int) -> int:
    if int(n_bins) != n_bins or n_bins < 1:
        raise MtgraftError(f"n_bins must be a positive integer, got {n_bins}")
    return int(n_bins)


def _bin_index(conf: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin of each confidence: bin i holds (i/n, (i+1)/n]; a confidence of exactly 0 goes to bin 0.

    Edges are the doubles ``i / n``, so a confidence equal to the float ``i / n`` falls in bin i-1.
    """
    edges = np.arange(n_bins + 1, dtype=np.float64) / n_bins
    idx = np.searchsorted(edges, conf, side="left") - 1
    return np.clip(idx, 0, n_bins - 1)


def reliability_bins(probs: Any, labels: Any, n_bins: int = DEFAULT_BINS) -> dict[str, Any]:
    """Per-bin counts, accuracy and mean confidence over the max softmax probability (equal-width bins).

    Empty bins have ``accuracy`` and ``confidence`` None. Also returns ``ece`` and the bin ``edges``.
    """
    p, y = _check(probs, labels)
    n_bins = _check_bins(n_bins)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    idx = _bin_index(conf, n_bins)
    count = np.bincount(idx, minlength=n_bins)
    acc_sum = np.bincount(idx, weights=correct, minlength=n_bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    nz = count > 0
    acc = np.where(nz, acc_sum / np.maximum(count, 1), np.nan)
    cf = np.where(nz, conf_sum / np.maximum(count, 1), np.nan)
    n = len(y)
    ece_val = float(np.sum(np.abs(acc_sum[nz] - conf_sum[nz])) / n)
    return {
        "n_bins": n_bins,
        "edges": [float(e) for e in np.arange(n_bins + 1) / n_bins],
        "count": [int(c) for c in count],
        "accuracy": [float(a) if k else None for a, k in zip(acc, nz, strict=True)],
        "confidence": [float(c) if k else None for c, k in zip(cf, nz, strict=True)],
        "n": n,
        "ece": ece_val,
    }


def ece(probs: Any, labels: Any, n_bins: int = DEFAULT_BINS) -> float:
    """Expected calibration error: sum_b (|B_b| / N) * |acc(B_b) - conf(B_b)| over equal-width bins.

    Bins are (i/n, (i+1)/n] over the max softmax probability (0 falls in the first bin).
    """
    return reliability_bins(probs, labels, n_bins)["ece"]


def brier(probs: Any, labels: Any) -> float:
    """Multi-class Brier score: mean over examples of sum_c (p_c - onehot_c)^2 (range [0, 2])."""
    p, y = _check(probs, labels)
    onehot = np.zeros_like(p)
    onehot[np.arange(len(y)), y] = 1.0
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


def agreement(preds: Any, reference_preds: Any) -> float:
    """Share of examples where ``preds`` equals ``reference_preds`` (either may be [N] labels or [N, C] probs)."""
    a = np.asarray(preds)
    b = np.asarray(reference_preds)
    if a.ndim == 2:
        a = a.argmax(axis=1)
    if b.ndim == 2:
        b = b.argmax(axis=1)
    if a.shape != b.shape or a.ndim != 1:
        raise MtgraftError(f"cannot compare predictions of shapes {a.shape} and {b.shape}")
    if a.size == 0:
        raise MtgraftError("no examples to compare (empty predictions)")
    return float(np.mean(a == b))


def classification_metrics(
    probs: Any,
    labels: Any,
    reference_preds: Any = None,
    n_bins: int = DEFAULT_BINS,
    positive_label: int | None = None,
) -> dict[str, Any]:
    """accuracy, macro_f1, f1 (of ``positive_label``, if given), ece, ece_bins, brier, n, agreement.

    ``agreement`` is present only when ``reference_preds`` ([N] labels or [N, C] probs) is given.
    """
    from sklearn.metrics import accuracy_score, f1_score  # deferred: sklearn is slow to import

    p, y = _check(probs, labels)
    n_bins = _check_bins(n_bins)
    preds = p.argmax(axis=1)
    out: dict[str, Any] = {
        "accuracy": float(accuracy_score(y, preds)),
        "macro_f1": float(f1_score(y, preds, average="macro", zero_division=0)),
    }
    if positive_label is not None:
        if not 0 <= int(positive_label) < p.shape[1]:
            raise MtgraftError(f"positive_label must be a class index in [0, {p.shape[1] - 1}], got {positive_label}")
        pos = int(positive_label)
        out["f1"] = float(f1_score(y == pos, preds == pos, zero_division=0))
    out["ece"] = ece(p, y, n_bins)
    out["ece_bins"] = n_bins
    out["brier"] = brier(p, y)
    out["n"] = int(len(y))
    if reference_preds is not None:
        out["agreement"] = agreement(preds, reference_preds)
    return out


def relative_gain(p_graft: float, p_pre: float, p_ft: float) -> float | None:
    """Rel = (P_graft - P_0) / (P_1 - P_0); None when |P_1 - P_0| < 1e-9 (fine-tuning gained nothing)."""
    denom = float(p_ft) - float(p_pre)
    if abs(denom) < 1e-9:
        return None
    return (float(p_graft) - float(p_pre)) / denom


Curves = Mapping[str, tuple[Any, Any]]


def reliability_diagram(
    probs: Any | Curves,
    labels: Any = None,
    path: str | os.PathLike | None = None,
    title: str = "",
    n_bins: int = DEFAULT_BINS,
) -> Path:
    """Write a reliability diagram PNG: accuracy per confidence bin vs the diagonal, histogram below.

    Call as ``reliability_diagram(probs, labels, path)`` or, to overlay several models,
    ``reliability_diagram({"fine-tuned": (probs, labels), "graft": (...)}, path)``.
    """
    if isinstance(probs, Mapping):
        curves = dict(probs)
        if path is None:
            path = labels
        if not curves:
            raise MtgraftError("reliability_diagram needs at least one curve")
    else:
        curves = {"model": (probs, labels)}
    if path is None:
        raise MtgraftError("reliability_diagram needs an output path")
    n_bins = _check_bins(n_bins)
    stats = {name: reliability_bins(pr, lb, n_bins) for name, (pr, lb) in curves.items()}

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 6.5))
    FigureCanvasAgg(fig)
    gs = fig.add_gridspec(2, 1, height_ratios=[3, 1], hspace=0.08)
    ax = fig.add_subplot(gs[0])
    axh = fig.add_subplot(gs[1], sharex=ax)
    width = 1.0 / n_bins
    k = len(stats)
    sub = width / k
    lefts = np.arange(n_bins) / n_bins
    colors = ["C0", "C3", "C2", "C1", "C4", "C5", "C6", "C7", "C8", "C9"]
    single = k == 1
    for j, (name, st) in enumerate(stats.items()):
        color = colors[j % len(colors)]
        acc = np.array([a if a is not None else 0.0 for a in st["accuracy"]])
        x = lefts + j * sub
        label = f"ECE = {st['ece']:.4f}" if single else f"{name} (ECE = {st['ece']:.4f})"
        ax.bar(x, acc, width=sub, align="edge", color=color, alpha=0.75, edgecolor="black",
               linewidth=0.5, label=label)
        share = np.array(st["count"]) / max(st["n"], 1)
        axh.bar(x, share, width=sub, align="edge", color=color, alpha=0.75, edgecolor="black", linewidth=0.5)
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray", linewidth=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper left", fontsize=8)
    head = f"{title} — " if title else ""
    ax.set_title(f"{head}reliability ({n_bins} equal-width bins)", fontsize=10)
    ax.tick_params(labelbottom=False)
    axh.set_xlabel("confidence (max softmax probability)")
    axh.set_ylabel("share of examples")
    fig.subplots_adjust(left=0.13, right=0.97, top=0.94, bottom=0.09)
    out = Path(path)
    with atomic_file(out, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    return out
