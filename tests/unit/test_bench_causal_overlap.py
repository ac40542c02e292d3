"""Helpers of benchmarks/bench_causal_overlap.py (the SmolLM2 overlap study over seeds): no model, no training."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_causal_overlap.py"
spec = importlib.util.spec_from_file_location("bench_causal_overlap", BENCH)
bo = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bo)

DOMAIN = {"rt": "sentiment", "mp": "sentiment", "spam": "mail"}


def _seed(root: Path, seed: int, jac: dict[tuple[str, str], float], elsewhere: bool = False) -> None:
    """A seed's study state whose report stage names an overlap.json (in the seed folder or, as a study resumed from
    elsewhere would have it, another folder)."""
    sd = root / f"seed-{seed}"
    sd.mkdir(parents=True)
    rep = (root / f"other-{seed}" if elsewhere else sd) / "report"
    rep.mkdir(parents=True)
    inputs = [{"task": t, "domain": d, "gain": 0.2, "gain_ci95": [0.1, 0.3], "learnt": True, "rel": 0.9,
               "rel_ci95": [0.8, 1.0], "method": "graft"} for t, d in DOMAIN.items()]
    pairs = [{"a": a, "b": b, "jaccard": j, "enrichment": 100 * j, "enrichment_within_tensors": 10 * j,
              "intersection": int(1000 * j)} for (a, b), j in jac.items()]
    (rep / "overlap.json").write_text(json.dumps({"inputs": inputs, "pairs": pairs}))
    (sd / "study_state.json").write_text(json.dumps({"stages": {"report": {"outputs": [str(rep)]}}}))


def test_alike_minus_unlike_is_paired_by_seed(tmp_path):
    _seed(tmp_path, 13, {("rt", "mp"): 0.6, ("rt", "spam"): 0.2, ("mp", "spam"): 0.3})
    _seed(tmp_path, 21, {("rt", "mp"): 0.5, ("rt", "spam"): 0.2, ("mp", "spam"): 0.2}, elsewhere=True)
    _seed(tmp_path, 42, {("rt", "mp"): 0.7, ("rt", "spam"): 0.1, ("mp", "spam"): 0.1})
    s = bo.summarise(tmp_path)
    assert s["seeds"] == [13, 21, 42]
    assert (s["pairs"][0]["a"], s["pairs"][0]["b"], s["pairs"][0]["same_domain"]) == ("rt", "mp", True)
    assert s["pairs"][0]["jaccard"]["mean"] == pytest.approx(0.6) and s["pairs"][0]["jaccard"]["n"] == 3
    c = s["alike_minus_unlike"]["jaccard"]
    assert c["diffs"] == pytest.approx([0.35, 0.3, 0.6])  # alike − mean of the two unlike pairs, per seed
    assert c["mean_diff"] == pytest.approx(1.25 / 3) and c["ci95"][0] < c["mean_diff"] < c["ci95"][1]
    assert c["min_possible_p"] == pytest.approx(0.25)
    table = bo.markdown(s)
    assert "| rt – mp (alike) | 0.600 | 0.500 | 0.700 |" in table and "+0.350, +0.300, +0.600" in table


def test_main_says_when_there_is_no_study(tmp_path, capsys):
    assert bo.main(["--study", str(tmp_path), "--out", str(tmp_path / "x.json")]) == 1
    assert "no seed-<s>/study_state.json" in capsys.readouterr().out
