"""Training throughput of mtgraft's loop against a plain Hugging Face ``Trainer`` on the same model and data.

Usage: python benchmarks/bench_train.py [--task rotten_tomatoes] [--k 64] [--batch-sizes 8 2] [--max-length 64]
       [--warmup 5] [--steps 40] [--repeats 3] [--out benchmarks/results/train.json]

Both sides, in one process and interleaved (the order alternates per repeat):
- mtgraft: ``train_loop`` + ``BatchStream`` + dynamic padding (the code path of ``mtgraft train``), a fresh
  ``build_task_model('minilm', 'head')`` with ``set_trainable`` (embeddings frozen) and ``make_optimizer``;
- Hugging Face: ``transformers.Trainer`` with ``AutoModelForSequenceClassification`` of the same MiniLM
  (embeddings frozen as well), a ``datasets.Dataset`` of the same token ids, ``DataCollatorWithPadding``.
Same batch size, max length, SGD lr / weight decay / clipping, constant lr. No evaluation inside the timed
window on either side. Throughput = timed steps x batch size / wall time between the end of the last
warm-up step and the end of the last step (a step-end timestamp on both sides). Prints a markdown table
and writes JSON; the ratio ours / HF (goal >= 1.0) is the median over the paired repeats.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from mtgraft.utils import provenance, set_seed, write_json  # noqa: E402


def throughput(stamps: list[float], warmup: int, batch_size: int) -> float:
    """Examples per second from step-end timestamps, skipping the first ``warmup`` steps."""
    if len(stamps) <= warmup or warmup < 1:
        raise ValueError("need at least one warm-up step and one timed step")
    timed = len(stamps) - warmup
    return timed * batch_size / (stamps[-1] - stamps[warmup - 1])


def load_data(task: str, k: int, seed: int, max_length: int) -> tuple[Any, Any]:
    """The task spec and its k-shot training split tokenised as ``mtgraft train`` does."""
    from mtgraft.models import build_task_model, encode_examples
    from mtgraft.tasks import get_task, make_splits

    spec = get_task(task)
    splits = make_splits(spec, k, seed, 100)
    model = build_task_model("minilm", "head", [spec])
    return spec, encode_examples(model, spec.name, splits.train, max_length)


def run_mtgraft(spec: Any, enc: Any, batch_size: int, steps: int, lr: float, seed: int) -> list[float]:
    """Step-end timestamps of ``steps`` steps of mtgraft's training loop on a fresh model."""
    from mtgraft.models import build_task_model
    from mtgraft.training import BatchStream, make_optimizer, set_trainable, train_loop

    set_seed(seed)
    model = build_task_model("minilm", "head", [spec])
    set_trainable(model)
    opt = make_optimizer(model, "sgd", lr, 1e-4)
    stamps: list[float] = []
    train_loop(model, BatchStream([enc], batch_size, seed), lambda: {"accuracy": 0.0}, optimizer=opt,
               max_steps=steps, eval_every=steps + 1, grad_clip=1.0, device=torch.device("cpu"),
               keep_best=False, progress=lambda step, info: stamps.append(time.perf_counter()))
    return stamps


def run_hf(enc: Any, n_labels: int, batch_size: int, steps: int, lr: float, seed: int) -> list[float]:
    """Step-end timestamps of ``steps`` steps of ``transformers.Trainer`` on a fresh model."""
    from datasets import Dataset
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from mtgraft.models import resolve_model_path

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.stamps: list[float] = []

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.stamps.append(time.perf_counter())

    set_seed(seed)
    path = resolve_model_path("minilm")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=n_labels)
    for p in model.base_model.embeddings.parameters():  # frozen as in mtgraft (METHOD.md §1)
        p.requires_grad_(False)
    cols: dict[str, Any] = {"input_ids": enc.input_ids, "attention_mask": [[1] * len(s) for s in enc.input_ids],
                            "labels": enc.labels}
    if enc.token_type_ids is not None:
        cols["token_type_ids"] = enc.token_type_ids
    ds = Dataset.from_dict(cols)
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=batch_size, max_steps=steps, learning_rate=lr,
            weight_decay=1e-4, optim="sgd", lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0,
            eval_strategy="no", save_strategy="no", logging_strategy="no", report_to=[], use_cpu=True,
            dataloader_num_workers=0, disable_tqdm=True, seed=seed,
        )
        trainer = Trainer(model=model, args=args, train_dataset=ds, data_collator=DataCollatorWithPadding(tok),
                          processing_class=tok, callbacks=[timer])
        trainer.train()
    return timer.stamps


def bench(args: argparse.Namespace) -> dict[str, Any]:
    """Interleaved repeats of both loops at each batch size; throughput per repeat and median ratio."""
    load_start = os.getloadavg()
    spec, enc = load_data(args.task, args.k, args.seed, args.max_length)
    total = args.warmup + args.steps
    rows = []
    for bs in args.batch_sizes:
        reps = []
        for r in range(args.repeats):
            order = ("mtgraft", "hf") if r % 2 == 0 else ("hf", "mtgraft")
            res: dict[str, float] = {}
            for side in order:
                if side == "mtgraft":
                    stamps = run_mtgraft(spec, enc, bs, total, args.lr, args.seed)
                else:
                    stamps = run_hf(enc, len(spec.labels), bs, total, args.lr, args.seed)
                if len(stamps) != total:
                    raise RuntimeError(f"{side}: expected {total} steps, got {len(stamps)}")
                res[side] = throughput(stamps, args.warmup, bs)
            res["ratio"] = res["mtgraft"] / res["hf"]
            reps.append(res)
            print(f"bs {bs} repeat {r}: mtgraft {res['mtgraft']:.1f} ex/s, HF {res['hf']:.1f} ex/s, "
                  f"ratio {res['ratio']:.3f}", file=sys.stderr)
        rows.append({
            "batch_size": bs, "repeats": reps,
            "mtgraft_ex_per_s": statistics.median(x["mtgraft"] for x in reps),
            "hf_ex_per_s": statistics.median(x["hf"] for x in reps),
            "ratio": statistics.median(x["ratio"] for x in reps),
        })
    return {
        "benchmark": "train_throughput", "task": spec.name, "k": args.k, "n_train": len(enc),
        "model": "minilm (all-MiniLM-L6-v2)", "max_length": args.max_length, "optimizer": "sgd",
        "lr": args.lr, "weight_decay": 1e-4, "grad_clip": 1.0, "warmup_steps": args.warmup,
        "timed_steps": args.steps, "repeats": args.repeats, "torch_threads": torch.get_num_threads(),
        "rows": rows, "goal": "ratio mtgraft / HF >= 1.0",
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "loadavg_start": load_start, "loadavg_end": os.getloadavg(), "shared": True},
        "provenance": provenance(),
    }


def markdown(result: dict[str, Any]) -> str:
    """The markdown table of a result."""
    lines = ["| batch size | mtgraft ex/s | HF Trainer ex/s | ratio (median of paired repeats) | per-repeat ratios |",
             "|---:|---:|---:|---:|---|"]
    for r in result["rows"]:
        per = ", ".join(f"{x['ratio']:.2f}" for x in r["repeats"])
        lines.append(f"| {r['batch_size']} | {r['mtgraft_ex_per_s']:.1f} | {r['hf_ex_per_s']:.1f} | "
                     f"{r['ratio']:.2f} | {per} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Parse options, run, print the table, write JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="rotten_tomatoes")
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 2])
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-2)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="benchmarks/results/train.json")
    args = p.parse_args(argv)
    result = bench(args)
    write_json(args.out, result)
    print(markdown(result))
    print(f"\nwritten {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
