"""Helpers of benchmarks/bench_causal.py (SmolLM2 single-task study beside MiniLM): no model, no training."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_causal.py"
spec = importlib.util.spec_from_file_location("bench_causal", BENCH)
bc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bc)


def _graft_stage(task: str, pre: float, ft: float, gain_lo: float, rels: dict[str, float]) -> dict:
    """A graft stage's result as ``mtgraft run`` records it (only the fields bench_causal reads)."""
    results = []
    for key, rel in rels.items():
        method, sp = key.split("@")
        acc = pre + rel * (ft - pre)
        results.append({"method": method, "sparsity": float(sp), "region_size": 10, "seconds": 1.0,
                        "test": {"accuracy": acc, "ece": 0.1, "rel": rel, "rel_ci95": [rel - 0.1, rel + 0.1]}})
    return {"result": {"tasks": [{"task": task, "graftable_size": 1000, "seconds": 5.0, "results": results,
                                  "reference": {"pretrained": {"accuracy": pre, "ece": 0.3},
                                                "finetuned": {"accuracy": ft, "ece": 0.1, "n": 400,
                                                              "gain_ci95": [gain_lo, ft - pre + 0.05]}}}]}}


def _study(root: Path, seed: int, stages: dict) -> None:
    d = root / f"seed-{seed}"
    d.mkdir(parents=True)
    (d / "study_state.json").write_text(json.dumps({"stages": stages}))


def test_over_seeds_aggregates_rel_per_task_over_learnt_seeds(tmp_path):
    _study(tmp_path, 13, {"graft:a": _graft_stage("a", 0.5, 0.8, 0.1, {"graft@0.0001": 0.9, "topk@0.0001": 0.8}),
                          "train:a": {"result": {"train_seconds": 3.0}}})
    _study(tmp_path, 21, {"graft:a": _graft_stage("a", 0.5, 0.7, 0.05, {"graft@0.0001": 0.7, "topk@0.0001": 0.8})})
    # seed 42 did not learn (gain interval includes 0): its Rel is left out of the task's mean
    _study(tmp_path, 42, {"graft:a": _graft_stage("a", 0.5, 0.52, -0.03, {"graft@0.0001": 5.0})})
    cells = bc.cells_of(tmp_path, "smollm2")
    assert sorted(c["seed"] for c in cells) == [13, 21, 42]
    assert [c["learnt"] for c in sorted(cells, key=lambda c: c["seed"])] == [True, True, False]
    (row,) = bc.over_seeds(cells)
    assert row["task"] == "a" and row["seeds"] == [13, 21, 42] and row["seeds_learnt"] == [13, 21]
    g = row["rel"]["graft@0.0001"]
    assert g["n"] == 2 and g["mean"] == pytest.approx(0.8)
    assert g["ci95"][0] < 0.8 < g["ci95"][1]  # a t-interval over the two seeds
    assert row["gain"]["mean"] == pytest.approx((0.3 + 0.2 + 0.02) / 3)
    table = bc.over_seeds_markdown([row], "graft")
    assert "| a | 13, 21, 42 |" in table and "(n 2)" in table and "Rel graft 0.0001" in table
    assert "Rel topk" in bc.over_seeds_markdown([row], "topk")


def test_over_seeds_keeps_models_apart():
    cell = {"model": "minilm", "task": "a", "seed": 1, "learnt": True, "finetuned": 0.7, "gain": 0.1,
            "regions": {"graft@0.001": {"rel": 0.5}}}
    assert bc.over_seeds([cell]) == []
    assert bc.over_seeds([cell], "minilm")[0]["rel"]["graft@0.001"]["n"] == 1
