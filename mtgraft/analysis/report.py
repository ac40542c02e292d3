"""``mtgraft overlap-report``: how disjoint task regions are, against chance, as a task-similarity graph.

``build_report(patches, out_dir)`` loads SkillPatches of one base model, computes every pairwise
overlap metric with its chance baseline (overall, per layer, per module kind), each task's region
profile, the task graph and its communities, optionally transfer (Rel of each graft on every task
with the same labels, union grafts, Spearman of overlap vs transfer), and writes one folder:
``report.html`` (self-contained), ``report.md``, ``overlap.json``, ``task_graph.graphml``,
``task_graph.json``, CSVs of every matrix and PNG figures. Definitions: docs/overlap-report.md.
"""

from __future__ import annotations

import base64
import csv
import functools
import html
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mtgraft.analysis.overlap import (
    Segments,
    breakdown_matrices,
    breakdown_stats,
    overlap_matrices,
    region_profile,
    to_jsonable,
)
from mtgraft.errors import MtgraftError
from mtgraft.utils import atomic_dir, atomic_file, write_json

Duplicates = Literal["error", "first", "label"]
DUPLICATE_POLICIES = ("error", "first", "label")
ALPHA = 0.05
MATRIX_KEYS = ("intersection", "containment", "jaccard", "overlap_coefficient", "expected", "enrichment",
               "p_value", "log10_p_value", "expected_within_tensors", "enrichment_within_tensors")


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


# ------------------------------------------------------------------------------------------- inputs


def _patch_label(p: Any) -> str:
    return "+".join(p.header.tasks)


def load_inputs(patches: Sequence[Any], duplicates: Duplicates = "error") -> tuple[list[str], list[Any], list[str]]:
    """(labels, SkillPatches, sources) from patch objects or files; all of one base, one patch per task.

    ``duplicates``: ``error`` (default) refuses two patches of the same task; ``first`` keeps the first;
    ``label`` keeps all, labelled ``task[method,s=sparsity]`` (e.g. to compare sparsities).
    """
    from mtgraft.patches import SkillPatch, short_hash

    if duplicates not in DUPLICATE_POLICIES:
        raise MtgraftError(f"unknown duplicates policy '{duplicates}' (use {', '.join(DUPLICATE_POLICIES)})")
    if not patches:
        raise MtgraftError("no patches given (pass patch files, or registry selectors --task/--base)")
    loaded: list[tuple[Any, str]] = []
    for p in patches:
        if isinstance(p, SkillPatch):
            loaded.append((p, f"<{_patch_label(p)} patch object>"))
        else:
            loaded.append((SkillPatch.load(p), str(p)))
    ref, ref_src = loaded[0]
    for p, src in loaded[1:]:
        h, r = p.header, ref.header
        if h.base_hash != r.base_hash:
            raise MtgraftError(
                f"all patches must share one base model: {ref_src} is for {r.base_model} ({short_hash(r.base_hash)}), "
                f"{src} for {h.base_model} ({short_hash(h.base_hash)})")
        if [(n, list(s)) for n, s in h.graftable] != [(n, list(s)) for n, s in r.graftable]:
            raise MtgraftError(f"{src} and {ref_src} share a base hash but list different graftable tensors")
    labels, out, srcs = [], [], []
    seen: dict[str, str] = {}
    for p, src in loaded:
        lab = _patch_label(p)
        if lab in seen:
            if duplicates == "error":
                raise MtgraftError(
                    f"two patches for task '{lab}' ({seen[lab]} and {src}); give one per task, or choose with "
                    "--duplicates first (keep the first) or --duplicates label (keep all, labelled by method and sparsity)")
            if duplicates == "first":
                continue
        seen.setdefault(lab, src)
        labels.append(lab)
        out.append(p)
        srcs.append(src)
    if duplicates == "label":
        counts = {x: labels.count(x) for x in labels}
        new = []
        for lab, p in zip(labels, out, strict=True):
            if counts[lab] > 1:
                s = p.header.sparsity_requested or p.header.sparsity
                lab = f"{lab}[{p.header.method},s={s:.2g}]"
            k, base = 2, lab
            while lab in new:
                lab, k = f"{base}#{k}", k + 1
            new.append(lab)
        labels = new
    return labels, out, srcs


def select_patches_from_registry(tasks: Sequence[str] | None = None, base: str | None = None, alias: str = "best",
                                 tracking_uri: str | None = None, dest: str | os.PathLike | None = None,
                                 method: str | None = None) -> list[Path]:
    """Download (sha256-verified) one registered patch per task — ``name@alias`` — into ``dest``; return the paths.

    No ``tasks``: every single-task patch registered for ``base``. Without ``base`` the tasks must have
    patches for exactly one base model. With ``method`` (e.g. ``graft``) only versions made by that
    method count: ``best`` = the highest recorded Rel among them, ``latest`` = the newest, another alias
    must point at one of them. ``dest`` defaults to a new temporary folder (the caller removes it).
    """
    import tempfile

    from mtgraft.registry import MaskRegistry

    reg = MaskRegistry(tracking_uri)
    want = list(dict.fromkeys(t for t in (tasks or []) if t))
    where = (f" for base '{base}'" if base else "") + (f" made by method '{method}'" if method else "")
    rows = []
    if want:
        for t in want:
            got = [r for r in reg.list_masks(task=t, base=base) if r["task"] == t
                   and (method is None or r["method"] == method)]
            if not got:
                raise MtgraftError(f"no registered patch of task '{t}'{where} in {reg.tracking_uri} "
                                   "(see 'mtgraft masks list')")
            rows += got
    else:
        rows = [r for r in reg.list_masks(base=base) if r["task"] and "+" not in r["task"]
                and (method is None or r["method"] == method)]
        if not rows:
            raise MtgraftError(f"no registered single-task patches{where} in {reg.tracking_uri}")
    bases = sorted({r["base_hash"] or "" for r in rows})
    if len(bases) > 1:
        names = sorted({f"{r['base_model']} ({(r['base_hash'] or '')[:15]}…)" for r in rows})
        raise MtgraftError(f"the selected patches belong to {len(bases)} base models ({'; '.join(names)}); "
                           "pick one with --base")
    by_task: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_task.setdefault(r["task"], []).append(r)
    order = want or sorted(by_task)
    out_dir = Path(dest) if dest else Path(tempfile.mkdtemp(prefix="mtgraft-report-inputs-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for t in order:
        versions = by_task[t]
        name = versions[0]["name"]
        if method is None:
            ref = f"{name}@{alias}"
        elif alias.lower() == "latest":
            ref = f"{name}/{max(int(r['version']) for r in versions)}"
        elif alias.lower() == "best":
            top = max(versions, key=lambda r: (r["rel"] if r["rel"] is not None else -math.inf, int(r["version"])))
            ref = f"{name}/{top['version']}"
        else:
            hit = [r for r in versions if alias in r["aliases"]]
            if not hit:
                raise MtgraftError(f"alias '{alias}' of '{name}' does not name a version made by method '{method}'")
            ref = f"{name}/{hit[0]['version']}"
        sub = out_dir / ref.replace("/", "_v")
        sub.mkdir(parents=True, exist_ok=True)
        local, _ = reg.fetch(ref, sub)
        paths.append(Path(local))
    return paths


# ------------------------------------------------------------------------------------------ numbers


def _f(x: Any) -> float | None:
    if x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def fmt_p(p: float | None, log10_p: float | None = None) -> str:
    """A p-value for prose: ``0.31``, ``0.004``, ``3e-12``, ``1e-412`` (from log10 p when p underflows)."""
    if p is None:
        return "n/a"
    if p == 0.0 and log10_p is not None and math.isfinite(log10_p):
        e = math.floor(log10_p)
        return f"{10 ** (log10_p - e):.0f}e{e}"
    if p >= 0.01:
        return f"{p:.2g}"
    if p >= 0.001:
        return f"{p:.1g}"
    return f"{p:.0e}".replace("e-0", "e-")


def fmt_x(e: float | None) -> str:
    """An enrichment: ``3.1×``, ``0×``, ``n/a``."""
    if e is None:
        return "n/a"
    if e == 0:
        return "0×"
    return f"{e:.2g}×" if e < 10 else f"{e:.0f}×"


def _domain(task: str) -> str | None:
    from mtgraft.tasks import get_task

    try:
        return get_task(task).domain
    except MtgraftError:
        return None


def _depletion_p(inter: int, P: int, na: int, nb: int) -> float:
    """P(X <= observed) under the hypergeometric: small when two regions share fewer entries than chance."""
    from scipy.stats import hypergeom

    return float(hypergeom.cdf(inter, P, na, nb))


def pair_records(mat: dict[str, Any], bonferroni: bool = True) -> list[dict[str, Any]]:
    """One record per unordered pair (i < j) with every metric both ways, the depletion p and a verdict.

    Verdicts: ``beyond_chance`` (enrichment >= 1 and adjusted p < 0.05), ``below_chance`` (fewer shared
    entries than chance, adjusted depletion p < 0.05), ``chance`` (neither), ``too_small`` (chance expects
    under one shared entry and none is shared: nothing to tell). p adjusted by Bonferroni over the pairs.
    """
    tasks = mat["tasks"]
    n = len(tasks)
    m = max(1, n * (n - 1) // 2) if bonferroni else 1
    out = []
    for i in range(n):
        for j in range(i + 1, n):
            inter = int(mat["intersection"][i, j])
            exp = float(mat["expected"][i, j])
            na, nb = int(mat["sizes"][i]), int(mat["sizes"][j])
            p = _f(mat["p_value"][i, j])
            lp = _f(mat["log10_p_value"][i, j])
            pd = _depletion_p(inter, mat["P"], na, nb) if na and nb else 1.0
            e = _f(mat["enrichment"][i, j])
            p_adj = min(1.0, (p if p is not None else 1.0) * m)
            pd_adj = min(1.0, pd * m)
            if exp < 1 and inter == 0:
                verdict = "too_small"
            elif e is not None and e >= 1 and p_adj < ALPHA:
                verdict = "beyond_chance"
            elif pd_adj < ALPHA:
                verdict = "below_chance"
            else:
                verdict = "chance"
            out.append({
                "a": tasks[i], "b": tasks[j], "size_a": na, "size_b": nb, "intersection": inter,
                "containment_a_in_b": _f(mat["containment"][j, i]),  # |a∩b|/|a|: share of a's region also in b
                "containment_b_in_a": _f(mat["containment"][i, j]),  # |a∩b|/|b|
                "jaccard": _f(mat["jaccard"][i, j]), "overlap_coefficient": _f(mat["overlap_coefficient"][i, j]),
                "expected": exp, "enrichment": e, "p_value": p, "log10_p_value": lp,
                "p_value_depletion": pd, "p_adjusted": p_adj, "p_depletion_adjusted": pd_adj,
                "expected_within_tensors": _f(mat["expected_within_tensors"][i, j]) if "expected_within_tensors" in mat
                else None,
                "enrichment_within_tensors": _f(mat["enrichment_within_tensors"][i, j])
                if "enrichment_within_tensors" in mat else None,
                "n_tests": m, "verdict": verdict,
            })
    return out


def within_tensor_chance(regions: Mapping[str, np.ndarray], seg: Segments, inter: np.ndarray) -> dict[str, np.ndarray]:
    """Chance overlap given where each region lies: sum over tensors t of |a_t|·|b_t| / |t| ([n, n]).

    Two random regions with the same number of entries in every tensor as a and b would share this many
    entries on average; ``enrichment_within_tensors`` = intersection / that. Tasks that merely favour
    the same tensors score about 1 here, however enriched they are against the uniform chance.
    """
    sizes = seg.sizes.astype(np.float64)
    C = np.stack([np.bincount(seg.segment_of(r), minlength=len(seg)).astype(np.float64) for r in regions.values()]) \
        if regions else np.zeros((0, len(seg)))
    E = (C / np.maximum(sizes, 1)) @ C.T
    with np.errstate(divide="ignore", invalid="ignore"):
        enr = np.where(E > 0, np.asarray(inter, dtype=np.float64) / E, np.nan)
    return {"expected_within_tensors": E, "enrichment_within_tensors": enr}


def _breakdown(regions: dict[str, np.ndarray], seg: Segments, by: str) -> dict[str, Any]:
    bd = breakdown_matrices(regions, seg, by=by, bias_separate=True)
    st = breakdown_stats(bd)
    return {**bd, **{f"stat_{k}": v for k, v in st.items()}}


def _group_name(g: dict[str, Any]) -> str:
    if "layer" in g and "module" in g:
        return f"L{g['layer']}/{g['module']}" if g["layer"] is not None else f"-/{g['module']}"
    if "layer" in g:
        return f"L{g['layer']}" if g["layer"] is not None else "no layer"
    return str(g["module"])


def _breakdown_records(bd: dict[str, Any], tasks: list[str]) -> list[dict[str, Any]]:
    recs = []
    n = len(tasks)
    for g, grp in enumerate(bd["groups"]):
        for i in range(n):
            for j in range(i + 1, n):
                recs.append({
                    "a": tasks[i], "b": tasks[j], "group": _group_name(grp), **grp,
                    "params": int(bd["params"][g]), "size_a": int(bd["sizes"][g, i]), "size_b": int(bd["sizes"][g, j]),
                    "intersection": int(bd["intersection"][g, i, j]), "expected": float(bd["expected"][g, i, j]),
                    "enrichment": _f(bd["stat_enrichment"][g, i, j]), "jaccard": _f(bd["stat_jaccard"][g, i, j]),
                    "containment_a_in_b": _f(bd["stat_containment"][g, j, i]),
                    "containment_b_in_a": _f(bd["stat_containment"][g, i, j]),
                    "p_value": _f(bd["stat_p_value"][g, i, j]), "log10_p_value": _f(bd["stat_log10_p_value"][g, i, j]),
                })
    return recs


def _pooled(bd: dict[str, Any]) -> list[dict[str, Any]]:
    """Per group: observed vs chance intersections summed over all pairs (where the overlap concentrates)."""
    n = bd["intersection"].shape[1]
    iu = np.triu_indices(n, 1)
    out = []
    for g, grp in enumerate(bd["groups"]):
        obs = int(bd["intersection"][g][iu].sum())
        exp = float(bd["expected"][g][iu].sum())
        out.append({"group": _group_name(grp), **grp, "params": int(bd["params"][g]), "observed": obs,
                    "expected": exp, "enrichment": obs / exp if exp > 0 else None})
    return out


# ----------------------------------------------------------------------------------------- summary


def _range(xs: list[int]) -> str:
    return _range_fmt(xs, "{}")


def _range_fmt(xs: Sequence[float], fmt: str) -> str:
    """'a–b' with ``fmt``, or one value when all are equal once formatted."""
    lo, hi = fmt.format(min(xs)), fmt.format(max(xs))
    return lo if lo == hi else f"{lo}–{hi}"


def _pairs(n: int) -> str:
    return f"{n} pair" if n == 1 else f"{n} pairs"


def _pair_phrase(r: dict[str, Any]) -> str:
    a, b = r["a"], r["b"]
    p = fmt_p(r["p_value"], r["log10_p_value"])
    if r["verdict"] == "beyond_chance":
        within = (f"; {fmt_x(r['enrichment_within_tensors'])} given the tensors each region sits in"
                  if r.get("enrichment_within_tensors") is not None else "")
        return (f"{a} and {b} share {fmt_x(r['enrichment'])} more parameters than two random regions of their "
                f"sizes would ({r['intersection']:,} shared vs {r['expected']:.1f} expected; Jaccard "
                f"{r['jaccard']:.3f}; p = {p}{within})")
    if r["verdict"] == "below_chance":
        return (f"{a} and {b} share fewer parameters than chance ({r['intersection']:,} vs {r['expected']:.1f} "
                f"expected, {fmt_x(r['enrichment'])}; depletion p = {fmt_p(r['p_value_depletion'])}): "
                "their regions avoid each other")
    if r["verdict"] == "too_small":
        return (f"{a} and {b} share nothing, but two random regions of their sizes would share only "
                f"{r['expected']:.2f} entries, so this says nothing about similarity")
    return (f"{a} and {b} overlap at chance level (enrichment {fmt_x(r['enrichment'])}, {r['intersection']:,} "
            f"shared vs {r['expected']:.1f} expected, p = {p})")


def summarise(mat: dict[str, Any], pairs: list[dict[str, Any]], pooled_module: list[dict[str, Any]],
              comms: list[list[str]], graph_info: dict[str, Any], nodes: dict[str, dict[str, Any]],
              transfer: dict[str, Any] | None, correlation: dict[str, Any] | None,
              min_enrichment: float, core: int = 0) -> dict[str, Any]:
    """Structured findings and plain-language sentences generated from the numbers.

    ``core`` = number of entries in every region (reported when every pair overlaps beyond chance).
    """
    tasks = mat["tasks"]
    P = int(mat["P"])
    sizes = [int(s) for s in mat["sizes"]]
    lines: list[str] = []
    mean_exp = float(np.mean([r["expected"] for r in pairs])) if pairs else 0.0
    core_expected = float(P * np.prod([s / P for s in sizes])) if P else 0.0
    lines.append(
        f"{len(tasks)} task regions of {_range_fmt(sizes, '{:,}')} entries out of |P| = {P:,} graftable "
        f"parameters (density {_range_fmt([x / P for x in sizes], '{:.2e}')}); two random regions of these sizes "
        f"would share {mean_exp:.1f} entries on average.")
    by = {v: [r for r in pairs if r["verdict"] == v] for v in ("beyond_chance", "chance", "below_chance", "too_small")}
    strong = sorted(by["beyond_chance"], key=lambda r: -(r["enrichment"] or 0))
    enr = [r["enrichment"] for r in pairs if r["enrichment"] is not None and r["verdict"] != "too_small"]
    if enr and max(enr) < 1.5 and min(enr) > 1 / 1.5:
        lines.append(f"Every pair overlaps at about chance level (enrichment {min(enr):.2f}–{max(enr):.2f}): "
                     "here the regions do not single out related tasks.")
    if len(pairs) > 1 and len(strong) == len(pairs):
        lines.append(f"Every pair, similar or not, shares more than chance; {core:,} entries lie in all "
                     f"{len(tasks)} regions (chance would put {core_expected:.2g} there): part of each region is "
                     "common to all these tasks, so compare enrichments rather than asking whether there is overlap.")
    jac = [r["jaccard"] for r in pairs if r["jaccard"] is not None]
    if len(jac) == len(pairs) and pairs and min(jac) >= 0.8:
        modes = {nodes[t].get("finetuned_mode") for t in tasks}
        why = (" They come from one jointly fine-tuned model, whose base patch (top-k |θ_ft − θ_pre|) is the same "
               "for every task: the learned grafts have barely moved away from it. Learn them longer (or with a "
               "free budget) before reading overlap as task similarity." if modes == {"joint"} else "")
        lines.append(f"The regions are nearly identical (Jaccard {min(jac):.2f}–{max(jac):.2f} for every pair).{why}")
    for r in strong[:6]:
        lines.append(_pair_phrase(r) + ".")
    if len(strong) > 6:
        lines.append(f"{len(strong) - 6} more pairs also overlap beyond chance (see the table).")
    for r in sorted(by["chance"], key=lambda r: r["p_value"] or 1)[:4]:
        lines.append(_pair_phrase(r) + ".")
    for r in by["below_chance"][:3] + by["too_small"][:2]:
        lines.append(_pair_phrase(r) + ".")
    if pairs:
        m = pairs[0]["n_tests"]
        lines.append(f"Verdicts use p-values Bonferroni-adjusted over the {m} pairs (α = {ALPHA}).")
    # similar vs dissimilar by catalog domain
    dom = {t: nodes[t].get("domain") for t in tasks}
    same = [r for r in pairs if dom[r["a"]] and dom[r["a"]] == dom[r["b"]] and r["enrichment"] is not None]
    cross = [r for r in pairs if dom[r["a"]] and dom[r["b"]] and dom[r["a"]] != dom[r["b"]] and r["enrichment"] is not None]
    domain_cmp: dict[str, Any] | None = None
    if same and cross:
        ms = float(np.median([r["enrichment"] for r in same]))
        mc = float(np.median([r["enrichment"] for r in cross]))
        js = float(np.median([r["jaccard"] or 0 for r in same]))
        jc = float(np.median([r["jaccard"] or 0 for r in cross]))
        ws = [r["enrichment_within_tensors"] for r in same if r.get("enrichment_within_tensors") is not None]
        wc = [r["enrichment_within_tensors"] for r in cross if r.get("enrichment_within_tensors") is not None]
        domain_cmp = {"same_domain": {"n": len(same), "median_enrichment": ms, "median_jaccard": js,
                                      "median_enrichment_within_tensors": float(np.median(ws)) if ws else None,
                                      "pairs": [f"{r['a']}–{r['b']}" for r in same]},
                      "cross_domain": {"n": len(cross), "median_enrichment": mc, "median_jaccard": jc,
                                       "median_enrichment_within_tensors": float(np.median(wc)) if wc else None}}
        if len(same) >= 2 and len(cross) >= 2:
            from scipy.stats import mannwhitneyu

            u = mannwhitneyu([r["enrichment"] for r in same], [r["enrichment"] for r in cross], alternative="greater")
            domain_cmp["mannwhitney_p_greater"] = float(u.pvalue)
        doms = sorted({dom[r["a"]] for r in same})
        ratio = ms / mc if mc > 0 else math.inf
        verdict = "more than" if ratio >= 1.25 else "less than" if ratio <= 0.8 else "about as much as"
        mw = domain_cmp.get("mannwhitney_p_greater")
        if verdict == "about as much as" and mw is not None and mw <= ALPHA and ratio > 1:
            # a small but consistent difference: say both
            verdict = f"slightly but consistently more than ({(ratio - 1) * 100:.0f}% higher median enrichment)"
        extra = (f", one-sided Mann–Whitney p = {fmt_p(domain_cmp['mannwhitney_p_greater'])}"
                 if "mannwhitney_p_greater" in domain_cmp else "")
        lines.append(
            f"Tasks of the same domain ({', '.join(doms)}) overlap {verdict} tasks of different domains: "
            f"median enrichment {fmt_x(ms)} (n = {_pairs(len(same))}, Jaccard {js:.3f}) vs {fmt_x(mc)} "
            f"(n = {_pairs(len(cross))}, Jaccard {jc:.3f}){extra}"
            + (f"; given the tensors each region sits in: {fmt_x(float(np.median(ws)))} vs {fmt_x(float(np.median(wc)))}"
               if ws and wc else "") + ".")
    # where the overlap concentrates
    pm = [g for g in pooled_module if g["enrichment"] is not None and g["expected"] >= 1]
    if pm and pairs and sum(g["observed"] for g in pm) > 0:
        top = max(pm, key=lambda g: g["enrichment"])
        low = min(pm, key=lambda g: g["enrichment"])
        lines.append(f"Summed over all pairs, shared entries are most enriched in {top['module']} "
                     f"({fmt_x(top['enrichment'])} chance within it) and least in {low['module']} "
                     f"({fmt_x(low['enrichment'])}).")
    # graph
    multi = [c for c in comms if len(c) > 1]
    if graph_info["edges"]:
        groups = "; ".join("{" + ", ".join(c) + "}" for c in comms)
        lines.append(f"The task graph (edges: enrichment ≥ {min_enrichment:g}, p ≤ {graph_info['max_p']:g}) has "
                     f"{graph_info['edges']} edge(s); greedy modularity groups the tasks as {groups}.")
    else:
        lines.append(f"No pair reaches enrichment ≥ {min_enrichment:g} with p ≤ {graph_info['max_p']:g}: the task "
                     "graph has no edges.")
    # transfer
    if transfer is not None:
        ses = [r["rel_se"] for r in transfer["results"] if r.get("rel_se") is not None]
        gains = [v["gain"] for v in transfer["reference"].values() if v.get("gain") is not None]
        ns = [v["n"] for v in transfer["reference"].values()]
        if ses and float(np.median(ses)) > 0.2:
            lines.append(
                f"Rel is noisy here: fine-tuning gained only {min(gains):+.3f} to {max(gains):+.3f} accuracy over "
                f"P_0 on {_range(ns)} test examples (one example moves accuracy by {1 / max(min(ns), 1):.3f}), "
                f"so a Rel has a standard error of about {float(np.median(ses)):.2f} (median); differences in Rel "
                "below that are not evidence.")
        own = [r for r in transfer["results"] if r["own"] and r["rel"] is not None]
        if own:
            lines.append("Each graft on its own task keeps Rel " + ", ".join(
                f"{r['graft']} {r['rel']:.2f}" for r in own) + ".")
        cross_t = [r for r in transfer["results"] if not r["own"] and r["rel"] is not None]
        if cross_t:
            best = max(cross_t, key=lambda r: r["rel"])
            lines.append(f"Across tasks with the same labels, Rel ranges {min(r['rel'] for r in cross_t):.2f} to "
                         f"{best['rel']:.2f} (best: {best['graft']}'s graft on {best['eval_task']}).")
        for u in transfer["unions"]:
            bits = ", ".join(f"{t} {v['rel']:.2f}" if v["rel"] is not None else f"{t} n/a"
                             for t, v in u["results"].items())
            mr = f" (mean {u['mean_rel']:.2f})" if u["mean_rel"] is not None else ""
            lines.append(f"The union graft {u['name']} ({u['region_size']:,} entries) keeps Rel {bits}{mr}.")
        if correlation is not None:
            if correlation.get("rho") is not None:
                r = correlation["rho"]
                word = ("tracks" if r >= 0.5 else "weakly tracks" if r >= 0.2 else
                        "does not track" if r > -0.2 else "runs against")
                note = f"; {correlation['note']}" if correlation.get("note") else ""
                lines.append(f"Overlap {word} transfer (Spearman ρ = {r:.2f}, p = {fmt_p(correlation['p_value'])}, "
                             f"n = {correlation['n']} directed pairs{note}).")
            else:
                lines.append(f"Overlap vs transfer: {correlation.get('note')}.")
    return {
        "sentences": lines,
        "n_tasks": len(tasks),
        "P": P,
        "counts": {k: len(v) for k, v in by.items()},
        "beyond_chance": [f"{r['a']}–{r['b']}" for r in strong],
        "disjoint_or_chance": [f"{r['a']}–{r['b']}" for r in by["chance"] + by["below_chance"] + by["too_small"]],
        "domains": domain_cmp,
        "core_size": core,
        "communities": comms,
        "multi_task_communities": multi,
    }


# ------------------------------------------------------------------------------------------- plots


def _fig(w: float, h: float, layout: str | None = "constrained") -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), layout=layout)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> Path:
    with atomic_file(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    return path


def _short(t: str, n: int = 18) -> str:
    return t if len(t) <= n else t[: n - 1] + "…"


def heatmap(values: np.ndarray, rows: list[str], cols: list[str], path: Path, title: str, cbar: str,
            text: Callable[[int, int], str], cmap: str = "viridis", norm: Any = None,
            mask: np.ndarray | None = None, xlabel: str = "", ylabel: str = "",
            cbar_ticks: tuple[list[float], list[str]] | None = None) -> Path:
    """One annotated heatmap PNG (masked cells grey); ``text(i, j)`` gives each cell's label."""
    import matplotlib as mpl

    v = np.array(values, dtype=np.float64)
    m = ~np.isfinite(v) if mask is None else (mask | ~np.isfinite(v))
    nr, nc = v.shape
    w = max(4.8, 1.5 + 0.85 * nc + 0.06 * max((len(r) for r in rows), default=0))
    h = max(3.6, 1.4 + 0.6 * nr)
    fig = _fig(w, h)
    ax = fig.add_subplot(111)
    cm = mpl.colormaps[cmap].with_extremes(bad="#d9d9d9")
    im = ax.imshow(np.ma.masked_array(v, m), cmap=cm, norm=norm, aspect="auto")
    ax.set_xticks(range(nc), [_short(c) for c in cols], rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(nr), [_short(r, 40) for r in rows], fontsize=8)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    import textwrap

    ax.set_title(textwrap.fill(title, max(40, int(w * 11))), fontsize=9)
    finite = v[~m]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    for i in range(nr):
        for j in range(nc):
            s = text(i, j)
            if not s:
                continue
            if m[i, j]:
                color = "black"
            else:
                rgba = im.cmap(im.norm(v[i, j])) if hi > lo or norm is not None else (1, 1, 1, 1)
                lum = 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2]
                color = "white" if lum < 0.5 else "black"
            ax.text(j, i, s, ha="center", va="center", fontsize=7.5, color=color)
    cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    cb.set_label(cbar, fontsize=8)
    cb.ax.tick_params(labelsize=7)
    if cbar_ticks:
        cb.set_ticks(cbar_ticks[0], labels=cbar_ticks[1])
    return _save(fig, path)


def _log2_ticks(lo: float, hi: float) -> tuple[list[float], list[str]]:
    ks = list(range(math.ceil(lo), math.floor(hi) + 1))
    step = max(1, math.ceil(len(ks) / 8))
    ks = ks[::step]
    return [float(k) for k in ks], [fmt_x(2.0 ** k) if k >= 0 else f"{2.0 ** k:.2g}×" for k in ks]


def _enrichment_norm(lv: np.ndarray) -> tuple[Any, float, float]:
    from matplotlib.colors import TwoSlopeNorm

    fin = lv[np.isfinite(lv)]
    lo = min(-1.0, float(fin.min())) if fin.size else -1.0
    hi = max(1.0, float(fin.max())) if fin.size else 1.0
    return TwoSlopeNorm(vmin=lo, vcenter=0.0, vmax=hi), lo, hi


def matrix_figures(mat: dict[str, Any], figdir: Path) -> dict[str, Path]:
    """Heatmaps of containment, Jaccard, enrichment (log scale) and -log10 p; the diagonal shows region sizes."""
    tasks = mat["tasks"]
    n = len(tasks)
    diag = np.eye(n, dtype=bool)
    sizes = mat["sizes"]

    def dtext(i: int, j: int, body: Callable[[int, int], str]) -> str:
        return f"|g|={int(sizes[i]):,}" if i == j else body(i, j)

    out = {}
    c = np.asarray(mat["containment"], dtype=np.float64)
    out["heatmap_containment"] = heatmap(
        c, tasks, tasks, figdir / "heatmap_containment.png",
        "containment |g_i ∩ g_j| / |g_j| (share of column task's region that row task's graft also covers)",
        "containment", lambda i, j: dtext(i, j, lambda a, b: f"{c[a, b]:.1%}" if np.isfinite(c[a, b]) else "–"),
        cmap="Blues", mask=diag, xlabel="task j (region g_j)", ylabel="task i (graft g_i)")
    jac = np.asarray(mat["jaccard"], dtype=np.float64)
    out["heatmap_jaccard"] = heatmap(
        jac, tasks, tasks, figdir / "heatmap_jaccard.png", "Jaccard |g_i ∩ g_j| / |g_i ∪ g_j|", "Jaccard",
        lambda i, j: dtext(i, j, lambda a, b: f"{jac[a, b]:.3f}" if np.isfinite(jac[a, b]) else "–"),
        cmap="Blues", mask=diag)
    e = np.asarray(mat["enrichment"], dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        lv = np.log2(e)
    fin = lv[np.isfinite(lv) & ~diag]
    floor_v = float(fin.min()) - 1 if fin.size else -3.0
    lv = np.where(np.isneginf(lv), min(floor_v, -3.0), lv)
    norm, lo, hi = _enrichment_norm(np.where(diag, np.nan, lv))
    out["heatmap_enrichment"] = heatmap(
        lv, tasks, tasks, figdir / "heatmap_enrichment.png",
        "enrichment = observed / chance intersection (|g_i||g_j|/|P|); 1× = random", "enrichment (log scale)",
        lambda i, j: dtext(i, j, lambda a, b: fmt_x(_f(e[a, b]))), cmap="RdBu_r", norm=norm, mask=diag,
        cbar_ticks=_log2_ticks(lo, hi))
    if "enrichment_within_tensors" in mat:
        ew = np.asarray(mat["enrichment_within_tensors"], dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            lw = np.log2(ew)
        finw = lw[np.isfinite(lw) & ~diag]
        lw = np.where(np.isneginf(lw), min(float(finw.min()) - 1 if finw.size else -3.0, -3.0), lw)
        normw, low, hiw = _enrichment_norm(np.where(diag, np.nan, lw))
        out["heatmap_enrichment_within_tensors"] = heatmap(
            lw, tasks, tasks, figdir / "heatmap_enrichment_within_tensors.png",
            "enrichment given where the regions lie: observed / Σ_t |g_i ∩ t|·|g_j ∩ t| / |t| over tensors t "
            "(1× = tasks merely favour the same tensors)", "enrichment within tensors (log scale)",
            lambda i, j: dtext(i, j, lambda a, b: fmt_x(_f(ew[a, b]))), cmap="RdBu_r", norm=normw, mask=diag,
            cbar_ticks=_log2_ticks(low, hiw))
    nl = -np.asarray(mat["log10_p_value"], dtype=np.float64)
    m = max(1, n * (n - 1) // 2)
    thr = -math.log10(ALPHA / m)
    out["heatmap_pvalue"] = heatmap(
        nl, tasks, tasks, figdir / "heatmap_pvalue.png",
        f"-log10 p (hypergeometric, more shared than chance); * = significant (Bonferroni threshold {thr:.1f} at α=0.05)",
        "-log10 p", lambda i, j: dtext(i, j, lambda a, b: f"{nl[a, b]:.1f}" + ("*" if nl[a, b] >= thr else "")),
        cmap="magma_r", mask=diag)
    return out


def breakdown_figure(bd: dict[str, Any], tasks: list[str], path: Path, what: str) -> Path:
    """Enrichment per group (columns) for every pair (rows), log scale, annotated."""
    n = len(tasks)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    groups = [_group_name(g) for g in bd["groups"]]
    enr = bd["stat_enrichment"]
    v = np.full((len(pairs), len(groups)), np.nan)
    txt = [["" for _ in groups] for _ in pairs]
    for r, (i, j) in enumerate(pairs):
        for g in range(len(groups)):
            x = enr[g, i, j]
            if bd["expected"][g, i, j] < 1 and bd["intersection"][g, i, j] == 0:
                txt[r][g] = "·"
                continue
            if np.isfinite(x):
                v[r, g] = math.log2(x) if x > 0 else np.nan
                txt[r][g] = fmt_x(float(x))
                if x == 0:
                    v[r, g] = -3.0
    norm, lo, hi = _enrichment_norm(v)
    return heatmap(v, [f"{tasks[i]} × {tasks[j]}" for i, j in pairs], groups, path,
                   f"enrichment per {what} (observed / chance within the {what}); · = chance expects < 1 shared entry",
                   "enrichment (log scale)", lambda a, b: txt[a][b], cmap="RdBu_r", norm=norm,
                   cbar_ticks=_log2_ticks(lo, hi), xlabel=what)


def profile_figures(profiles: dict[str, dict[str, Any]], figdir: Path) -> dict[str, Path]:
    """Per task: layer × module heatmap of the share of its region; and density relative to uniform per module/layer."""
    tasks = list(profiles)
    first = profiles[tasks[0]]
    layers = sorted({r["layer"] for r in first["by_layer_module"]}, key=lambda x: (x is None, x if x is not None else 0))
    mods = []
    for r in first["by_layer_module"]:
        if r["module"] not in mods:
            mods.append(r["module"])
    n = len(tasks)
    ncol = min(n, 3)
    nrow = math.ceil(n / ncol)
    fig = _fig(max(4.6, 3.7 * ncol + 0.8), (0.38 * len(layers) + 2.1) * nrow + 0.5)
    vmax = 0.0
    grids = {}
    for t in tasks:
        g = np.full((len(layers), len(mods)), np.nan)
        for r in profiles[t]["by_layer_module"]:
            if r["fraction"] is not None:
                g[layers.index(r["layer"]), mods.index(r["module"])] = r["fraction"]
        grids[t] = g
        if np.isfinite(g).any():
            vmax = max(vmax, float(np.nanmax(g)))
    im = None
    for k, t in enumerate(tasks):
        ax = fig.add_subplot(nrow, ncol, k + 1)
        g = grids[t]
        im = ax.imshow(g, cmap="YlOrRd", vmin=0, vmax=vmax or 1, aspect="auto")
        for i in range(len(layers)):
            for j in range(len(mods)):
                if np.isfinite(g[i, j]) and g[i, j] > 0:
                    ax.text(j, i, f"{100 * g[i, j]:.0f}" if g[i, j] >= 0.0095 else "<1", ha="center", va="center",
                            fontsize=6.5, color="white" if g[i, j] > 0.6 * vmax else "black")
        ax.set_xticks(range(len(mods)), mods, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(layers)), [f"L{x}" if x is not None else "–" for x in layers], fontsize=7)
        ax.set_title(f"{t} ({profiles[t]['size']:,})", fontsize=8)
    if im is not None:
        from matplotlib.ticker import PercentFormatter

        cb = fig.colorbar(im, ax=fig.axes, fraction=0.025, pad=0.02, format=PercentFormatter(xmax=1, decimals=0))
        cb.set_label("share of the task's region (%, annotated)", fontsize=8)
        cb.ax.tick_params(labelsize=7)
    fig.suptitle("Where each task's region sits: layer × module kind (share of region, %)", fontsize=9)
    out = {"profile_layer_module": _save(fig, figdir / "profile_layer_module.png")}

    fig = _fig(max(8.0, 1.2 * n + 6), 3.8)
    for k, by in enumerate(("module", "layer")):
        ax = fig.add_subplot(1, 2, k + 1)
        recs0 = profiles[tasks[0]][f"by_{by}"]
        keys = [r[by] for r in recs0]
        P = first["P"]
        width = 0.8 / n
        for ti, t in enumerate(tasks):
            prof = profiles[t]
            dens = [(r["density"] / (prof["size"] / P)) if prof["size"] and r["density"] is not None else 0.0
                    for r in prof[f"by_{by}"]]
            y = [math.log2(x) if x > 0 else -4.0 for x in dens]
            ax.bar(np.arange(len(keys)) + ti * width - 0.4 + width / 2, y, width=width, label=t)
        ax.axhline(0.0, color="black", linewidth=0.8)
        from matplotlib.ticker import FuncFormatter, MaxNLocator

        lo_y, hi_y = ax.get_ylim()
        if hi_y - lo_y > 2:
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{2.0 ** v:.3g}×"))
        ax.set_xticks(range(len(keys)), [str(x) if by == "module" else (f"L{x}" if x is not None else "–")
                                         for x in keys], rotation=35 if by == "module" else 0,
                      ha="right" if by == "module" else "center", fontsize=7)
        ax.set_ylabel("density / region's overall density (log scale)", fontsize=8)
        ax.set_title(f"per {by}: over- (>1×) or under-represented (<1×) vs a random region", fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
    fig.axes[0].legend(fontsize=7, loc="best")
    out["profile_density"] = _save(fig, figdir / "profile_density.png")
    return out


def transfer_figures(transfer: dict[str, Any], correlation: dict[str, Any] | None, figdir: Path) -> dict[str, Path]:
    """Rel heatmap (grafts and unions × eval tasks) and the overlap-vs-transfer scatter."""
    tasks = transfer["eval_tasks"]
    rows = list(transfer["grafts"])
    rel = [[np.nan if x is None else x for x in r] for r in transfer["rel"]]
    for u in transfer["unions"]:
        rows.append(f"∪ {u['name']}")
        rel.append([u["results"][t]["rel"] if t in u["results"] and u["results"][t]["rel"] is not None else np.nan
                    for t in tasks])
    v = np.array(rel, dtype=np.float64)
    avail = [[False] * len(tasks) for _ in rows]
    for i, r in enumerate(transfer["rel"]):
        for j, x in enumerate(r):
            avail[i][j] = x is not None
    for k, u in enumerate(transfer["unions"]):
        for j, t in enumerate(tasks):
            avail[len(transfer["grafts"]) + k][j] = t in u["results"]

    def text(i: int, j: int) -> str:
        if not avail[i][j]:
            return "n/a"
        return f"{v[i, j]:.2f}" if np.isfinite(v[i, j]) else "–"

    from matplotlib.colors import TwoSlopeNorm

    fin = v[np.isfinite(v)]
    lo = min(-0.1, float(fin.min())) if fin.size else -1
    hi = max(1.0, float(fin.max())) if fin.size else 1
    out = {"transfer_rel": heatmap(v, rows, tasks, figdir / "transfer_rel.png",
                                   "Rel of graft (row) on task (column), with the column task's head; n/a = other labels",
                                   "Rel", text, cmap="RdYlGn", norm=TwoSlopeNorm(vmin=lo, vcenter=0.0, vmax=hi),
                                   xlabel="evaluated on task", ylabel="graft")}
    if correlation and correlation["points"]:
        fig = _fig(5.2, 4.0)
        ax = fig.add_subplot(111)
        xs = [p["x"] for p in correlation["points"]]
        ys = [p["rel"] for p in correlation["points"]]
        ax.scatter(xs, ys, s=28, color="#4C72B0", edgecolor="black", linewidth=0.5)
        for p in correlation["points"]:
            ax.annotate(f"{p['graft']}→{p['eval_task']}", (p["x"], p["rel"]), fontsize=6, xytext=(3, 3),
                        textcoords="offset points")
        lo_x, hi_x = min(xs), max(xs)
        if lo_x > 2.0 and hi_x / lo_x < 10:
            # every pair far above chance, within one decade: a linear axis on the data (a chance line at
            # 1× would squeeze every point against the right edge)
            span = max(hi_x - lo_x, 0.05 * hi_x)
            ax.set_xlim(lo_x - 0.08 * span, hi_x + 0.55 * span)  # room for the labels on the right
            note = " (chance = 1×, far off the left edge)"
        else:
            log = all(x > 0 for x in xs)
            if log:
                ax.set_xscale("log")
            ax.axvline(1.0, color="gray", linestyle="--", linewidth=0.8)
            ax.set_xlim(right=hi_x * 3 if log else hi_x + 0.4 * (hi_x - lo_x + 1e-9))
            note = " (dashed: chance)"
        ax.set_xlabel(f"{correlation['x']} of the pair{note}", fontsize=8)
        ax.set_ylabel("Rel of graft i on task j", fontsize=8)
        rho = correlation.get("rho")
        ax.set_title(f"overlap vs transfer: Spearman ρ = {rho:.2f}, n = {correlation['n']}" if rho is not None
                     else f"overlap vs transfer ({correlation.get('note')})", fontsize=8)
        ax.tick_params(labelsize=7)
        out["overlap_vs_transfer"] = _save(fig, figdir / "overlap_vs_transfer.png")
    return out


# ------------------------------------------------------------------------------------------- files


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> Path:
    with atomic_file(path, "w") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in rows:
            w.writerow(["" if x is None else (f"{x:.6g}" if isinstance(x, float) else x) for x in r])
    return path


def _write_records(path: Path, recs: list[dict[str, Any]]) -> Path:
    keys: list[str] = []
    for r in recs:
        for k in r:
            if k not in keys and not isinstance(r[k], (list, dict)):
                keys.append(k)
    return _write_csv(path, keys, [[r.get(k) for k in keys] for r in recs])


def _matrix_csv(path: Path, M: Any, rows: list[str], cols: list[str]) -> Path:
    A = np.asarray(M, dtype=object)
    data = []
    for i, r in enumerate(rows):
        vals = []
        for j in range(len(cols)):
            x = A[i, j]
            vals.append(None if x is None or (isinstance(x, float) and not math.isfinite(x)) else
                        (int(x) if isinstance(x, (np.integer, int)) else float(x)))
        data.append([r, *vals])
    return _write_csv(path, ["task", *cols], data)


# -------------------------------------------------------------------------------------------- html


def _img_tag(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"><figcaption>{html.escape(alt)}</figcaption></figure>'


def _num(x: Any, fmt: str = ".3f") -> str:
    if x is None:
        return "–"
    if isinstance(x, (int, np.integer)):
        return f"{int(x):,}"
    return format(float(x), fmt)


_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;
margin-top:1.8em}table{border-collapse:collapse;font-size:.85em;margin:.6em 0;display:block;overflow-x:auto;
max-width:100%}th,td{border:1px solid #ccc;
padding:.25em .5em;text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
figure{margin:1em 0}img{max-width:100%;height:auto;border:1px solid #eee}figcaption{font-size:.8em;color:#666}
.summary li{margin:.3em 0}code{background:#f5f5f5;padding:0 .2em}.muted{color:#777;font-size:.85em}"""


class _Doc:
    """Builds the HTML page and its Markdown twin side by side."""

    def __init__(self, title: str) -> None:
        self.h: list[str] = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
        self.md: list[str] = [f"# {title}\n"]

    def h2(self, s: str) -> None:
        self.h.append(f"<h2>{html.escape(s)}</h2>")
        self.md.append(f"\n## {s}\n")

    def p(self, s: str, muted: bool = False) -> None:
        cls = " class='muted'" if muted else ""
        self.h.append(f"<p{cls}>{html.escape(s)}</p>")
        self.md.append(f"\n{s}\n")

    def ul(self, items: list[str], cls: str = "") -> None:
        self.h.append(f"<ul class='{cls}'>" + "".join(f"<li>{html.escape(x)}</li>" for x in items) + "</ul>")
        self.md.append("\n" + "\n".join(f"- {x}" for x in items) + "\n")

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.h.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in header) + "</tr>" + "".join(
            "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows) + "</table>")
        esc = [[str(c).replace("|", "\\|") for c in r] for r in rows]
        head = [c.replace("|", "\\|") for c in header]
        self.md.append("\n| " + " | ".join(head) + " |\n|" + "|".join("---" for _ in header) + "|\n"
                       + "\n".join("| " + " | ".join(r) + " |" for r in esc) + "\n")

    def img(self, path: Path, rel: str, alt: str) -> None:
        self.h.append(_img_tag(path, alt))
        self.md.append(f"\n![{alt}]({rel})\n")

    def html(self) -> str:
        return "\n".join(self.h) + "</body></html>\n"

    def markdown(self) -> str:
        return "".join(self.md)


# -------------------------------------------------------------------------------------------- main


def analyse(
    patches: Sequence[Any],
    *,
    with_transfer: bool = False,
    unions: Sequence[Sequence[str]] = (),
    min_enrichment: float = 2.0,
    max_p: float = 0.05,
    max_test: int | None = 500,
    device: str = "auto",
    duplicates: Duplicates = "error",
    sources: Sequence[str] | None = None,
    show_progress: bool = False,
    test_examples: Mapping[str, list[Any]] | None = None,
) -> dict[str, Any]:
    """Every number of the report, without writing anything (``build_report`` = this + files + MLflow).

    Keys: labels, patches, sources, nodes, P, segments, matrices (``overlap_matrices``), pairs
    (``pair_records``), breakdown_layer / breakdown_module (per-group counts and stats), pooled_layer /
    pooled_module, profiles, graph (networkx), graph_info, transfer, correlation (enrichment vs Rel),
    correlation_containment, summary.
    """
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
    P = seg.total
    regions = {lab: p.flat_indices() for lab, p in zip(labels, plist, strict=True)}
    mat = overlap_matrices(regions, P)
    mat.update(within_tensor_chance(regions, seg, mat["intersection"]))
    pairs = pair_records(mat)
    bd_layer = _breakdown(regions, seg, "layer")
    bd_module = _breakdown(regions, seg, "module")
    profiles = {lab: region_profile(r, seg, bias_separate=True) for lab, r in regions.items()}
    pooled_module = _pooled(bd_module)
    pooled_layer = _pooled(bd_layer)

    nodes: dict[str, dict[str, Any]] = {}
    for lab, p, src in zip(labels, plist, srcs, strict=True):
        h = p.header
        test = (h.metrics or {}).get("test", {})
        nodes[lab] = {"tasks": h.tasks, "source": src, "method": h.method, "region_size": h.region_size,
                      "sparsity": h.sparsity, "sparsity_requested": h.sparsity_requested,
                      "accuracy": _f(test.get("accuracy")), "rel": _f(test.get("rel")),
                      "domain": _domain(h.tasks[0]) if len(h.tasks) == 1 else None,
                      "finetuned_mode": (h.finetuned or {}).get("mode"), "model_type": h.model_type}

    from mtgraft.analysis.graph import annotate_communities, communities, task_graph

    keep = ("region_size", "sparsity", "accuracy", "rel", "method", "domain")
    G = task_graph(mat, {k: {kk: vv for kk, vv in v.items() if kk in keep} for k, v in nodes.items()},
                   min_enrichment, max_p)
    comms = communities(G)
    annotate_communities(G, comms)
    graph_info = {"nodes": G.number_of_nodes(), "edges": G.number_of_edges(), "min_enrichment": min_enrichment,
                  "max_p": max_p, "communities": comms, "modularity": G.graph.get("modularity"),
                  "algorithm": "networkx greedy_modularity_communities (weight = enrichment)"}

    transfer = correlation = correlation_c = None
    if with_transfer:
        from mtgraft.analysis.transfer import overlap_transfer_correlation, transfer_analysis
        from mtgraft.progress import progress_bar

        n_est = len(labels) * (len(labels) + 2) + sum(len(u) for u in unions)
        with progress_bar(n_est, "transfer", show_progress) as upd:
            transfer = transfer_analysis(plist, labels, [list(u) for u in unions], max_test, device,
                                         progress=lambda s, n, what: upd(s, what), test_examples=test_examples)
        correlation = overlap_transfer_correlation(mat["enrichment"], labels, transfer, "enrichment")
        correlation_c = overlap_transfer_correlation(mat["containment"], labels, transfer,
                                                     "containment |g_i∩g_j|/|g_j|")
    core = functools.reduce(lambda x, y: np.intersect1d(x, y, assume_unique=True), regions.values())
    summary = summarise(mat, pairs, pooled_module, comms, graph_info, nodes, transfer, correlation, min_enrichment,
                        core=int(core.size))
    return {"labels": labels, "patches": plist, "sources": srcs, "nodes": nodes, "P": P, "segments": seg,
            "header": h0, "matrices": mat, "pairs": pairs, "breakdown_layer": bd_layer, "breakdown_module": bd_module,
            "pooled_layer": pooled_layer, "pooled_module": pooled_module, "profiles": profiles, "graph": G,
            "graph_info": graph_info, "transfer": transfer, "correlation": correlation,
            "correlation_containment": correlation_c, "summary": summary}


def build_report(
    patches: Sequence[Any],
    out_dir: str | os.PathLike,
    *,
    with_transfer: bool = False,
    unions: Sequence[Sequence[str]] = (),
    min_enrichment: float = 2.0,
    max_p: float = 0.05,
    max_test: int | None = 500,
    device: str = "auto",
    title: str | None = None,
    duplicates: Duplicates = "error",
    track: bool = True,
    tracking_uri: str | None = None,
    show_progress: bool = False,
    sources: Sequence[str] | None = None,
    test_examples: Mapping[str, list[Any]] | None = None,
) -> ReportResult:
    """Write the overlap report for ``patches`` (SkillPatch objects or files of one base) into ``out_dir``.

    ``with_transfer`` evaluates each graft on every task with the same labels (at most ``max_test`` test
    examples per task) and the ``unions`` (groups of task names); ``min_enrichment``/``max_p`` set the
    graph's edges; ``duplicates`` says what to do with two patches of one task (see ``load_inputs``).
    The folder is written atomically, then logged as the artifacts of an MLflow run (unless ``track`` is off).
    """
    t0 = time.perf_counter()
    a = analyse(patches, with_transfer=with_transfer, unions=unions, min_enrichment=min_enrichment, max_p=max_p,
                max_test=max_test, device=device, duplicates=duplicates, sources=sources,
                show_progress=show_progress, test_examples=test_examples)
    labels, mat, pairs, h0 = a["labels"], a["matrices"], a["pairs"], a["header"]
    transfer, correlation, correlation_c = a["transfer"], a["correlation"], a["correlation_containment"]
    graph_info, summary = a["graph_info"], a["summary"]
    P = a["P"]
    title = title or f"Overlap of task regions: {', '.join(labels)}"
    final = Path(out_dir)
    with atomic_dir(final) as tmp:
        paths = _write_all(tmp, title, a, min_enrichment, max_p, max_test)
    paths = {k: final / v.relative_to(tmp) for k, v in paths.items()}
    summary_out = {
        "title": title, "tasks": labels, "P": P, "base_model": h0.base_model, "base_hash": h0.base_hash,
        "sizes": {lab: int(s) for lab, s in zip(labels, mat["sizes"], strict=True)},
        "pairs": to_jsonable(pairs), "graph": graph_info, "summary": summary,
        "transfer": None if transfer is None else to_jsonable({
            "rel": transfer["rel"], "grafts": transfer["grafts"], "eval_tasks": transfer["eval_tasks"],
            "unions": [{k: u[k] for k in ("name", "region_size", "mean_rel", "results")} for u in transfer["unions"]],
            "spearman_enrichment": {k: v for k, v in (correlation or {}).items() if k != "points"},
            "spearman_containment": {k: v for k, v in (correlation_c or {}).items() if k != "points"}}),
    }
    run_id = None
    if track:
        from mtgraft.tracking import mlflow_run

        with mlflow_run("report", f"overlap-{'-'.join(labels)}"[:120], tracking_uri,
                        tags={"mtgraft.command": "overlap-report", "mtgraft.tasks": ",".join(labels)}) as run:
            run.log_params({"tasks": ",".join(labels), "n_tasks": len(labels), "P": P, "base_model": h0.base_model,
                            "base_hash": h0.base_hash, "min_enrichment": min_enrichment, "max_p": max_p,
                            "with_transfer": with_transfer, "max_test": max_test,
                            "unions": ";".join(",".join(u) for u in unions), "duplicates": duplicates})
            met: dict[str, Any] = {"graph_edges": graph_info["edges"], "n_communities": len(graph_info["communities"])}
            for r in pairs:
                key = f"{r['a']}__{r['b']}"
                met[f"enrichment/{key}"] = r["enrichment"]
                met[f"jaccard/{key}"] = r["jaccard"]
            if correlation and correlation.get("rho") is not None:
                met["spearman_rho_enrichment_rel"] = correlation["rho"]
            run.log_metrics({_metric_key(k): v for k, v in met.items() if v is not None})
            run.log_artifact(final, "overlap_report")
            run_id = run.run_id
    summary_out["seconds"] = round(time.perf_counter() - t0, 2)
    return ReportResult(final, summary_out, paths, run_id)


def _metric_key(k: str) -> str:
    """An MLflow-safe metric key (letters, digits, _ - . / and spaces only)."""
    import re

    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", k)


def _write_all(d: Path, title: str, a: dict[str, Any], min_enrichment: float, max_p: float,
               max_test: int | None) -> dict[str, Path]:
    labels, nodes, mat, pairs = a["labels"], a["nodes"], a["matrices"], a["pairs"]
    bd_layer, bd_module, pooled_layer, pooled_module = (a["breakdown_layer"], a["breakdown_module"],
                                                        a["pooled_layer"], a["pooled_module"])
    profiles, G, graph_info, summary, h0 = a["profiles"], a["graph"], a["graph_info"], a["summary"], a["header"]
    transfer, correlation, correlation_c = a["transfer"], a["correlation"], a["correlation_containment"]
    from mtgraft.analysis.graph import draw_graph, node_link, write_graphml, write_node_link

    paths: dict[str, Path] = {}
    figdir = d / "figures"
    csvdir = d / "csv"
    figdir.mkdir()
    csvdir.mkdir()
    # ---- data files
    overlap = {
        "format": "mtgraft.overlap-report", "format_version": 1, "title": title,
        "base_model": h0.base_model, "base_hash": h0.base_hash, "model_type": h0.model_type, "P": mat["P"],
        "tasks": labels, "inputs": [{"task": lab, **nodes[lab]} for lab in labels],
        "conventions": {
            "containment": "containment[i][j] = |g_i ∩ g_j| / |g_j| (share of task j's region that g_i covers; paper)",
            "expected": "|g_i|·|g_j| / |P|: mean intersection of two uniformly random regions of the same sizes",
            "enrichment": "intersection / expected",
            "p_value": "hypergeometric P(X >= intersection) (more overlap than chance)",
            "p_value_depletion": "hypergeometric P(X <= intersection) (less overlap than chance)",
            "verdicts": "Bonferroni over pairs, alpha 0.05",
            "modules": "module kinds with every bias in 'bias' (bias_separate=True)",
            "expected_within_tensors": "sum over graftable tensors t of |g_i∩t|·|g_j∩t|/|t| (chance given each "
                                       "region's count per tensor); enrichment_within_tensors = intersection / it",
        },
        "matrices": to_jsonable({k: mat[k] for k in ("sizes", *MATRIX_KEYS)}),
        "pairs": to_jsonable(pairs),
        "breakdown": {
            by: to_jsonable({"groups": bd["groups"], "params": bd["params"], "sizes": bd["sizes"],
                             "intersection": bd["intersection"], "expected": bd["expected"],
                             **{k.removeprefix("stat_"): bd[k] for k in bd if k.startswith("stat_")}})
            for by, bd in (("layer", bd_layer), ("module", bd_module))},
        "pooled": {"layer": to_jsonable(pooled_layer), "module": to_jsonable(pooled_module)},
        "profiles": to_jsonable(profiles),
        "graph": {**graph_info, "node_link": node_link(G)},
        "summary": summary,
    }
    if transfer is not None:
        overlap["transfer"] = to_jsonable({**transfer, "spearman_enrichment": correlation,
                                           "spearman_containment": correlation_c})
    write_json(d / "overlap.json", to_jsonable(overlap))
    paths["overlap_json"] = d / "overlap.json"
    for k in ("sizes", *MATRIX_KEYS):
        if k == "sizes":
            continue
        paths[f"csv_{k}"] = _matrix_csv(csvdir / f"{k}.csv", mat[k], labels, labels)
    paths["csv_pairs"] = _write_records(csvdir / "pairs.csv", pairs)
    paths["csv_breakdown_layer"] = _write_records(csvdir / "breakdown_layer.csv", _breakdown_records(bd_layer, labels))
    paths["csv_breakdown_module"] = _write_records(csvdir / "breakdown_module.csv",
                                                   _breakdown_records(bd_module, labels))
    prof_rows = [{"task": t, **r} for t, pr in profiles.items() for r in pr["by_layer_module"]]
    paths["csv_profiles"] = _write_records(csvdir / "profiles.csv", prof_rows)
    if transfer is not None:
        tr_rows = [{k: v for k, v in r.items() if k != "graft_tasks"} for r in transfer["results"]]
        for u in transfer["unions"]:
            for t, v in u["results"].items():
                tr_rows.append({"graft": f"union:{u['name']}", "eval_task": t, "own": True, **v})
        paths["csv_transfer"] = _write_records(csvdir / "transfer.csv", tr_rows)
        paths["csv_transfer_rel"] = _matrix_csv(csvdir / "transfer_rel.csv",
                                                [[np.nan if x is None else x for x in r] for r in transfer["rel"]],
                                                transfer["grafts"], transfer["eval_tasks"])
    paths["graphml"] = write_graphml(G, d / "task_graph.graphml")
    paths["graph_json"] = write_node_link(G, d / "task_graph.json")
    # ---- figures
    figs = matrix_figures(mat, figdir)
    figs["breakdown_module"] = breakdown_figure(bd_module, labels, figdir / "breakdown_module.png", "module kind")
    figs["breakdown_layer"] = breakdown_figure(bd_layer, labels, figdir / "breakdown_layer.png", "layer")
    figs.update(profile_figures(profiles, figdir))
    figs["task_graph"] = draw_graph(G, figdir / "task_graph.png", title="task graph")
    if transfer is not None:
        figs.update(transfer_figures(transfer, correlation, figdir))
    paths.update({f"fig_{k}": v for k, v in figs.items()})
    # ---- the page and its twin
    doc = _Doc(title)
    doc.p(f"Base model {h0.base_model} ({h0.base_hash[:19]}…), {h0.model_type} model; |P| = {mat['P']:,} graftable "
          "parameters (the task head is always grafted and not counted). Generated by mtgraft overlap-report.",
          muted=True)
    doc.h2("Summary")
    doc.ul(summary["sentences"], "summary")
    doc.h2("Inputs")
    doc.table(["task", "domain", "method", "sparsity", "region size", "test acc", "Rel", "source"],
              [[lab, nodes[lab]["domain"] or "–", nodes[lab]["method"], f"{nodes[lab]['sparsity']:.2e}",
                f"{nodes[lab]['region_size']:,}", _num(nodes[lab]["accuracy"]), _num(nodes[lab]["rel"]),
                nodes[lab]["source"]] for lab in labels])
    doc.h2("Pairs")
    doc.p("containment a→b = |a∩b|/|a| (share of a's region that b also has); expected = |a||b|/|P|; enrichment = "
          "shared / expected; p = P(shared ≥ observed) for random regions (hypergeometric); enrichment within "
          "tensors = shared / Σ_t |a∩t||b∩t|/|t| (chance for random regions with the same count in every tensor). "
          "Verdicts use "
          f"Bonferroni-adjusted p over {pairs[0]['n_tests'] if pairs else 0} pairs.", muted=True)
    doc.table(["a", "b", "|a|", "|b|", "shared", "expected", "enrichment", "p", "enrichment within tensors",
               "containment a→b", "containment b→a", "Jaccard", "overlap coef.", "verdict"],
              [[r["a"], r["b"], f"{r['size_a']:,}", f"{r['size_b']:,}", f"{r['intersection']:,}",
                f"{r['expected']:.2f}", fmt_x(r["enrichment"]), fmt_p(r["p_value"], r["log10_p_value"]),
                fmt_x(r.get("enrichment_within_tensors")),
                _num(r["containment_a_in_b"]), _num(r["containment_b_in_a"]), _num(r["jaccard"], ".4f"),
                _num(r["overlap_coefficient"]), r["verdict"].replace("_", " ")]
               for r in sorted(pairs, key=lambda r: -(r["enrichment"] or 0))])
    doc.h2("Overlap matrices")
    for k, alt in (("heatmap_containment", "Containment |g_i∩g_j|/|g_j| (the paper's figure)"),
                   ("heatmap_enrichment", "Enrichment over chance (log scale; 1× = random)"),
                   ("heatmap_enrichment_within_tensors", "Enrichment given the tensors each region sits in"),
                   ("heatmap_jaccard", "Jaccard"), ("heatmap_pvalue", "-log10 p (hypergeometric)")):
        if k in figs:
            doc.img(figs[k], f"figures/{figs[k].name}", alt)
    doc.h2("Task graph")
    doc.p(f"Edges join tasks whose regions share at least {min_enrichment:g}× the chance overlap with p ≤ {max_p:g}; "
          f"communities by {graph_info['algorithm']}: " + "; ".join("{" + ", ".join(c) + "}" for c in graph_info["communities"])
          + (f" (modularity {graph_info['modularity']:.3f})." if graph_info.get("modularity") is not None else "."))
    doc.img(figs["task_graph"], "figures/task_graph.png", "Task graph")
    doc.h2("Where the overlap is: per module kind and per layer")
    doc.table(["module kind", "params", "shared (all pairs)", "expected", "enrichment"],
              [[g["group"], f"{g['params']:,}", f"{g['observed']:,}", f"{g['expected']:.1f}", fmt_x(g["enrichment"])]
               for g in pooled_module])
    doc.img(figs["breakdown_module"], "figures/breakdown_module.png", "Enrichment per module kind, every pair")
    doc.img(figs["breakdown_layer"], "figures/breakdown_layer.png", "Enrichment per layer, every pair")
    doc.h2("Region profiles")
    doc.p("Where each task's region sits (layer × module kind, biases counted as their own kind), and how dense "
          "each module kind / layer is relative to the region's overall density (1 = as a random region).", muted=True)
    doc.img(figs["profile_layer_module"], "figures/profile_layer_module.png", "Region profile per task")
    doc.img(figs["profile_density"], "figures/profile_density.png", "Relative density per module kind and layer")
    if transfer is not None:
        doc.h2("Transfer")
        doc.p("Rel = (acc − P_0) / (P_1 − P_0) on the column task's test split with the column task's head; "
              "P_0 = pretrained body, P_1 = fine-tuned body (both with that head). Grafts are only evaluated on "
              f"tasks with the same label space. Test examples per task: at most {max_test}.", muted=True)
        ts = transfer["eval_tasks"]
        doc.table(["graft \\ task", *ts],
                  [[g, *[("n/a" if x is None else _num(x, ".2f")) for x in row]]
                   for g, row in zip(transfer["grafts"], transfer["rel"], strict=True)]
                  + [[f"∪ {u['name']}", *[(_num(u["results"][t]["rel"], ".2f") if t in u["results"] else "n/a")
                                          for t in ts]] for u in transfer["unions"]])
        doc.table(["task", "n test", "P_0 (pretrained + head)", "P_1 (fine-tuned)", "P_1 − P_0", "P_0 source",
                   "P_1 source"],
                  [[t, str(r["n"]), _num(r["pretrained"]), _num(r["finetuned"]),
                    _num(r.get("gain"), "+.3f"), r["pretrained_source"], r["finetuned_source"]]
                   for t, r in transfer["reference"].items()])
        doc.p("Standard error of a Rel from the test sample alone: sqrt(acc·(1 − acc)/n) / |P_1 − P_0| "
              "(in overlap.json and csv/transfer.csv as rel_se).", muted=True)
        doc.img(figs["transfer_rel"], "figures/transfer_rel.png", "Rel of each graft on each compatible task")
        for c in (correlation, correlation_c):
            if c is None:
                continue
            if c.get("rho") is not None:
                doc.p(f"Spearman({c['x']}, Rel) over {c['n']} directed pairs: ρ = {c['rho']:.3f}, "
                      f"p = {fmt_p(c['p_value'])}" + (f" — {c['note']}." if c.get("note") else "."))
            else:
                doc.p(f"Spearman({c['x']}, Rel): {c.get('note')}.")
        if "overlap_vs_transfer" in figs:
            doc.img(figs["overlap_vs_transfer"], "figures/overlap_vs_transfer.png", "Overlap vs transfer")
    doc.h2("Files")
    doc.ul(["overlap.json — every number above (matrices, pairs, breakdowns, profiles, graph, transfer)",
            "task_graph.graphml / task_graph.json — the task graph (GraphML, node-link JSON)",
            "csv/*.csv — each matrix (rows/columns = tasks), pairs, per-layer/module breakdowns, profiles"
            + (", transfer" if transfer is not None else ""),
            "figures/*.png — the figures of this page"])
    with atomic_file(d / "report.html", "w") as f:
        f.write(doc.html())
    with atomic_file(d / "report.md", "w") as f:
        f.write(doc.markdown())
    paths["html"] = d / "report.html"
    paths["md"] = d / "report.md"
    return paths
