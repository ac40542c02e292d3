"""Crash safety of `mtgraft graft`: SIGKILL mid-way, `--resume`, same patch bit for bit; and determinism."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest
import torch

from mtgraft.patches import SkillPatch
from mtgraft.testing import (
    example_task_yaml,
    kill_when_state_reaches,
    make_tiny_checkpoint,
    make_tiny_model,
    run_cli_json,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ck(tmp_path_factory):
    d = tmp_path_factory.mktemp("resume")
    pre = make_tiny_model("head", d / "pre", seed=7)
    return make_tiny_checkpoint(d / "ft", pre, example_task_yaml(), seed=8)


def _graft_cmd(ck: str, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mtgraft.cli", "graft", "--task", example_task_yaml(), "--finetuned", ck,
            "--sparsity", "0.01", "--method", "graft,random", "--recipe", "paper", "--updates", "30",
            "--no-register", "--out", str(out), "--json", *extra]


def _env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db", "PYTHONPATH": str(ROOT)}


def _payload(result: dict) -> tuple[str, list]:
    graft = next(r for r in result["results"] if r["method"] == "graft")
    p = SkillPatch.load(graft["patch"])
    return p.header.payload_hash, [(r["method"], r["region_size"], r["test"]["accuracy"], r["test"]["ece"])
                                   for r in result["results"]]


@pytest.mark.integration
def test_graft_kill_and_resume_is_bit_identical(ck, tmp_path):
    env = _env(tmp_path)
    ref_json = run_cli_json(_graft_cmd(ck, tmp_path / "ref"), env, tmp_path)

    out = tmp_path / "killed"
    state = tmp_path / "killed.resume" / "learn-graft-s0.01.pt"
    killed_at, rc = kill_when_state_reaches(_graft_cmd(ck, out), state, 5, env, tmp_path)
    assert killed_at is not None, "the run finished before it could be killed"
    assert rc == -signal.SIGKILL
    assert not out.exists()  # nothing half-written at --out

    resumed = run_cli_json(_graft_cmd(ck, out, "--resume"), env, tmp_path)
    assert _payload(resumed) == _payload(ref_json)
    hist = json.loads((out / "results.json").read_text())
    assert hist["results"][0]["updates_run"] == 30
    assert not (tmp_path / "killed.resume").exists()  # state removed once finished


@pytest.mark.integration
def test_graft_twice_same_patch_and_metrics(ck, tmp_path):
    env = _env(tmp_path)
    runs = []
    for name in ("a", "b"):
        runs.append(run_cli_json(_graft_cmd(ck, tmp_path / name, "--updates", "5"), env, tmp_path))
    assert _payload(runs[0]) == _payload(runs[1])
    pa = SkillPatch.load(runs[0]["results"][0]["patch"])
    pb = SkillPatch.load(runs[1]["results"][0]["patch"])
    for n in pa.indices:
        assert torch.equal(pa.indices[n], pb.indices[n]) and torch.equal(pa.values[n], pb.values[n])
    assert pa.header.code_version == pb.header.code_version and pa.header.code_version.get("git_revision")
