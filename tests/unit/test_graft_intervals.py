"""Uncertainty of one graft run (issue 12 items 3-4): paired-bootstrap intervals of accuracy and Rel on every
region, the fine-tuning gain's interval, paired comparisons of methods at equal size, their MLflow metrics, and
the intervals in the CLI table and the overlap report. Expected values are computed here independently (by
resampling example indices directly, or by hand), never read back from the code under test."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from mtgraft.evaluation.uncertainty import bootstrap_p, paired_difference
from mtgraft.grafting import GraftConfig, run_graft
from mtgraft.grafting.intervals import Bootstrap, comparisons, default_pairs
from mtgraft.testing import example_task_yaml, make_tiny_checkpoint, make_tiny_model

# ------------------------------------------------------------------------------ synthetic predictors


def _predictor(y: np.ndarray, p_right: float, rng: np.random.Generator) -> np.ndarray:
    right = rng.random(y.size) < p_right
    return np.where(right, y, 1 - y)


def _by_index(y: np.ndarray, preds: dict[str, np.ndarray], n_boot: int, seed: int) -> dict[str, np.ndarray]:
    """Resampled accuracies by drawing example indices (the textbook bootstrap), with the same draws as the
    code's documented RNG use: one ``integers(0, n, n)`` per resample from ``default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    idx = [rng.integers(0, y.size, y.size) for _ in range(n_boot)]
    return {k: np.array([(p[i] == y[i]).mean() for i in idx]) for k, p in preds.items()}


def test_bootstrap_p_by_hand():
    # 4 resampled differences: 1 is <= 0, 3 are >= 0 -> 2 * min(2/5, 4/5) = 0.8
    assert bootstrap_p(np.array([-1.0, 1.0, 2.0, 3.0])) == pytest.approx(0.8)
    # all positive: 2 * (1 + 0) / (B + 1), the smallest p with B resamples
    assert bootstrap_p(np.ones(999)) == pytest.approx(2 / 1000)
    assert bootstrap_p(np.zeros(50)) == 1.0


def test_a_method_against_itself_differs_by_zero_with_p_one():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    g = _predictor(y, 0.8, rng)
    boot = Bootstrap.build({"test": y}, {"test": _predictor(y, 0.5, rng)}, {"test": _predictor(y, 0.9, rng)}, seed=1)
    m: dict = {"accuracy": float((g == y).mean()), "rel": 0.5}
    boot.annotate(m, {"test": g}, ("graft", 0.01))
    boot.annotate(dict(m), {"test": g.copy()}, ("twin", 0.01))
    [acc, rel] = comparisons(boot, {("graft", 0.01): m, ("twin", 0.01): m}, [(("graft", 0.01), ("twin", 0.01))])
    for c in (acc, rel):
        assert c["diff"] == 0.0 and c["ci95"] == [0.0, 0.0] and c["p"] == 1.0


def test_a_clearly_better_predictor_is_significant():
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 600)
    a, b = _predictor(y, 0.85, rng), _predictor(y, 0.70, rng)
    acc_a, acc_b = (a == y).mean(), (b == y).mean()
    s = _by_index(y, {"a": a, "b": b}, 1000, 5)
    d = paired_difference(s["a"], s["b"], acc_a, acc_b)
    assert d["diff"] == pytest.approx(acc_a - acc_b)
    assert d["p"] < 0.05 and d["ci95"][0] > 0
    # and an equally good one is not: two predictors right 75% of the time, independently
    c, e = _predictor(y, 0.75, rng), _predictor(y, 0.75, rng)
    s = _by_index(y, {"c": c, "e": e}, 1000, 5)
    assert paired_difference(s["c"], s["e"], None, None)["p"] > 0.05


def test_intervals_match_a_bootstrap_by_index():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 120)
    pre, ft, g = _predictor(y, 0.5, rng), _predictor(y, 0.9, rng), _predictor(y, 0.8, rng)
    boot = Bootstrap.build({"test": y}, {"test": pre}, {"test": ft}, seed=11, n_boot=400)
    m: dict = {}
    boot.annotate(m, {"test": g})
    s = _by_index(y, {"pre": pre, "ft": ft, "g": g}, 400, 11)
    rel = (s["g"] - s["pre"]) / (s["ft"] - s["pre"])
    assert m["accuracy_ci95"] == pytest.approx([np.quantile(s["g"], 0.025), np.quantile(s["g"], 0.975)])
    assert m["rel_ci95"] == pytest.approx([np.quantile(rel, 0.025), np.quantile(rel, 0.975)])
    pm, fm = {"accuracy": (pre == y).mean()}, {"accuracy": (ft == y).mean()}
    boot.annotate_reference(pm, fm)
    assert fm["rel_ci95"] == [1.0, 1.0] and pm["rel_ci95"] == [0.0, 0.0]
    gain = s["ft"] - s["pre"]
    assert fm["gain"] == pytest.approx((ft == y).mean() - (pre == y).mean())
    assert fm["gain_ci95"] == pytest.approx([np.quantile(gain, 0.025), np.quantile(gain, 0.975)])


def test_default_pairs_put_learned_methods_first_at_equal_size():
    keys = [("graft", 1e-4), ("topk", 1e-4), ("random", 1e-4), ("graft", 1e-3), ("topk", 1e-3)]
    pairs = default_pairs(keys, {"graft": True, "topk": False, "random": False})
    assert pairs == [(("graft", 1e-4), ("topk", 1e-4)), (("graft", 1e-4), ("random", 1e-4)),
                     (("graft", 1e-3), ("topk", 1e-3))]


# ------------------------------------------------------------------------------ a graft run


@pytest.fixture(scope="module")
def ck(tmp_path_factory):
    d = tmp_path_factory.mktemp("intervals")
    pre = make_tiny_model("head", d / "pre", seed=1)
    return make_tiny_checkpoint(d / "ft", pre, example_task_yaml(), seed=2)


def _contains(ci, x):
    return ci[0] - 1e-12 <= x <= ci[1] + 1e-12


def test_graft_results_carry_intervals_and_comparisons(ck, tmp_path):
    cfg = GraftConfig(task=example_task_yaml(), finetuned=ck, sparsity=[0.01], method=["graft", "topk", "random"],
                      updates=2, out=str(tmp_path / "g"), track=False, do_register=False)
    [res] = run_graft(cfg, show_progress=False)
    pre, ft = res.reference["pretrained"], res.reference["finetuned"]
    assert ft["rel_ci95"] == [1.0, 1.0]
    assert ft["gain"] == pytest.approx(ft["accuracy"] - pre["accuracy"])
    assert _contains(ft["gain_ci95"], ft["gain"]) and 0 < ft["gain_p"] <= 1
    for r in res.results:
        m = r["test"]
        assert _contains(m["accuracy_ci95"], m["accuracy"])
        assert 0.0 <= m["accuracy_ci95"][0] <= m["accuracy_ci95"][1] <= 1.0
        if m["rel"] is not None and m["rel_ci95"] is not None:
            assert m["rel_ci95"][0] <= m["rel_ci95"][1]
    got = {(c["a"], c["b"], c["metric"]) for c in res.extra["comparisons"]}
    assert got == {(a, b, k) for a, b in (("graft", "topk"), ("graft", "random")) for k in ("accuracy", "rel")}
    by = {r["method"]: r["test"] for r in res.results}
    for c in res.extra["comparisons"]:
        if c["metric"] == "accuracy":
            assert c["diff"] == pytest.approx(by[c["a"]]["accuracy"] - by[c["b"]]["accuracy"])
        assert c["test"] == "paired bootstrap over test examples" and 0 < c["p"] <= 1
    saved = json.loads((tmp_path / "g" / "results.json").read_text())
    assert saved["comparisons"] == json.loads(json.dumps(res.extra["comparisons"]))
    assert saved["uncertainty"]["n_boot"] == 1000 and saved["uncertainty"]["seed"] == cfg.seed
    assert res.to_json()["comparisons"]


def test_same_seed_same_intervals(ck, tmp_path):
    def run(out):
        cfg = GraftConfig(task=example_task_yaml(), finetuned=ck, sparsity=[0.01], method=["topk", "random"],
                          out=str(tmp_path / out), track=False, do_register=False, seed=5)
        return run_graft(cfg, show_progress=False)[0]

    a, b = run("a"), run("b")
    assert json.dumps([r["test"] for r in a.results]) == json.dumps([r["test"] for r in b.results])
    assert json.dumps(a.reference) == json.dumps(b.reference)


def test_mlflow_gets_interval_ends(ck, mlflow_local_uri, tmp_path):
    from mlflow import MlflowClient

    cfg = GraftConfig(task=example_task_yaml(), finetuned=ck, sparsity=[0.01], method=["graft", "topk"], updates=2,
                      out=str(tmp_path / "g"), tracking_uri=mlflow_local_uri, do_register=False)
    [res] = run_graft(cfg, show_progress=False)
    metrics = MlflowClient(mlflow_local_uri).get_run(res.mlflow_run_id).data.metrics
    for key in ("test/graft_s0.01/accuracy_ci_low", "test/graft_s0.01/accuracy_ci_high",
                "test/topk_s0.01/accuracy_ci_low", "test/finetuned/gain_ci_low", "test/finetuned/gain_ci_high",
                "compare/graft_vs_topk_s0.01/accuracy_p"):
        assert key in metrics, key
    lo, hi = res.results[0]["test"]["rel_ci95"] or [None, None]
    if lo is not None:
        assert metrics["test/graft_s0.01/rel_ci_low"] == pytest.approx(lo)
        assert metrics["test/graft_s0.01/rel_ci_high"] == pytest.approx(hi)
    assert metrics["test/finetuned/rel_ci_low"] == 1.0 and metrics["test/finetuned/rel_ci_high"] == 1.0


def test_interval_pairs_become_low_and_high_metrics():
    from mtgraft.tracking import numeric_metrics

    got = numeric_metrics({"rel": 0.8, "rel_ci95": [0.7, 0.9], "ood": {"b": {"accuracy_ci95": None}}}, "test/")
    assert got == {"test/rel": 0.8, "test/rel_ci_low": 0.7, "test/rel_ci_high": 0.9}


# ------------------------------------------------------------------------------ shown with intervals


def test_cli_tables_show_intervals():
    from rich.console import Console

    from mtgraft.cli.graft_cmds import comparisons_table, graft_table

    ref = {"accuracy": 0.5, "macro_f1": 0.5, "ece": 0.1, "brier": 0.2, "rel": 0.0}
    res = SimpleNamespace(
        task="t", graftable_size=100, head_params=4,
        reference={"pretrained": ref, "finetuned": {**ref, "accuracy": 0.9, "rel": 1.0, "rel_ci95": [1.0, 1.0]}},
        results=[{"method": "graft", "sparsity": 0.01, "region_size": 1, "seconds": 1.0,
                  "test": {**ref, "accuracy": 0.8, "accuracy_ci95": [0.76, 0.84], "rel": 0.75, "rel_ci95": [0.6, 0.9]}},
                 {"method": "old", "sparsity": 0.01, "region_size": 1, "seconds": 1.0, "test": {**ref, "rel": 0.5}}],
        extra={"comparisons": [
            {"sparsity": 0.01, "a": "graft", "b": "old", "metric": "accuracy", "diff": 0.3, "ci95": [0.2, 0.4], "p": 0.002},
            {"sparsity": 0.01, "a": "graft", "b": "old", "metric": "rel", "diff": 0.25, "ci95": [0.1, 0.4], "p": 0.004}]})
    con = Console(width=250, record=True)
    con.print(graft_table(res))
    con.print(comparisons_table(res))
    text = con.export_text()
    assert "0.800 ± 0.040" in text and "0.750 [0.600, 0.900]" in text and "1.000 [1.000, 1.000]" in text
    assert "0.500" in text  # a result without intervals: the plain number
    assert "0.300 [0.200, 0.400]" in text and "0.002" in text and "graft − old" in text


def test_report_tables_show_intervals_and_old_results_plain():
    from mtgraft.analysis.render import inputs_table, transfer_tables

    node = {"domain": None, "method": "graft", "sparsity": 0.01, "region_size": 10, "source": "x"}
    data = SimpleNamespace(labels=["a", "b"], nodes={
        "a": {**node, "accuracy": 0.8, "rel": 0.75, "accuracy_ci95": [0.7, 0.9], "rel_ci95": [0.5, 1.0]},
        "b": {**node, "accuracy": 0.6, "rel": 0.4}})  # written before intervals existed
    rows = inputs_table(data).rows
    assert rows[0][5:7] == ["0.800 [0.700, 0.900]", "0.750 [0.500, 1.000]"]
    assert rows[1][5:7] == ["0.600", "0.400"]
    tr = {"eval_tasks": ["a", "b"], "grafts": ["a", "b"], "rel": [[0.75, 0.1], [None, 0.4]], "unions": [],
          "results": [{"graft": "a", "eval_task": "a", "rel_ci95": [0.5, 1.0]}, {"graft": "a", "eval_task": "b"},
                      {"graft": "b", "eval_task": "b", "rel_ci95": None}], "reference": {}}
    rel = transfer_tables(tr)["transfer_rel"].rows
    assert rel[0][1:] == ["0.75 [0.50, 1.00]", "0.10"] and rel[1][1:] == ["n/a", "0.40"]


def test_eval_reports_accuracy_with_its_interval(ck, tmp_path):
    from mtgraft.evaluation.runner import EvalConfig, evaluate

    rep = evaluate(EvalConfig(model=ck, track=False, out=str(tmp_path / "e"), device="cpu"), show_progress=False)
    m = rep["test"]
    assert _contains(m["accuracy_ci95"], m["accuracy"]) and m["accuracy_ci95"][0] < m["accuracy_ci95"][1]
    if m["rel_ci95"] is not None:  # a fine-tuned checkpoint is its own P_1: Rel is 1 in every resample
        assert m["rel_ci95"] == [1.0, 1.0]
    saved = json.loads((tmp_path / "e" / "eval.json").read_text())
    assert saved["test"]["accuracy_ci95"] == m["accuracy_ci95"] and saved["uncertainty"]["n_boot"] == 1000


def test_ood_sets_get_their_own_intervals(ck, tmp_path):
    """The task evaluated as its own OOD set: same examples, same seed, so the same intervals as the test's."""
    cfg = GraftConfig(task=example_task_yaml(), finetuned=ck, sparsity=[0.01], method=["topk"], eval_tasks=[
        example_task_yaml()], out=str(tmp_path / "g"), track=False, do_register=False)
    [res] = run_graft(cfg, show_progress=False)
    m = res.results[0]["test"]
    [(name, om)] = m["ood"].items()
    assert om["accuracy"] == m["accuracy"] and om["accuracy_ci95"] == m["accuracy_ci95"]
    assert om["rel_ci95"] == m["rel_ci95"]
    ft = res.reference["finetuned"]
    assert ft["ood"][name]["gain_ci95"] == ft["gain_ci95"] and ft["ood"][name]["rel_ci95"] == ft["rel_ci95"]
