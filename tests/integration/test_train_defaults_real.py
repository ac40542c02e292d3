"""``mtgraft train`` with the default preset on the real embedded MiniLM (issue 12 item 1): the preset's
settings and the mean-pooled head are in force, recorded in the checkpoint and in MLflow, and the head learns.
A short run (K = 16, 40 steps); docs/training.md has the full-length measurements."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from mtgraft.models import load_checkpoint, load_pretrained_like
from mtgraft.presets import choose


@pytest.mark.integration
def test_default_preset_on_minilm_learns_and_is_recorded(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.chdir(tmp_path)
    from mtgraft.cli import app as appmod

    appmod._register()
    out = tmp_path / "ck"
    res = CliRunner().invoke(appmod.app, [
        "train", "--task", "rotten_tomatoes", "--k", "16", "--max-steps", "40", "--eval-every", "20",
        "--max-test", "200", "--device", "cpu", "--out", str(out), "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout.strip().splitlines()[-1])
    name, settings, _ = choose("minilm", "head")
    c = r["config"]
    assert c["preset"] == name and c["recipe"] == "auto"
    assert {k: c[k] for k in settings} == settings | {"max_steps": 40}  # the given option wins
    assert "max_steps" not in c["preset_filled"] and "lr" in c["preset_filled"]
    model, meta = load_checkpoint(out)
    assert meta.tasks[0].pooling == "mean" == model.tasks["rotten_tomatoes"].head_input
    assert meta.train_config["preset"] == name
    assert load_pretrained_like(meta).tasks["rotten_tomatoes"].pooling == "mean"
    assert r["test"]["accuracy"] >= 0.6, r["test"]  # 200 test examples; a head on the mean learns fast
    import mlflow

    run = mlflow.MlflowClient().get_run(r["mlflow_run_id"])
    assert run.data.params["preset"] == name and run.data.params["pooling"] == "mean"
