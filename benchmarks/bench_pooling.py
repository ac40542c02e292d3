"""Which head learns on the embedded MiniLM: first-token, mean-pooled and pretrained-pooler heads, then presets.

Usage: python benchmarks/bench_pooling.py RUN [RUN ...] [--out benchmarks/results/pooling.json] [--threads 1]
       python benchmarks/bench_pooling.py --list

Each RUN is a name from ``RUNS`` below: one ``mtgraft train`` (the library's ``train``; a fresh process per
invocation is not needed: runs are sequential and seeded) with the settings written there, every option given
explicitly except where the run is about the defaults (``default-*``: only what the must-show command gives).
Each result (test/dev accuracy, best step, seconds, load average before and after) is merged into the JSON by
run name, so runs can be done one at a time on a shared machine. docs/training.md tables the file.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# The issue's comparison: K = 64, SGD lr 1e-2, batch 2, 1,000 steps, length 64 (same settings on every side).
ISSUE = {"k": 64, "optimizer": "sgd", "lr": 1e-2, "batch_size": 2, "max_steps": 1000, "eval_every": 100,
         "max_length": 64}
# The studies' settings (experiments/*.yaml): SGD lr 5e-2, batch 8, length 64; 300 steps.
STUDY = {"k": 64, "optimizer": "sgd", "lr": 5e-2, "batch_size": 8, "max_steps": 300, "eval_every": 100,
         "max_length": 64}

RUNS: dict[str, dict[str, Any]] = {}
for task, short in (("rotten_tomatoes", "rt"), ("movie_polarity", "mp")):
    for pooling in ("first", "mean", "pooler"):
        RUNS[f"{short}-issue-{pooling}"] = {"task": task, **ISSUE, "pooling": pooling}
        RUNS[f"{short}-study-{pooling}"] = {"task": task, **STUDY, "pooling": pooling}
    # the pooler trained along (HF's sequence classifiers train it); not graftable: a graft keeps the pretrained one
    RUNS[f"{short}-issue-pooler-trained"] = {"task": task, **ISSUE, "pooling": "pooler", "freeze_head": False}
    RUNS[f"{short}-paper"] = {"task": task, "k": 64, "recipe": "paper"}
# The must-show command: mtgraft train --task rotten_tomatoes --k 256 --seed 13 --max-steps 300 --eval-every 100
RUNS["default-rt-k256"] = {"task": "rotten_tomatoes", "k": 256, "seed": 13, "max_steps": 300, "eval_every": 100}
RUNS["first-rt-k256"] = {**RUNS["default-rt-k256"], "pooling": "first"}  # the old default head, same command
RUNS["default-mp-k256"] = {"task": "movie_polarity", "k": 256, "seed": 13, "max_steps": 300, "eval_every": 100}
RUNS["paper-rt-k256-300"] = {"task": "rotten_tomatoes", "k": 256, "seed": 13, "max_steps": 300, "eval_every": 100,
                             "recipe": "paper"}


def run_one(name: str, max_test: int) -> dict[str, Any]:
    """Train RUN ``name`` (seed 13, test capped at ``max_test``) and return its record."""
    from mtgraft.config import TrainConfig
    from mtgraft.training import train

    opts = {"seed": 13, "max_test": max_test, **RUNS[name], "device": "cpu"}
    load0 = os.getloadavg()
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(**opts, out=str(Path(tmp) / "ck"), tracking_uri=f"sqlite:///{tmp}/mlflow.db")
        res = train(cfg, show_progress=False)
    settings = {k: v for k, v in cfg.model_dump().items() if k in (
        "task", "k", "seed", "max_test", "optimizer", "lr", "batch_size", "max_steps", "eval_every", "max_length",
        "pooling", "recipe", "preset", "preset_filled", "weight_decay", "grad_clip", "freeze_embeddings",
        "freeze_head")}
    return {"run": name, "given": RUNS[name], "settings": settings,
            "test_accuracy": res.test["accuracy"], "dev_accuracy": res.dev["accuracy"], "n_test": res.test["n"],
            "best_step": res.best_step, "seconds": round(time.time() - t0, 1),
            "load_before": [round(x, 2) for x in load0], "load_after": [round(x, 2) for x in os.getloadavg()]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="*")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--max-test", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/pooling.json")
    a = ap.parse_args()
    if a.list or not a.runs:
        for n, r in RUNS.items():
            print(n, r)
        return
    import json

    import torch

    from mtgraft.utils import provenance, write_json

    torch.set_num_threads(a.threads)
    out = Path(a.out)
    data = json.loads(out.read_text()) if out.is_file() else {"runs": {}}
    for name in a.runs:
        r = run_one(name, a.max_test)
        print(f"{name}: test {r['test_accuracy']:.4f} dev {r['dev_accuracy']:.4f} best step {r['best_step']} "
              f"{r['seconds']}s load {r['load_before']} -> {r['load_after']}", flush=True)
        data["runs"][name] = r
        data["provenance"] = provenance()
        data["threads"] = a.threads
        write_json(out, data)


if __name__ == "__main__":
    main()
