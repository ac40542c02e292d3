"""The task graph: edges above the enrichment threshold, communities, GraphML / node-link export, drawing."""

import json

import networkx as nx
import numpy as np
import pytest

from mtgraft.analysis.figures import draw_graph
from mtgraft.analysis.graph import (
    annotate_communities,
    communities,
    node_link,
    task_graph,
    write_graphml,
    write_node_link,
)
from mtgraft.analysis.overlap import overlap_matrices
from mtgraft.errors import MtgraftError

P = 1000


def _regions() -> dict[str, np.ndarray]:
    # a, b share 50 of 100 each (chance 10: 5x); c, d share 40 (chance 100*100/1000=10... d has 100: 4x);
    # nothing is shared across the two groups.
    return {
        "a": np.arange(0, 100),
        "b": np.r_[0:50, 500:550],
        "c": np.arange(900, 1000),
        "d": np.r_[900:940, 600:660],
    }


@pytest.fixture()
def mat() -> dict:
    return overlap_matrices(_regions(), P)


def test_edges_are_the_pairs_above_the_threshold(mat):
    G = task_graph(mat, {"a": {"accuracy": 0.9, "note": None}}, min_enrichment=2.0)
    assert set(G.nodes) == {"a", "b", "c", "d"}
    assert {frozenset(e) for e in G.edges} == {frozenset("ab"), frozenset("cd")}
    ab = G.edges["a", "b"]
    assert ab["enrichment"] == pytest.approx(5.0)
    assert ab["weight"] == pytest.approx(5.0)
    assert ab["jaccard"] == pytest.approx(50 / 150)
    assert ab["intersection"] == 50 and ab["expected"] == pytest.approx(10.0)
    assert ab["containment_ij"] == pytest.approx(0.5) and ab["containment_ji"] == pytest.approx(0.5)
    assert G.edges["c", "d"]["enrichment"] == pytest.approx(4.0)
    assert G.nodes["a"]["region_size"] == 100 and G.nodes["a"]["accuracy"] == 0.9
    assert "note" not in G.nodes["a"]  # None attributes are dropped (GraphML cannot hold them)
    # a higher threshold keeps only a-b; an impossible p bound keeps nothing
    assert {frozenset(e) for e in task_graph(mat, min_enrichment=4.5).edges} == {frozenset("ab")}
    assert task_graph(mat, min_enrichment=2.0, max_p=1e-300).number_of_edges() == 0


def test_communities_split_the_two_groups(mat):
    G = task_graph(mat, min_enrichment=2.0)
    comms = communities(G)
    assert comms == [["a", "b"], ["c", "d"]]
    annotate_communities(G, comms)
    assert G.nodes["a"]["community"] == G.nodes["b"]["community"] != G.nodes["c"]["community"]
    # weighted modularity of two disjoint edges of weights 5 and 4: 1 - (10² + 8²) / 18²
    assert G.graph["modularity"] == pytest.approx(1 - (100 + 64) / 324)


def test_no_edges_gives_singletons():
    m = overlap_matrices({"x": np.arange(10), "y": np.arange(500, 510)}, P)
    G = task_graph(m)
    assert G.number_of_edges() == 0
    assert communities(G) == [["x"], ["y"]]


def test_bad_threshold_is_a_user_error(mat):
    with pytest.raises(MtgraftError, match="min-enrichment"):
        task_graph(mat, min_enrichment=0)


def test_graphml_and_node_link_round_trip(mat, tmp_path):
    G = task_graph(mat, {t: {"accuracy": 0.5 + i / 10} for i, t in enumerate("abcd")})
    annotate_communities(G, communities(G))
    path = write_graphml(G, tmp_path / "g.graphml")
    H = nx.read_graphml(path)
    assert {frozenset(e) for e in H.edges} == {frozenset("ab"), frozenset("cd")}
    assert H.edges["a", "b"]["enrichment"] == pytest.approx(5.0)
    assert H.nodes["d"]["region_size"] == 100 and H.nodes["d"]["accuracy"] == pytest.approx(0.8)
    assert H.nodes["c"]["community"] == H.nodes["d"]["community"]
    jpath = write_node_link(G, tmp_path / "g.json")
    data = json.loads(jpath.read_text())
    assert data == json.loads(json.dumps(node_link(G)))
    K = nx.node_link_graph(data, edges="edges")
    assert K.edges["c", "d"]["jaccard"] == pytest.approx(40 / 160)


def test_draw_writes_a_png(mat, tmp_path):
    G = task_graph(mat)
    annotate_communities(G, communities(G))
    p = draw_graph(G, tmp_path / "g.png", title="t")
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert p.stat().st_size > 5000


def test_graph_uses_the_reports_corrected_p_values():
    # a-b share 5 of 40 each (chance 1.6: 3.1x, uncorrected p 0.019 < 0.05); over the 6 pairs of 4 tasks the
    # Bonferroni-adjusted p is 0.11: the report calls the pair chance, so the graph has no a-b edge
    from mtgraft.analysis.stats import ALPHA, pair_records

    m = overlap_matrices({"a": np.arange(0, 40), "b": np.r_[0:5, 500:535], "c": np.arange(900, 940),
                          "d": np.arange(700, 740)}, P)
    ab = next(r for r in pair_records(m) if (r["a"], r["b"]) == ("a", "b"))
    assert ab["p_value"] < ALPHA <= ab["p_adjusted"] and ab["enrichment"] >= 2.0 and ab["n_tests"] == 6
    assert ab["verdict"] == "chance"
    assert task_graph(m, min_enrichment=2.0).number_of_edges() == 0
    assert task_graph(m, min_enrichment=2.0, max_p=1.0).number_of_edges() == 0  # a looser bound adds no edge
    assert task_graph(m, min_enrichment=2.0, pairs=pair_records(m)).number_of_edges() == 0
    # the same pair among two tasks only (one test) is beyond chance: an edge, carrying its adjusted p
    m2 = overlap_matrices({"a": np.arange(0, 40), "b": np.r_[0:5, 500:535]}, P)
    G = task_graph(m2, min_enrichment=2.0)
    assert G.number_of_edges() == 1
    assert G.edges["a", "b"]["p_adjusted"] == pytest.approx(G.edges["a", "b"]["p_value"])
    assert G.edges["a", "b"]["n_tests"] == 1
