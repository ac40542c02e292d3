"""Localisation benchmark (issue 15): Rel against region size for every localisation method, on several tasks and
seeds, with paired differences against top-k |delta|, wall time and peak memory per method; a Pareto plot.

Usage: python benchmarks/bench_localize.py [--root runs/single_task_seeds] [--tasks rotten_tomatoes movie_polarity
       hedge] [--seeds 13 21 42] [--sizes 1e-5 ... 1e-2] [--learned-sizes 1e-4 1e-3] [--methods ...]
       [--max-test 200] [--updates 5] [--examples-per-update 64] [--work DIR] [--out benchmarks/results/localize.json]
       [--plot docs/img/pareto.png] [--smoke]

It reuses fine-tuned single-task checkpoints, ``<root>/seed-<seed>/train/<task>/`` (one per task and seed, as the
``single_task`` study writes them), and runs every method in this one process, through the code path of ``mtgraft
graft`` (``load_inputs`` → ``reference_metrics`` → ``select`` → ``evaluate_region``), without writing patches or
MLflow runs. The two reference models' test predictions come from the evaluation cache (docs/evaluation-cache.md):
a rerun recomputes none of them. Per (task, seed) "setting", every method at every size:

- Rel on a seeded cap of the test set (``--max-test``), with the graft's paired bootstrap (B = 1,000 resamples of
  the test examples, seeded by the setting's seed, shared by P_0, P_1 and every region);
- against top-k |delta| at the same size: the paired bootstrap difference of Rel (mtgraft.grafting.intervals);
- cost: the wall time of the data-dependent score a method starts from (integrated gradients, the Fisher pass, the
  gradient at theta_ft; or its learner's init score), measured once per method and task from an empty cache (a
  ``mtgraft graft`` command computes it once and reuses it for every size), plus the selection at that size; the
  cost of one region from scratch is their sum. Peak resident memory above the resident memory before them (VmHWM,
  reset through /proc/self/clear_refs before the score and before each selection; the larger of the two).

Over the settings, per method and size: mean Rel with a t-interval; the paired difference to top-k with a
t-interval and a Wilcoxon signed-rank test over settings (mtgraft.evaluation.uncertainty.compare_over_seeds), and a
pooled paired bootstrap interval (the mean over settings of each resample's ΔRel; each setting's resamples are
independent). Settings whose fine-tuning gain interval contains 0 are flagged (Rel is unstable there) and the
headline is given with and without them. The goal of the issue: a method whose mean Rel exceeds top-k's by ≥ 0.10 at
both 1e-4 and 1e-3, with the paired intervals excluding zero, at no more than the current default's time.

Each setting's record is written to ``--work`` as soon as it is done, and reused by a rerun with the same settings,
so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEFAULT_TASKS = ["rotten_tomatoes", "movie_polarity", "hedge"]
DEFAULT_SEEDS = [13, 21, 42]
SIZES = [1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2]
#: the slow methods (mask learning, alpha search) run at these sizes only, to fit the time budget
LEARNED_SIZES = [1e-4, 1e-3]
GOAL_SIZES = (1e-4, 1e-3)
GOAL_DIFF = 0.10
BASELINE = "topk"
#: the score function (in mtgraft.grafting.methods) each score method's regions are the top k of
SCORES = {"saliency": "_saliency_scores", "fisher": "_fisher_scores", "grad-movement": "_grad_movement_scores"}
DEFAULT = "graft"  # the current default method (recipe thorough)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from mtgraft.grafting.catalog import METHODS

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default="runs/single_task_seeds")
    ap.add_argument("--tasks", nargs="+", default=DEFAULT_TASKS)
    ap.add_argument("--seeds", nargs="+", type=int, default=DEFAULT_SEEDS)
    ap.add_argument("--sizes", nargs="+", type=float, default=SIZES)
    ap.add_argument("--learned-sizes", nargs="+", type=float, default=LEARNED_SIZES)
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--max-test", type=int, default=200)
    ap.add_argument("--updates", type=int, default=5, help="mask updates of every learner (recipe thorough: 10)")
    ap.add_argument("--examples-per-update", type=int, default=64)
    ap.add_argument("--recipe", default="thorough")
    ap.add_argument("--k", type=int, default=None, help="examples per class for train and dev (default: the checkpoint's)")
    ap.add_argument("--option", action="append", default=[], help="METHOD.KEY=VALUE (as mtgraft graft --method-option)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--deadline", default=None,
                    help="UTC time HH:MM after which no new setting starts (one that would not finish by then is "
                         "skipped, its length estimated by the settings done); the summary covers what was done")
    ap.add_argument("--wait", type=float, default=0.0,
                    help="seconds to wait, after the settings whose checkpoints exist, for missing ones to appear")
    ap.add_argument("--work", default=None, help="per-setting records (default: a folder in the temp dir)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--plot", default=None)
    ap.add_argument("--smoke", action="store_true", help="one task, one seed, two sizes, tiny test set: < 1 min")
    a = ap.parse_args(argv)
    if a.smoke:
        a.seeds = a.seeds[:1]
        a.tasks = a.tasks[:1]
        a.sizes, a.learned_sizes = [1e-4, 1e-3], [1e-4]
        a.max_test, a.updates, a.examples_per_update, a.k = 40, 1, 16, 8
        a.option = [*a.option, "fisher.fisher_examples=16", "grad-movement.fisher_examples=16",
                    "saliency.saliency_steps=1", "graft-rescaled.alphas=[1, 2]"]
        a.out = a.out or str(Path(tempfile.gettempdir()) / "bench_localize_smoke.json")
        a.plot = a.plot or str(Path(tempfile.gettempdir()) / "bench_localize_smoke.png")
    a.out = a.out or "benchmarks/results/localize.json"
    a.plot = a.plot or "docs/img/pareto.png"
    a.work = a.work or str(Path(tempfile.gettempdir()) / ("bench_localize_smoke" if a.smoke else "bench_localize"))
    return a


# ------------------------------------------------------------------------------------------------ memory


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def peak_reset() -> int | None:
    """Reset the process's peak RSS (VmHWM) to its current RSS; returns the RSS in KiB (None where unsupported)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _status_kib("VmRSS")
    except OSError:
        return None


def peak_above(start: int | None) -> float | None:
    """MiB of peak RSS since ``peak_reset`` above the RSS then."""
    if start is None:
        return None
    return round((_status_kib("VmHWM") - start) / 1024, 1)


# ------------------------------------------------------------------------------------------------ one setting


def checkpoint_of(root: str, seed: int, task: str) -> Path:
    return Path(root) / f"seed-{seed}" / "train" / task


def signature(a: argparse.Namespace) -> dict[str, Any]:
    """What a setting's record depends on (a saved record with another signature is recomputed)."""
    return {"sizes": a.sizes, "learned_sizes": a.learned_sizes, "methods": a.methods, "max_test": a.max_test, "k": a.k,
            "updates": a.updates, "examples_per_update": a.examples_per_update, "recipe": a.recipe,
            "options": a.option}


def run_setting(a: argparse.Namespace, task: str, seed: int, log: Any) -> dict[str, Any]:
    """Every method at every size on one (task, seed) checkpoint; Rel, bootstrap ΔRel to top-k, time, memory."""
    from mtgraft.grafting import GraftConfig
    from mtgraft.grafting import methods as M
    from mtgraft.grafting.intervals import comparisons
    from mtgraft.grafting.run import evaluate_region, load_inputs, reference_metrics
    from mtgraft.models import read_checkpoint_meta

    ck = checkpoint_of(a.root, seed, task)
    meta = read_checkpoint_meta(str(ck))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = GraftConfig(task=task, finetuned=str(ck), sparsity=sorted(set(a.sizes) | set(a.learned_sizes)),
                          method=a.methods, recipe=a.recipe, updates=a.updates,
                          examples_per_update=a.examples_per_update, seed=seed, max_test=a.max_test, k=a.k, track=False,
                          do_register=False, out=str(Path(tmp) / "out"), method_options=a.option or {})
        inputs = load_inputs(cfg, task, meta)
    ref = reference_metrics(inputs, seed)  # both ends from the evaluation cache when it has them
    ft = ref.finetuned.metrics
    rec: dict[str, Any] = {
        "task": task, "seed": seed, "checkpoint": str(ck), "graftable_size": inputs.space.numel,
        "n_train": len(inputs.train), "n_dev": len(inputs.dev), "n_test": len(inputs.test),
        "pretrained": {k: ref.pretrained.metrics.get(k) for k in ("accuracy", "accuracy_ci95")},
        "finetuned": {k: ft.get(k) for k in ("accuracy", "accuracy_ci95", "gain", "gain_ci95", "gain_p")},
        "learned_clearly": bool(ft.get("gain_ci95") and ft["gain_ci95"][0] > 0),
        "load_seconds": round(time.perf_counter() - t0, 2), "rows": [],
    }
    log(f"{task} seed {seed}: |P| = {inputs.space.numel:,}, test {len(inputs.test)}, P0 "
        f"{rec['pretrained']['accuracy']:.3f}, P1 {ft['accuracy']:.3f} (gain CI {ft.get('gain_ci95')})")
    points: dict[tuple[str, float], dict[str, Any]] = {}
    for name in a.methods:
        method = M.get_method(name)
        settings = cfg.method_settings(name, inputs.settings)
        sizes = a.learned_sizes if method.learned else a.sizes
        # the data-dependent score a method starts from (saliency, Fisher, gradient) is computed once per task and
        # shared by its sizes; it is timed here on its own, from an empty cache, so that no method reads another's
        inputs.space.cache.clear()
        ctx0 = M.SelectContext(inputs.space, inputs.budgets[sizes[0]], inputs.train, inputs.dev, settings, seed)
        rss0 = peak_reset()
        t1 = time.perf_counter()
        score_fn = SCORES.get(name)
        if score_fn is not None:
            getattr(M, score_fn)(ctx0)
        elif "init" in settings:
            M.base_scores(ctx0)
        score_seconds, score_peak = round(time.perf_counter() - t1, 3), peak_above(rss0)
        for s in sizes:
            k = inputs.budgets[s]
            rss0 = peak_reset()
            t1 = time.perf_counter()
            sel = method.select(M.SelectContext(inputs.space, k, inputs.train, inputs.dev, settings, seed))
            seconds = time.perf_counter() - t1
            peak = peak_above(rss0)
            t2 = time.perf_counter()
            region = evaluate_region(inputs, ref, sel.indices, (name, s), sel.scale)
            m = region.metrics
            row = {"method": name, "sparsity": s, "k": k, "region_size": int(sel.indices.numel()),
                   "rel": m["rel"], "rel_ci95": m.get("rel_ci95"), "accuracy": m["accuracy"],
                   "agreement": m.get("agreement"), "ece": m.get("ece"), "select_seconds": round(seconds, 3),
                   "score_seconds": score_seconds, "cost_seconds": round(score_seconds + seconds, 3),
                   "eval_seconds": round(time.perf_counter() - t2, 3),
                   "peak_mib_above_start": None if peak is None else max(peak, score_peak or 0.0)}
            if sel.scale != 1.0:
                row["scale"] = sel.scale
            for key in ("best_update", "updates_run", "candidates"):
                if key in sel.info:
                    row[key] = sel.info[key]
            rec["rows"].append(row)
            points[(name, s)] = m
            log(f"  {name:<15} s={s:<7g} k={k:<7,} Rel {m['rel']:+.3f}  score {score_seconds:5.1f}s  select "
                f"{seconds:6.1f}s  peak +{row['peak_mib_above_start']} MiB")
    pairs = [((n, s), (BASELINE, s)) for (n, s) in points if n != BASELINE and (BASELINE, s) in points]
    rec["vs_topk"] = [c for c in comparisons(ref.boot, points, pairs) if c["metric"] == "rel"]
    # each resample's accuracy difference to top-k and fine-tuning gain, for the pooled (gain-weighted) interval
    gain = ref.boot.ft["test"] - ref.boot.pre["test"]
    rec["gain_samples"] = [round(float(x), 6) for x in gain]
    rec["acc_diff_samples"] = {}
    for (n, s), _ in pairs:
        d = ref.boot.samples[(n, s)] - ref.boot.samples[(BASELINE, s)]
        rec["acc_diff_samples"][f"{n}@{s:g}"] = [round(float(x), 6) for x in d]
    rec["seconds"] = round(time.perf_counter() - t0, 1)
    return rec


def add_gain_samples(a: argparse.Namespace, rec: dict[str, Any]) -> bool:
    """Records written before the gain-weighted summary have each resample's ΔRel but not its gain: rebuild the
    setting's bootstrap (the same seeded resamples; both ends' predictions from the evaluation cache) for the gain,
    and the accuracy differences as ΔRel × gain (lost where a resample's gain is 0). True if it added them."""
    if "gain_samples" in rec:
        return False
    import numpy as np

    from mtgraft.grafting import GraftConfig
    from mtgraft.grafting.run import load_inputs, reference_metrics
    from mtgraft.models import read_checkpoint_meta

    ck = checkpoint_of(a.root, rec["seed"], rec["task"])
    with tempfile.TemporaryDirectory() as tmp:
        cfg = GraftConfig(task=rec["task"], finetuned=str(ck), sparsity=[a.sizes[0]], method=[BASELINE], seed=rec["seed"],
                          max_test=a.max_test, k=a.k, track=False, do_register=False, out=str(Path(tmp) / "out"))
        inputs = load_inputs(cfg, rec["task"], read_checkpoint_meta(str(ck)))
    ref = reference_metrics(inputs, rec["seed"])
    gain = ref.boot.ft["test"] - ref.boot.pre["test"]
    if abs(float(ref.finetuned.metrics["accuracy"]) - float(rec["finetuned"]["accuracy"])) > 1e-9:
        raise RuntimeError(f"{rec['task']}/seed-{rec['seed']}: the rebuilt reference differs from the record's")
    rec["gain_samples"] = [round(float(x), 6) for x in gain]
    rec["acc_diff_samples"] = {}
    for key, rd in rec.get("rel_diff_samples", {}).items():
        r = np.array([np.nan if v is None else v for v in rd], dtype=float)
        rec["acc_diff_samples"][key] = [None if not math.isfinite(x) else round(float(x), 6) for x in r * gain]
    return True


# ------------------------------------------------------------------------------------------------ over settings


def summarise(records: list[dict[str, Any]], a: argparse.Namespace) -> dict[str, Any]:
    """Per method and size, over the settings: mean Rel, paired difference to top-k (t-interval, Wilcoxon,
    pooled bootstrap), mean time and peak memory; the goal's verdict per method."""
    import numpy as np

    from mtgraft.evaluation.uncertainty import aggregate, bootstrap_p, compare_over_seeds, percentile_interval

    out: dict[str, Any] = {}
    for subset, recs in (("all", records), ("learned_clearly", [r for r in records if r["learned_clearly"]])):
        rows: list[dict[str, Any]] = []
        keys = sorted({(x["method"], x["sparsity"]) for r in recs for x in r["rows"]},
                      key=lambda t: (a.methods.index(t[0]) if t[0] in a.methods else 99, t[1]))
        for name, s in keys:
            per = {(r["task"], r["seed"]): x for r in recs for x in r["rows"] if (x["method"], x["sparsity"]) == (name, s)}
            rel = aggregate([x["rel"] for x in per.values()])
            gains = {(r["task"], r["seed"]): r["finetuned"]["accuracy"] - r["pretrained"]["accuracy"] for r in recs}
            p0 = {(r["task"], r["seed"]): r["pretrained"]["accuracy"] for r in recs}
            g_sum = sum(gains[k] for k in per)
            row: dict[str, Any] = {
                "method": name, "sparsity": s, "n_settings": rel["n"],
                # gain-weighted Rel over the settings: sum of (acc - P0) over sum of (P1 - P0)
                "rel_pooled": (sum(x["accuracy"] - p0[k] for k, x in per.items()) / g_sum) if g_sum else None,
                "rel_mean": rel["mean"], "rel_ci95": rel["ci95"],
                "select_seconds_mean": _mean([x["select_seconds"] for x in per.values()]),
                "cost_seconds_mean": _mean([x.get("cost_seconds", x["select_seconds"]) for x in per.values()]),
                "select_seconds_max": max((x["select_seconds"] for x in per.values()), default=None),
                "peak_mib_mean": _mean([x["peak_mib_above_start"] for x in per.values()]),
                "peak_mib_max": max((x["peak_mib_above_start"] or 0 for x in per.values()), default=None),
            }
            if name != BASELINE:
                base = {(r["task"], r["seed"]): x["rel"] for r in recs for x in r["rows"]
                        if (x["method"], x["sparsity"]) == (BASELINE, s)}
                c = compare_over_seeds({k: v["rel"] for k, v in per.items()}, base)
                row["vs_topk"] = {"mean_diff": c["mean_diff"], "ci95": c["ci95"], "wilcoxon_p": c["wilcoxon_p"],
                                  "min_possible_p": c["min_possible_p"], "n": len(c["diffs"])}
                accb = {(r["task"], r["seed"]): x["accuracy"] for r in recs for x in r["rows"]
                        if (x["method"], x["sparsity"]) == (BASELINE, s)}
                both = [k for k in per if k in accb]
                g_both = sum(gains[k] for k in both)
                row["vs_topk"]["pooled_diff"] = (sum(per[k]["accuracy"] - accb[k] for k in both) / g_both
                                                 if g_both else None)
                diffs, gs = [], []
                for r in recs:
                    d = (r.get("acc_diff_samples") or {}).get(f"{name}@{s:g}")
                    if d is not None and r.get("gain_samples") is not None:
                        diffs.append(np.array([np.nan if v is None else v for v in d], dtype=float))
                        gs.append(np.array(r["gain_samples"], dtype=float))
                if diffs:
                    with np.errstate(divide="ignore", invalid="ignore"):
                        pooled = np.stack(diffs).sum(0) / np.stack(gs).sum(0)  # NaN where a setting lost resample b
                    ok = pooled[np.isfinite(pooled)]
                    row["vs_topk"]["pooled_bootstrap_ci95"] = percentile_interval(ok)
                    row["vs_topk"]["pooled_bootstrap_p"] = bootstrap_p(ok)
                    row["vs_topk"]["pooled_bootstrap_n"] = int(ok.size)
            rows.append(row)
        out[subset] = {"settings": [f"{r['task']}/seed-{r['seed']}" for r in recs], "rows": rows,
                       "goal": goal(rows)}
    return out


def _mean(xs: list[float | None]) -> float | None:
    v = [float(x) for x in xs if x is not None]
    return round(sum(v) / len(v), 3) if v else None


def goal(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per method: does it beat top-k by ≥ GOAL_DIFF of Rel at both goal sizes? ``met``: the gain-weighted pooled
    ΔRel is ≥ GOAL_DIFF and its paired bootstrap interval lies above 0; ``met_over_settings`` also asks the mean of
    the per-setting ΔRel to be ≥ GOAL_DIFF with its t-interval over settings above 0 (much noisier where the
    settings' fine-tuning gains are small); ``met_including_time``: ``met`` at no more than the default's cost."""
    by = {(r["method"], r["sparsity"]): r for r in rows}
    verdict: dict[str, Any] = {}
    for name in sorted({r["method"] for r in rows} - {BASELINE}):
        parts = {}
        for s in GOAL_SIZES:
            r = by.get((name, s))
            if r is None or "vs_topk" not in r:
                parts[f"{s:g}"] = None
                continue
            v = r["vs_topk"]
            d = by.get((DEFAULT, s))
            time_ok = (d is not None and r["cost_seconds_mean"] is not None and d["cost_seconds_mean"] is not None
                       and r["cost_seconds_mean"] <= d["cost_seconds_mean"])
            parts[f"{s:g}"] = {
                "pooled_diff": v.get("pooled_diff"), "pooled_bootstrap_ci95": v.get("pooled_bootstrap_ci95"),
                "diff_ok": v.get("pooled_diff") is not None and v["pooled_diff"] >= GOAL_DIFF,
                "pooled_bootstrap_above_0": bool(v.get("pooled_bootstrap_ci95") and v["pooled_bootstrap_ci95"][0] > 0),
                "mean_diff": v["mean_diff"],
                "mean_diff_ok": v["mean_diff"] is not None and v["mean_diff"] >= GOAL_DIFF,
                "t_interval_above_0": bool(v["ci95"] and v["ci95"][0] > 0), "time_le_default": time_ok}
        ok = [p is not None for p in parts.values()]
        met = all(ok) and all(p["diff_ok"] and p["pooled_bootstrap_above_0"] for p in parts.values())
        verdict[name] = {"met": met,
                         "met_over_settings": all(ok) and all(p["mean_diff_ok"] and p["t_interval_above_0"]
                                                              for p in parts.values()),
                         "met_including_time": met and all(p["time_le_default"] for p in parts.values()), **parts}
    return verdict


# ------------------------------------------------------------------------------------------------ output


def markdown(summary: dict[str, Any], a: argparse.Namespace, subset: str = "all") -> str:
    rows = summary[subset]["rows"]
    sizes = sorted({r["sparsity"] for r in rows})
    methods = [m for m in a.methods if any(r["method"] == m for r in rows)]
    by = {(r["method"], r["sparsity"]): r for r in rows}
    n = len(summary[subset]["settings"])
    lines = [f"Rel over {n} settings, gain-weighted (sum of acc − P0 over sum of P1 − P0)", "",
             "| method | " + " | ".join(f"{s:g}" for s in sizes) + " |", "|---|" + "---:|" * len(sizes)]
    for m in methods:
        lines.append(f"| {m} | " + " | ".join(_f(by[(m, s)]["rel_pooled"], 3) if (m, s) in by else "" for s in sizes)
                     + " |")
    lines += ["", "against top-k at equal size: gain-weighted ΔRel with its pooled paired bootstrap 95% interval; the "
              f"mean of the {n} per-setting ΔRel with its t-interval and the Wilcoxon signed-rank p over settings; "
              "cost of one region from scratch (its data score, if any, + the selection; mean s, one thread) and "
              "peak memory above start (mean MiB)", "",
              "| method | size | ΔRel pooled [bootstrap CI] | mean ΔRel [t CI] | Wilcoxon p | cost s | peak MiB |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for m in methods:
        for s in sizes:
            r = by.get((m, s))
            if r is None:
                continue
            v = r.get("vs_topk") or {}
            bci, ci = v.get("pooled_bootstrap_ci95"), v.get("ci95")
            pd = "—" if v.get("pooled_diff") is None else f"{v['pooled_diff']:+.3f}" + (
                f" [{bci[0]:+.3f}, {bci[1]:+.3f}]" if bci else "")
            md = "—" if v.get("mean_diff") is None else f"{v['mean_diff']:+.2f}" + (
                f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "")
            p = "—" if v.get("wilcoxon_p") is None else f"{v['wilcoxon_p']:.3g}"
            lines.append(f"| {m} | {s:g} | {pd} | {md} | {p} | {_f(r['cost_seconds_mean'], 1)} | "
                         f"{_f(r['peak_mib_mean'], 0)} |")
    g = summary[subset]["goal"]
    met = [m for m, v in g.items() if v["met"]]
    lines += ["", f"goal (gain-weighted ΔRel ≥ {GOAL_DIFF} at {' and '.join(f'{s:g}' for s in GOAL_SIZES)}, pooled "
              f"bootstrap interval above 0): {'met by ' + ', '.join(met) if met else 'met by no method'}"]
    return "\n".join(lines)


def _f(x: float | None, nd: int) -> str:
    return "—" if x is None else f"{x:.{nd}f}"


def pareto_plot(summary: dict[str, Any], a: argparse.Namespace, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["all"]["rows"]
    methods = [m for m in a.methods if any(r["method"] == m for r in rows)]
    fig, axes = plt.subplots(1, 1 + len(GOAL_SIZES), figsize=(5.2 * (1 + len(GOAL_SIZES)), 4.4))
    cmap = plt.get_cmap("tab10")
    ax = axes[0]
    for i, m in enumerate(methods):
        pts = sorted((r["sparsity"], r["rel_pooled"]) for r in rows if r["method"] == m and r["rel_pooled"] is not None)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=cmap(i % 10), label=m, ms=4)
    ax.set_xscale("log")
    ax.set_xlabel("region size (fraction of the graftable body)")
    ax.set_ylabel("Rel, gain-weighted over settings")
    ax.axhline(1.0, color="grey", lw=0.5, ls="--")
    ax.set_title(f"Rel vs size ({len(summary['all']['settings'])} task×seed settings)")
    ax.legend(fontsize=7)
    for ax, s in zip(axes[1:], GOAL_SIZES, strict=True):
        pts = [(r["cost_seconds_mean"], r["rel_pooled"], r["method"]) for r in rows
               if r["sparsity"] == s and r["rel_pooled"] is not None and r["cost_seconds_mean"] is not None]
        for t, rel, m in pts:
            ax.scatter(max(t, 1e-3), rel, color=cmap(methods.index(m) % 10), s=30)
            ax.annotate(m, (max(t, 1e-3), rel), fontsize=7, xytext=(3, 3), textcoords="offset points")
        front, best = [], -math.inf  # Pareto front: no other method both faster and better
        for t, rel, _m in sorted(pts, key=lambda p: (p[0], -p[1])):
            if rel > best:
                front.append((max(t, 1e-3), rel))
                best = rel
        if front:
            ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="black", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set_xlabel("cost of one region from scratch (s, mean; 1 thread)")
        ax.set_ylabel("Rel (gain-weighted)")
        ax.set_title(f"cost vs Rel at {s:g} (dotted: Pareto front)")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _deadline(hhmm: str | None) -> float | None:
    """The epoch time of the next HH:MM UTC (today, or tomorrow if it has passed)."""
    if not hhmm:
        return None
    import datetime as dt

    h, m = (int(x) for x in hhmm.split(":"))
    now = dt.datetime.now(dt.UTC)
    at = now.replace(hour=h, minute=m, second=0, microsecond=0)
    if at <= now:
        at += dt.timedelta(days=1)
    return at.timestamp()


def write_json_atomic(path: str | Path, obj: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    from mtgraft.utils import provenance

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    sig = signature(a)
    load_start, t_start = os.getloadavg(), time.perf_counter()
    records: list[dict[str, Any]] = []
    deadline_at = _deadline(a.deadline)
    late: list[str] = []

    def run_one(task: str, seed: int) -> None:
        part = work / f"{task}-seed{seed}.json"
        if part.is_file():
            saved = json.loads(part.read_text())
            if saved.get("signature") == sig:
                log(f"{task} seed {seed}: reused {part}")
                records.append(saved["record"])
                return
        done = [r["seconds"] for r in records if "seconds" in r]
        need = sum(done) / len(done) if done else 300.0
        if deadline_at is not None and time.time() + need > deadline_at:
            log(f"{task} seed {seed}: skipped, it would not finish before the deadline {a.deadline} UTC")
            late.append(f"{task}/seed-{seed}")
            return
        rec = run_setting(a, task, seed, log)
        rec["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
        write_json_atomic(part, {"signature": sig, "record": rec})
        records.append(rec)

    waiting = []
    for seed in a.seeds:  # seed-major: an interrupted run still covers every task of its first seeds
        for task in a.tasks:
            if (checkpoint_of(a.root, seed, task) / "mtgraft.json").is_file():
                run_one(task, seed)
            else:
                waiting.append((task, seed))
                log(f"{task} seed {seed}: no checkpoint yet at {checkpoint_of(a.root, seed, task)}")
    deadline = time.time() + a.wait
    if deadline_at is not None:
        deadline = min(deadline, deadline_at)
    while waiting and time.time() < deadline:  # checkpoints a running study has not written yet
        ready = [(t, s) for t, s in waiting if (checkpoint_of(a.root, s, t) / "mtgraft.json").is_file()]
        for t, s in ready:
            waiting.remove((t, s))
            run_one(t, s)
        if not ready:
            time.sleep(20)
    missing = [f"{t}/seed-{s}" for t, s in waiting] + late
    for m in missing:
        log(f"skip {m}: no checkpoint")
    if not records:
        log("no checkpoints found: nothing measured")
        return 1
    for rec in records:  # records written before the gain-weighted summary
        if add_gain_samples(a, rec):
            log(f"{rec['task']} seed {rec['seed']}: added its bootstrap gains (reference predictions from the cache)")
            write_json_atomic(work / f"{rec['task']}-seed{rec['seed']}.json", {"signature": sig, "record": rec})
    summary = summarise(records, a)
    result = {
        "benchmark": "localize", "issue": 15, "settings_run": [f"{r['task']}/seed-{r['seed']}" for r in records],
        "settings_missing": missing, "config": {**sig, "tasks": a.tasks, "seeds": a.seeds, "root": a.root,
                                               "threads": a.threads, "smoke": a.smoke,
                                               "baseline": BASELINE, "default_method": DEFAULT,
                                               "goal": {"sizes": GOAL_SIZES, "min_mean_diff": GOAL_DIFF}},
        "summary": summary,
        "records": [{k: v for k, v in r.items() if not k.endswith("_samples")} for r in records],
        "seconds": round(time.perf_counter() - t_start, 1),
        "load_average_start": [round(x, 2) for x in load_start], "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "host": {"python": platform.python_version(), "cpus": os.cpu_count(), "torch": torch.__version__,
                 "threads": torch.get_num_threads()},
        "provenance": provenance(),
    }
    write_json_atomic(a.out, result)
    pareto_plot(summary, a, a.plot)
    print(markdown(summary, a))
    if any(not r["learned_clearly"] for r in records):
        print("\nsettings whose fine-tuning gain interval contains 0 (Rel unstable): "
              + ", ".join(f"{r['task']}/seed-{r['seed']}" for r in records if not r["learned_clearly"]))
        if summary["learned_clearly"]["settings"]:
            print("\nwithout them:\n" + markdown(summary, a, "learned_clearly"))
    print(f"\nJSON: {a.out}  plot: {a.plot}  {result['seconds']:.0f} s, load average "
          f"{load_start[0]:.2f} at start, {os.getloadavg()[0]:.2f} at end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
