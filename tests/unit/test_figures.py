"""Figures that inform (issue 16 item 3): colour scales fitted to the data, edge labels that do not overlap,
marks that match the legend, intervals on Rel cells, no correlation plot below its minimum n."""

from __future__ import annotations

import math
from itertools import combinations

import networkx as nx
import numpy as np
import pytest

from mtgraft.analysis import figures


def test_enrichment_scale_is_fitted_when_every_cell_is_far_above_chance():
    lv = np.log2(np.array([[np.nan, 444.0, 241.0], [444.0, np.nan, 334.0], [241.0, 334.0, np.nan]]))
    norm, lo, hi, cmap = figures._enrichment_norm(lv)
    assert (lo, hi) == (pytest.approx(math.log2(241)), pytest.approx(math.log2(444)))
    assert cmap == "Reds"
    assert norm(math.log2(241)) == pytest.approx(0.0) and norm(math.log2(444)) == pytest.approx(1.0)
    ticks, labels = figures._log2_ticks_fitted(lo, hi)
    assert len(ticks) >= 3 and labels[0] == "241×" and labels[-1] == "444×"


def test_enrichment_scale_diverges_at_chance_when_cells_lie_on_both_sides():
    norm, lo, hi, cmap = figures._enrichment_norm(np.log2(np.array([0.25, 1.0, 8.0])))
    assert cmap == "RdBu_r" and norm(0.0) == pytest.approx(0.5) and (lo, hi) == (-2.0, 3.0)


def test_near_equal_cells_do_not_get_extreme_colours():
    norm, lo, hi, _ = figures._enrichment_norm(np.log2(np.array([100.0, 101.0])))
    assert hi - lo == pytest.approx(figures.MIN_LOG2_SPAN)


def test_edge_labels_of_four_tasks_on_a_circle_do_not_overlap():
    G = nx.complete_graph(["a", "b", "c", "d"])
    pos = nx.circular_layout(nx.path_graph(["a", "b", "c", "d"]))
    spots = figures.edge_label_positions(G, pos)
    assert len(spots) == 6
    for (e1, p1), (e2, p2) in combinations(spots.items(), 2):
        assert np.linalg.norm(p1 - p2) >= figures.LABEL_MIN_GAP, (e1, e2)
    for (u, v), xy in spots.items():  # each label lies on its own edge
        a, b = np.asarray(pos[u]), np.asarray(pos[v])
        t = np.dot(xy - a, b - a) / np.dot(b - a, b - a)
        assert np.allclose(a + t * (b - a), xy) and 0 < t < 1


def _breakdown():
    # 1 group sparse (expected < 1) with sharing, 1 sparse without, 1 ordinary; 2 tasks -> 1 pair
    enr = np.zeros((3, 2, 2))
    enr[:, 0, 1] = [800.0, 0.0, 3.0]
    exp = np.zeros((3, 2, 2))
    exp[:, 0, 1] = [0.3, 0.2, 10.0]
    inter = np.zeros((3, 2, 2))
    inter[:, 0, 1] = [240, 0, 30]
    groups = [{"module": "attn_query"}, {"module": "attn_key"}, {"module": "ffn_in"}]
    return {"groups": groups, "stat_enrichment": enr, "expected": exp, "intersection": inter}


def test_breakdown_marks_match_the_legend(tmp_path, monkeypatch):
    seen = {}

    def capture(v, rows, cols, path, title, cbar, text, **kw):
        seen.update(title=title, cells=[text(0, j) for j in range(len(cols))])
        return path

    monkeypatch.setattr(figures, "heatmap", capture)
    monkeypatch.setattr(figures, "group_name", lambda g: g["module"])
    figures.breakdown_figure(_breakdown(), ["a", "b"], tmp_path / "b.png", "module kind")
    assert seen["cells"] == ["800×†", "·", "3×"]
    assert "† = chance expects < 1 shared entry" in seen["title"] and "· = nothing shared" in seen["title"]


def _transfer(n_points: int, rho):
    return ({"eval_tasks": ["a", "b"], "grafts": ["a", "b"], "rel": [[0.9, 0.3], [0.5, 0.8]],
             "results": [{"graft": "a", "eval_task": "a", "rel": 0.9, "rel_ci95": [0.7, 1.1]},
                         {"graft": "a", "eval_task": "b", "rel": 0.3, "rel_se": 0.1},
                         {"graft": "b", "eval_task": "a", "rel": 0.5},
                         {"graft": "b", "eval_task": "b", "rel": 0.8, "rel_se": None}],
             "unions": []},
            {"x": "enrichment", "n": n_points, "rho": rho, "p_value": None,
             "points": [{"graft": "a", "eval_task": "b", "x": 300.0 + i, "rel": 0.3} for i in range(n_points)]})


def test_transfer_cells_carry_their_interval_and_no_scatter_below_minimum_n(tmp_path, monkeypatch):
    cells = {}

    def capture(v, rows, cols, path, title, cbar, text, **kw):
        cells.update({(i, j): text(i, j) for i in range(len(rows)) for j in range(len(cols))})
        return path

    monkeypatch.setattr(figures, "heatmap", capture)
    transfer, corr = _transfer(2, None)
    out = figures.transfer_figures(transfer, corr, tmp_path)
    assert cells == {(0, 0): "0.90\n±0.20", (0, 1): f"0.30\n±{1.96 * 0.1:.2f}", (1, 0): "0.50", (1, 1): "0.80"}
    assert "overlap_vs_transfer" not in out
    transfer, corr = _transfer(8, 0.4)
    assert "overlap_vs_transfer" in figures.transfer_figures(transfer, corr, tmp_path)
