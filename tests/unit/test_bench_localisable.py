"""Helpers of benchmarks/bench_localisable.py (the localisable fine-tuning sweep): no model, no training."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_localisable.py"
spec = importlib.util.spec_from_file_location("bench_localisable", BENCH)
bl = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bl)


def test_localisation_of_counts_zeros_and_the_top_share():
    d = torch.tensor([0.0, 0.0, 3.0, -1.0, 0.0, 1.0, 0.0, 0.0, -5.0, 0.0])
    s = bl.localisation_of(d, 2)
    assert s["zero_fraction"] == pytest.approx(0.6)
    assert s["l1"] == pytest.approx(10.0)
    assert s["topk_l1_share"] == pytest.approx(0.8)  # |−5| + |3| of 10
    assert bl.localisation_of(torch.zeros(4), 1)["topk_l1_share"] is None


def _cell(lam, task, seed, ft, rel):
    return {"lambda": lam, "task": task, "seed": seed, "finetuned": ft, "gain": ft - 0.6, "rel_graft": rel,
            "rel_topk": rel - 0.1, "zero_fraction": lam * 100, "topk_l1_share": 0.01}


def test_summarise_pairs_each_lambda_with_zero_by_task_and_seed():
    cells = [_cell(0.0, t, s, 0.70 + 0.01 * s, 0.30) for t in ("a", "b") for s in (1, 2)]
    cells += [_cell(1e-3, t, s, 0.68 + 0.01 * s, 0.50 + 0.01 * s) for t in ("a", "b") for s in (1, 2)]
    rows = bl.summarise(cells, [0.0, 1e-3])
    assert [r["lambda"] for r in rows] == [0.0, 1e-3]
    assert "finetuned_vs_0" not in rows[0]
    c = rows[1]["finetuned_vs_0"]
    assert c["diffs"] == pytest.approx([-0.02] * 4) and c["mean_diff"] == pytest.approx(-0.02)
    r = rows[1]["rel_graft_vs_0"]
    assert r["mean_diff"] == pytest.approx(0.215)  # (0.21 + 0.22) / 2 over four pairs
    assert rows[1]["finetuned"]["n"] == 4 and rows[1]["finetuned"]["mean"] == pytest.approx(0.695)
    table = bl.markdown({"rows": rows})
    assert table.count("\n") == 3 and "| 0.001 | 4 (0) |" in table and "-0.020" in table


def test_lambda_folder_names():
    assert bl.lam_dir("r", 0.0) == Path("r/l1-0") and bl.lam_dir("r", 1e-4) == Path("r/l1-0.0001")


def test_pooled_rel_weights_cells_by_their_gain():
    cells = [{"acc_graft": 0.65, "pretrained": 0.60, "finetuned": 0.70},  # 0.05 of 0.10
             {"acc_graft": 0.62, "pretrained": 0.60, "finetuned": 0.61}]  # 0.02 of 0.01 (ratio 2.0)
    r = bl.pooled_rel(cells, "acc_graft")
    assert r["mean"] == pytest.approx(0.07 / 0.11) and r["n"] == 2
    assert r["ci95"][0] <= r["mean"] <= r["ci95"][1]
