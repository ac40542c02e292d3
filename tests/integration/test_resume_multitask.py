"""Crash safety of `mtgraft train-multitask` (joint and sequential): SIGKILL mid-way, `--resume`, same metrics
and checkpoint files bit for bit as an uninterrupted run; a sequential run also resumes at a stage boundary."""

from __future__ import annotations

import os
import shutil
import sqlite3
import sys
from pathlib import Path

import pytest

from mtgraft.errors import MtgraftError
from mtgraft.testing import (
    example_task_yaml,
    kill_when_state_reaches,
    make_tiny_model,
    run_cli_json,
    write_topic_task,
)

ROOT = Path(__file__).resolve().parents[2]
STEPS = 100  # per run (joint) or per stage (sequential)
@pytest.fixture()
def setup(tmp_path, mlflow_db_template):
    db = tmp_path / "mlflow.db"
    shutil.copy(mlflow_db_template, db)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{db}", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return {"dir": tmp_path, "env": env, "model": make_tiny_model("head", tmp_path / "tiny", seed=11),
            "tasks": [example_task_yaml(), write_topic_task(tmp_path / "topic")]}


def _args(s: dict, mode: str, out: Path) -> dict:
    return {"tasks": s["tasks"], "mode": mode, "model": s["model"], "k": 2, "max_test": None, "max_length": 32,
            "batch_size": 2, "max_steps": STEPS, "eval_every": 5, "lr": 0.05, "out": str(out)}


def _cmd(s: dict, mode: str, out: Path, *extra: str) -> list[str]:
    a = _args(s, mode, out)
    return [sys.executable, "-m", "mtgraft.cli", "train-multitask", "--tasks", ",".join(a["tasks"]), "--mode", mode,
            "--model", a["model"], "--k", "2", "--max-test", "all", "--max-length", "32", "--batch-size", "2",
            "--max-steps", str(STEPS), "--eval-every", "5", "--lr", "0.05", "--out", str(out), "--json", *extra]


def _run(s: dict, cmd: list[str]) -> dict:
    return run_cli_json(cmd, s["env"], s["dir"])


def _kill_when(s: dict, cmd: list[str], state: Path, min_step: int) -> int:
    """Start ``cmd``; SIGKILL it once its periodic state ``state`` has reached ``min_step``; the step killed at."""
    killed_at, _ = kill_when_state_reaches(cmd, state, min_step, s["env"], s["dir"])
    assert killed_at is not None and killed_at < STEPS, "the run finished before it could be killed"
    return killed_at


def _files(folder: Path) -> dict[str, bytes]:
    """The weight files of a run folder (and of its stage checkpoints), by relative path."""
    return {str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*.safetensors"))}


def _same_weights(a: Path, b: Path) -> None:
    fa, fb = _files(a), _files(b)
    assert "model.safetensors" in fa and "task_heads.safetensors" in fa
    assert fa.keys() == fb.keys()
    for k in fa:
        assert fa[k] == fb[k], k


def _logged_steps(s: dict, key: str, run: int = -1) -> list[int]:
    """Steps at which MLflow run number ``run`` (in start order) logged ``key``: what that run itself trained."""
    with sqlite3.connect(s["dir"] / "mlflow.db") as c:
        runs = [r[0] for r in c.execute("SELECT run_uuid FROM runs ORDER BY start_time")]
        return sorted(r[0] for r in c.execute("SELECT step FROM metrics WHERE run_uuid = ? AND key = ?",
                                              (runs[run], key)))


def _payload(j: dict) -> dict:
    keys = ("tasks", "mode", "test", "dev", "steps", "best_step", "sampling", "accuracy_matrix", "r0", "continual")
    out = {k: j.get(k) for k in keys}
    out["stages"] = [{k: st[k] for k in ("stage", "task", "best_step", "best_dev", "steps")} for st in j.get("stages", [])]
    return out


@pytest.mark.integration
def test_joint_kill_and_resume_is_bit_identical(setup):
    s = setup
    ref = _run(s, _cmd(s, "joint", s["dir"] / "ref"))
    out = s["dir"] / "killed"
    killed_at = _kill_when(s, _cmd(s, "joint", out), s["dir"] / "killed.resume" / "joint.pt", 15)
    assert not out.exists()
    got = _run(s, _cmd(s, "joint", out, "--resume"))
    assert _payload(got) == _payload(ref)
    assert min(_logged_steps(s, "dev/accuracy")) > killed_at  # it continued, it did not start over
    _same_weights(s["dir"] / "ref", out)
    assert not (s["dir"] / "killed.resume").exists()


@pytest.mark.integration
def test_sequential_killed_in_each_stage_and_resumed_is_bit_identical(setup):
    s = setup
    ref = _run(s, _cmd(s, "sequential", s["dir"] / "ref"))
    out, state = s["dir"] / "killed", s["dir"] / "killed.resume"
    # killed in stage 1, resumed; the resumed run killed in stage 2, resumed again
    killed_1 = _kill_when(s, _cmd(s, "sequential", out), state / "stage-1.pt", 15)
    assert not (state / "stages.pt").exists()
    killed_2 = _kill_when(s, _cmd(s, "sequential", out, "--resume"), state / "stage-2.pt", 15)
    assert min(_logged_steps(s, "stage_1/dev/accuracy")) > killed_1  # stage 1 continued mid-loop
    assert (state / "stages.pt").is_file() and not (state / "stage-1.pt").exists()
    assert not out.exists()
    got = _run(s, _cmd(s, "sequential", out, "--resume"))
    assert _payload(got) == _payload(ref)
    assert _logged_steps(s, "stage_1/dev/accuracy") == []  # stage 1 skipped
    assert min(_logged_steps(s, "stage_2/dev/accuracy")) > killed_2  # stage 2 continued mid-loop
    assert len(got["accuracy_matrix"]) == 2 and got["continual"] is not None
    _same_weights(s["dir"] / "ref", out)  # the final checkpoint and each stage's
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in (s["dir"] / "ref").iterdir())
    assert not state.exists()


@pytest.mark.integration
def test_sequential_resumes_at_a_stage_boundary_and_checks_settings(setup, monkeypatch):
    """Stopped after stage 1 was recorded, before stage 2 wrote any state: the rerun starts stage 2 from the
    model and RNG states recorded with stage 1 (in-process; a failure stands in for the kill)."""
    from mtgraft.resume import ResumeState
    from mtgraft.training.multitask import MultitaskConfig, train_multitask

    s = setup
    monkeypatch.chdir(s["dir"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", s["env"]["MLFLOW_TRACKING_URI"])
    ref = train_multitask(MultitaskConfig(**_args(s, "sequential", s["dir"] / "ref")), show_progress=False)

    out = s["dir"] / "stopped"
    save = ResumeState.save

    def failing_save(self, name, st, config=None):
        if name == "stage-2":
            raise RuntimeError("stopped")
        save(self, name, st, config)

    monkeypatch.setattr(ResumeState, "save", failing_save)
    with pytest.raises(RuntimeError, match="stopped"):
        train_multitask(MultitaskConfig(**_args(s, "sequential", out)), show_progress=False)
    monkeypatch.setattr(ResumeState, "save", save)
    state = s["dir"] / "stopped.resume"
    assert (state / "stages.pt").is_file() and not (state / "stage-2.pt").exists() and not out.exists()
    # other settings are refused, the state is kept
    with pytest.raises(MtgraftError, match="other settings"):
        train_multitask(MultitaskConfig(**{**_args(s, "sequential", out), "lr": 0.01, "resume": True}),
                        show_progress=False)
    from mtgraft.training import BatchStream

    batches = []
    nxt = BatchStream.next
    monkeypatch.setattr(BatchStream, "next", lambda self: batches.append(1) or nxt(self))
    got = train_multitask(MultitaskConfig(**_args(s, "sequential", out), resume=True), show_progress=False)
    assert len(batches) == STEPS  # stage 2 only
    monkeypatch.setattr(BatchStream, "next", nxt)
    assert _payload(got.to_json()) == _payload(ref.to_json())
    _same_weights(s["dir"] / "ref", out)
    assert not state.exists()
    # --resume without any state starts from scratch
    fresh = train_multitask(MultitaskConfig(**_args(s, "sequential", s["dir"] / "fresh"), resume=True),
                            show_progress=False)
    assert _payload(fresh.to_json()) == _payload(ref.to_json())
    _same_weights(s["dir"] / "ref", s["dir"] / "fresh")


@pytest.mark.integration
@pytest.mark.parametrize("strategy", ["ewc", "l2", "replay", "lwf", "packnet"])
def test_every_strategy_killed_mid_stage_and_resumed_is_bit_identical(setup, strategy):
    """``--strategy S``: SIGKILL in stage 2 (stage 1's strategy state — Fisher, buffer, masks — already kept in
    ``stages.pt``), rerun with ``--resume``: the same metrics, strategy record and weight files as an
    uninterrupted run."""
    s = setup
    extra = ["--strategy", strategy, "--replay-size", "3"]
    ref = _run(s, _cmd(s, "sequential", s["dir"] / "ref", *extra))
    out, state = s["dir"] / "killed", s["dir"] / "killed.resume"
    killed = _kill_when(s, _cmd(s, "sequential", out, *extra), state / "stage-2.pt", 15)
    assert (state / "stages.pt").is_file() and not out.exists()
    got = _run(s, _cmd(s, "sequential", out, *extra, "--resume"))
    assert _payload(got) == _payload(ref) and got["strategy"] == ref["strategy"]
    assert min(_logged_steps(s, "stage_2/dev/accuracy")) > killed  # stage 2 continued mid-loop
    _same_weights(s["dir"] / "ref", out)
    assert not state.exists()
