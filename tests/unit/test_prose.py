"""The summary sentences: each rule of ``analysis.prose`` on small hand-made numbers (no patches, no model)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from mtgraft.analysis import prose
from mtgraft.analysis.stats import domain_comparison


def pair(a: str, b: str, verdict: str = "chance", **kw) -> dict:
    """A pair record as ``stats.pair_records`` makes it, with plain defaults."""
    r = {"a": a, "b": b, "size_a": 100, "size_b": 100, "intersection": 10, "expected": 10.0, "enrichment": 1.0,
         "jaccard": 0.05, "p_value": 0.5, "log10_p_value": float(np.log10(0.5)), "p_value_depletion": 0.6,
         "enrichment_within_tensors": None, "n_tests": 3, "verdict": verdict}
    return {**r, **kw}


def graph_info(edges: int = 0, communities=(("a",), ("b",), ("c",))) -> dict:
    return {"edges": edges, "min_enrichment": 2.0, "max_p": 0.05, "communities": [list(c) for c in communities]}


def data(pairs, *, sizes=(100, 100, 100), P=10_000, nodes=None, pooled=(), gi=None, transfer=None, correlation=None):
    tasks = ["a", "b", "c"][: len(sizes)]
    return SimpleNamespace(
        matrices={"tasks": tasks, "P": P, "sizes": np.array(sizes)}, pairs=list(pairs), pooled_module=list(pooled),
        nodes=nodes or {t: {"domain": None, "finetuned_mode": None} for t in tasks},
        graph_info=gi or graph_info(), transfer=transfer, correlation=correlation)


def test_regions_sentence_states_sizes_density_and_chance():
    s = prose.regions_sentence(3, 10_000, [50, 50, 50], [pair("a", "b", expected=0.25), pair("a", "c", expected=0.75)])
    assert s == ("3 task regions of 50 entries out of |P| = 10,000 graftable parameters (density 5.00e-03); two "
                 "random regions of these sizes would share 0.5 entries on average.")
    assert "of 40–1,200 entries" in prose.regions_sentence(2, 10_000, [40, 1200], [])


def test_chance_level_needs_every_enrichment_inside_the_band():
    ps = [pair("a", "b", enrichment=0.9), pair("a", "c", enrichment=1.2), pair("b", "c", "too_small", enrichment=9.0)]
    assert prose.chance_level_sentence(ps) == ("Every pair overlaps at about chance level (enrichment 0.90–1.20): "
                                               "here the regions do not single out related tasks.")
    assert prose.chance_level_sentence([pair("a", "b", enrichment=prose.CHANCE_BAND)]) is None
    assert prose.chance_level_sentence([pair("a", "b", enrichment=1 / prose.CHANCE_BAND)]) is None


def test_common_core_only_when_every_pair_is_beyond_chance():
    s = prose.common_core_sentence(3, 3, [100, 100, 100], 10_000, core=30)
    assert s.startswith("Every pair, similar or not, shares more than chance; 30 entries lie in all 3 regions "
                        "(chance would put 0.01 there)")
    assert prose.common_core_sentence(3, 2, [100, 100, 100], 10_000, 30) is None
    assert prose.common_core_sentence(1, 1, [100, 100], 10_000, 30) is None


def test_near_identical_regions_and_why_for_joint_models():
    ps = [pair("a", "b", jaccard=0.85), pair("a", "c", jaccard=0.9)]
    s = prose.near_identical_sentence(ps, {"joint"})
    assert s.startswith("The regions are nearly identical (Jaccard 0.85–0.90 for every pair). They come from one "
                        "jointly fine-tuned model")
    assert prose.near_identical_sentence(ps, {"joint", None}).endswith("for every pair).")
    low = [pair("a", "b", jaccard=prose.NEAR_IDENTICAL_JACCARD - 0.01), pair("a", "c", jaccard=0.9)]
    assert prose.near_identical_sentence(low, {"joint"}) is None
    assert prose.near_identical_sentence([pair("a", "b", jaccard=None)], set()) is None


def test_pair_phrases_per_verdict():
    hi = pair("a", "b", "beyond_chance", intersection=1234, expected=40.0, enrichment=30.85, jaccard=0.25,
              p_value=3e-12, enrichment_within_tensors=1.04)
    assert prose.pair_phrase(hi) == ("a and b share 31× more parameters than two random regions of their sizes would "
                                     "(1,234 shared vs 40.0 expected; Jaccard 0.250; p = 3e-12; 1× given the "
                                     "tensors each region sits in)")
    lo = pair("a", "c", "below_chance", intersection=0, expected=6.5, enrichment=0.0, p_value_depletion=0.0012)
    assert prose.pair_phrase(lo) == ("a and c share fewer parameters than chance (0 vs 6.5 expected, 0×; depletion "
                                     "p = 0.001): their regions avoid each other")
    tiny = pair("b", "c", "too_small", intersection=0, expected=0.0006)
    assert prose.pair_phrase(tiny).endswith("would share only 0.00 entries, so this says nothing about similarity")
    assert prose.pair_phrase(pair("b", "c", enrichment=1.1, p_value=0.31)) == (
        "b and c overlap at chance level (enrichment 1.1×, 10 shared vs 10.0 expected, p = 0.31)")


def test_pair_sentences_list_the_strongest_then_count_the_rest():
    n = prose.MAX_LISTED_BEYOND_CHANCE + 2
    strong = [pair(f"t{k}", "u", "beyond_chance", enrichment=10.0 - k) for k in range(n)]
    chance = [pair("x", "y", p_value=0.5), pair("x", "z", p_value=0.2)]
    lines = prose.pair_sentences(prose.by_verdict(strong + chance), strong)
    assert len(lines) == prose.MAX_LISTED_BEYOND_CHANCE + 1 + 2
    assert lines[prose.MAX_LISTED_BEYOND_CHANCE] == "2 more pairs also overlap beyond chance (see the table)."
    assert lines[-2].startswith("x and z overlap at chance level")  # smallest p first
    assert all(s.endswith(".") for s in lines)


def _domains(same, cross, mw=None):
    cmp = {"same_domain": {"n": len(same), "median_enrichment": float(np.median(same)), "median_jaccard": 0.1,
                           "median_enrichment_within_tensors": None},
           "cross_domain": {"n": len(cross), "median_enrichment": float(np.median(cross)), "median_jaccard": 0.05,
                            "median_enrichment_within_tensors": None}}
    if mw is not None:
        cmp["mannwhitney_p_greater"] = mw
    return cmp


@pytest.mark.parametrize(("same", "cross", "mw", "words"), [
    ([3.0] * 3, [2.0] * 3, None, "overlap more than tasks of different domains"),  # ratio 1.5 >= DOMAIN_MORE_RATIO
    ([1.0] * 3, [2.0] * 4, None, "overlap less than"),  # ratio 0.5 <= DOMAIN_LESS_RATIO
    ([2.2] * 3, [2.0] * 3, 0.2, "overlap about as much as"),
    ([2.2] * 3, [2.0] * 3, 0.01, "overlap slightly but consistently more than (10% higher median enrichment)"),
])
def test_domain_sentence_words_follow_the_ratio(same, cross, mw, words):
    s = prose.domain_sentence(_domains(same, cross, mw), ["sentiment"])
    assert s.startswith("Tasks of the same domain (sentiment) ")
    assert words in s
    assert ("one-sided Mann–Whitney p" in s) == (mw is not None)


def test_domain_sentence_from_stats_comparison():
    same = [pair("a", "b", enrichment=4.0, jaccard=0.2, enrichment_within_tensors=1.5),
            pair("d", "e", enrichment=5.0, jaccard=0.3, enrichment_within_tensors=1.5),
            pair("f", "g", enrichment=3.0, jaccard=0.1, enrichment_within_tensors=1.5)]
    cross = [pair("a", "c", enrichment=1.0, jaccard=0.1, enrichment_within_tensors=0.9),
             pair("b", "c", enrichment=2.0, jaccard=None, enrichment_within_tensors=1.1),
             pair("d", "c", enrichment=1.5, jaccard=0.0, enrichment_within_tensors=1.0)]
    s = prose.domain_sentence(domain_comparison(same, cross), ["sentiment"])
    assert s.startswith("Tasks of the same domain (sentiment) overlap more than tasks of different domains: median "
                        "enrichment 4× (n = 3 pairs, Jaccard 0.200) vs 1.5× (n = 3 pairs, Jaccard 0.000)")
    assert s.endswith("; given the tensors each region sits in: 1.5× vs 1×.")


@pytest.mark.parametrize(("n_same", "n_cross"), [(1, 5), (2, 2), (5, 2)])
def test_domain_sentence_with_too_few_pairs_says_so(n_same, n_cross):
    """The main job's case (1 same-domain pair vs 5): no claim either way, the rule stated."""
    s = prose.domain_sentence(_domains([9.0] * n_same, [1.0] * n_cross), ["sentiment"])
    assert s == (f"Same-domain vs cross-domain overlap: too few pairs to tell ({prose.fmt_pairs(n_same)} within a "
                 f"domain (sentiment), {prose.fmt_pairs(n_cross)} across domains; the report compares them from "
                 f"{prose.MIN_DOMAIN_PAIRS} pairs on each side).")
    assert "more" not in s and "less" not in s


def test_concentration_names_the_most_and_least_enriched_module():
    pooled = [{"module": "attn_key", "observed": 30, "expected": 10.0, "enrichment": 3.0},
              {"module": "ffn_in", "observed": 5, "expected": 10.0, "enrichment": 0.5},
              {"module": "bias", "observed": 1, "expected": prose.MIN_POOLED_EXPECTED / 2, "enrichment": 9.0}]
    s = prose.concentration_sentence(pooled, [pair("a", "b")])
    assert s == ("Summed over all pairs, among module kinds where chance expects at least 1 shared entry, shared "
                 "entries are most enriched in attn_key (3× chance within it) and least in ffn_in (0.5×). Left out "
                 "of that ranking because chance expects fewer than 1 shared entry there, so their enrichment rests "
                 "on a tiny denominator: bias 9× (1 shared vs 0.5 expected).")
    assert prose.concentration_sentence(pooled, []) is None


def test_graph_sentence_with_and_without_edges():
    gi = graph_info(2, (("a", "b"), ("c",)))
    assert prose.graph_sentence(gi) == ("The task graph (edges: beyond chance, enrichment ≥ 2, adjusted p ≤ 0.05) "
                                        "has 2 edge(s); greedy modularity groups the tasks as {a, b}; {c}.")
    assert prose.graph_sentence(graph_info()) == ("No pair is beyond chance with enrichment ≥ 2 and adjusted p ≤ 0.05: "
                                                  "the task graph has no edges.")
    structured = {**gi, "modularity": 0.31}
    assert prose.graph_sentence(structured).endswith("groups the tasks as {a, b}; {c} (modularity 0.310).")


def test_modularity_near_zero_is_no_community_structure():
    """The main job's case: every task in one community, modularity 0.000."""
    gi = {**graph_info(6, (("a", "b", "c", "d"),)), "modularity": 0.0}
    assert prose.graph_sentence(gi) == (
        "The task graph (edges: beyond chance, enrichment ≥ 2, adjusted p ≤ 0.05) has 6 edge(s), but no community "
        "structure: the best grouping ({a, b, c, d}) has modularity 0.000 (below 0.1), so the graph does not split "
        "these tasks into groups.")


def _transfer(se: float) -> dict:
    return {"results": [
        {"graft": "a", "eval_task": "a", "own": True, "rel": 0.9, "rel_se": se},
        {"graft": "a", "eval_task": "b", "own": False, "rel": 0.3, "rel_se": se},
        {"graft": "b", "eval_task": "a", "own": False, "rel": 0.5, "rel_se": se},
        {"graft": "b", "eval_task": "b", "own": True, "rel": 0.8, "rel_se": se}],
        "reference": {"a": {"n": 50, "gain": 0.1}, "b": {"n": 40, "gain": 0.05}},
        "unions": [{"name": "a+b", "region_size": 1500, "mean_rel": 0.7,
                    "results": {"a": {"rel": 0.75}, "b": {"rel": None}}}]}


def test_transfer_sentences():
    assert prose.noise_sentence(_transfer(prose.NOISY_REL_SE / 2)) is None
    noisy = prose.noise_sentence(_transfer(0.3))
    assert noisy.startswith("Rel is noisy here: fine-tuning gained only +0.050 to +0.100 accuracy over P_0 on 40–50 "
                            "test examples (one example moves accuracy by 0.025), so a Rel has a standard error of "
                            "about 0.30 (median)")
    assert prose.rel_sentences(_transfer(0.1)) == [
        "Each graft on its own task keeps Rel a 0.90, b 0.80.",
        "Across tasks with the same labels, Rel ranges 0.30 to 0.50 (best: b's graft on a).",
        "The union graft a+b (1,500 entries) keeps Rel a 0.75, b n/a (mean 0.70)."]


@pytest.mark.parametrize(("rho", "word"), [(0.6, "Overlap tracks"), (0.3, "Overlap weakly tracks"),
                                           (0.0, "Overlap does not track"), (-0.5, "Overlap runs against")])
def test_correlation_sentence_words(rho, word):
    s = prose.correlation_sentence({"rho": rho, "p_value": 0.04, "n": 6, "note": "n = 6 pairs is too few"})
    assert s == f"{word} transfer (Spearman ρ = {rho:.2f}, p = 0.04, n = 6 directed pairs; n = 6 pairs is too few)."
    assert prose.correlation_sentence({"rho": None, "note": "too few pairs"}) == "Overlap vs transfer: too few pairs."


def test_summarise_orders_sentences_and_counts_verdicts():
    ps = [pair("a", "b", "beyond_chance", enrichment=5.0, jaccard=0.3, p_value=1e-9),
          pair("a", "c", "below_chance", enrichment=0.0, intersection=0),
          pair("b", "c", enrichment=1.0)]
    nodes = {"a": {"domain": "sentiment"}, "b": {"domain": "sentiment"}, "c": {"domain": "topic"}}
    d = data(ps, nodes=nodes, gi=graph_info(1, (("a", "b"), ("c",))), transfer=_transfer(0.1),
             correlation={"rho": None, "note": "too few pairs"})
    out = prose.summarise(d, core=0)
    lines = out["sentences"]
    assert lines[0].startswith("3 task regions of 100 entries")
    assert lines[1].startswith("a and b share 5× more parameters")
    assert lines[2].startswith("b and c overlap at chance level") and lines[3].startswith("a and c share fewer")
    assert lines[4] == "Verdicts use p-values Bonferroni-adjusted over the 3 pairs (α = 0.05)."
    assert lines[5].startswith("Same-domain vs cross-domain overlap: too few pairs to tell (1 pair within")
    assert lines[6].startswith("The task graph") and lines[-1] == "Overlap vs transfer: too few pairs."
    assert out["counts"] == {"beyond_chance": 1, "chance": 1, "below_chance": 1, "too_small": 0}
    assert out["beyond_chance"] == ["a–b"] and out["disjoint_or_chance"] == ["b–c", "a–c"]
    assert out["domains"]["same_domain"]["pairs"] == ["a–b"] and "mannwhitney_p_greater" not in out["domains"]
    assert out["multi_task_communities"] == [["a", "b"]] and out["P"] == 10_000 and out["n_tasks"] == 3


def test_own_task_rel_quotes_its_interval_when_recorded():
    tr = _transfer(0.1)
    tr["results"][0]["rel_ci95"] = [0.7, 1.1]
    assert prose.rel_sentences(tr)[0] == ("Each graft on its own task keeps Rel (95% paired-bootstrap intervals) "
                                          "a 0.90 [0.70, 1.10], b 0.80.")
