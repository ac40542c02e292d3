"""The strategy comparison of a sequential study (mtgraft.workflows.stream) on a tiny random model and two
small local tasks: every (seed, order, strategy) cell, graft reusing the naive cell, the aggregate with
intervals over cells, the figures, the Markdown table, resume and the time budget."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mtgraft.testing import example_task_yaml, make_tiny_model, write_topic_task
from mtgraft.workflows.stream import StreamConfig, aggregate, render_stream
from mtgraft.workflows.study import Study, StudyConfig, render_summary


@pytest.fixture(scope="module")
def env(tmp_path_factory, mlflow_db_template):
    d = tmp_path_factory.mktemp("stream")
    db = d / "mlflow.db"
    shutil.copy(mlflow_db_template, db)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
        mp.chdir(d)
        yield {"dir": d, "head": make_tiny_model("head", d / "head", seed=5),
               "tasks": [example_task_yaml(), write_topic_task(d / "topic")]}


def _study(env, **cont):
    a, b = env["tasks"]
    c = {"strategies": ["naive", "ewc", "graft"], "orders": [[a, b], [b, a]], "seeds": [13], "updates": 1,
         "sparsity": 0.01, **cont}
    return StudyConfig(name="s", kind="sequential", model=env["head"], tasks=[a, b], continual=c,
                       train={"k": 2, "max_steps": 2, "eval_every": 2, "max_test": None, "max_length": 32,
                              "batch_size": 2, "lr": 0.05})


def test_stream_cells_aggregate_and_resume(env):
    out = env["dir"] / "out"
    summary = Study(_study(env), out=str(out), show_progress=False).run()
    st = summary["stream"]
    assert list(st["strategies"]) == ["naive", "ewc", "graft", "graft-union"] and st["not_run"] == []
    for p in st["strategies"].values():
        assert p["n_cells"] == 2 and p["cells"] == ["s13-o1", "s13-o2"]
        assert p["acc"]["ci95"] is not None and p["acc"]["n"] == 2
        assert len(p["matrix_by_position_mean"]) == 2 and p["wall_seconds"]["mean"] > 0
        assert p["peak_rss_bytes"]["mean"] > 0
    assert st["strategies"]["graft"]["bwt"]["mean"] == 0.0  # own patches never change
    assert st["strategies"]["graft"]["extra_bytes_per_task"]["mean"] > 0
    assert st["strategies"]["naive"]["extra_bytes_per_task"]["mean"] == 0
    assert st["strategies"]["ewc"]["extra_bytes_per_task"]["mean"] > 0  # the Fisher
    cells = json.loads((out / "stream.json").read_text())["cells"]
    assert len(cells) == 2 * 4
    naive = [c for c in cells if c["strategy"] == "naive"]
    graft = [c for c in cells if c["strategy"] == "graft"]
    # graft reuses the naive run of its cell: the same r0, and its wall time includes that training
    assert [c["r0"] for c in graft] == [c["r0"] for c in naive]
    assert all(g["wall_seconds"] > n["wall_seconds"] for g, n in zip(graft, naive, strict=True))
    # weights of finished cells are dropped
    assert not list((out / "cells").rglob("model.safetensors"))
    for f in st["figures"].values():
        assert Path(f).stat().st_size > 0
    md = render_summary(summary)
    assert "| graft-union | 2 |" in md and "| naive | 2 |" in md
    # a rerun skips every cell and gives the same numbers
    again = Study(_study(env), out=str(out), show_progress=False).run()
    assert {n: p["acc"] for n, p in again["stream"]["strategies"].items()} == \
        {n: p["acc"] for n, p in st["strategies"].items()}


def test_budget_stops_new_cells_and_lists_them(env):
    out = env["dir"] / "budget"
    summary = Study(_study(env, strategies=["naive", "l2"], budget_minutes=1e-6), out=str(out),
                    show_progress=False).run()
    st = summary["stream"]
    # the first cell always starts (no time has passed at its check? the budget is tiny: at most one ran)
    assert len(st["not_run"]) >= 3 and "s13-o2-l2" in st["not_run"]
    assert "Not run" in render_stream(st)


def test_stream_config_checks():
    with pytest.raises(Exception, match="unknown strategies"):
        StreamConfig(strategies=["naive", "si"])
    with pytest.raises(Exception, match="list 'naive' too"):
        StreamConfig(strategies=["graft"])
    empty = aggregate([], StreamConfig(strategies=["naive"]), [["a", "b"]], ["a", "b"])
    assert empty["strategies"] == {}


def test_paired_differences_pair_cells_by_seed_and_order():
    """Δ against naive and graft − each strategy are computed cell by cell (same seed and order); a cell only one
    side ran is left out."""
    from mtgraft.workflows.stream import paired_differences

    def cell(strategy, seed, k, acc, forg):
        return {"strategy": strategy, "seed": seed, "order_index": k,
                "continual": {"acc": acc, "forgetting_final": forg}}

    cells = [cell("naive", 13, k, 0.60 + 0.01 * k, 0.05) for k in range(3)]
    cells += [cell("replay", 13, k, 0.63 + 0.01 * k + 0.001 * k * k, 0.02) for k in range(3)]
    cells += [cell("graft", 13, k, 0.50, 0.0) for k in range(2)]  # order 3 not run
    p = paired_differences(cells, ["naive", "replay", "graft"])
    r = p["vs_naive"]["replay"]["acc"]
    assert r["cells"] == ["s13-o1", "s13-o2", "s13-o3"]
    assert r["mean_diff"] == pytest.approx(0.03 + 0.001 * (0 + 1 + 4) / 3)
    assert r["ci95"][0] < r["mean_diff"] < r["ci95"][1]
    assert p["vs_naive"]["replay"]["forgetting_final"]["mean_diff"] == pytest.approx(-0.03)
    g = p["graft_vs"]["naive"]["acc"]
    assert g["cells"] == ["s13-o1", "s13-o2"] and g["mean_diff"] == pytest.approx(-0.105)
    assert "graft" not in p["graft_vs"]
