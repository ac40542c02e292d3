"""Crash safety of `mtgraft train`: SIGKILL mid-way, `--resume`, same metrics and checkpoint bit for bit."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mtgraft.testing import example_task_yaml, kill_when_state_reaches, make_tiny_model, run_cli_json

ROOT = Path(__file__).resolve().parents[2]


def _cmd(model: str, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mtgraft.cli", "train", "--task", example_task_yaml(), "--model", model, "--k", "2",
            "--max-steps", "120", "--eval-every", "10", "--batch-size", "2", "--lr", "0.05", "--max-length", "32",
            "--out", str(out), "--json", *extra]


def _weights(ck: Path) -> dict[str, torch.Tensor]:
    w = load_file(str(ck / "model.safetensors"))
    w.update({f"head.{k}": v for k, v in load_file(str(ck / "task_heads.safetensors")).items()})
    return w


@pytest.mark.integration
def test_train_kill_and_resume_is_bit_identical(tmp_path):
    model = make_tiny_model("head", tmp_path / "tiny", seed=11)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db", "PYTHONPATH": str(ROOT)}
    ref_json = run_cli_json(_cmd(model, tmp_path / "ref"), env, tmp_path)

    out = tmp_path / "killed"
    state = tmp_path / "killed.resume" / "train.pt"
    killed_at, _ = kill_when_state_reaches(_cmd(model, out), state, 30, env, tmp_path)
    assert killed_at is not None and killed_at < 120, "the run finished before it could be killed"
    assert not out.exists()

    got = run_cli_json(_cmd(model, out, "--resume"), env, tmp_path)
    assert got["test"] == ref_json["test"] and got["dev"] == ref_json["dev"]
    assert got["best_step"] == ref_json["best_step"]
    a, b = _weights(tmp_path / "ref"), _weights(out)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert not (tmp_path / "killed.resume").exists()
