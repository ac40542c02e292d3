"""Localisable fine-tuning (issue 15, item 4): what an L1 pull of the body towards the pretrained weights costs in
fine-tuned accuracy, and what it buys in Rel at 1e-4 (the paper's 0.01%).

Usage: python benchmarks/bench_localisable.py [--lambdas 1e-5 1e-4 1e-3] [--seeds 13 21 42]
       [--tasks rotten_tomatoes hedge] [--zero-from runs/single_task_seeds] [--root runs/localisable]
       [--study experiments/localisable.yaml] [--out benchmarks/results/localisable.json]
       [--plot docs/img/localisable.png] [--smoke]

For each lambda, ``mtgraft run experiments/localisable.yaml`` with ``train.l1_to_pretrained = lambda`` over the seeds
(``ROOT/l1-<lambda>/seed-<s>/``; a rerun skips what is done). lambda = 0 is run the same way unless ``--zero-from``
names a ``single_task`` study over the same seeds and tasks: its train section is the same, so its checkpoints are
the lambda = 0 fine-tuning (the pull is off at 0) and its grafts at 1e-4 (graft and topk, recipe fast) the same
measurements.

Per (lambda, task, seed) cell: the fine-tuned and P0 (pretrained body, fine-tuned head) test accuracy, the gain,
Rel at 1e-4 of the learned graft and of top-k |delta| with their paired-bootstrap intervals (from the study), and
how localised delta itself is: the fraction of body entries with delta exactly 0, and the share of ||delta||_1 held
by its top 1e-4 entries. Per lambda over the cells: means with 95% t-intervals; against lambda = 0, paired over
(task, seed): the change of fine-tuned accuracy and of Rel (t-interval and Wilcoxon signed-rank p).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LAMBDAS = [1e-5, 1e-4, 1e-3]
SIZE = 1e-4
METHODS = ("graft", "topk")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lambdas", nargs="+", type=float, default=LAMBDAS, help="lambda > 0 values (0 is always in)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[13, 21, 42])
    ap.add_argument("--tasks", nargs="+", default=["rotten_tomatoes", "hedge"])
    ap.add_argument("--study", default=str(ROOT / "experiments" / "localisable.yaml"))
    ap.add_argument("--root", default="runs/localisable")
    ap.add_argument("--zero-from", default=None, help="a single_task study folder (seed-<s>/) reused as lambda = 0")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "localisable.json"))
    ap.add_argument("--plot", default=str(ROOT / "docs" / "img" / "localisable.png"))
    ap.add_argument("--set", action="append", default=[], help="extra study override KEY=VALUE (as mtgraft run --set)")
    ap.add_argument("--smoke", action="store_true", help="tiny settings to check the script (no meaningful numbers)")
    return ap.parse_args(argv)


def lam_dir(root: str | Path, lam: float) -> Path:
    return Path(root) / ("l1-0" if lam == 0 else f"l1-{lam:g}")


def run_lambda(a: argparse.Namespace, lam: float) -> Path:
    """One study run (all seeds) at ``lam``; returns its folder."""
    from mtgraft.workflows.study import Study, load_study, parse_overrides

    over = parse_overrides([f"tasks=[{','.join(a.tasks)}]", f"seeds=[{','.join(map(str, a.seeds))}]",
                            f"train.l1_to_pretrained={lam!r}", *a.set])
    out = lam_dir(a.root, lam)
    Study(load_study(a.study, over), out=str(out), show_progress=False,
          log=lambda msg: print(re.sub(r"\[/?[a-z ]*\]", "", msg), flush=True)).run()
    return out


def delta_stats(checkpoint: str, size: float = SIZE) -> dict[str, Any]:
    """How localised delta = theta_ft - theta_pre is over the body: exact zeros, and the top-``size`` share of |delta|."""
    import torch

    from mtgraft.grafting.space import GraftSpace, budget_k
    from mtgraft.models import build_task_model, load_checkpoint

    ft, meta = load_checkpoint(checkpoint)
    pre = build_task_model(meta.pretrained["name"], meta.model_type, meta.tasks)
    space = GraftSpace.build(ft, pre, torch.device("cpu"))
    return localisation_of(space.delta, budget_k(size, space.numel))


def localisation_of(delta: Any, k: int) -> dict[str, Any]:
    """``zero_fraction`` (entries with delta exactly 0), ``topk_l1_share`` (share of ||delta||_1 in the top ``k``
    |delta| entries) and ``l1`` of a flat delta."""
    import torch

    d = delta.abs().double()
    total = float(d.sum())
    top = float(torch.topk(d, k).values.sum()) if total > 0 else 0.0
    return {"numel": int(d.numel()), "zero_fraction": float((d == 0).double().mean()), "l1": total,
            "topk_l1_share": top / total if total > 0 else None, "k": int(k)}


def cells_of(folder: Path, lam: float, seeds: list[int], tasks: list[str], source: str) -> list[dict[str, Any]]:
    """The (task, seed) cells of one lambda's study folder (``seed-<s>/summary.json``)."""
    out = []
    for seed in seeds:
        path = folder / f"seed-{seed}" / "summary.json"
        if not path.is_file():
            print(f"  lambda {lam:g}: no summary for seed {seed} in {folder} (not run yet)")
            continue
        s = json.loads(path.read_text())
        for t in s["tasks"]:
            if t["task"] not in tasks:
                continue
            g, ref = t["graft"], t["graft"]["reference"]
            cell = {"lambda": lam, "task": t["task"], "seed": seed, "source": source,
                    "checkpoint": t["train"]["checkpoint"], "best_step": t["train"].get("best_step"),
                    "finetuned": ref["finetuned"]["accuracy"], "finetuned_ci95": ref["finetuned"].get("accuracy_ci95"),
                    "pretrained": ref["pretrained"]["accuracy"], "n_test": ref["finetuned"].get("n")}
            cell["gain"] = cell["finetuned"] - cell["pretrained"]
            ci = ref["finetuned"].get("gain_ci95")
            cell["gain_ci95"] = ci
            cell["learnt"] = bool(ci and ci[0] > 0)  # the gain's paired-bootstrap interval excludes 0
            for r in g["results"]:
                if r["method"] in METHODS and abs(r["sparsity"] - SIZE) < 1e-12:
                    cell[f"rel_{r['method']}"] = r["test"]["rel"]
                    cell[f"rel_{r['method']}_ci95"] = r["test"].get("rel_ci95")
                    cell[f"acc_{r['method']}"] = r["test"]["accuracy"]
            out.append(cell)
    return out


def summarise(cells: list[dict[str, Any]], lambdas: list[float]) -> list[dict[str, Any]]:
    """Per lambda: means with t-intervals over its cells; paired differences against lambda = 0."""
    from mtgraft.evaluation.uncertainty import aggregate, compare_over_seeds

    keys = ["finetuned", "gain", "rel_graft", "rel_topk", "zero_fraction", "topk_l1_share"]
    zero = {(c["task"], c["seed"]): c for c in cells if c["lambda"] == 0}
    rows = []
    for lam in lambdas:
        mine = [c for c in cells if c["lambda"] == lam]
        if not mine:
            continue
        row: dict[str, Any] = {"lambda": lam, "cells": len(mine)}
        for k in keys:
            row[k] = aggregate([c.get(k) for c in mine])
        learnt = [c for c in mine if c.get("learnt")]
        row["learnt_cells"] = len(learnt)
        for k in ("rel_graft", "rel_topk"):
            row[f"{k}_learnt"] = aggregate([c.get(k) for c in learnt])
            row[f"{k}_pooled"] = pooled_rel(mine, k.replace("rel_", "acc_"))
        if lam != 0:
            for k in ("finetuned", "rel_graft", "rel_topk"):
                a = {(c["task"], c["seed"]): c.get(k) for c in mine}
                b = {key: zero[key].get(k) for key in a if key in zero}
                cmp = compare_over_seeds(a, b)
                cmp["seeds"] = [list(s) for s in cmp["seeds"]]
                row[f"{k}_vs_0"] = cmp
        rows.append(row)
    return rows


def pooled_rel(cells: list[dict[str, Any]], acc_key: str, n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Gain-weighted Rel over cells, sum(acc − P0) / sum(P1 − P0) (a cell with a tiny gain cannot dominate it, as
    it does a mean of per-cell ratios), with a 95% percentile interval from resampling the cells."""
    import numpy as np

    got = [(c[acc_key], c["pretrained"], c["finetuned"]) for c in cells if c.get(acc_key) is not None]
    if not got:
        return {"mean": None, "ci95": None, "n": 0}
    a = np.array(got, dtype=float)
    num, den = a[:, 0] - a[:, 1], a[:, 2] - a[:, 1]
    point = float(num.sum() / den.sum()) if den.sum() != 0 else None
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(n_boot, len(a)))
    d = den[idx].sum(1)
    boots = (num[idx].sum(1) / np.where(d == 0, np.nan, d))
    boots = boots[np.isfinite(boots)]
    ci = [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))] if len(a) > 1 and len(boots) else None
    return {"mean": point, "ci95": ci, "n": len(a)}


def _iv(agg: dict[str, Any] | None, nd: int = 3) -> str:
    from mtgraft.evaluation.uncertainty import format_ci

    return format_ci(agg, nd) if agg else "—"


def markdown(summary: dict[str, Any]) -> str:
    lines = ["| λ | cells (learnt) | fine-tuned acc | gain | Rel graft 1e-4, learnt cells | Rel top-k 1e-4, learnt cells "
             "| pooled Rel graft | pooled Rel top-k | δ = 0 (share of body) | top-1e-4 share of ‖δ‖₁ "
             "| Δ fine-tuned acc vs λ=0 (p) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def pooled(agg: dict[str, Any]) -> str:
        if not agg or agg.get("mean") is None:
            return "—"
        ci = agg.get("ci95")
        return f"{agg['mean']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")

    def cmp(r: dict[str, Any], k: str) -> str:
        c = r.get(f"{k}_vs_0")
        if not c or c["mean_diff"] is None:
            return "—"
        lo, hi = c["ci95"] or (None, None)
        p = c["wilcoxon_p"]
        iv = f" [{lo:+.3f}, {hi:+.3f}]" if lo is not None else ""
        return f"{c['mean_diff']:+.3f}{iv} ({'—' if p is None else f'{p:.2f}'})"

    for r in summary["rows"]:
        lines.append(f"| {r['lambda']:g} | {r['cells']} ({r.get('learnt_cells', '—')}) | {_iv(r['finetuned'])} | "
                     f"{_iv(r['gain'])} | {_iv(r.get('rel_graft_learnt') or r['rel_graft'])} | "
                     f"{_iv(r.get('rel_topk_learnt') or r['rel_topk'])} | {pooled(r.get('rel_graft_pooled'))} | "
                     f"{pooled(r.get('rel_topk_pooled'))} | {_iv(r['zero_fraction'], 4)} | {_iv(r['topk_l1_share'])} | "
                     f"{cmp(r, 'finetuned')} |")
    return "\n".join(lines)


def plot(summary: dict[str, Any], path: str) -> None:
    """Fine-tuned accuracy (x) against Rel of the 1e-4 graft (y), one point per lambda with t-intervals both ways,
    and the cells faintly behind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    colours = plt.get_cmap("viridis")
    rows = summary["rows"]
    for i, r in enumerate(rows):
        col = colours(i / max(1, len(rows) - 1))
        cs = [c for c in summary["cells"] if c["lambda"] == r["lambda"] and c.get("learnt")]
        for ax, key in ((axes[0], "rel_graft"), (axes[1], "rel_topk")):
            ax.scatter([c["finetuned"] for c in cs], [c.get(key) for c in cs], color=col, alpha=0.3, s=14)
            x, y = r["finetuned"], r.get(f"{key}_pooled") or r[key]
            if x["mean"] is None or y["mean"] is None:
                continue
            xe = None if not x["ci95"] else [[x["mean"] - x["ci95"][0]], [x["ci95"][1] - x["mean"]]]
            ye = None if not y["ci95"] else [[y["mean"] - y["ci95"][0]], [y["ci95"][1] - y["mean"]]]
            ax.errorbar([x["mean"]], [y["mean"]], xerr=xe, yerr=ye, fmt="o", color=col, capsize=3,
                        label=f"λ = {r['lambda']:g}")
    for ax, name in ((axes[0], "learned graft"), (axes[1], "top-k |δ|")):
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_xlabel("fine-tuned test accuracy")
        ax.set_ylabel("Rel at 1e-4 of the body")
        ax.set_ylim(-0.6, 1.6)
        ax.set_title(f"{name}: pooled Rel (95% CI), accuracy mean (t-CI)", fontsize=9)
    axes[0].legend(fontsize=8)
    tasks = ", ".join(summary["tasks"])
    fig.suptitle(f"Localisable fine-tuning (L1 pull to θ_pre), MiniLM on {tasks}; faint dots: cells whose gain "
                 "excludes 0", fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.smoke:
        a.set += ["train.max_steps=2", "train.eval_every=1", "train.k=4", "train.max_test=16",
                  "graft.updates=1"]
    torch_threads = os.environ.get("OMP_NUM_THREADS")
    t0 = time.time()
    load0 = os.getloadavg()
    lambdas = sorted({0.0, *a.lambdas})
    cells: list[dict[str, Any]] = []
    seconds: dict[str, float] = {}
    for lam in lambdas:
        t = time.perf_counter()
        if lam == 0 and a.zero_from:
            folder, source = Path(a.zero_from), f"reused: {a.zero_from} (same train section, lambda 0)"
        else:
            print(f"lambda {lam:g}: {lam_dir(a.root, lam)}", flush=True)
            folder, source = run_lambda(a, lam), "this sweep"
        got = cells_of(folder, lam, a.seeds, a.tasks, source)
        for c in got:
            c.update(delta_stats(c["checkpoint"]))
        cells += got
        seconds[f"{lam:g}"] = round(time.perf_counter() - t, 1)
    summary = {"benchmark": "localisable", "size": SIZE, "methods": list(METHODS), "tasks": a.tasks,
               "seeds": a.seeds, "lambdas": lambdas, "study": os.path.relpath(a.study, ROOT), "overrides": a.set,
               "zero_from": a.zero_from, "cells": cells, "rows": summarise(cells, lambdas), "seconds": seconds,
               "wall_seconds": round(time.time() - t0, 1), "load_start": [round(x, 2) for x in load0],
               "load_end": [round(x, 2) for x in os.getloadavg()], "omp_num_threads": torch_threads,
               "machine": platform.platform(), "smoke": a.smoke}
    summary["table"] = markdown(summary)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(summary, indent=1))
    plot(summary, a.plot)
    print(summary["table"])
    print(f"wrote {a.out} and {a.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
