"""Smoke variants of the three studies in experiments/: each runs end to end on a tiny random model
(real offline tasks, few steps), and a rerun resumes (skips finished stages)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mtgraft.testing import make_tiny_model

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ["train.k=4", "train.max_steps=4", "train.eval_every=2", "train.max_test=24", "train.batch_size=4",
         "train.max_length=32", "graft.updates=2"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model("head", tmp_path_factory.mktemp("m") / "tiny", seed=5)


def _run(args, tmp_path):
    from mtgraft.cli import app as appmod

    appmod._register()
    return CliRunner().invoke(appmod.app, args, catch_exceptions=False)


@pytest.mark.integration
@pytest.mark.parametrize("study, extra", [
    ("single_task.yaml", ["tasks=[rotten_tomatoes,movie_polarity]", "graft.sparsity=[1e-3,1e-2]"]),
    ("multitask_overlap.yaml", ["tasks=[rotten_tomatoes,movie_polarity,hedge]", "report.max_test=12",
                                "report.unions=[[rotten_tomatoes,movie_polarity]]"]),
    ("continual_graft.yaml", ["tasks=[hedge,rotten_tomatoes]", "continual.updates=2"]),
    ("continual.yaml", ["tasks=[hedge,rotten_tomatoes,spam]", "continual.updates=2", "continual.seeds=[13,21]",
                        "continual.orders=[[hedge,rotten_tomatoes,spam],[spam,hedge,rotten_tomatoes]]",
                        "continual.budget_minutes=null", "continual.options.replay.replay_size=4"]),
])
def test_study_smoke_and_resume(tiny, tmp_path, monkeypatch, study, extra):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.chdir(tmp_path)
    sets = [f"model={tiny}", *SMOKE, *extra]
    args = ["run", str(ROOT / "experiments" / study), "--out", str(tmp_path / "out"), "--json"]
    for s in sets:
        args += ["--set", s]
    res = _run(args, tmp_path)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    state = json.loads((tmp_path / "out" / "study_state.json").read_text())
    assert state["stages"], "no stage recorded"
    assert (tmp_path / "out" / "summary.md").is_file()
    if summary["kind"] == "single":
        assert len(summary["tasks"]) == 2
        assert {r["method"] for r in summary["tasks"][0]["graft"]["results"]} == {"graft", "topk", "random", "bias-only"}
    elif summary["kind"] == "joint":
        assert summary["report"] and Path(summary["report"]["out"], "report.html").is_file()
    if summary["kind"] != "sequential":  # each grafted task's gain with its interval, and learnt or not
        from mtgraft.analysis.stats import learnt_status

        md = (tmp_path / "out" / "summary.md").read_text()
        assert "## Fine-tuning gains (was each task learnt?)" in md
        grafts = summary.get("grafts") or [t["graft"] for t in summary["tasks"]]
        assert [g["task"] for g in summary["gains"]] == [g["task"] for g in grafts]
        for g, gr in zip(grafts, summary["gains"], strict=True):
            ft = g["reference"]["finetuned"]
            assert gr["gain"] == ft["gain"] and gr["gain_ci95"] == ft["gain_ci95"]
            assert gr["learnt"] == learnt_status(ft["gain"], ft["gain_ci95"])[0]
            assert f"| {g['task']} |" in md
    elif "stream" in summary:  # the strategy comparison: every strategy × order × seed, aggregated
        st = summary["stream"]
        names = ["naive", "ewc", "l2", "replay", "lwf", "packnet", "graft", "graft-union"]
        assert list(st["strategies"]) == names and not st["not_run"]
        for n in names:
            p = st["strategies"][n]
            assert p["n_cells"] == 4 and p["acc"]["ci95"] is not None and len(p["matrix_by_position_mean"]) == 3
        assert st["strategies"]["packnet"]["bwt"]["mean"] == 0.0 and st["strategies"]["graft"]["bwt"]["mean"] == 0.0
        assert st["strategies"]["naive"]["extra_bytes_per_task"]["mean"] == 0
        assert st["strategies"]["graft"]["extra_bytes_per_task"]["mean"] > 0
        for f in st["figures"].values():
            assert Path(f).stat().st_size > 0
        assert "| graft-union | 4 |" in (tmp_path / "out" / "summary.md").read_text()
    else:
        assert len(summary["accuracy_matrix"]) == 2 and summary["graft_cl"]
        md = (tmp_path / "out" / "summary.md").read_text()
        R = summary["accuracy_matrix"]
        assert "| after stage | hedge | rotten_tomatoes |" in md
        assert f"| 2 (rotten_tomatoes) | {R[1][0]:.3f} | {R[1][1]:.3f} |" in md
        own = summary["graft_cl"]["per_task"]["hedge"]["own_graft"]
        assert f"| hedge | 1 | {R[0][0]:.3f} | {R[1][0]:.3f} | {own:.3f} |" in md
    # rerun: every stage is skipped (resumable), same summary numbers
    res2 = _run(args, tmp_path)
    assert res2.exit_code == 0, res2.output
    assert "skipped" in res2.output
    again = json.loads(res2.stdout.strip().splitlines()[-1])
    assert json.dumps(again.get("tasks") or again.get("grafts") or again.get("accuracy_matrix"), sort_keys=True) == \
        json.dumps(summary.get("tasks") or summary.get("grafts") or summary.get("accuracy_matrix"), sort_keys=True)
    if "stream" in summary:
        assert {n: p["acc"]["mean"] for n, p in again["stream"]["strategies"].items()} == \
            {n: p["acc"]["mean"] for n, p in summary["stream"]["strategies"].items()}
