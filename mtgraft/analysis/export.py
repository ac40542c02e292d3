"""The report's data files: overlap.json, a CSV per matrix and per table, and the task graph (GraphML, JSON)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from mtgraft.analysis.graph import write_graphml, write_node_link
from mtgraft.analysis.report_data import MATRIX_KEYS, ReportData
from mtgraft.analysis.stats import group_name
from mtgraft.utils import atomic_file, finite_or_none, write_json


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> Path:
    """A CSV file: None as an empty cell, floats with 6 significant digits."""
    import csv

    with atomic_file(path, "w") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in rows:
            w.writerow(["" if x is None else (f"{x:.6g}" if isinstance(x, float) else x) for x in r])
    return path


def write_records(path: Path, recs: list[dict[str, Any]]) -> Path:
    """Records as CSV: one column per scalar key, in order of first appearance (lists and dicts left out)."""
    keys: list[str] = []
    for r in recs:
        for k in r:
            if k not in keys and not isinstance(r[k], (list, dict)):
                keys.append(k)
    return write_csv(path, keys, [[r.get(k) for k in keys] for r in recs])


def matrix_csv(path: Path, M: Any, rows: list[str], cols: list[str]) -> Path:
    """A matrix as CSV with row and column names (non-finite cells empty, integers kept integral)."""
    A = np.asarray(M, dtype=object)
    data = []
    for i, r in enumerate(rows):
        vals = []
        for j in range(len(cols)):
            x = A[i, j]
            vals.append(None if x is None or (isinstance(x, float) and not math.isfinite(x)) else
                        (int(x) if isinstance(x, (np.integer, int)) else float(x)))
        data.append([r, *vals])
    return write_csv(path, ["task", *cols], data)


def breakdown_records(bd: dict[str, Any], tasks: list[str]) -> list[dict[str, Any]]:
    """One record per group and unordered pair of a breakdown (counts, chance and statistics)."""
    f = finite_or_none
    recs = []
    n = len(tasks)
    for g, grp in enumerate(bd["groups"]):
        for i in range(n):
            for j in range(i + 1, n):
                recs.append({
                    "a": tasks[i], "b": tasks[j], "group": group_name(grp), **grp,
                    "params": int(bd["params"][g]), "size_a": int(bd["sizes"][g, i]), "size_b": int(bd["sizes"][g, j]),
                    "intersection": int(bd["intersection"][g, i, j]), "expected": float(bd["expected"][g, i, j]),
                    "enrichment": f(bd["stat_enrichment"][g, i, j]), "jaccard": f(bd["stat_jaccard"][g, i, j]),
                    "containment_a_in_b": f(bd["stat_containment"][g, j, i]),
                    "containment_b_in_a": f(bd["stat_containment"][g, i, j]),
                    "p_value": f(bd["stat_p_value"][g, i, j]), "log10_p_value": f(bd["stat_log10_p_value"][g, i, j]),
                })
    return recs


def transfer_records(transfer: dict[str, Any]) -> list[dict[str, Any]]:
    """Every graft × task result, then every union graft's results (as graft ``union:<name>``)."""
    rows = [{k: v for k, v in r.items() if k != "graft_tasks"} for r in transfer["results"]]
    for u in transfer["unions"]:
        for t, v in u["results"].items():
            rows.append({"graft": f"union:{u['name']}", "eval_task": t, "own": True, **v})
    return rows


def write_data_files(d: Path, data: ReportData, title: str) -> dict[str, Path]:
    """overlap.json, csv/*.csv and task_graph.{graphml,json} into ``d`` (``csv/`` is created): {name: path}."""
    labels, mat = data.labels, data.matrices
    csvdir = d / "csv"
    csvdir.mkdir()
    paths: dict[str, Path] = {}
    write_json(d / "overlap.json", data.overlap_json(title))
    paths["overlap_json"] = d / "overlap.json"
    for k in MATRIX_KEYS:
        paths[f"csv_{k}"] = matrix_csv(csvdir / f"{k}.csv", mat[k], labels, labels)
    paths["csv_pairs"] = write_records(csvdir / "pairs.csv", data.pairs)
    for by, bd in (("layer", data.breakdown_layer), ("module", data.breakdown_module)):
        paths[f"csv_breakdown_{by}"] = write_records(csvdir / f"breakdown_{by}.csv", breakdown_records(bd, labels))
    prof_rows = [{"task": t, **r} for t, pr in data.profiles.items() for r in pr["by_layer_module"]]
    paths["csv_profiles"] = write_records(csvdir / "profiles.csv", prof_rows)
    if data.transfer is not None:
        tr = data.transfer
        paths["csv_transfer"] = write_records(csvdir / "transfer.csv", transfer_records(tr))
        paths["csv_transfer_rel"] = matrix_csv(csvdir / "transfer_rel.csv",
                                               [[np.nan if x is None else x for x in r] for r in tr["rel"]],
                                               tr["grafts"], tr["eval_tasks"])
    paths["graphml"] = write_graphml(data.graph, d / "task_graph.graphml")
    paths["graph_json"] = write_node_link(data.graph, d / "task_graph.json")
    return paths
