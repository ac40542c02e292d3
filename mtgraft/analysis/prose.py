"""The report's summary: plain-language sentences generated from the numbers, with every threshold named here.

``summarise(data, core)`` reads a ``ReportData`` (or anything with its attributes ``matrices``, ``pairs``,
``pooled_module``, ``nodes``, ``graph_info``, ``transfer`` and ``correlation``) and returns the structured
findings with their ``sentences``. Each sentence comes from one small function below, testable on its own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from mtgraft.analysis.formatting import finite_interval, fmt_p, fmt_pairs, fmt_range, fmt_x
from mtgraft.analysis.stats import ALPHA, MIN_GAIN, VERDICTS, domain_comparison, learnt_pairs, split_by_domain

CHANCE_BAND = 1.5
"""Every pair's enrichment within [1/CHANCE_BAND, CHANCE_BAND]: the regions overlap at about chance level."""
NEAR_IDENTICAL_JACCARD = 0.8
"""Every pair's Jaccard at least this: the regions are nearly identical."""
MAX_LISTED_BEYOND_CHANCE = 6
"""Pairs overlapping beyond chance spelled out one by one (most enriched first); the rest are counted."""
MAX_LISTED_CHANCE = 4
"""Chance-level pairs spelled out (smallest p first)."""
MAX_LISTED_BELOW_CHANCE = 3
"""Pairs sharing fewer entries than chance spelled out."""
MAX_LISTED_TOO_SMALL = 2
"""Pairs too small to tell anything spelled out."""
DOMAIN_MORE_RATIO = 1.25
"""Same-domain median enrichment at least this times the cross-domain one: same-domain tasks overlap more."""
DOMAIN_LESS_RATIO = 0.8
"""... at most this times: they overlap less (in between: about as much)."""
MIN_DOMAIN_PAIRS = 3
"""Pairs needed on each side (same domain, different domains) before the report compares them at all."""
NO_STRUCTURE_MODULARITY = 0.1
"""Modularity of the task graph's communities below this: no community structure (one group says nothing)."""
MIN_POOLED_EXPECTED = 1.0
"""A module kind enters the where-is-the-overlap sentence only when chance expects this many shared entries."""
NOISY_REL_SE = 0.2
"""Median standard error of Rel above this: the summary warns that Rel is noisy."""
RHO_TRACKS = 0.5
"""Spearman ρ (overlap vs transfer) at least this: overlap tracks transfer."""
RHO_WEAKLY_TRACKS = 0.2
"""... at least this: weakly tracks."""
RHO_RUNS_AGAINST = -0.2
"""... above this: does not track; at most this: runs against."""


class ProseInput(Protocol):
    """What ``summarise`` reads (``ReportData`` has it)."""

    matrices: dict[str, Any]
    pairs: list[dict[str, Any]]
    pooled_module: list[dict[str, Any]]
    nodes: dict[str, dict[str, Any]]
    graph_info: dict[str, Any]
    transfer: dict[str, Any] | None
    correlation: dict[str, Any] | None


def by_verdict(pairs: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The pairs of each verdict, in ``VERDICTS`` order."""
    return {v: [r for r in pairs if r["verdict"] == v] for v in VERDICTS}


def pair_phrase(r: dict[str, Any]) -> str:
    """One pair in words, by its verdict (no final full stop)."""
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


def regions_sentence(n_tasks: int, P: int, sizes: Sequence[int], pairs: Sequence[dict[str, Any]]) -> str:
    """How big the regions are, and how much two random regions of these sizes share."""
    mean_exp = float(np.mean([r["expected"] for r in pairs])) if pairs else 0.0
    return (f"{n_tasks} task regions of {fmt_range(sizes, '{:,}')} entries out of |P| = {P:,} graftable "
            f"parameters (density {fmt_range([x / P for x in sizes], '{:.2e}')}); two random regions of these sizes "
            f"would share {mean_exp:.1f} entries on average.")


def chance_level_sentence(pairs: Sequence[dict[str, Any]]) -> str | None:
    """When every (informative) pair's enrichment is within the chance band."""
    enr = [r["enrichment"] for r in pairs if r["enrichment"] is not None and r["verdict"] != "too_small"]
    if enr and max(enr) < CHANCE_BAND and min(enr) > 1 / CHANCE_BAND:
        return (f"Every pair overlaps at about chance level (enrichment {min(enr):.2f}–{max(enr):.2f}): "
                "here the regions do not single out related tasks.")
    return None


def common_core_sentence(n_pairs: int, n_beyond: int, sizes: Sequence[int], P: int, core: int) -> str | None:
    """When every pair (of several) overlaps beyond chance: the entries common to all regions."""
    if not (n_pairs > 1 and n_beyond == n_pairs):
        return None
    core_expected = float(P * np.prod([s / P for s in sizes])) if P else 0.0
    return (f"Every pair, similar or not, shares more than chance; {core:,} entries lie in all "
            f"{len(sizes)} regions (chance would put {core_expected:.2g} there): part of each region is "
            "common to all these tasks, so compare enrichments rather than asking whether there is overlap.")


def near_identical_sentence(pairs: Sequence[dict[str, Any]], modes: set[Any]) -> str | None:
    """When every pair's Jaccard is high; ``modes`` = the tasks' fine-tuning modes (``joint`` explains why)."""
    jac = [r["jaccard"] for r in pairs if r["jaccard"] is not None]
    if not (len(jac) == len(pairs) and pairs and min(jac) >= NEAR_IDENTICAL_JACCARD):
        return None
    why = (" They come from one jointly fine-tuned model, whose base patch (top-k |θ_ft − θ_pre|) is the same "
           "for every task: the learned grafts have barely moved away from it. Learn them longer (or with a "
           "free budget) before reading overlap as task similarity." if modes == {"joint"} else "")
    return f"The regions are nearly identical (Jaccard {min(jac):.2f}–{max(jac):.2f} for every pair).{why}"


def not_learnt_sentence(tasks: Sequence[str], nodes: Mapping[str, Mapping[str, Any]], n_left_out: int) -> str:
    """Which tasks fine-tuning did not teach (gain interval includes 0, or gain below ``MIN_GAIN``), and that
    their pairs are left out of every conclusion below."""
    why = "; ".join(f"{t}: {nodes[t]['learnt_reason']}" for t in tasks)
    return (f"Not learnt, so left out of the conclusions below (the tables keep them): {why}. A task counts "
            f"as learnt when fine-tuning gained at least {MIN_GAIN:.2f} test accuracy over P_0 with a 95% "
            f"interval above 0; {fmt_pairs(n_left_out)} involving them {'is' if n_left_out == 1 else 'are'} "
            "not used for overlap or similarity claims, nor for the task graph's edges.")


def pair_sentences(by: Mapping[str, list[dict[str, Any]]], strong: Sequence[dict[str, Any]]) -> list[str]:
    """The notable pairs one by one: beyond chance (``strong``, sorted), then chance, below chance, too small."""
    lines = [pair_phrase(r) + "." for r in strong[:MAX_LISTED_BEYOND_CHANCE]]
    if len(strong) > MAX_LISTED_BEYOND_CHANCE:
        lines.append(f"{len(strong) - MAX_LISTED_BEYOND_CHANCE} more pairs also overlap beyond chance "
                     "(see the table).")
    chance = sorted(by["chance"], key=lambda r: r["p_value"] or 1)[:MAX_LISTED_CHANCE]
    rest = by["below_chance"][:MAX_LISTED_BELOW_CHANCE] + by["too_small"][:MAX_LISTED_TOO_SMALL]
    return lines + [pair_phrase(r) + "." for r in chance + rest]


def domain_sentence(cmp: Mapping[str, Any], domains: Sequence[str]) -> str:
    """Same- vs cross-domain overlap (``cmp`` from ``stats.domain_comparison``; ``domains`` = the shared ones);
    with fewer than ``MIN_DOMAIN_PAIRS`` pairs on either side, only that there is too little to tell."""
    s, c = cmp["same_domain"], cmp["cross_domain"]
    if min(s["n"], c["n"]) < MIN_DOMAIN_PAIRS:
        return (f"Same-domain vs cross-domain overlap: too few pairs to tell ({fmt_pairs(s['n'])} within a domain "
                f"({', '.join(domains)}), {fmt_pairs(c['n'])} across domains; the report compares them from "
                f"{MIN_DOMAIN_PAIRS} pairs on each side).")
    ms, mc = s["median_enrichment"], c["median_enrichment"]
    ratio = ms / mc if mc > 0 else math.inf
    verdict = ("more than" if ratio >= DOMAIN_MORE_RATIO else "less than" if ratio <= DOMAIN_LESS_RATIO
               else "about as much as")
    mw = cmp.get("mannwhitney_p_greater")
    if verdict == "about as much as" and mw is not None and mw <= ALPHA and ratio > 1:
        # a small but consistent difference: say both
        verdict = f"slightly but consistently more than ({(ratio - 1) * 100:.0f}% higher median enrichment)"
    extra = f", one-sided Mann–Whitney p = {fmt_p(mw)}" if "mannwhitney_p_greater" in cmp else ""
    ws, wc = s["median_enrichment_within_tensors"], c["median_enrichment_within_tensors"]
    within = (f"; given the tensors each region sits in: {fmt_x(ws)} vs {fmt_x(wc)}"
              if ws is not None and wc is not None else "")
    return (f"Tasks of the same domain ({', '.join(domains)}) overlap {verdict} tasks of different domains: "
            f"median enrichment {fmt_x(ms)} (n = {fmt_pairs(s['n'])}, Jaccard {s['median_jaccard']:.3f}) vs "
            f"{fmt_x(mc)} (n = {fmt_pairs(c['n'])}, Jaccard {c['median_jaccard']:.3f}){extra}{within}.")


def concentration_sentence(pooled_module: Sequence[dict[str, Any]], pairs: Sequence[dict[str, Any]]) -> str | None:
    """The module kinds where shared entries are most and least enriched (summed over all pairs), ranked among
    the kinds where chance expects at least ``MIN_POOLED_EXPECTED`` shared entries; the kinds left out by that
    rule are named with their enrichment, so the sentence never contradicts the table."""
    usable = [g for g in pooled_module if g["enrichment"] is not None]
    pm = [g for g in usable if g["expected"] >= MIN_POOLED_EXPECTED]
    if not (pm and pairs and sum(g["observed"] for g in pm) > 0):
        return None
    top = max(pm, key=lambda g: g["enrichment"])
    low = min(pm, key=lambda g: g["enrichment"])
    sparse = sorted((g for g in usable if g["expected"] < MIN_POOLED_EXPECTED), key=lambda g: -g["enrichment"])
    left = ""
    if sparse:
        kinds = ", ".join(f"{g['module']} {fmt_x(g['enrichment'])} ({g['observed']:,} shared vs "
                          f"{g['expected']:.2g} expected)" for g in sparse)
        left = (f" Left out of that ranking because chance expects fewer than {MIN_POOLED_EXPECTED:g} shared "
                f"entry there, so their enrichment rests on a tiny denominator: {kinds}.")
    return (f"Summed over all pairs, among module kinds where chance expects at least {MIN_POOLED_EXPECTED:g} shared "
            f"entry, shared entries are most enriched in {top['module']} ({fmt_x(top['enrichment'])} chance within "
            f"it) and least in {low['module']} ({fmt_x(low['enrichment'])}).{left}")


def graph_sentence(graph_info: Mapping[str, Any]) -> str:
    """The task graph's edges and communities (or that it has none)."""
    me, mp = graph_info["min_enrichment"], graph_info["max_p"]
    if graph_info["edges"]:
        groups = "; ".join("{" + ", ".join(c) + "}" for c in graph_info["communities"])
        head = (f"The task graph (edges: beyond chance, enrichment ≥ {me:g}, adjusted p ≤ {mp:g}) has "
                f"{graph_info['edges']} edge(s)")
        q = graph_info.get("modularity")
        if q is not None and q < NO_STRUCTURE_MODULARITY:
            return (f"{head}, but no community structure: the best grouping ({groups}) has modularity {q:.3f} "
                    f"(below {NO_STRUCTURE_MODULARITY:g}), so the graph does not split these tasks into groups.")
        mod = f" (modularity {q:.3f})" if q is not None else ""
        return f"{head}; greedy modularity groups the tasks as {groups}{mod}."
    return (f"No pair is beyond chance with enrichment ≥ {me:g} and adjusted p ≤ {mp:g}: the task graph has no "
            "edges.")


def noise_sentence(transfer: Mapping[str, Any]) -> str | None:
    """When the median standard error of Rel is large: how little one test example is worth."""
    ses = [r["rel_se"] for r in transfer["results"] if r.get("rel_se") is not None]
    if not (ses and float(np.median(ses)) > NOISY_REL_SE):
        return None
    gains = [v["gain"] for v in transfer["reference"].values() if v.get("gain") is not None]
    ns = [v["n"] for v in transfer["reference"].values()]
    return (f"Rel is noisy here: fine-tuning gained only {min(gains):+.3f} to {max(gains):+.3f} accuracy over "
            f"P_0 on {fmt_range(ns)} test examples (one example moves accuracy by {1 / max(min(ns), 1):.3f}), "
            f"so a Rel has a standard error of about {float(np.median(ses)):.2f} (median); differences in Rel "
            "below that are not evidence.")


def rel_sentences(transfer: Mapping[str, Any]) -> list[str]:
    """Each graft's Rel on its own task, the range across tasks, and each union graft's Rel."""
    lines = []
    own = [r for r in transfer["results"] if r["own"] and r["rel"] is not None]
    if own:
        def with_ci(r: Mapping[str, Any]) -> str:
            iv = finite_interval(r.get("rel_ci95"))
            return f"{r['graft']} {r['rel']:.2f}" + (f" [{iv[0]:.2f}, {iv[1]:.2f}]" if iv else "")

        ci_note = " (95% paired-bootstrap intervals)" if any(finite_interval(r.get("rel_ci95")) for r in own) else ""
        lines.append(f"Each graft on its own task keeps Rel{ci_note} " + ", ".join(with_ci(r) for r in own) + ".")
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
    return lines


def correlation_sentence(correlation: Mapping[str, Any]) -> str:
    """Whether overlap (enrichment) tracks transfer (Rel), in words, with Spearman's ρ."""
    if correlation.get("rho") is None:
        return f"Overlap vs transfer: {correlation.get('note')}."
    r = correlation["rho"]
    word = ("tracks" if r >= RHO_TRACKS else "weakly tracks" if r >= RHO_WEAKLY_TRACKS else
            "does not track" if r > RHO_RUNS_AGAINST else "runs against")
    note = f"; {correlation['note']}" if correlation.get("note") else ""
    return (f"Overlap {word} transfer (Spearman ρ = {r:.2f}, p = {fmt_p(correlation['p_value'])}, "
            f"n = {correlation['n']} directed pairs{note}).")


def summarise(data: ProseInput, core: int = 0) -> dict[str, Any]:
    """Structured findings and plain-language sentences generated from the numbers.

    ``core`` = number of entries in every region (reported when every pair overlaps beyond chance).
    """
    mat, nodes = data.matrices, data.nodes
    tasks = mat["tasks"]
    P = int(mat["P"])
    sizes = [int(s) for s in mat["sizes"]]
    pairs = learnt_pairs(data.pairs, nodes)  # conclusions only from tasks fine-tuning actually taught
    not_learnt = [t for t in tasks if nodes[t].get("learnt") is False]
    by = by_verdict(pairs)
    strong = sorted(by["beyond_chance"], key=lambda r: -(r["enrichment"] or 0))
    lines = [regions_sentence(len(tasks), P, sizes, data.pairs)]
    if not_learnt:
        lines.append(not_learnt_sentence(not_learnt, nodes, len(data.pairs) - len(pairs)))
    lines += [s for s in (chance_level_sentence(pairs),
                          common_core_sentence(len(pairs), len(strong), sizes, P, core),
                          near_identical_sentence(pairs, {nodes[t].get("finetuned_mode") for t in tasks}))
              if s is not None]
    lines += pair_sentences(by, strong)
    if pairs:
        lines.append(f"Verdicts use p-values Bonferroni-adjusted over the {pairs[0]['n_tests']} pairs (α = {ALPHA}).")
    dom = {t: nodes[t].get("domain") for t in tasks}
    same, cross = split_by_domain(pairs, dom)
    domain_cmp = domain_comparison(same, cross)
    if domain_cmp is not None:
        lines.append(domain_sentence(domain_cmp, sorted({dom[r["a"]] for r in same})))
    lines += [s for s in (concentration_sentence(data.pooled_module, pairs), graph_sentence(data.graph_info))
              if s is not None]
    if data.transfer is not None:
        noisy = noise_sentence(data.transfer)
        lines += ([noisy] if noisy else []) + rel_sentences(data.transfer)
        if data.correlation is not None:
            lines.append(correlation_sentence(data.correlation))
    comms = data.graph_info["communities"]
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
        "multi_task_communities": [c for c in comms if len(c) > 1],
    }
