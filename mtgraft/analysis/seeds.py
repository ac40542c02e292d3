"""Overlap over seeds: each seed's regions give their own pair metrics; these are aggregated per task pair.

``aggregate_pairs({seed: pairs})`` takes the ``pairs`` of one overlap report per seed (``stats.pair_records``)
and returns, per unordered task pair, the shape of ``evaluation.uncertainty.aggregate_seeds``: ``seeds``,
``per_seed`` (seed → that seed's record), ``n``, ``mean``, ``sd``, ``ci95`` (95% t-interval of the mean over
seeds) of every numeric field (intersection, jaccard, containment, enrichment, p-values, …), plus how
many seeds gave each verdict. ``seeds_markdown`` is the report's table "over N seeds" (mean ± half-width).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mtgraft.evaluation.uncertainty import aggregate_seeds, format_ci

SHOWN = (("intersection", "shared", 1), ("jaccard", "Jaccard", 4), ("enrichment", "enrichment", 2),
         ("enrichment_within_tensors", "enrichment (within tensors)", 2), ("p_adjusted", "p (Bonferroni)", 3))
"""Columns of the "over N seeds" table: (field, heading, decimals)."""


def aggregate_pairs(per_seed: Mapping[int, Sequence[Mapping[str, Any]]]) -> dict[str, Any]:
    """Per task pair, the aggregate over seeds of its pair record (pairs missing in a seed are left out)."""
    by_pair: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
    for s, pairs in per_seed.items():
        for p in pairs:
            key = tuple(sorted((p["a"], p["b"])))
            by_pair.setdefault(key, {})[s] = dict(p)  # type: ignore[index]
    out = []
    for (a, b), recs in by_pair.items():
        verdicts: dict[str, int] = {}
        for r in recs.values():
            verdicts[str(r.get("verdict"))] = verdicts.get(str(r.get("verdict")), 0) + 1
        out.append({"a": a, "b": b, "verdicts": verdicts, **aggregate_seeds(recs)})
    return {"seeds": list(per_seed), "n_seeds": len(per_seed), "pairs": out,
            "interval": "95% Student-t interval of the mean over seeds"}


def seeds_rows(agg: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The table of ``aggregate_pairs`` (header, rows): mean ± half-width of the 95% interval per pair and field,
    and how many seeds gave each verdict."""
    header = ["pair", *[h for _, h, _ in SHOWN], "verdicts (seeds)"]
    rows = []
    for p in agg["pairs"]:
        cells = [format_ci({"mean": p["mean"].get(k), "ci95": p["ci95"].get(k)}, nd) for k, _, nd in SHOWN]
        verdicts = ", ".join(f"{v.replace('_', ' ')} ×{n}" for v, n in sorted(p["verdicts"].items()))
        rows.append([f"{p['a']} · {p['b']}", *cells, verdicts])
    return header, rows


def seeds_markdown(agg: Mapping[str, Any]) -> str:
    """``seeds_rows`` as a Markdown table, under one line saying what it is."""
    header, rows = seeds_rows(agg)
    lines = [f"Over {len(agg['seeds'])} seeds ({', '.join(map(str, agg['seeds']))}): each seed's regions give "
             "their own pair metrics; mean ± half-width of the 95% t-interval over seeds.", "",
             "| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 2) + "---|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"
