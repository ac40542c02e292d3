"""Every summary sentence against the table next to it (issue 16 item 1): synthetic reports built by the real
``analyse`` on hand-made regions; each number a sentence states is looked up in the report's own tables."""

from __future__ import annotations

import re

import numpy as np
import pytest
from test_report import MODULES, analyse, make_patch

from mtgraft.analysis import prose
from mtgraft.analysis import stats as prose_stats
from mtgraft.analysis.formatting import fmt_x

LAYERS = 2
TABLE = [(f"backbone.encoder.layer.{i}.{m}.weight", [40, 40]) for i in range(LAYERS) for m in MODULES]
SIZE = 1600  # entries per tensor


def _tensor(k: int) -> int:
    return SIZE * k  # first flat index of tensor k


@pytest.fixture(scope="module")
def report():
    """Four tasks: rt and mp share much of query (tensor 0) and a little of ffn_in; hedge and debate share
    key (tensor 1); every region also has its own part of ffn_out; a 5th region in value only."""
    rng = np.random.default_rng(7)

    def own(k: int, n: int) -> np.ndarray:
        return _tensor(k) + rng.choice(SIZE, n, replace=False)

    q_shared, k_shared = own(0, 120), own(1, 90)
    ffn_in_shared = own(4, 30)
    regions = {
        "rotten_tomatoes": np.r_[q_shared, ffn_in_shared, own(5, 200)],
        "movie_polarity": np.r_[q_shared, ffn_in_shared, own(5, 200)],
        "hedge": np.r_[k_shared, own(5, 200)],
        "debate_party": np.r_[k_shared, own(5, 200)],
        "chat_topic": own(2, 300),
    }
    labels = {"hedge": ("certain", "uncertain"), "debate_party": ("democratic", "republican", "moderator"),
              "chat_topic": ("a", "b", "c")}
    return analyse([make_patch(t, idx, table=TABLE, labels=labels.get(t, ("negative", "positive")))
                    for t, idx in regions.items()], min_enrichment=2.0)


def _pair(res, a, b):
    return next(r for r in res.pairs if {r["a"], r["b"]} == {a, b})


PAIR_RE = re.compile(r"^(?P<a>\w+) and (?P<b>\w+) share (?P<enr>[\d.]+)× more parameters than two random regions of "
                     r"their sizes would \((?P<shared>[\d,]+) shared vs (?P<exp>[\d.]+) expected; Jaccard "
                     r"(?P<jac>[\d.]+); p = ")


def test_pair_sentences_state_the_pair_table(report):
    found = 0
    for s in report.summary["sentences"]:
        m = PAIR_RE.match(s)
        if not m:
            continue
        found += 1
        r = _pair(report, m["a"], m["b"])
        assert r["verdict"] == "beyond_chance"
        assert m["enr"] + "×" == fmt_x(r["enrichment"])
        assert int(m["shared"].replace(",", "")) == r["intersection"]
        assert float(m["exp"]) == pytest.approx(r["expected"], abs=0.05)
        assert float(m["jac"]) == pytest.approx(r["jaccard"], abs=5e-4)
    beyond = [r for r in report.pairs if r["verdict"] == "beyond_chance"]
    assert found == min(len(beyond), prose.MAX_LISTED_BEYOND_CHANCE) and found > 0


def test_concentration_sentence_ranks_the_module_table(report):
    [s] = [s for s in report.summary["sentences"] if s.startswith("Summed over all pairs")]
    m = re.search(r"most enriched in (\w+) \(([\d.]+×) chance within it\) and least in (\w+) \(([\d.]+×)\)", s)
    rows = {g["module"]: g for g in report.pooled_module if g["enrichment"] is not None}
    ranked = [g for g in rows.values() if g["expected"] >= prose.MIN_POOLED_EXPECTED]
    top, low = max(ranked, key=lambda g: g["enrichment"]), min(ranked, key=lambda g: g["enrichment"])
    assert (m[1], m[2], m[3], m[4]) == (top["module"], fmt_x(top["enrichment"]), low["module"],
                                        fmt_x(low["enrichment"]))
    # every kind with a higher enrichment than the "most enriched" one is named as left out, with its number
    for g in rows.values():
        if g["enrichment"] > top["enrichment"]:
            assert f"{g['module']} {fmt_x(g['enrichment'])} ({g['observed']:,} shared" in s, (g, s)


def test_domain_and_graph_sentences_follow_their_data(report):
    text = report.summary["sentences"]
    dom = report.summary["domains"]
    [d] = [s for s in text if "domain" in s and s.startswith(("Tasks of the same domain", "Same-domain"))]
    n_same, n_cross = dom["same_domain"]["n"], dom["cross_domain"]["n"]
    if min(n_same, n_cross) < prose.MIN_DOMAIN_PAIRS:
        assert d.startswith("Same-domain vs cross-domain overlap: too few pairs to tell")
        assert f"{prose.fmt_pairs(n_same)} within a domain" in d and f"{prose.fmt_pairs(n_cross)} across" in d
    else:
        assert f"(n = {prose.fmt_pairs(n_same)}" in d
    [g] = [s for s in text if s.startswith(("The task graph", "No pair is beyond chance"))]
    gi = report.graph_info
    assert f"has {gi['edges']} edge(s)" in g
    q = gi.get("modularity")
    assert ("no community structure" in g) == (q is not None and q < prose.NO_STRUCTURE_MODULARITY)
    if q is not None:
        assert f"{q:.3f}" in g


def _with_gain(task, idx, gain, ci):
    p = make_patch(task, idx, table=TABLE)
    p.header.metrics = {**p.header.metrics, "reference": {"finetuned": {"accuracy": 0.8, "gain": gain,
                                                                          "gain_ci95": ci},
                                                           "pretrained": {"accuracy": 0.8 - gain}}}
    return p


def test_a_task_not_learnt_is_left_out_of_the_conclusions_with_its_reason():
    """hedge's fine-tuning gain interval includes 0: its pairs stay in the table but no sentence, domain
    comparison or graph edge uses them, and the summary says why (issue 12 item 6)."""
    rng = np.random.default_rng(3)
    shared = _tensor(0) + rng.choice(SIZE, 150, replace=False)
    own = [_tensor(5) + rng.choice(SIZE, 100, replace=False) for _ in range(3)]
    ps = [_with_gain("rotten_tomatoes", np.r_[shared, own[0]], 0.15, [0.10, 0.20]),
          _with_gain("movie_polarity", np.r_[shared, own[1]], 0.12, [0.07, 0.17]),
          _with_gain("hedge", np.r_[shared, own[2]], 0.03, [-0.02, 0.08])]
    res = analyse(ps, min_enrichment=2.0)
    assert res.nodes["hedge"]["learnt"] is False and res.nodes["rotten_tomatoes"]["learnt"] is True
    text = res.summary["sentences"]
    [nl] = [s for s in text if s.startswith("Not learnt")]
    assert "hedge: fine-tuning gain +0.030 [-0.020, +0.080] has an interval that includes 0" in nl
    assert "2 pairs involving them are not used" in nl
    assert not any("hedge" in s for s in text if s is not nl and PAIR_RE.match(s))
    assert {(r["a"], r["b"]) for r in res.pairs if "hedge" in (r["a"], r["b"])}  # still in the table
    assert not any("hedge" in e for e in res.graph.edges)
    assert res.graph.has_edge("rotten_tomatoes", "movie_polarity")
    assert res.summary["beyond_chance"] == ["rotten_tomatoes–movie_polarity"]


def test_a_small_gain_with_a_positive_interval_is_still_not_learnt():
    learnt, why = prose_stats.learnt_status(0.01, [0.005, 0.015])
    assert learnt is False and why == f"fine-tuning gain +0.010 [+0.005, +0.015] is below the minimum +{prose_stats.MIN_GAIN:.2f}"
    assert prose_stats.learnt_status(None, None)[0] is None and prose_stats.learnt_status(0.1, None)[0] is True
