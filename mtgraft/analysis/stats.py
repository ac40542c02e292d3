"""The report's statistics beside ``overlap``: chance baselines, depletion p-values, multiple testing, verdicts.

``overlap`` gives each pair's counts, ratios and enrichment p-value (more shared than chance). Here: the
chance given where each region lies (``within_tensor_chance``), the depletion p-value (fewer shared than
chance), Bonferroni adjustment over the pairs and the per-pair verdict (``pair_records``), the per-group
breakdowns with their statistics and pooled over all pairs, and the same- vs cross-domain comparison.
Definitions: docs/overlap-report.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mtgraft.analysis.overlap import Segments, breakdown_matrices, breakdown_stats
from mtgraft.utils import finite_or_none

ALPHA = 0.05
"""Significance level of every verdict (after the Bonferroni adjustment)."""
BEYOND_CHANCE_MIN_ENRICHMENT = 1.0
"""A pair overlaps beyond chance only when it also shares at least this many times the chance intersection."""
TOO_SMALL_EXPECTED = 1.0
"""Chance expecting fewer shared entries than this, and none shared: the pair says nothing (``too_small``)."""
MIN_PAIRS_FOR_MANNWHITNEY = 2
"""Same- and cross-domain pairs each needed before the Mann–Whitney test of their enrichments runs."""

VERDICTS = ("beyond_chance", "chance", "below_chance", "too_small")

MIN_GAIN = 0.02
"""A task counts as learnt when fine-tuning beat the pretrained body (+ task head) by at least this much test
accuracy and the gain's 95% paired-bootstrap interval lies above zero; otherwise its region stands for little
skill and the report leaves it out of its overlap and similarity conclusions (docs/method.md §3)."""


def learnt_pairs(pairs: Sequence[dict[str, Any]], nodes: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The pairs the report draws conclusions from: both tasks learnt (or of unknown status)."""
    return [r for r in pairs if nodes.get(r["a"], {}).get("learnt") is not False
            and nodes.get(r["b"], {}).get("learnt") is not False]


def finetuning_gain(reference: Mapping[str, Any] | None) -> tuple[float | None, list[float] | None]:
    """(gain, its 95% interval) of fine-tuning over P_0 from a graft's ``reference`` record: the recorded
    ``finetuned.gain``/``gain_ci95``, else the plain accuracy difference (older results: no interval)."""
    from mtgraft.analysis.formatting import finite_interval
    from mtgraft.utils import finite_or_none

    ft = (reference or {}).get("finetuned") or {}
    pre = (reference or {}).get("pretrained") or {}
    gain = finite_or_none(ft.get("gain"))
    if gain is None and ft.get("accuracy") is not None and pre.get("accuracy") is not None:
        gain = finite_or_none(ft["accuracy"] - pre["accuracy"])
    return gain, finite_interval(ft.get("gain_ci95"))


def learnt_status(gain: float | None, gain_ci95: list[float] | None) -> tuple[bool | None, str]:
    """(learnt?, why) from a task's fine-tuning gain and its interval; (None, …) when the patch recorded
    neither (made before the gain was recorded): such a task is kept in the conclusions."""
    if gain is None:
        return None, "fine-tuning gain not recorded"
    iv = f" [{gain_ci95[0]:+.3f}, {gain_ci95[1]:+.3f}]" if gain_ci95 else ""
    if gain_ci95 is not None and gain_ci95[0] <= 0:
        return False, f"fine-tuning gain {gain:+.3f}{iv} has an interval that includes 0"
    if gain < MIN_GAIN:
        return False, f"fine-tuning gain {gain:+.3f}{iv} is below the minimum {MIN_GAIN:+.2f}"
    return True, f"fine-tuning gain {gain:+.3f}{iv}"


def bonferroni_tests(n_tasks: int) -> int:
    """Number of tests the p-values are adjusted for: the unordered pairs of ``n_tasks`` tasks (at least 1)."""
    return max(1, n_tasks * (n_tasks - 1) // 2)


def depletion_p(inter: int, P: int, na: int, nb: int) -> float:
    """P(X <= observed) under the hypergeometric: small when two regions share fewer entries than chance."""
    from scipy.stats import hypergeom

    return float(hypergeom.cdf(inter, P, na, nb))


def verdict(inter: int, expected: float, enrichment: float | None, p_adj: float, pd_adj: float) -> str:
    """``too_small``, ``beyond_chance``, ``below_chance`` or ``chance`` (see ``pair_records``)."""
    if expected < TOO_SMALL_EXPECTED and inter == 0:
        return "too_small"
    if enrichment is not None and enrichment >= BEYOND_CHANCE_MIN_ENRICHMENT and p_adj < ALPHA:
        return "beyond_chance"
    if pd_adj < ALPHA:
        return "below_chance"
    return "chance"


def pair_records(mat: dict[str, Any], bonferroni: bool = True) -> list[dict[str, Any]]:
    """One record per unordered pair (i < j) with every metric both ways, the depletion p and a verdict.

    Verdicts: ``beyond_chance`` (enrichment >= 1 and adjusted p < 0.05), ``below_chance`` (fewer shared
    entries than chance, adjusted depletion p < 0.05), ``chance`` (neither), ``too_small`` (chance expects
    under one shared entry and none is shared: nothing to tell). p adjusted by Bonferroni over the pairs.
    """
    f = finite_or_none
    tasks = mat["tasks"]
    n = len(tasks)
    m = bonferroni_tests(n) if bonferroni else 1
    within = "expected_within_tensors" in mat
    within_enr = "enrichment_within_tensors" in mat
    out = []
    for i in range(n):
        for j in range(i + 1, n):
            inter = int(mat["intersection"][i, j])
            exp = float(mat["expected"][i, j])
            na, nb = int(mat["sizes"][i]), int(mat["sizes"][j])
            p = f(mat["p_value"][i, j])
            lp = f(mat["log10_p_value"][i, j])
            pd = depletion_p(inter, mat["P"], na, nb) if na and nb else 1.0
            e = f(mat["enrichment"][i, j])
            p_adj = min(1.0, (p if p is not None else 1.0) * m)
            pd_adj = min(1.0, pd * m)
            out.append({
                "a": tasks[i], "b": tasks[j], "size_a": na, "size_b": nb, "intersection": inter,
                "containment_a_in_b": f(mat["containment"][j, i]),  # |a∩b|/|a|: share of a's region also in b
                "containment_b_in_a": f(mat["containment"][i, j]),  # |a∩b|/|b|
                "jaccard": f(mat["jaccard"][i, j]), "overlap_coefficient": f(mat["overlap_coefficient"][i, j]),
                "expected": exp, "enrichment": e, "p_value": p, "log10_p_value": lp,
                "p_value_depletion": pd, "p_adjusted": p_adj, "p_depletion_adjusted": pd_adj,
                "expected_within_tensors": f(mat["expected_within_tensors"][i, j]) if within else None,
                "enrichment_within_tensors": f(mat["enrichment_within_tensors"][i, j]) if within_enr else None,
                "n_tests": m, "verdict": verdict(inter, exp, e, p_adj, pd_adj),
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


def breakdown(regions: dict[str, np.ndarray], seg: Segments, by: str) -> dict[str, Any]:
    """``breakdown_matrices`` (biases as their own kind) with its ``breakdown_stats`` as ``stat_<name>``."""
    bd = breakdown_matrices(regions, seg, by=by, bias_separate=True)
    st = breakdown_stats(bd)
    return {**bd, **{f"stat_{k}": v for k, v in st.items()}}


def group_name(g: dict[str, Any]) -> str:
    """A breakdown group's label: ``L3/attn_key``, ``L3``, ``no layer``, ``bias``."""
    if "layer" in g and "module" in g:
        return f"L{g['layer']}/{g['module']}" if g["layer"] is not None else f"-/{g['module']}"
    if "layer" in g:
        return f"L{g['layer']}" if g["layer"] is not None else "no layer"
    return str(g["module"])


def pooled(bd: dict[str, Any]) -> list[dict[str, Any]]:
    """Per group: observed vs chance intersections summed over all pairs (where the overlap concentrates)."""
    n = bd["intersection"].shape[1]
    iu = np.triu_indices(n, 1)
    out = []
    for g, grp in enumerate(bd["groups"]):
        obs = int(bd["intersection"][g][iu].sum())
        exp = float(bd["expected"][g][iu].sum())
        out.append({"group": group_name(grp), **grp, "params": int(bd["params"][g]), "observed": obs,
                    "expected": exp, "enrichment": obs / exp if exp > 0 else None})
    return out


def split_by_domain(pairs: Sequence[dict[str, Any]], domain: Mapping[str, str | None]
                    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(same-domain pairs, cross-domain pairs) among the pairs with an enrichment; tasks without a domain drop out."""
    same = [r for r in pairs if domain[r["a"]] and domain[r["a"]] == domain[r["b"]] and r["enrichment"] is not None]
    cross = [r for r in pairs if domain[r["a"]] and domain[r["b"]] and domain[r["a"]] != domain[r["b"]]
             and r["enrichment"] is not None]
    return same, cross


def _median_within(recs: Sequence[dict[str, Any]]) -> float | None:
    ws = [r["enrichment_within_tensors"] for r in recs if r.get("enrichment_within_tensors") is not None]
    return float(np.median(ws)) if ws else None


def domain_comparison(same: Sequence[dict[str, Any]], cross: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """Median enrichment / Jaccard of same- vs cross-domain pairs, and a one-sided Mann–Whitney p (same > cross).

    None unless there are pairs of both kinds.
    """
    if not (same and cross):
        return None
    out: dict[str, Any] = {
        "same_domain": {"n": len(same), "median_enrichment": float(np.median([r["enrichment"] for r in same])),
                        "median_jaccard": float(np.median([r["jaccard"] or 0 for r in same])),
                        "median_enrichment_within_tensors": _median_within(same),
                        "pairs": [f"{r['a']}–{r['b']}" for r in same]},
        "cross_domain": {"n": len(cross), "median_enrichment": float(np.median([r["enrichment"] for r in cross])),
                         "median_jaccard": float(np.median([r["jaccard"] or 0 for r in cross])),
                         "median_enrichment_within_tensors": _median_within(cross)}}
    if len(same) >= MIN_PAIRS_FOR_MANNWHITNEY and len(cross) >= MIN_PAIRS_FOR_MANNWHITNEY:
        from scipy.stats import mannwhitneyu

        u = mannwhitneyu([r["enrichment"] for r in same], [r["enrichment"] for r in cross], alternative="greater")
        out["mannwhitney_p_greater"] = float(u.pvalue)
    return out
