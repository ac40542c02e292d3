"""Data-parallel training: ``accelerate launch`` with 2 CPU processes (gloo) matches a single process.

A joint multi-task run (two heads on one body, so DDP also meets heads without gradients) on a tiny
model without dropout: each process takes half of every global batch and DDP averages the gradients,
so the two runs must end with the same parameters up to float rounding. A global batch of 3 is
split 2 + 1: the loss of each share is scaled so that the average over processes is the global mean.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mtgraft.models import load_checkpoint
from mtgraft.testing import example_task_yaml, make_tiny_model

ROOT = Path(__file__).resolve().parents[2]
TOPIC = """text,topic
"The striker scored twice in the second half.",sport
"Our goalkeeper saved a penalty in the final minute.",sport
"The marathon runners crossed the bridge at dawn.",sport
"She won the tennis match in three sets.",sport
"The team trained hard before the championship game.",sport
"A late goal gave the visitors the cup.",sport
"Simmer the onions slowly until they turn golden.",food
"Add a pinch of salt to the boiling pasta water.",food
"The bread dough must rise for two hours.",food
"Roast the peppers and peel off the skins.",food
"Whisk the eggs with sugar until pale and fluffy.",food
"Serve the soup with fresh herbs and cream.",food
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: list[str], env: dict[str, str]) -> dict:
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-4000:]
    lines = [ln for ln in p.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one JSON object on stdout (main process only), got:\n{p.stdout[-2000:]}"
    return json.loads(lines[0])


@pytest.mark.integration
def test_two_cpu_processes_match_one(tmp_path, mlflow_db_template):
    model = make_tiny_model("head", tmp_path / "tiny", seed=5)
    cfg_file = Path(model) / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # same trajectory, dropout aside
    cfg_file.write_text(json.dumps(cfg))
    (tmp_path / "topic.csv").write_text(TOPIC)
    (tmp_path / "topic.yaml").write_text("name: tiny_topic\ntrain: topic.csv\ntext_column: text\n"
                                         "label_column: topic\nlabels: [food, sport]\n")
    db = tmp_path / "mlflow.db"
    shutil.copy(mlflow_db_template, db)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{db}", "OMP_NUM_THREADS": "1",
           "HF_HOME": str(tmp_path / "hf"),  # no user accelerate config
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    args = ["train-multitask", "--tasks", f"{example_task_yaml()},{tmp_path / 'topic.yaml'}", "--mode", "joint",
            "--model", model, "--k", "2", "--max-test", "all", "--max-length", "32", "--batch-size", "3",
            "--max-steps", "5", "--eval-every", "5", "--lr", "0.2", "--device", "cpu", "--json"]
    one = _run([sys.executable, "-m", "mtgraft.cli", *args, "--out", str(tmp_path / "one")], env)
    two = _run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(_free_port()), "-m", "mtgraft.cli", *args, "--out", str(tmp_path / "two")], env)
    assert one["processes"] == 1 and two["processes"] == 2
    m1, _ = load_checkpoint(one["checkpoint"])
    m2, _ = load_checkpoint(two["checkpoint"])
    p1, p2 = dict(m1.named_parameters()), dict(m2.named_parameters())
    assert set(p1) == set(p2)
    for n in p1:
        torch.testing.assert_close(p2[n], p1[n], rtol=1e-4, atol=1e-5, msg=f"{n} differs between 1 and 2 processes")
    # the runs did train: the body and both heads moved away from the pretrained values
    from mtgraft.models import build_task_model

    pre = dict(build_task_model(model, "head", m1.tasks.values()).named_parameters())
    moved = max((p1[n] - pre[n]).abs().max().item() for n in m1.graftable_names())
    assert moved > 1e-3
    for task in ("example_local", "tiny_topic"):
        assert one["test"][task]["accuracy"] == pytest.approx(two["test"][task]["accuracy"])
        assert one["test"][task]["brier"] == pytest.approx(two["test"][task]["brier"], abs=1e-4)
