"""The `head` type on the real embedded MiniLM and a real offline task (few steps: a plumbing check)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from mtgraft.evaluation.predict import predict_probs
from mtgraft.models import encode_examples, load_checkpoint
from mtgraft.tasks import get_task, make_splits


@pytest.mark.integration
def test_train_minilm_head_on_rotten_tomatoes(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.chdir(tmp_path)
    from mtgraft.cli import app as appmod

    appmod._register()
    out = tmp_path / "ck"
    res = CliRunner().invoke(appmod.app, [
        "train", "--task", "rotten_tomatoes", "--model", "minilm", "--k", "8", "--max-steps", "12",
        "--eval-every", "6", "--batch-size", "8", "--lr", "0.05", "--max-length", "32", "--max-test", "64",
        "--out", str(out), "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout.strip().splitlines()[-1])
    assert r["checkpoint"] == str(out) and r["data"]["n_train"] == 16 and r["data"]["n_test"] == 64
    model, meta = load_checkpoint(out)
    assert meta.pretrained["name"] == "minilm" and meta.model_type == "head"
    assert len(model.graftable_names()) == 96  # 6 layers x 16 tensors: the graftable body of MiniLM
    spec = get_task("rotten_tomatoes")
    test = make_splits(spec, 8, 13, 64).test
    probs = predict_probs(model, encode_examples(model, spec.name, test, 32))
    acc = float((probs.argmax(1) == np.array([e.label for e in test])).mean())
    assert acc == pytest.approx(r["test"]["accuracy"])
    import mlflow

    run = mlflow.MlflowClient().get_run(r["mlflow_run_id"])
    assert run.data.tags["mtgraft.checkpoint"] == str(out.resolve())
    assert run.data.metrics["test/accuracy"] == pytest.approx(r["test"]["accuracy"])
