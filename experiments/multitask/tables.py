"""Print the results tables of docs/multitask.md (markdown) from the runs' JSON outputs.

    python experiments/multitask/tables.py --joint J.json --joint-grafts G.json --sequential S.json \
        --single runs/multitask/single_rotten_tomatoes ... [--single-grafts DIR ...]

``--single`` takes single-task checkpoint folders (their mtgraft.json holds the test metrics);
``--single-grafts`` takes 'mtgraft graft --out' folders (their results.json).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _f(v: float | None, nd: int = 3, signed: bool = False) -> str:
    if v is None:
        return "—"
    return f"{v:+.{nd}f}" if signed else f"{v:.{nd}f}"


def _graft_acc(results: list[dict], method: str = "graft") -> tuple[float | None, int | None, float | None]:
    for r in results:
        if r["method"] == method:
            return r["test"]["accuracy"], r["region_size"], r["test"].get("rel")
    return None, None, None


def joint_table(joint: dict, grafts: list[dict], singles: dict[str, dict], single_grafts: dict[str, dict]) -> str:
    """Per-task test accuracy: joint model, single-task model, and the grafts of each."""
    g = {x["task"]: x for x in grafts}
    rows = ["| task | single-task FT | joint FT | pretrained (+joint head) | graft of joint (region) | Rel | "
            "graft of single-task | macro-F1 joint | ECE joint |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for t in joint["tasks"]:
        m = joint["test"][t]
        single = singles.get(t, {}).get("test", {}).get("accuracy")
        ga, gr, rel = _graft_acc(g[t]["results"]) if t in g else (None, None, None)
        pre = g[t]["reference"]["pretrained"]["accuracy"] if t in g else None
        sa = _graft_acc(single_grafts[t]["results"])[0] if t in single_grafts else None
        rows.append(f"| {t} | {_f(single)} | {_f(m['accuracy'])} | {_f(pre)} | {_f(ga)} ({gr:,}) | {_f(rel, 2)} | "
                    f"{_f(sa)} | {_f(m['macro_f1'])} | {_f(m['ece'])} |" if gr is not None else
                    f"| {t} | {_f(single)} | {_f(m['accuracy'])} | {_f(pre)} | — | — | {_f(sa)} | "
                    f"{_f(m['macro_f1'])} | {_f(m['ece'])} |")
    return "\n".join(rows)


def matrix_table(seq: dict) -> str:
    """R[stage, task] with the initial row r0."""
    tasks = seq["tasks"]
    rows = ["| after stage | " + " | ".join(tasks) + " |", "|---|" + "---:|" * len(tasks)]
    rows.append("| 0 (initial) | " + " | ".join(_f(v) for v in seq["r0"]) + " |")
    for i, row in enumerate(seq["accuracy_matrix"]):
        rows.append(f"| {i + 1} ({tasks[i]}) | " + " | ".join(_f(v) for v in row) + " |")
    return "\n".join(rows)


def continual_table(seq: dict) -> str:
    c = seq["continual"]
    return ("| ACC | BWT | FWT | forgetting (final) | forgetting (max) |\n|---:|---:|---:|---:|---:|\n"
            f"| {_f(c['acc'])} | {_f(c['bwt'], signed=True)} | {_f(c['fwt'], signed=True)} | "
            f"{_f(c['forgetting_final'])} | {_f(c['forgetting_max'])} |")


def graft_cl_table(g: dict) -> str:
    rows = ["| task | just trained R[i,i] | final sequential R[T,i] | own graft on pretrained | union of grafts on "
            "pretrained | region |", "|---|---:|---:|---:|---:|---:|"]
    for t, r in g["per_task"].items():
        rows.append(f"| {t} | {_f(r['just_trained'])} | {_f(r['sequential'])} | {_f(r['own_graft'])} | "
                    f"{_f(r['union'])} | {r['region_size']:,} |")
    a = g["approaches"]
    for key, label in (("acc", "ACC"), ("bwt", "BWT"), ("forgetting_final", "forgetting (final)"),
                       ("forgetting_max", "forgetting (max)"), ("drop_mean_all_tasks", "mean drop, all tasks")):
        rows.append(f"| **{label}** | | {_f(a['sequential'][key], signed=key == 'bwt')} | "
                    f"{_f(a['own_graft'][key], signed=key == 'bwt')} | {_f(a['union'][key], signed=key == 'bwt')} | |")
    return "\n".join(rows)


def storage_table(g: dict) -> str:
    s = g["storage"]
    n = len(g["per_task"])
    return ("| what | bytes |\n|---|---:|\n"
            f"| {n} SkillPatch files | {s['patches_bytes']:,} |\n"
            f"| union patch | {s['union_patch_bytes']:,} |\n"
            f"| {n} stage checkpoints (folders) | {s['checkpoints_bytes']:,} |\n"
            f"| {n} stage checkpoints (weights only) | {s['checkpoint_weights_bytes']:,} |\n"
            f"| ratio checkpoints / patches | {s['ratio']:,.0f}x |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--joint")
    ap.add_argument("--joint-grafts")
    ap.add_argument("--sequential")
    ap.add_argument("--single", nargs="*", default=[])
    ap.add_argument("--single-grafts", nargs="*", default=[])
    a = ap.parse_args()
    singles = {}
    for d in a.single:
        m = json.loads((Path(d) / "mtgraft.json").read_text())
        singles[m["tasks"][0]["name"]] = m["metrics"]
    single_grafts = {}
    for d in a.single_grafts:
        r = json.loads((Path(d) / "results.json").read_text())
        single_grafts[r["task"]] = r
    if a.joint:
        joint = json.loads(Path(a.joint).read_text())
        grafts = json.loads(Path(a.joint_grafts).read_text())["per_task"] if a.joint_grafts else []
        print(joint_table(joint, grafts, singles, single_grafts), end="\n\n")
    if a.sequential:
        seq = json.loads(Path(a.sequential).read_text())
        print(matrix_table(seq), end="\n\n")
        print(continual_table(seq), end="\n\n")
        if seq.get("graft_cl"):
            print(graft_cl_table(seq["graft_cl"]), end="\n\n")
            print(storage_table(seq["graft_cl"]))


if __name__ == "__main__":
    main()
