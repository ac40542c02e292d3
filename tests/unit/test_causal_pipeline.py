"""Every multi-task command on a tiny random causal LM (the regime of the real SmolLM2): joint and sequential
training, grafting every task, the registry, masks apply, the overlap report with transfer."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from mtgraft.cli import app as appmod
from mtgraft.models import load_checkpoint
from mtgraft.testing import example_task_yaml, make_tiny_model, write_topic_task


@pytest.fixture(scope="module")
def env(tmp_path_factory, mlflow_db_template):
    d = tmp_path_factory.mktemp("causal")
    db = d / "mlflow.db"
    shutil.copy(mlflow_db_template, db)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
        mp.chdir(d)
        appmod._register()
        yield {"dir": d, "uri": f"sqlite:///{db}", "model": make_tiny_model("causal", d / "llama", seed=5),
               "tasks": [example_task_yaml(), write_topic_task(d / "topic")]}


def _run(args: list[str]) -> dict:
    r = CliRunner().invoke(appmod.app, [*args, "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout.strip().splitlines()[-1])


def _train(env, mode: str, *extra: str, name: str | None = None) -> str:
    out = env["dir"] / (name or mode)
    _run(["train-multitask", "--tasks", ",".join(env["tasks"]), "--mode", mode, "--model", env["model"],
          "--type", "causal", "--k", "2", "--max-test", "all", "--max-length", "32", "--batch-size", "4",
          "--max-steps", "3", "--eval-every", "3", "--lr", "0.05", "--out", str(out), "--tracking-uri", env["uri"],
          *extra])
    return str(out)


def test_joint_causal_graft_registry_apply_and_report(env):
    ck = _train(env, "joint")
    model, meta = load_checkpoint(ck)
    assert meta.model_type == "causal" and meta.mode == "joint" and not list(model.heads)  # the LM head, shared
    g = _run(["graft", "--finetuned", ck, "--all-tasks", "--sparsity", "1e-2", "--method", "graft,topk",
              "--recipe", "fast", "--updates", "2", "--out", str(env["dir"] / "g"), "--tracking-uri", env["uri"]])
    results = g["tasks"] if "tasks" in g else g["results"]
    assert len(results) == 2
    rows = _run(["masks", "list", "--tracking-uri", env["uri"]])["masks"]
    names = {r["task"] for r in rows}
    assert names == {"example_local", "tiny_topic"}
    applied = _run(["masks", "apply", "example_local@latest", "tiny_topic@latest", "--to", env["model"],
                    "--out", str(env["dir"] / "stitched"), "--tracking-uri", env["uri"]])
    assert applied["checkpoint"] == str(env["dir"] / "stitched")
    m2, meta2 = load_checkpoint(env["dir"] / "stitched")
    assert meta2.model_type == "causal" and set(m2.tasks) == {"example_local", "tiny_topic"}
    files = sorted(str(p) for p in (env["dir"] / "g").rglob("*-graft-*.skillpatch.safetensors"))
    assert len(files) == 2
    rep = _run(["overlap-report", *files, "--out", str(env["dir"] / "report"), "--no-track"])
    assert (env["dir"] / "report" / "report.html").is_file() and rep["out"] == str(env["dir"] / "report")


@pytest.mark.parametrize("strategy", ["naive", "ewc"])
def test_sequential_causal_with_a_strategy(env, strategy):
    ck = _train(env, "sequential", "--strategy", strategy, name=f"seq-{strategy}")
    meta = load_checkpoint(ck)[1]
    assert meta.model_type == "causal" and meta.mode == "sequential"
