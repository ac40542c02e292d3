"""The multi-task overlap study on SmolLM2 over seeds (issue 14, item 3): alike against unlike pairs, per seed.

Usage: python benchmarks/bench_causal_overlap.py [--study runs/multitask_overlap_causal_seeds]
       [--out benchmarks/results/causal_overlap_seeds.json]

Reads a ``mtgraft run experiments/multitask_overlap_causal.yaml --set 'seeds=[...]'`` folder: each
``seed-<s>/study_state.json`` names the overlap report that seed's ``report`` stage wrote (its ``overlap.json``),
and ``summary.json`` holds the study's own aggregate over seeds. Nothing is trained here. Per seed: each task's
fine-tuning gain and its graft's Rel (paired-bootstrap interval over the test examples), and each pair's Jaccard
and enrichment given the tensors. Over seeds: per pair, mean and 95% t-interval; and the question the paper asks,
paired by seed — the same-domain pairs' mean Jaccard (and enrichment) minus the cross-domain pairs' mean, with its
t-interval and Wilcoxon p (with n seeds, p cannot go below 2 / 2ⁿ).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FIELDS = ("jaccard", "enrichment", "enrichment_within_tensors", "intersection")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--study", default="runs/multitask_overlap_causal_seeds", help="the study folder (seed-<s>/)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "causal_overlap_seeds.json"))
    return ap.parse_args(argv)


def report_of(seed_dir: Path) -> dict[str, Any]:
    """The overlap report (``overlap.json``) that a seed's ``report`` stage wrote."""
    state = json.loads((seed_dir / "study_state.json").read_text())
    folder = Path(state["stages"]["report"]["outputs"][0])
    return json.loads((folder / "overlap.json").read_text())


def seed_record(seed: int, report: dict[str, Any]) -> dict[str, Any]:
    """One seed's gains and own-task Rel per task, and its pairs with their domains."""
    domain = {i["task"]: i.get("domain") for i in report["inputs"]}
    tasks = {i["task"]: {k: i.get(k) for k in ("gain", "gain_ci95", "learnt", "rel", "rel_ci95", "method")}
             for i in report["inputs"]}
    pairs = [{"a": p["a"], "b": p["b"], "same_domain": domain[p["a"]] is not None and domain[p["a"]] == domain[p["b"]],
              **{f: p.get(f) for f in FIELDS}} for p in report["pairs"]]
    return {"seed": seed, "tasks": tasks, "pairs": pairs}


def alike_minus_unlike(records: list[dict[str, Any]], field: str) -> dict[str, Any]:
    """Per seed, the mean ``field`` over same-domain pairs minus that over cross-domain pairs; paired over seeds."""
    from mtgraft.evaluation.uncertainty import compare_over_seeds

    def side(rec: dict[str, Any], same: bool) -> float | None:
        xs = [p[field] for p in rec["pairs"] if p["same_domain"] is same and p[field] is not None]
        return sum(xs) / len(xs) if xs else None

    alike = {r["seed"]: side(r, True) for r in records}
    unlike = {r["seed"]: side(r, False) for r in records}
    return {"field": field, "alike": alike, "unlike": unlike, **compare_over_seeds(alike, unlike)}


def summarise(study: str | Path) -> dict[str, Any]:
    from mtgraft.evaluation.uncertainty import aggregate

    dirs = sorted(Path(study).glob("seed-*/study_state.json"), key=lambda p: int(p.parent.name.split("-", 1)[1]))
    records = [seed_record(int(d.parent.name.split("-", 1)[1]), report_of(d.parent)) for d in dirs]
    keys = sorted({(p["a"], p["b"], p["same_domain"]) for r in records for p in r["pairs"]},
                  key=lambda k: (not k[2], k[0], k[1]))  # alike pairs first
    pairs = []
    for a, b, same in keys:
        got = [p for r in records for p in r["pairs"] if (p["a"], p["b"]) == (a, b)]
        pairs.append({"a": a, "b": b, "same_domain": same, **{f: aggregate([p[f] for p in got]) for f in FIELDS}})
    tasks = sorted({t for r in records for t in r["tasks"]})
    per_task = {t: {"gain": aggregate([r["tasks"][t]["gain"] for r in records if t in r["tasks"]]),
                    "rel": aggregate([r["tasks"][t]["rel"] for r in records if t in r["tasks"]])} for t in tasks}
    return {"study": str(study), "seeds": [r["seed"] for r in records], "per_seed": records, "pairs": pairs,
            "tasks": per_task,
            "alike_minus_unlike": {f: alike_minus_unlike(records, f) for f in ("jaccard", "enrichment_within_tensors")}}


def markdown(s: dict[str, Any]) -> str:
    from mtgraft.evaluation.uncertainty import format_ci

    seeds = s["seeds"]
    lines = ["| pair | " + " | ".join(f"Jaccard s{x}" for x in seeds) + " | Jaccard over seeds | "
             "given the tensors over seeds |", "|---|" + "---:|" * (len(seeds) + 2)]
    for p in s["pairs"]:
        per = []
        for r in s["per_seed"]:
            got = next((q for q in r["pairs"] if (q["a"], q["b"]) == (p["a"], p["b"])), None)
            per.append("—" if got is None else f"{got['jaccard']:.3f}")
        kind = "alike" if p["same_domain"] else "unlike"
        lines.append(f"| {p['a']} – {p['b']} ({kind}) | " + " | ".join(per) + f" | {format_ci(p['jaccard'], 3)} | "
                     f"{format_ci(p['enrichment_within_tensors'], 1)}× |")
    lines += ["", "| task | " + " | ".join(f"seed {x}: gain, graft Rel [95%]" for x in seeds) + " |",
              "|---|" + "---:|" * len(seeds)]
    for t in s["tasks"]:
        cells = []
        for r in s["per_seed"]:
            v = r["tasks"].get(t)
            if not v:
                cells.append("—")
                continue
            ci = v.get("rel_ci95")
            cells.append(f"{v['gain']:+.3f}, {v['rel']:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""))
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    lines += ["", "| alike − unlike, paired by seed | per seed | mean [95% t-interval] | Wilcoxon p (smallest possible) |",
              "|---|---|---:|---:|"]
    for f, c in s["alike_minus_unlike"].items():
        ci = c["ci95"]
        iv = f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else ""
        p = "—" if c["wilcoxon_p"] is None else f"{c['wilcoxon_p']:.2g}"
        lines.append(f"| {f} | " + ", ".join(f"{d:+.3f}" for d in c["diffs"]) + f" | {c['mean_diff']:+.3f}{iv} | "
                     f"{p} ({c['min_possible_p']:.2g}) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if not any(Path(a.study).glob("seed-*/study_state.json")):
        print(f"no seed-<s>/study_state.json under {a.study} (run experiments/multitask_overlap_causal.yaml with seeds)")
        return 1
    s = summarise(a.study)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(s, indent=1) + "\n")
    print(markdown(s))
    print(f"\nwrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
