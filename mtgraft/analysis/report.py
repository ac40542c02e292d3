"""``mtgraft overlap-report``: how disjoint task regions are, against chance, as a task-similarity graph.

``build_report(patches, out_dir)`` loads SkillPatches of one base model (``inputs``), computes every
number of the report (``analyse`` → ``ReportData``: pairwise overlap with its chance baselines overall,
per layer and per module kind (``overlap``, ``stats``), each task's region profile, the task graph and its
communities (``graph``), optionally transfer (``transfer``), and the summary sentences (``prose``)), then
draws the figures (``figures``), writes the data files (``export``) and the page (``render``) into one
folder, written atomically: ``report.html`` (self-contained), ``report.md``, ``overlap.json``,
``task_graph.graphml``, ``task_graph.json``, CSVs of every matrix and PNG figures; and logs it to MLflow.
Definitions: docs/overlap-report.md.
"""

from __future__ import annotations

import functools
import inspect
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mtgraft.analysis.formatting import finite_interval, fmt_p, fmt_x
from mtgraft.analysis.inputs import DUPLICATE_POLICIES, Duplicates, load_inputs, select_patches_from_registry
from mtgraft.analysis.overlap import Segments, overlap_matrices, region_profile
from mtgraft.analysis.report_data import ReportData
from mtgraft.analysis.stats import (
    breakdown,
    finetuning_gain,
    learnt_pairs,
    learnt_status,
    pair_records,
    pooled,
    within_tensor_chance,
)
from mtgraft.errors import MtgraftError
from mtgraft.utils import atomic_dir, atomic_file, finite_or_none

__all__ = ["DUPLICATE_POLICIES", "Duplicates", "ReportData", "ReportResult", "analyse", "build_report", "fmt_p",
           "fmt_x", "load_inputs", "pair_records", "select_patches_from_registry"]


@dataclass
class ReportResult:
    """What ``build_report`` wrote: the folder, the summary (numbers and sentences) and every file's path."""

    out_dir: Path
    summary: dict[str, Any]
    paths: dict[str, Path] = field(default_factory=dict)
    mlflow_run_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON-able view (what ``overlap-report --json`` prints)."""
        return {"out": str(self.out_dir), "files": {k: str(v) for k, v in self.paths.items()},
                "mlflow_run_id": self.mlflow_run_id, **self.summary}


def _domain(task: str) -> str | None:
    from mtgraft.tasks import get_task

    try:
        return get_task(task).domain
    except MtgraftError:  # fine: a task unknown here (a local task) only has no domain colour in the graph
        return None


def _node(p: Any, src: str) -> dict[str, Any]:
    """A task's inputs row: what its patch's header records (method, sizes, test metrics, domain, fine-tuning
    gain and whether the task counts as learnt)."""
    h = p.header
    test = (h.metrics or {}).get("test", {})
    gain, gain_ci = finetuning_gain((h.metrics or {}).get("reference"))
    learnt, why = learnt_status(gain, gain_ci)
    return {"gain": gain, "gain_ci95": gain_ci, "learnt": learnt, "learnt_reason": why,
            "tasks": h.tasks, "source": src, "method": h.method, "region_size": h.region_size,
            "sparsity": h.sparsity, "sparsity_requested": h.sparsity_requested,
            "accuracy": finite_or_none(test.get("accuracy")), "rel": finite_or_none(test.get("rel")),
            "accuracy_ci95": finite_interval(test.get("accuracy_ci95")),
            "rel_ci95": finite_interval(test.get("rel_ci95")),
            "domain": _domain(h.tasks[0]) if len(h.tasks) == 1 else None,
            "finetuned_mode": (h.finetuned or {}).get("mode"), "model_type": h.model_type}


def _task_graph(mat: dict[str, Any], nodes: dict[str, dict[str, Any]], min_enrichment: float,
                max_p: float, pairs: list[dict[str, Any]]) -> tuple[Any, dict[str, Any]]:
    """The task graph with its communities, and its summary (``graph_info``); edges only between pairs whose
    verdict in ``pairs`` (the report's) is beyond chance."""
    from mtgraft.analysis.graph import annotate_communities, communities, task_graph

    keep = ("region_size", "sparsity", "accuracy", "rel", "method", "domain")
    G = task_graph(mat, {k: {kk: vv for kk, vv in v.items() if kk in keep} for k, v in nodes.items()},
                   min_enrichment, max_p, pairs)
    comms = communities(G)
    annotate_communities(G, comms)
    return G, {"nodes": G.number_of_nodes(), "edges": G.number_of_edges(), "min_enrichment": min_enrichment,
               "max_p": max_p, "communities": comms, "modularity": G.graph.get("modularity"),
               "algorithm": "networkx greedy_modularity_communities (weight = enrichment)"}


def _transfer(data: ReportData, unions: Sequence[Sequence[str]], max_test: int | None, device: str,
              show_progress: bool, test_examples: Mapping[str, list[Any]] | None) -> None:
    """Fill ``data.transfer`` and the two overlap-vs-transfer correlations."""
    from mtgraft.analysis.transfer import overlap_transfer_correlation, transfer_analysis
    from mtgraft.progress import progress_bar

    labels, mat = data.labels, data.matrices
    n_est = len(labels) * (len(labels) + 2) + sum(len(u) for u in unions)
    with progress_bar(n_est, "transfer", show_progress) as upd:
        data.transfer = transfer_analysis(data.patches, labels, [list(u) for u in unions], max_test, device,
                                          progress=lambda s, n, what: upd(s, what), test_examples=test_examples)
    data.correlation = overlap_transfer_correlation(mat["enrichment"], labels, data.transfer, "enrichment")
    data.correlation_containment = overlap_transfer_correlation(mat["containment"], labels, data.transfer,
                                                                "containment |g_i∩g_j|/|g_j|")


def analyse(
    patches: Sequence[Any],
    *,
    with_transfer: bool = False,
    unions: Sequence[Sequence[str]] = (),
    min_enrichment: float = 2.0,
    max_p: float = 0.05,
    max_test: int | None = None,  # None: as each patch recorded (the grafts' own test sets)
    device: str = "auto",
    duplicates: Duplicates = "error",
    sources: Sequence[str] | None = None,
    show_progress: bool = False,
    test_examples: Mapping[str, list[Any]] | None = None,
) -> ReportData:
    """Every number of the report, without writing anything (``build_report`` = this + files + MLflow).

    Returns a ``ReportData`` (fields: labels, patches, sources, nodes, P, segments, header, matrices,
    pairs, breakdown_layer / breakdown_module, pooled_layer / pooled_module, profiles, graph, graph_info,
    transfer, correlation, correlation_containment, summary); ``data[key]`` and ``data.as_dict()`` work too.
    """
    from mtgraft.analysis.prose import summarise

    if min_enrichment <= 0:
        raise MtgraftError(f"--min-enrichment must be positive, got {min_enrichment:g}")
    if unions and not with_transfer:
        raise MtgraftError("--union needs --with-transfer (a union graft is evaluated on its members' tasks)")
    labels, plist, srcs = load_inputs(patches, duplicates)
    if sources is not None and len(sources) == len(srcs):
        srcs = [str(s) for s in sources]
    if len(plist) < 2:
        raise MtgraftError(f"an overlap report needs at least two tasks' patches, got {len(plist)}")
    h0 = plist[0].header
    seg = Segments.from_named_shapes(h0.graftable)
    regions = {lab: p.flat_indices() for lab, p in zip(labels, plist, strict=True)}
    mat = overlap_matrices(regions, seg.total)
    mat.update(within_tensor_chance(regions, seg, mat["intersection"]))
    bd_layer = breakdown(regions, seg, "layer")
    bd_module = breakdown(regions, seg, "module")
    nodes = {lab: _node(p, src) for lab, p, src in zip(labels, plist, srcs, strict=True)}
    pairs = pair_records(mat)  # one set of corrected p-values and verdicts for the report and the graph
    G, graph_info = _task_graph(mat, nodes, min_enrichment, max_p, learnt_pairs(pairs, nodes))
    data = ReportData(
        labels=labels, patches=plist, sources=srcs, nodes=nodes, P=seg.total, segments=seg, header=h0,
        matrices=mat, pairs=pairs, breakdown_layer=bd_layer, breakdown_module=bd_module,
        pooled_layer=pooled(bd_layer), pooled_module=pooled(bd_module),
        profiles={lab: region_profile(r, seg, bias_separate=True) for lab, r in regions.items()},
        graph=G, graph_info=graph_info)
    if with_transfer:
        _transfer(data, unions, max_test, device, show_progress, test_examples)
    core = functools.reduce(lambda x, y: np.intersect1d(x, y, assume_unique=True), regions.values())
    data.summary = summarise(data, core=int(core.size))
    return data


def write_report(d: Path, data: ReportData, title: str, max_test: int | None) -> dict[str, Path]:
    """Write the whole report folder ``d`` (must exist, empty): data files, figures, HTML and Markdown."""
    from mtgraft.analysis.export import write_data_files
    from mtgraft.analysis.figures import report_figures
    from mtgraft.analysis.render import render

    figdir = d / "figures"
    figdir.mkdir()
    paths = write_data_files(d, data, title)
    figs = report_figures(data, figdir)
    paths.update({f"fig_{k}": v for k, v in figs.items()})
    for key, name, fmt in (("html", "report.html", "html"), ("md", "report.md", "md")):
        with atomic_file(d / name, "w") as f:
            f.write(render(data, title, figs, max_test, fmt))
        paths[key] = d / name
    return paths


def build_report(
    patches: Sequence[Any],
    out_dir: str | os.PathLike,
    *,
    title: str | None = None,
    track: bool = True,
    tracking_uri: str | None = None,
    seeds: dict[str, Any] | None = None,
    **options: Any,
) -> ReportResult:
    """Write the overlap report for ``patches`` (SkillPatch objects or files of one base) into ``out_dir``.

    ``options`` are ``analyse``'s keywords: ``with_transfer`` evaluates each graft on every task with the
    same labels (at most ``max_test`` test examples per task) and the ``unions`` (groups of task names);
    ``min_enrichment``/``max_p`` set the graph's edges; ``duplicates`` says what to do with two patches of
    one task (see ``load_inputs``); ``device``, ``sources``, ``show_progress``, ``test_examples``.
    The folder is written atomically, then logged as the artifacts of an MLflow run (unless ``track`` is off).
    """
    t0 = time.perf_counter()
    settings = inspect.signature(analyse).bind(patches, **options)
    settings.apply_defaults()
    opt = settings.arguments
    data = analyse(patches, **options)
    data.seeds = seeds  # the pair metrics over seeds (analysis.seeds.aggregate_pairs), when there are several
    title = title or data.default_title()
    final = Path(out_dir)
    with atomic_dir(final) as tmp:
        paths = write_report(tmp, data, title, opt["max_test"])
    paths = {k: final / v.relative_to(tmp) for k, v in paths.items()}
    summary_out = data.to_json(title)
    run_id = None
    if track:
        params = {k: opt[k] for k in ("min_enrichment", "max_p", "with_transfer", "max_test")}
        params.update(unions=";".join(",".join(u) for u in opt["unions"]), duplicates=opt["duplicates"])
        run_id = _log_run(data, final, params, tracking_uri)
    summary_out["seconds"] = round(time.perf_counter() - t0, 2)
    return ReportResult(final, summary_out, paths, run_id)


def _log_run(data: ReportData, folder: Path, settings: dict[str, Any], tracking_uri: str | None) -> str:
    """Log the report folder as the artifacts of an MLflow run, with its settings and headline numbers."""
    from mtgraft.tracking import mlflow_run

    labels, h0, graph_info = data.labels, data.header, data.graph_info
    with mlflow_run("report", f"overlap-{'-'.join(labels)}"[:120], tracking_uri,
                    tags={"mtgraft.command": "overlap-report", "mtgraft.tasks": ",".join(labels)}) as run:
        run.log_params({"tasks": ",".join(labels), "n_tasks": len(labels), "P": data.P, "base_model": h0.base_model,
                        "base_hash": h0.base_hash, **settings})
        met: dict[str, Any] = {"graph_edges": graph_info["edges"], "n_communities": len(graph_info["communities"])}
        for r in data.pairs:
            key = f"{r['a']}__{r['b']}"
            met[f"enrichment/{key}"] = r["enrichment"]
            met[f"jaccard/{key}"] = r["jaccard"]
        if data.correlation and data.correlation.get("rho") is not None:
            met["spearman_rho_enrichment_rel"] = data.correlation["rho"]
        run.log_metrics({_metric_key(k): v for k, v in met.items() if v is not None})
        run.log_artifact(folder, "overlap_report")
        return run.run_id


def _metric_key(k: str) -> str:
    """An MLflow-safe metric key (letters, digits, _ - . / and spaces only)."""
    import re

    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", k)
