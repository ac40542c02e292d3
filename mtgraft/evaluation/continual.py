"""Continual-learning metrics over an accuracy matrix R[stage, task] (ACC, BWT, FWT, forgetting).

Stage t (1-based, as in docs/method.md §4) is the model after training task t, so R must be square
[T stages, T tasks] with tasks in training order. Entries above the diagonal (a task evaluated
before it was trained) may be NaN; only FWT and forgetting (max) read them, see ``docs/metrics.md``.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mtgraft.errors import MtgraftError
from mtgraft.tracking import mlflow_key
from mtgraft.utils import atomic_file, finite_or_none, write_json

FORGETTING_VARIANTS = {
    "forgetting_final": "mean_{i<T} (R[i,i] - R[T,i]): drop from just after training task i to the end",
    "forgetting_max": "mean_{i<T} (max_{t<T} R[t,i] - R[T,i]): drop from the best earlier stage (Chaudhry et al. 2018)",
}


def _as_matrix(R: Any) -> np.ndarray:
    m = np.asarray(R, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0:
        raise MtgraftError(
            f"accuracy matrix must be square [T stages, T tasks] with stage t = after training task t, got shape {m.shape}"
        )
    diag_and_below = m[np.tril_indices(m.shape[0])]
    if not np.all(np.isfinite(diag_and_below)):
        raise MtgraftError("accuracy matrix has NaN/inf on or below the diagonal (tasks evaluated after training them)")
    return m


def continual_metrics(R: Any, r0: Any = None) -> dict[str, Any]:
    """ACC, BWT, FWT, forgetting (final and max) of a square accuracy matrix; None where undefined.

    ``r0[i]`` is the accuracy of the starting model on task i (needed for FWT only).
    """
    m = _as_matrix(R)
    T = m.shape[0]
    last = m[T - 1]
    out: dict[str, Any] = {"n_tasks": T, "acc": float(np.mean(last))}
    if T > 1:
        earlier = np.arange(T - 1)
        diag = m[earlier, earlier]
        out["bwt"] = float(np.mean(last[earlier] - diag))
        out["forgetting_final"] = float(np.mean(diag - last[earlier]))
        best = np.nanmax(m[: T - 1, : T - 1], axis=0)  # over stages t < T, per task i < T
        out["forgetting_max"] = float(np.mean(best - last[earlier]))
    else:
        out["bwt"] = out["forgetting_final"] = out["forgetting_max"] = None
    fwt = None
    if r0 is not None:
        r = np.asarray(r0, dtype=np.float64).reshape(-1)
        if r.shape[0] != T:
            raise MtgraftError(f"r0 must have one accuracy per task ({T}), got {r.shape[0]}")
        if T > 1:
            later = np.arange(1, T)
            fwt = finite_or_none(float(np.mean(m[later - 1, later] - r[later])))
    out["fwt"] = fwt
    return out


def mlflow_metric_keys(R: Any, tasks: Sequence[str], r0: Any = None) -> dict[str, float]:
    """Hierarchical metric keys: ``acc/stage_<t>/task_<name>`` (1-based t) and ``continual/<metric>``.

    NaN entries and undefined metrics (None) are left out.
    """
    m = _as_matrix(R)
    _check_tasks(tasks, m.shape[0])
    out: dict[str, float] = {}
    for t in range(m.shape[0]):
        for i, name in enumerate(tasks):
            v = m[t, i]
            if math.isfinite(v):
                out[f"acc/stage_{t + 1}/task_{mlflow_key(name)}"] = float(v)
    metrics = continual_metrics(m, r0)
    for k in ("acc", "bwt", "fwt", "forgetting_final", "forgetting_max"):
        if metrics[k] is not None:
            out[f"continual/{k}"] = float(metrics[k])
    return out


def _check_tasks(tasks: Sequence[str], T: int) -> None:
    if isinstance(tasks, str) or len(tasks) != T:
        raise MtgraftError(f"need {T} task names (one per stage, in training order), got {tasks!r}")
    if len(set(tasks)) != len(tasks):
        raise MtgraftError(f"task names must be unique, got {list(tasks)}")


def save_accuracy_matrix(
    R: Any, tasks: Sequence[str], out_dir: str | os.PathLike, r0: Any = None
) -> dict[str, Path]:
    """Write ``accuracy_matrix.{csv,json,png}`` (rows = stages, columns = evaluated tasks) in ``out_dir``."""
    m = _as_matrix(R)
    T = m.shape[0]
    _check_tasks(tasks, T)
    metrics = continual_metrics(m, r0)
    out = Path(out_dir)
    stage_labels = [f"{t + 1} ({name})" for t, name in enumerate(tasks)]

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["stage", "trained_task", *tasks])
    for t in range(T):
        w.writerow([t + 1, tasks[t], *["" if not math.isfinite(v) else repr(float(v)) for v in m[t]]])
    paths = {"csv": out / "accuracy_matrix.csv", "json": out / "accuracy_matrix.json", "png": out / "accuracy_matrix.png"}
    with atomic_file(paths["csv"], "w") as f:
        f.write(buf.getvalue())

    doc = {
        "rows": "stages (model after training task t, 1-based, in training order)",
        "columns": "evaluated tasks",
        "tasks": list(tasks),
        "matrix": [[finite_or_none(v) for v in row] for row in m],
        "r0": None if r0 is None else [finite_or_none(v) for v in np.asarray(r0, dtype=np.float64).reshape(-1)],
        "metrics": metrics,
        "forgetting_variants": FORGETTING_VARIANTS,
    }
    write_json(paths["json"], doc)

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    size = 1.6 + 0.9 * T
    fig = Figure(figsize=(size + 1.2, size))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    masked = np.ma.masked_invalid(m)
    im = ax.imshow(masked, cmap="viridis", vmin=np.nanmin(m), vmax=np.nanmax(m))
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="accuracy")
    mid = (np.nanmin(m) + np.nanmax(m)) / 2
    for t in range(T):
        for i in range(T):
            v = m[t, i]
            if math.isfinite(v):
                ax.text(i, t, f"{v:.3f}", ha="center", va="center", fontsize=8,
                        color="white" if v < mid else "black")
    ax.set_xticks(range(T), labels=list(tasks), rotation=30, ha="right")
    ax.set_yticks(range(T), labels=stage_labels)
    ax.set_xlabel("evaluated task")
    ax.set_ylabel("after stage (trained task)")
    bwt = metrics["bwt"]
    sub = f"ACC {metrics['acc']:.3f}" + (f", BWT {bwt:+.3f}" if bwt is not None else "")
    ax.set_title(f"Accuracy matrix — {sub}", fontsize=10)
    fig.tight_layout()
    with atomic_file(paths["png"], "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    return paths
