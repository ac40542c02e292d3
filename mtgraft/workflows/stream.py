"""Continual-learning strategies compared on one stream of tasks (issue 17; docs/continual.md).

A sequential study whose ``continual`` section names ``strategies`` runs every strategy on every task order
and seed (one *cell* each: a ``train-multitask --mode sequential --strategy S`` run, resumable as a study
stage), then aggregates per strategy: ACC, BWT, FWT, forgetting (final, max) with 95% t-intervals over the
cells (orders × seeds), the mean accuracy matrix by position (stage t × the t-th task of the order), the
storage each keeps beyond one model (bytes per task) and the compute (wall time, peak resident memory).

``graft`` reuses the ``naive`` cell of the same order and seed (graft trains exactly as naive) and adds the
per-stage SkillPatches; it yields two rows, ``graft`` (task identity known: own patch) and ``graft-union``
(unknown: the union of the patches so far). Its wall time is the naive training plus the grafting.

``budget_minutes`` stops starting new cells once the study has run that long; cells are ordered seed-major
then order then strategy, so a cut study holds whole (seed, order) blocks first. What was not run is listed.
"""

from __future__ import annotations

import math
import shutil
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, field_validator

from mtgraft.config import BaseConfig
from mtgraft.errors import MtgraftError
from mtgraft.evaluation.uncertainty import aggregate as aggregate_values
from mtgraft.evaluation.uncertainty import compare_over_seeds
from mtgraft.utils import write_json

METRICS = ("acc", "bwt", "fwt", "forgetting_final", "forgetting_max")


class StreamConfig(BaseConfig):
    """The ``continual`` section of a study that compares strategies."""

    strategies: list[str]
    orders: list[list[str]] | None = Field(None, description="task orders (default: the study's tasks as listed)")
    seeds: list[int] = Field(default_factory=lambda: [13])
    budget_minutes: float | None = Field(None, gt=0, description="start no new cell after this many minutes")
    options: dict[str, dict[str, Any]] = Field(default_factory=dict, description="per-strategy train options")
    sparsity: float = Field(1e-3, gt=0, le=1)
    method: str = "graft"
    recipe: str = "fast"
    updates: int | None = Field(None, ge=0)
    keep_checkpoints: bool = Field(False, description="keep each cell's stage checkpoints (hundreds of MB each)")

    @field_validator("strategies")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        from mtgraft.training.catalog import STRATEGIES

        bad = [s for s in v if s not in STRATEGIES]
        if bad:
            raise ValueError(f"unknown strategies {bad} (see 'mtgraft strategies')")
        if "graft" in v and "naive" not in v:
            raise ValueError("strategy 'graft' reuses the naive run of each cell: list 'naive' too")
        return v


class PeakMemory:
    """Peak resident memory of this process while the block runs (sampled every 50 ms with psutil)."""

    def __init__(self) -> None:
        import psutil

        self.proc = psutil.Process()
        self.start = self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()

    def _watch(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __enter__(self) -> PeakMemory:
        self._t = threading.Thread(target=self._watch, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def _dir_weights(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors") if f.name != "strategy_state.safetensors")


def _prune(folder: Path) -> None:
    """Drop the weights of a finished cell (stage checkpoints, model files); its JSON records stay."""
    for p in folder.glob("stage_*"):
        shutil.rmtree(p, ignore_errors=True)
    for f in folder.glob("*.safetensors"):
        f.unlink()


def _record(strategy: str, j: dict[str, Any], R: Any, cont: dict[str, Any], wall: float, mem: PeakMemory,
            model_bytes: int, extra_bytes: dict[str, int], order: list[str], seed: int, k: int) -> dict[str, Any]:
    return {"strategy": strategy, "order": order, "order_index": k, "seed": seed, "accuracy_matrix": R,
            "r0": j.get("r0"), "continual": cont, "wall_seconds": round(wall, 2),
            "train_seconds": j.get("train_seconds"), "peak_rss_bytes": mem.peak,
            "peak_rss_increase_bytes": mem.peak - mem.start, "model_bytes": model_bytes,
            "extra_bytes": int(sum(extra_bytes.values())), "extra_bytes_per_task": extra_bytes,
            "extra_bytes_per_task_mean": float(np.mean(list(extra_bytes.values()))) if extra_bytes else 0.0,
            "settings": (j.get("strategy") or {}).get("settings")}


def run_stream(study: Any) -> dict[str, Any]:
    """Every (seed, order, strategy) cell of ``study`` (a :class:`mtgraft.workflows.study.Study`), then the
    aggregate; writes ``OUT/stream.json``, the figures and returns the summary."""
    from mtgraft.training.multitask import MultitaskConfig, train_multitask
    from mtgraft.workflows.continual import ContinualGraftConfig, continual_graft

    c = study.cfg
    sc = StreamConfig(**c.continual)
    orders = sc.orders or [list(c.tasks)]
    for o in orders:
        if sorted(o) != sorted(c.tasks):
            raise MtgraftError(f"order {o} is not a permutation of the study's tasks {list(c.tasks)}")
    t_start = time.perf_counter()
    cells: list[dict[str, Any]] = []
    skipped: list[str] = []
    train_strats = [s for s in sc.strategies if s != "graft"]
    for seed in sc.seeds:
        for k, order in enumerate(orders):
            for strat in train_strats + (["graft"] if "graft" in sc.strategies else []):
                name = f"s{seed}-o{k + 1}-{strat}"
                folder = study.out / "cells" / name
                over = sc.budget_minutes is not None and (time.perf_counter() - t_start) / 60 > sc.budget_minutes
                if over and study._done(f"cell:{name}") is None:
                    skipped.append(name)
                    continue

                def go(strat: str = strat, order: list[str] = order, seed: int = seed, k: int = k,
                       folder: Path = folder) -> tuple[dict[str, Any], list[str]]:
                    if strat == "graft":
                        return _graft_cell(study, sc, order, seed, k, folder, continual_graft, ContinualGraftConfig)
                    opts = {**study._train_cfg(), **sc.options.get(strat, {}), "seed": seed}
                    cfg = MultitaskConfig(tasks=order, mode="sequential", strategy=strat, out=str(folder / "run"),
                                          **opts)
                    t0 = time.perf_counter()
                    with PeakMemory() as mem:
                        r = train_multitask(cfg, show_progress=study.show)
                    wall = time.perf_counter() - t0
                    j = r.to_json()
                    rec = _record(strat, j, j["accuracy_matrix"], j["continual"], wall, mem,
                                  _dir_weights(folder / "run"), j["strategy"]["extra_bytes_per_task"], order, seed, k)
                    rec["strategy_info"] = {kk: v for kk, v in j["strategy"].items() if kk not in ("settings",)}
                    write_json(folder / "cell.json", rec)
                    if not sc.keep_checkpoints and not (strat == "naive" and "graft" in sc.strategies):
                        _prune(folder / "run")
                    return {"cells": [rec]}, [str(folder / "cell.json")]

                cells += study.stage(f"cell:{name}", go)["cells"]
    summary = aggregate(cells, sc, orders, list(c.tasks))
    summary["not_run"] = skipped
    summary["budget_minutes"] = sc.budget_minutes
    summary["stream_seconds"] = round(time.perf_counter() - t_start, 1)
    write_json(study.out / "stream.json", {"cells": cells, **summary})
    summary["figures"] = {k: str(v) for k, v in stream_figures(summary, study.out / "figures").items()}
    write_json(study.out / "stream.json", {"cells": cells, **summary})
    return summary


def _graft_cell(study: Any, sc: StreamConfig, order: list[str], seed: int, k: int, folder: Path,
                continual_graft: Any, ContinualGraftConfig: Any) -> tuple[dict[str, Any], list[str]]:
    naive_dir = study.out / "cells" / f"s{seed}-o{k + 1}-naive"
    run_dir = naive_dir / "run"
    naive = study._done(f"cell:s{seed}-o{k + 1}-naive")
    if naive is None or not run_dir.is_dir():
        raise MtgraftError(f"the graft cell needs the naive cell of seed {seed}, order {k + 1} first")
    nrec = naive["result"]["cells"][0]
    gcfg = ContinualGraftConfig(run=str(run_dir), sparsity=sc.sparsity, method=sc.method, recipe=sc.recipe,
                                updates=sc.updates, seed=seed, out=str(folder / "continual_graft"),
                                stage_matrices=True, tracking_uri=study.cfg.tracking_uri)
    t0 = time.perf_counter()
    with PeakMemory() as mem:
        res = continual_graft(gcfg, show_progress=study.show).to_json()
    graft_wall = time.perf_counter() - t0
    st = res["storage"]
    per_task = {n: v["patch_bytes"] for n, v in st["per_task"].items()}
    mem.peak = max(mem.peak, nrec["peak_rss_bytes"])
    recs = []
    for key, label in (("own", "graft"), ("union", "graft-union")):
        m = res["stage_matrices"][key]
        rec = _record(label, {"r0": nrec["r0"], "train_seconds": nrec["train_seconds"]}, m["accuracy_matrix"],
                      m["continual"], nrec["wall_seconds"] + graft_wall, mem, 0, per_task, order, seed, k)
        rec["graft_seconds"] = round(graft_wall, 2)
        rec["model_bytes"] = nrec["model_bytes"]  # the pretrained model, the same size
        rec["settings"] = {"sparsity": sc.sparsity, "method": sc.method, "recipe": sc.recipe, "updates": sc.updates}
        rec["naive_final_row"] = nrec["accuracy_matrix"][-1]
        recs.append(rec)
    write_json(folder / "cell.json", {"cells": recs, "continual_graft": res})
    if not sc.keep_checkpoints:
        _prune(run_dir)
    return {"cells": recs}, [str(folder / "cell.json")]


def aggregate(cells: list[dict[str, Any]], sc: StreamConfig, orders: list[list[str]],
              tasks: list[str]) -> dict[str, Any]:
    """Per strategy: metric means with 95% t-intervals over cells; mean matrix by position; storage; compute."""
    names = [s for s in sc.strategies if s != "graft"] + (["graft", "graft-union"] if "graft" in sc.strategies else [])
    per: dict[str, Any] = {}
    for s in names:
        cs = [c for c in cells if c["strategy"] == s]
        if not cs:
            continue
        mats = np.array([[[math.nan if v is None else v for v in row] for row in c["accuracy_matrix"]] for c in cs])
        with warnings.catch_warnings():  # graft's entries beyond the next task are never evaluated (all NaN)
            warnings.simplefilter("ignore", RuntimeWarning)
            mean_matrix = np.nanmean(mats, axis=0)
        by_task: dict[str, list[float]] = {t: [] for t in tasks}
        for c in cs:
            for i, t in enumerate(c["order"]):
                by_task[t].append(c["accuracy_matrix"][-1][i])
        per[s] = {
            "n_cells": len(cs), "cells": [f"s{c['seed']}-o{c['order_index'] + 1}" for c in cs],
            **{m: aggregate_values([c["continual"].get(m) for c in cs]) for m in METRICS},
            "matrix_by_position_mean": [[None if not math.isfinite(v) else float(v) for v in row]
                                        for row in mean_matrix],
            "final_by_task_mean": {t: (float(np.mean(v)) if v else None) for t, v in by_task.items()},
            "extra_bytes_per_task": aggregate_values([c["extra_bytes_per_task_mean"] for c in cs]),
            "extra_bytes": aggregate_values([c["extra_bytes"] for c in cs]),
            "model_bytes": cs[0]["model_bytes"],
            "wall_seconds": aggregate_values([c["wall_seconds"] for c in cs]),
            "peak_rss_bytes": aggregate_values([c["peak_rss_bytes"] for c in cs]),
            "settings": cs[0].get("settings"),
        }
    return {"strategies": per, "paired": paired_differences(cells, list(per)), "orders": orders, "seeds": sc.seeds,
            "task_names": tasks, "interval": "95% t-interval over the cells (orders x seeds) of each strategy",
            "matrix_note": "mean over cells of R[stage t, t-th task of the order] (rows: stage, columns: position)"}


def paired_differences(cells: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """Each strategy against ``naive`` and ``graft`` against each other strategy, paired by cell (same seed and
    order): the per-cell differences of ACC and forgetting (final), their mean with a 95% t-interval and the
    Wilcoxon signed-rank p over the cells both ran (mtgraft.evaluation.uncertainty.compare_over_seeds)."""
    by = {n: {f"s{c['seed']}-o{c['order_index'] + 1}": c["continual"] for c in cells if c["strategy"] == n}
          for n in names}

    def cmp(a: str, b: str, metric: str) -> dict[str, Any]:
        r = compare_over_seeds({k: v.get(metric) for k, v in by[a].items()},
                               {k: v.get(metric) for k, v in by[b].items()})
        return {"cells": r["seeds"], "mean_diff": r["mean_diff"], "ci95": r["ci95"], "wilcoxon_p": r["wilcoxon_p"]}

    out: dict[str, Any] = {"vs_naive": {}, "graft_vs": {}}
    if "naive" in by:
        out["vs_naive"] = {n: {m: cmp(n, "naive", m) for m in ("acc", "forgetting_final")}
                           for n in names if n != "naive"}
    if "graft" in by:
        out["graft_vs"] = {n: {"acc": cmp("graft", n, "acc")} for n in names if not n.startswith("graft")}
    return out


def stream_figures(summary: dict[str, Any], out: Path) -> dict[str, Path]:
    """Accuracy-matrix heatmaps (one panel per strategy, by position) and ACC against storage."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from mtgraft.utils import atomic_file

    out.mkdir(parents=True, exist_ok=True)
    per = summary["strategies"]
    names = list(per)
    paths: dict[str, Path] = {}
    if not names:
        return paths
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    fig = Figure(figsize=(3.6 * cols, 3.3 * rows))
    FigureCanvasAgg(fig)
    for k, s in enumerate(names):
        ax = fig.add_subplot(rows, cols, k + 1)
        m = np.array([[math.nan if v is None else v for v in row] for row in per[s]["matrix_by_position_mean"]])
        im = ax.imshow(np.ma.masked_invalid(m), cmap="viridis", vmin=0.4, vmax=1.0)
        T = m.shape[0]
        for t in range(T):
            for i in range(T):
                if math.isfinite(m[t, i]):
                    ax.text(i, t, f"{m[t, i]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if m[t, i] < 0.7 else "black")
        acc = per[s]["acc"]["mean"]
        ax.set_title(f"{s} (ACC {acc:.3f}, n={per[s]['n_cells']})", fontsize=9)
        ax.set_xticks(range(T), labels=[f"task {i + 1}" for i in range(T)], fontsize=7)
        ax.set_yticks(range(T), labels=[f"after {t + 1}" for t in range(T)], fontsize=7)
    fig.colorbar(im, ax=fig.axes, fraction=0.02, pad=0.02, label="test accuracy")
    fig.suptitle("accuracy matrix by position (mean over orders × seeds): row = after stage t, column = t-th task")
    paths["heatmaps"] = out / "accuracy_matrices.png"
    with atomic_file(paths["heatmaps"], "wb") as f:
        fig.savefig(f, format="png", dpi=110)

    fig = Figure(figsize=(6.4, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for s in names:
        x = max(1.0, per[s]["extra_bytes_per_task"]["mean"] or 0.0)
        a = per[s]["acc"]
        err = None
        if a["ci95"]:
            err = [[a["mean"] - a["ci95"][0]], [a["ci95"][1] - a["mean"]]]
        ax.errorbar([x], [a["mean"]], yerr=err, fmt="o", capsize=3, label=s)
        ax.annotate(s, (x, a["mean"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("bytes kept per task beyond one model (log; 1 = nothing)")
    ax.set_ylabel("ACC (final mean accuracy), 95% interval")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    paths["acc_storage"] = out / "acc_vs_storage.png"
    with atomic_file(paths["acc_storage"], "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    return paths


def render_stream(s: dict[str, Any]) -> str:
    """The Markdown table of a strategy comparison."""
    def iv(d: dict[str, Any], nd: int = 3) -> str:
        if d["mean"] is None:
            return "—"
        if not d["ci95"]:
            return f"{d['mean']:.{nd}f}"
        return f"{d['mean']:.{nd}f} [{d['ci95'][0]:.{nd}f}, {d['ci95'][1]:.{nd}f}]"

    lines = ["| strategy | cells | ACC | BWT | FWT | forgetting (final) | forgetting (max) | bytes kept per task "
             "| wall s | peak RSS MB |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, p in s["strategies"].items():
        lines.append(f"| {name} | {p['n_cells']} | {iv(p['acc'])} | {iv(p['bwt'])} | {iv(p['fwt'])} | "
                     f"{iv(p['forgetting_final'])} | {iv(p['forgetting_max'])} | "
                     f"{p['extra_bytes_per_task']['mean']:,.0f} | {p['wall_seconds']['mean']:.0f} | "
                     f"{p['peak_rss_bytes']['mean'] / 2**20:.0f} |")
    def d(c: dict[str, Any]) -> str:
        if c["mean_diff"] is None:
            return "—"
        ci = f" [{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}]" if c["ci95"] else ""
        p = "" if c["wilcoxon_p"] is None else f" (p {c['wilcoxon_p']:.2g})"
        return f"{c['mean_diff']:+.3f}{ci}{p}"

    paired = s.get("paired") or {}
    if paired.get("vs_naive"):
        lines += ["", "Paired by cell (same seed and order), strategy − naive: mean difference, 95% t-interval, "
                  "Wilcoxon signed-rank p.", "", "| strategy | cells | Δ ACC | Δ forgetting (final) |",
                  "|---|---:|---:|---:|"]
        for name, c in paired["vs_naive"].items():
            lines.append(f"| {name} | {len(c['acc']['cells'])} | {d(c['acc'])} | {d(c['forgetting_final'])} |")
    if paired.get("graft_vs"):
        lines += ["", "graft (own patch, task known) − each strategy, ACC, paired by cell: "
                  + "; ".join(f"{n} {d(c['acc'])}" for n, c in paired["graft_vs"].items()) + "."]
    if s.get("not_run"):
        lines += ["", f"Not run (budget of {s.get('budget_minutes')} min reached): {', '.join(s['not_run'])}."]
    return "\n".join(lines) + "\n"
