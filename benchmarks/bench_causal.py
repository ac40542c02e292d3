"""The paper's regime on SmolLM2 beside MiniLM (issue 14, item 3): single-task grafts over sparsities, tasks and seeds.

Usage: python benchmarks/bench_causal.py [--causal runs/single_task_causal] [--minilm runs/single_task_seeds]
       [--out benchmarks/results/causal.json] [--plot docs/img/causal_rel.png]

Reads the ``mtgraft run`` study folders (``seed-<s>/study_state.json``: finished stages count, so a study still
running can be summarised) of ``experiments/single_task_causal.yaml`` (SmolLM2-135M, ``--type causal``) and of
``experiments/single_task.yaml`` (MiniLM, ``--type head``), and puts them side by side. Nothing is trained here.
``--minilm`` may instead name a ``bench_localize.py`` result (``benchmarks/results/localize.json``: the same MiniLM
checkpoints' regions, graft / top-k / random, recorded per (task, seed)); it is the default when the study folder
is absent, so the comparison can be redrawn from committed data.

A cell is one (task, seed). Per cell: the pretrained and fine-tuned test accuracy and ECE, the fine-tuning gain with
its paired-bootstrap interval (``learnt`` when it excludes 0), and per (method, sparsity) the grafted model's
accuracy, ECE, Rel with its interval, and Rel on every OOD test set. Per (model, sparsity, method) over the cells:
means with 95% t-intervals (Rel over learnt cells only: Rel of a cell that learnt nothing is noise over a tiny
denominator), the gain-weighted pooled Rel with a cell-bootstrap interval, how many learnt cells reach Rel ≥ 0.95
(the paper's "> 95%"), and the paired differences graft − top-k and graft − random of Rel over the learnt cells.
Per SmolLM2 task over its seeds (``over_seeds``): Rel of each region with a 95% t-interval over the seeds, the
spread between fine-tuning runs that a cell's own interval (over its test examples) does not show.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_localisable import pooled_rel  # noqa: E402

RECOVERED = 0.95  # the paper's "recovers > 95% of the fine-tuned performance"
YMIN = -0.6  # the plot's lower edge


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--causal", nargs="+", default=["runs/single_task_causal"],
                    help="the SmolLM2 study folder(s) (seed-<s>/ in each; e.g. one task's extra run in its own folder)")
    ap.add_argument("--minilm", default="runs/single_task_seeds",
                    help="the MiniLM study folder (seed-<s>/), or a bench_localize.py JSON; when the folder is absent, "
                         "benchmarks/results/localize.json")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "causal.json"))
    ap.add_argument("--plot", default=str(ROOT / "docs" / "img" / "causal_rel.png"))
    return ap.parse_args(argv)


def cells_of(folder: str | Path, model: str) -> list[dict[str, Any]]:
    """Every finished (task, seed) graft stage under ``folder/seed-<s>/study_state.json``."""
    out = []
    for state in sorted(Path(folder).glob("seed-*/study_state.json")):
        seed = int(state.parent.name.split("-", 1)[1])
        stages = json.loads(state.read_text()).get("stages", {})
        for name, st in stages.items():
            if not name.startswith("graft:") or not st.get("result"):
                continue
            for g in st["result"]["tasks"]:
                out.append(cell_of(g, model, seed, stages.get(f"train:{g['task']}", {}).get("result") or {}))
    return out


def new_cell(model: str, task: str, seed: int, pre: dict[str, Any], ft: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A (task, seed) cell from the two ends' records (``accuracy``, ``ece``, ``gain_ci95``); regions added later."""
    ci = ft.get("gain_ci95")
    return {"model": model, "task": task, "seed": seed, "graftable_size": extra.pop("graftable_size", None),
            "pretrained": pre["accuracy"], "finetuned": ft["accuracy"], "ece_pretrained": pre.get("ece"),
            "ece_finetuned": ft.get("ece"), "n_test": extra.pop("n_test", None),
            "gain": ft["accuracy"] - pre["accuracy"], "gain_ci95": ci, "learnt": bool(ci and ci[0] > 0),
            "train_seconds": extra.pop("train_seconds", None), "graft_seconds": extra.pop("graft_seconds", None),
            **extra, "regions": {}}


def add_region(cell: dict[str, Any], r: dict[str, Any], metrics: dict[str, Any], seconds: Any,
               ood_rel: dict[str, Any]) -> None:
    """Record one region (``r``: method, sparsity, region_size) with its test ``metrics`` under method@sparsity."""
    cell["regions"][f"{r['method']}@{r['sparsity']:g}"] = {
        "method": r["method"], "sparsity": r["sparsity"], "region_size": r.get("region_size"),
        "accuracy": metrics["accuracy"], "ece": metrics.get("ece"), "rel": metrics.get("rel"),
        "rel_ci95": metrics.get("rel_ci95"), "seconds": seconds, "ood_rel": ood_rel}


def cell_of(g: dict[str, Any], model: str, seed: int, train: dict[str, Any]) -> dict[str, Any]:
    """A cell from one task's graft result of an ``mtgraft run`` study."""
    ref = g["reference"]
    cell = new_cell(model, g["task"], seed, ref["pretrained"], ref["finetuned"],
                    graftable_size=g.get("graftable_size"), n_test=ref["finetuned"].get("n"),
                    train_seconds=train.get("train_seconds"), graft_seconds=g.get("seconds"))
    for r in g["results"]:
        t = r["test"]
        add_region(cell, r, t, r.get("seconds"), {o: m.get("rel") for o, m in (t.get("ood") or {}).items()})
    return cell


def cells_of_localize(path: str | Path, model: str = "minilm",
                      methods: tuple[str, ...] = ("graft", "topk", "random")) -> list[dict[str, Any]]:
    """The (task, seed) records of a ``bench_localize.py`` JSON as cells (its regions of ``methods``; it records the
    grafted model's ECE but not the two ends', and no OOD)."""
    out = []
    for rec in json.loads(Path(path).read_text())["records"]:
        cell = new_cell(model, rec["task"], rec["seed"], rec["pretrained"], rec["finetuned"],
                        graftable_size=rec.get("graftable_size"), n_test=rec.get("n_test"), source=str(path))
        for r in rec["rows"]:
            if r["method"] in methods:
                add_region(cell, r, r, r.get("cost_seconds"), {})
        out.append(cell)
    return out


def minilm_cells(source: str | Path) -> tuple[list[dict[str, Any]], str]:
    """MiniLM cells from a study folder, or from a localize JSON (named, or the committed one when the folder is
    absent); returns the cells and what they were read from."""
    p = Path(source)
    if p.suffix == ".json":
        return cells_of_localize(p), str(p)
    if any(p.glob("seed-*/study_state.json")):
        return cells_of(p, "minilm"), str(p)
    fallback = ROOT / "benchmarks" / "results" / "localize.json"
    return (cells_of_localize(fallback), str(fallback.relative_to(ROOT))) if fallback.exists() else ([], str(p))


def summarise(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """Rows per (model, sparsity, method) and the reference rows per model."""
    from mtgraft.evaluation.uncertainty import aggregate, compare_over_seeds

    models = sorted({c["model"] for c in cells})
    reference, rows = [], []
    for model in models:
        mine = [c for c in cells if c["model"] == model]
        learnt = [c for c in mine if c["learnt"]]
        reference.append({
            "model": model, "cells": len(mine), "learnt_cells": len(learnt),
            "tasks": sorted({c["task"] for c in mine}), "seeds": sorted({c["seed"] for c in mine}),
            "pretrained": aggregate([c["pretrained"] for c in mine]),
            "finetuned": aggregate([c["finetuned"] for c in mine]), "gain": aggregate([c["gain"] for c in mine]),
            "ece_pretrained": aggregate([c["ece_pretrained"] for c in mine]),
            "ece_finetuned": aggregate([c["ece_finetuned"] for c in mine]),
            "train_seconds": aggregate([c["train_seconds"] for c in mine])})
        order = {"graft": 0, "topk": 1, "random": 2, "bias-only": 3}
        keys = sorted({k for c in mine for k in c["regions"]},
                      key=lambda k: (float(k.split("@")[1]), order.get(k.split("@")[0], 9), k))
        for key in keys:
            method, sp = key.split("@")
            have = [c for c in mine if key in c["regions"]]
            lh = [c for c in have if c["learnt"]]

            def reg(c: dict[str, Any], field: str, key: str = key) -> Any:
                return c["regions"][key].get(field)

            flat = [{"pretrained": c["pretrained"], "finetuned": c["finetuned"], "acc": reg(c, "accuracy")}
                    for c in have]
            ood = sorted({o for c in have for o in c["regions"][key]["ood_rel"]})
            row: dict[str, Any] = {
                "model": model, "method": method, "sparsity": float(sp), "cells": len(have), "learnt_cells": len(lh),
                "region_size": aggregate([reg(c, "region_size") for c in have])["mean"],
                "accuracy": aggregate([reg(c, "accuracy") for c in have]),
                "ece": aggregate([reg(c, "ece") for c in have]),
                "ece_minus_finetuned": aggregate([reg(c, "ece") - c["ece_finetuned"] for c in have
                                                  if reg(c, "ece") is not None and c["ece_finetuned"] is not None]),
                "rel_learnt": aggregate([reg(c, "rel") for c in lh]),
                "rel_pooled": pooled_rel(flat, "acc"),
                "recovered_cells": sum(1 for c in lh if (reg(c, "rel") or 0) >= RECOVERED),
                "seconds": aggregate([reg(c, "seconds") for c in have]),
                "ood_rel": {o: aggregate([c["regions"][key]["ood_rel"].get(o) for c in lh]) for o in ood},
            }
            for other in ("topk", "random"):
                okey = f"{other}@{sp}"
                if method == other or not any(okey in c["regions"] for c in lh):
                    continue
                a = {(c["task"], c["seed"]): reg(c, "rel") for c in lh}
                b = {(c["task"], c["seed"]): c["regions"][okey]["rel"] for c in lh if okey in c["regions"]}
                cmp = compare_over_seeds(a, b)
                cmp["seeds"] = [list(s) for s in cmp["seeds"]]
                row[f"rel_minus_{other}"] = cmp
            rows.append(row)
    return {"reference": reference, "rows": rows}


def _iv(agg: dict[str, Any] | None, nd: int = 3) -> str:
    from mtgraft.evaluation.uncertainty import format_ci

    return format_ci(agg, nd) if agg and agg.get("mean") is not None else "—"


def _pooled(agg: dict[str, Any] | None) -> str:
    if not agg or agg.get("mean") is None:
        return "—"
    ci = agg.get("ci95")
    return f"{agg['mean']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def _cmp(c: dict[str, Any] | None) -> str:
    if not c or c.get("mean_diff") is None:
        return "—"
    lo, hi = c["ci95"] or (None, None)
    iv = f" [{lo:+.3f}, {hi:+.3f}]" if lo is not None else ""
    p = c.get("wilcoxon_p")
    return f"{c['mean_diff']:+.3f}{iv} (p {'—' if p is None else f'{p:.2f}'}, n {len(c['diffs'])})"


def markdown(summary: dict[str, Any]) -> str:
    lines = ["| model | cells (learnt) | pretrained acc | fine-tuned acc | gain | ECE pretrained | ECE fine-tuned |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in summary["reference"]:
        lines.append(f"| {r['model']} | {r['cells']} ({r['learnt_cells']}) | {_iv(r['pretrained'])} | "
                     f"{_iv(r['finetuned'])} | {_iv(r['gain'])} | {_iv(r['ece_pretrained'])} | "
                     f"{_iv(r['ece_finetuned'])} |")
    lines += ["", "| model | sparsity | method | region | acc | ECE | Rel, learnt cells | pooled Rel | "
              "Rel ≥ 0.95 | Rel − top-k | Rel − random | OOD Rel |",
              "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in summary["rows"]:
        ood = "; ".join(f"{o}: {_iv(a)}" for o, a in r["ood_rel"].items() if a.get("mean") is not None) or "—"
        lines.append(f"| {r['model']} | {r['sparsity']:g} | {r['method']} | {r['region_size']:,.0f} | "
                     f"{_iv(r['accuracy'])} | {_iv(r['ece'])} | {_iv(r['rel_learnt'])} | {_pooled(r['rel_pooled'])} | "
                     f"{r['recovered_cells']}/{r['learnt_cells']} | {_cmp(r.get('rel_minus_topk'))} | "
                     f"{_cmp(r.get('rel_minus_random'))} | {ood} |")
    return "\n".join(lines)


def headline_markdown(summary: dict[str, Any]) -> str:
    """One row per sparsity: pooled Rel (gain-weighted, cell-bootstrap 95% interval) of the learned graft, top-k
    and random for each model, and how many learnt cells reach Rel ≥ 0.95 with the learned graft."""
    models = [r["model"] for r in summary["reference"]]
    rows = {(r["model"], r["method"], r["sparsity"]): r for r in summary["rows"]}
    sps = sorted({r["sparsity"] for r in summary["rows"]})
    head = ["sparsity"]
    for m in models:
        head += [f"{m} entries", f"{m} graft", f"{m} top-k", f"{m} random", f"{m} graft Rel ≥ 0.95"]
    lines = ["| " + " | ".join(head) + " |", "|---:|" + "---:|" * (len(head) - 1)]
    for sp in sps:
        cols = [f"{sp:g}"]
        for m in models:
            size = next((r["region_size"] for (mm, _, ss), r in rows.items() if mm == m and ss == sp), None)
            g = rows.get((m, "graft", sp))
            cols += ["—" if size is None else f"{size:,.0f}"]
            cols += [_pooled(rows[(m, meth, sp)]["rel_pooled"]) if (m, meth, sp) in rows else "—"
                     for meth in ("graft", "topk", "random")]
            cols.append(f"{g['recovered_cells']}/{g['learnt_cells']}" if g else "—")
        lines.append("| " + " | ".join(cols) + " |")
    return "\n".join(lines)


def cells_markdown(summary: dict[str, Any], model: str = "smollm2", method: str = "graft") -> str:
    """One row per (task, seed) of ``model``: the two ends, the gain, and Rel of ``method`` at every sparsity with
    its paired-bootstrap interval over the cell's test examples."""
    cells = sorted((c for c in summary["cells"] if c["model"] == model), key=lambda c: (c["task"], c["seed"]))
    sps = sorted({r["sparsity"] for c in cells for r in c["regions"].values() if r["method"] == method})
    lines = ["| task | seed | n test | pretrained | fine-tuned | gain [95%] | "
             + " | ".join(f"Rel {method} {s:g} [95%]" for s in sps) + " |",
             "|---|---:|---:|---:|---:|---:|" + "---:|" * len(sps)]
    for c in cells:
        g = c["gain_ci95"]
        row = [c["task"], str(c["seed"]), str(c["n_test"]), f"{c['pretrained']:.3f}", f"{c['finetuned']:.3f}",
               f"{c['gain']:+.3f}" + (f" [{g[0]:+.3f}, {g[1]:+.3f}]" if g else "")]
        for s in sps:
            r = c["regions"].get(f"{method}@{s:g}")
            if not r or r.get("rel") is None:
                row.append("—")
                continue
            ci = r.get("rel_ci95")
            row.append(f"{r['rel']:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def over_seeds(cells: list[dict[str, Any]], model: str = "smollm2") -> list[dict[str, Any]]:
    """Per task of ``model``: its seeds, the fine-tuning gain and, per region (method@sparsity), Rel aggregated over
    the seeds (mean and 95% t-interval over seeds: the spread between fine-tuning runs, where a cell's own
    interval is over its test examples). A seed whose gain interval includes 0 is left out of that task's Rel
    (``seeds_learnt`` says which seeds count)."""
    from mtgraft.evaluation.uncertainty import aggregate

    out = []
    for task in sorted({c["task"] for c in cells if c["model"] == model}):
        mine = sorted((c for c in cells if c["model"] == model and c["task"] == task), key=lambda c: c["seed"])
        learnt = [c for c in mine if c["learnt"]]
        keys = sorted({k for c in mine for k in c["regions"]})
        out.append({"model": model, "task": task, "seeds": [c["seed"] for c in mine],
                    "seeds_learnt": [c["seed"] for c in learnt],
                    "finetuned": aggregate([c["finetuned"] for c in mine]),
                    "gain": aggregate([c["gain"] for c in mine]),
                    "rel": {k: aggregate([c["regions"][k].get("rel") for c in learnt if k in c["regions"]])
                            for k in keys}})
    return out


def over_seeds_markdown(rows: list[dict[str, Any]], method: str = "graft") -> str:
    """``over_seeds`` as a table: one row per task, Rel of ``method`` per sparsity (mean ± half-width of the 95%
    t-interval over seeds, and the number of seeds)."""
    sps = sorted({float(k.split("@")[1]) for r in rows for k in r["rel"] if k.split("@")[0] == method})
    lines = ["| task | seeds | fine-tuned acc | gain | " + " | ".join(f"Rel {method} {s:g}" for s in sps) + " |",
             "|---|---|---:|---:|" + "---:|" * len(sps)]
    for r in rows:
        cols = [r["task"], ", ".join(map(str, r["seeds"])), _iv(r["finetuned"]), _iv(r["gain"])]
        for s in sps:
            a = r["rel"].get(f"{method}@{s:g}")
            cols.append("—" if not a or a.get("mean") is None else f"{_iv(a, 2)} (n {a['n']})")
        lines.append("| " + " | ".join(cols) + " |")
    return "\n".join(lines)


def plot(summary: dict[str, Any], path: str) -> None:
    """Pooled Rel (cell-bootstrap interval) of each model and method against the region's size: as a fraction of
    the body (left) and as a number of entries (right: the same count is a 10× smaller fraction of SmolLM2)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.6), sharey=True)
    colour = {"smollm2": "tab:blue", "minilm": "tab:orange"}
    style = {"graft": ("o", "-"), "topk": ("s", "--"), "random": ("x", ":"), "bias-only": ("^", "-.")}
    for ref in summary["reference"]:
        model = ref["model"]
        for method in ("graft", "topk", "random"):
            rs = sorted((r for r in summary["rows"] if r["model"] == model and r["method"] == method
                         and r["rel_pooled"]["mean"] is not None), key=lambda r: r["sparsity"])
            if not rs:
                continue
            y = [r["rel_pooled"]["mean"] for r in rs]
            ci = [r["rel_pooled"]["ci95"] or [y_, y_] for y_, r in zip(y, rs, strict=True)]
            err = [[y_ - c[0] for y_, c in zip(y, ci, strict=True)], [c[1] - y_ for y_, c in zip(y, ci, strict=True)]]
            marker, ls = style[method]
            label = f"{model} {method} ({ref['cells']} cells)"
            for ax, x in ((axes[0], [r["sparsity"] for r in rs]), (axes[1], [r["region_size"] for r in rs])):
                ax.errorbar(x, y, yerr=err, marker=marker, ls=ls, capsize=3, color=colour.get(model), label=label,
                            alpha=0.9)
    lows = [r["rel_pooled"]["ci95"][0] for r in summary["rows"] if r["rel_pooled"].get("ci95")]
    cut = min(lows, default=0.0) < YMIN
    for ax, xl in ((axes[0], "region size (fraction of the graftable body)"), (axes[1], "region size (entries)")):
        ax.set_ylim(YMIN, 1.25)
        if cut:  # a cell with a tiny gain makes an interval reach far below; the scale is kept readable
            ax.text(0.01, 0.01, f"intervals below {YMIN} are cut at the axis", transform=ax.transAxes, fontsize=7,
                    color="dimgrey", va="bottom")
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.axhline(RECOVERED, color="tab:red", lw=0.6, ls=":")
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel(xl)
    axes[0].set_ylabel("pooled Rel (gain-weighted; 95% cell bootstrap)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="center right")
    tasks = sorted({t for r in summary["reference"] for t in r["tasks"]})
    seeds = {r["model"]: ",".join(map(str, r["seeds"])) for r in summary["reference"]}
    fig.suptitle("Rel of grafted regions: SmolLM2-135M causal (the paper's regime) beside MiniLM + new head\n"
                 f"tasks: {', '.join(tasks)} (MiniLM: the ones both studies ran); seeds "
                 + "; ".join(f"{m} {s}" for m, s in seeds.items()) + "; red dotted: 0.95", fontsize=9)
    fig.tight_layout(rect=(0, 0, 0.84, 1))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    causal = [c for folder in a.causal for c in cells_of(folder, "smollm2")]
    seen = [(c["task"], c["seed"]) for c in causal]
    if len(seen) != len(set(seen)):
        print(f"the same (task, seed) is in more than one of {a.causal}: name each once")
        return 2
    tasks = {c["task"] for c in causal}  # MiniLM on the tasks both studies ran, so the two sides compare
    sps = {r["sparsity"] for c in causal for r in c["regions"].values()}
    got, minilm_source = minilm_cells(a.minilm)
    minilm = [{**c, "regions": {k: r for k, r in c["regions"].items() if r["sparsity"] in sps}}
              for c in got if c["task"] in tasks]
    if not causal:
        print(f"no finished graft stage under {', '.join(a.causal)} (seed-*/; run experiments/single_task_causal.yaml first)")
        return 1
    summary = {"settings": {"causal": a.causal, "minilm": minilm_source, "recovered": RECOVERED,
                            "python": platform.python_version()},
               **summarise(causal + minilm), "over_seeds": over_seeds(causal), "cells": causal + minilm}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(summary, indent=1) + "\n")
    md = markdown(summary)
    print(headline_markdown(summary))
    print()
    print(md)
    print()
    print(cells_markdown(summary))
    for method in ("graft", "topk"):
        print()
        print(over_seeds_markdown(summary["over_seeds"], method))
    plot(summary, a.plot)
    print(f"\nwrote {a.out} and {a.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
