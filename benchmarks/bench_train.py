"""Training throughput of mtgraft's loop against a plain Hugging Face ``Trainer`` on the same model and data.

Usage: python benchmarks/bench_train.py [--task rotten_tomatoes] [--k 64] [--batch-sizes 8 2] [--max-length 64]
       [--warmup-epochs 1] [--epochs 2] [--repeats 3] [--warmup-rounds 1] [--threads 1] [--out benchmarks/results/train.json]

Both sides, in one process and interleaved (the order alternates per repeat):
- mtgraft: ``train_loop`` + ``BatchStream`` + dynamic padding (the code path of ``mtgraft train``), a fresh
  ``build_task_model('minilm', 'head')`` with ``set_trainable`` (embeddings frozen) and ``make_optimizer``;
- Hugging Face: ``transformers.Trainer`` with ``AutoModelForSequenceClassification`` of the same MiniLM
  (embeddings frozen as well), a ``datasets.Dataset`` of the same token ids, ``DataCollatorWithPadding``.
Same batch size, max length, SGD lr / weight decay / clipping, constant lr. No evaluation inside the timed
window on either side. Warm-up and timed windows are whole epochs of the k-shot training set, so both sides
see every example equally often. Throughput = timed steps x batch size / time between the end of the last
warm-up step and the end of the last step (a step-end timestamp on both sides), in wall-clock seconds and,
less sensitive to other processes on a shared machine, in CPU seconds of this process; padded tokens per second (counted at the embeddings, so a different
batching of the same examples is accounted for) is reported beside them. One discarded round
of both sides per batch size comes first (kernels for each padded shape are built on first use, and the
later side would otherwise get them for free). torch runs one thread by default (``--threads``): on a
loaded 2-core machine two threads made a step 4-7x slower and far noisier. Prints a markdown table
and writes JSON; the ratio ours / HF (goal >= 1.0) is the median over the paired repeats.
"""

from __future__ import annotations

import argparse
import math
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
    """Examples per second from step-end timestamps (wall or CPU), skipping the first ``warmup`` steps."""
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


class StepClock:
    """Step-end timestamps (wall, CPU) and the running count of padded tokens the embeddings have seen."""

    def __init__(self, embeddings: torch.nn.Module) -> None:
        self.stamps: list[tuple[float, float, int]] = []
        self.tokens = 0
        embeddings.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module: Any, args: tuple, kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None:
            self.tokens += int(ids.numel())

    def step_end(self) -> None:
        """Record the end of a training step."""
        self.stamps.append((time.perf_counter(), time.process_time(), self.tokens))


def token_rate(stamps: list[tuple[float, float, int]], warmup: int) -> float:
    """Padded tokens per wall-clock second over the timed steps."""
    return (stamps[-1][2] - stamps[warmup - 1][2]) / (stamps[-1][0] - stamps[warmup - 1][0])


def run_mtgraft(spec: Any, enc: Any, batch_size: int, steps: int, lr: float,
                seed: int) -> list[tuple[float, float, int]]:
    """(wall, CPU, padded tokens so far) step-end stamps of ``steps`` steps of mtgraft's training loop on a fresh model."""
    from mtgraft.models import build_task_model
    from mtgraft.training import BatchStream, make_optimizer, set_trainable, train_loop

    set_seed(seed)
    model = build_task_model("minilm", "head", [spec])
    set_trainable(model)
    opt = make_optimizer(model, "sgd", lr, 1e-4)
    clock = StepClock(model.backbone.embeddings)
    train_loop(model, BatchStream([enc], batch_size, seed), lambda: {"accuracy": 0.0}, optimizer=opt,
               max_steps=steps, eval_every=steps + 1, grad_clip=1.0, device=torch.device("cpu"),
               keep_best=False, progress=lambda step, info: clock.step_end())
    return clock.stamps


def run_hf(enc: Any, n_labels: int, batch_size: int, steps: int, lr: float,
           seed: int) -> list[tuple[float, float, int]]:
    """(wall, CPU, padded tokens so far) step-end stamps of ``steps`` steps of ``transformers.Trainer`` on a fresh model."""
    from datasets import Dataset
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        PrinterCallback,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from mtgraft.models import resolve_model_path

    class StepTimer(TrainerCallback):
        def __init__(self, clock: StepClock) -> None:
            self.clock = clock

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.clock.step_end()

    set_seed(seed)
    path = resolve_model_path("minilm")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=n_labels)
    for p in model.base_model.embeddings.parameters():  # frozen as in mtgraft (docs/method.md §1)
        p.requires_grad_(False)
    cols: dict[str, Any] = {"input_ids": enc.input_ids, "attention_mask": [[1] * len(s) for s in enc.input_ids],
                            "labels": enc.labels}
    if enc.token_type_ids is not None:
        cols["token_type_ids"] = enc.token_type_ids
    ds = Dataset.from_dict(cols)
    clock = StepClock(model.base_model.embeddings)
    timer = StepTimer(clock)
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=batch_size, max_steps=steps, learning_rate=lr,
            weight_decay=1e-4, optim="sgd", lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0,
            eval_strategy="no", save_strategy="no", logging_strategy="no", report_to=[], use_cpu=True,
            dataloader_num_workers=0, disable_tqdm=True, seed=seed,
        )
        trainer = Trainer(model=model, args=args, train_dataset=ds, data_collator=DataCollatorWithPadding(tok),
                          processing_class=tok, callbacks=[timer])
        trainer.remove_callback(PrinterCallback)  # keep stdout for the table
        trainer.train()
    return clock.stamps


def bench(args: argparse.Namespace) -> dict[str, Any]:
    """Interleaved repeats of both loops at each batch size; throughput per repeat and median ratios."""
    if args.threads:
        torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    spec, enc = load_data(args.task, args.k, args.seed, args.max_length)
    rows = []
    for bs in args.batch_sizes:
        per_epoch = math.ceil(len(enc) / bs)
        warmup, timed = args.warmup_epochs * per_epoch, args.epochs * per_epoch
        total = warmup + timed
        reps = []
        for _ in range(args.warmup_rounds):  # discarded: first-use costs (kernels for each padded shape)
            run_mtgraft(spec, enc, bs, total, args.lr, args.seed)
            run_hf(enc, len(spec.labels), bs, total, args.lr, args.seed)
        for r in range(args.repeats):
            order = ("mtgraft", "hf") if r % 2 == 0 else ("hf", "mtgraft")
            res: dict[str, Any] = {"order": list(order)}
            for side in order:
                if side == "mtgraft":
                    stamps = run_mtgraft(spec, enc, bs, total, args.lr, args.seed)
                else:
                    stamps = run_hf(enc, len(spec.labels), bs, total, args.lr, args.seed)
                if len(stamps) != total:
                    raise RuntimeError(f"{side}: expected {total} steps, got {len(stamps)}")
                res[side] = throughput([w for w, _, _ in stamps], warmup, bs)
                res[f"{side}_cpu"] = throughput([c for _, c, _ in stamps], warmup, bs)
                res[f"{side}_tok"] = token_rate(stamps, warmup)
                res[f"{side}_padded_tokens"] = stamps[-1][2] - stamps[warmup - 1][2]
            res["ratio"] = res["mtgraft"] / res["hf"]
            res["ratio_cpu"] = res["mtgraft_cpu"] / res["hf_cpu"]
            res["ratio_tok"] = res["mtgraft_tok"] / res["hf_tok"]
            reps.append(res)
            print(f"bs {bs} repeat {r}: mtgraft {res['mtgraft']:.1f} ex/s, HF {res['hf']:.1f} ex/s, "
                  f"ratio {res['ratio']:.3f} (CPU-time ratio {res['ratio_cpu']:.3f}, padded tokens/s ratio "
                  f"{res['ratio_tok']:.3f})", file=sys.stderr)
        med = {key: statistics.median(x[key] for x in reps)
               for key in ("mtgraft", "hf", "ratio", "mtgraft_cpu", "hf_cpu", "ratio_cpu", "ratio_tok")}
        rows.append({
            "batch_size": bs, "warmup_steps": warmup, "timed_steps": timed, "repeats": reps,
            "mtgraft_ex_per_s": med["mtgraft"], "hf_ex_per_s": med["hf"], "ratio": med["ratio"],
            "mtgraft_ex_per_cpu_s": med["mtgraft_cpu"], "hf_ex_per_cpu_s": med["hf_cpu"],
            "ratio_cpu": med["ratio_cpu"], "ratio_padded_tokens_per_s": med["ratio_tok"],
        })
    return {
        "benchmark": "train_throughput", "task": spec.name, "k": args.k, "n_train": len(enc),
        "model": "minilm (all-MiniLM-L6-v2), embeddings frozen on both sides", "max_length": args.max_length,
        "optimizer": "sgd", "lr": args.lr, "weight_decay": 1e-4, "grad_clip": 1.0,
        "warmup_epochs": args.warmup_epochs, "timed_epochs": args.epochs, "repeats": args.repeats,
        "warmup_rounds": args.warmup_rounds,
        "torch_threads": torch.get_num_threads(), "rows": rows,
        "goal": "ratio mtgraft / HF >= 1.0 (examples per wall-clock second, median of paired repeats)",
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "loadavg_start": load_start, "loadavg_end": os.getloadavg(), "shared": True},
        "provenance": provenance(),
    }


def markdown(result: dict[str, Any]) -> str:
    """The markdown table of a result."""
    lines = ["| batch size | timed steps | mtgraft ex/s | HF Trainer ex/s | ratio | per-repeat ratios "
             "| ratio in CPU time | ratio of padded tokens/s |",
             "|---:|---:|---:|---:|---:|---|---:|---:|"]
    for r in result["rows"]:
        per = ", ".join(f"{x['ratio']:.2f}" for x in r["repeats"])
        lines.append(f"| {r['batch_size']} | {r['timed_steps']} | {r['mtgraft_ex_per_s']:.1f} | "
                     f"{r['hf_ex_per_s']:.1f} | {r['ratio']:.2f} | {per} | {r['ratio_cpu']:.2f} | "
                     f"{r['ratio_padded_tokens_per_s']:.2f} |")
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
    p.add_argument("--warmup-epochs", type=int, default=1)
    p.add_argument("--epochs", type=int, default=2, help="timed epochs of the k-shot training set")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup-rounds", type=int, default=1, help="discarded rounds of both sides per batch size")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (0 = torch's default; 1 is far steadier on a shared machine)")
    p.add_argument("--out", default="benchmarks/results/train.json")
    args = p.parse_args(argv)
    result = bench(args)
    write_json(args.out, result)
    print(markdown(result))
    print(f"\nwritten {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
