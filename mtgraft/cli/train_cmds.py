"""``mtgraft train``: fine-tune a model on one task."""

from __future__ import annotations

from typing import Any

import typer

from mtgraft.cli.app import app
from mtgraft.cli.common import SEEDS_KEY, command, metrics_table, run_config, seeds_of, seeds_table
from mtgraft.cli.options import DATA, OUT, output_options, resume_option, seeds_option, training_options
from mtgraft.progress import console

TEST_FIELDS = [(k, f"test.{k}") for k in ("accuracy", "macro_f1", "ece", "brier")]


@command(app, "train", training_options, seeds_option, resume_option, output_options)
def train_cmd(
    ctx: typer.Context,
    task: str | None = typer.Option(None, "--task", help="Task name from 'mtgraft tasks list', or a task YAML.", rich_help_panel=DATA),
    out: str | None = typer.Option(None, "--out", help="Checkpoint folder (default runs/train/<task>-<time>).", rich_help_panel=OUT),
    **opts: Any,
) -> None:
    """Fine-tune a model on one task; keep the best dev checkpoint; evaluate on test.

    Options not given come from a preset (--recipe): for the default --model minilm --type head, the
    measured preset minilm-head (mean-pooled head, SGD lr 5e-2, batch 8, 300 steps, length 64; why: see
    --recipe and docs/training.md); --recipe paper gives docs/method.md §1 exactly.
    """
    from mtgraft.config import TrainConfig
    from mtgraft.training import train
    from mtgraft.workflows.seeds import train_seeds

    seeds = seeds_of(ctx, opts)
    work = train if seeds is None else (lambda cfg, show_progress: train_seeds(cfg, seeds, show_progress))
    result = run_config(ctx, TrainConfig, {"task": task, "out": out, **opts}, work, required=("task",),
                        ignore=SEEDS_KEY)
    if result is None:
        return
    if isinstance(result, dict):  # several seeds: the aggregate
        console.print(seeds_table(f"mtgraft train · {result['task']} · test", result, TEST_FIELDS))
        console.print(f"checkpoints: [bold]{result['out']}[/]/seed-<s>/   aggregate: {result['out']}/seeds.json")
        return
    t = metrics_table(f"mtgraft train · {result.task}", "split", [("dev", result.dev), ("test", result.test)])
    console.print(t)
    console.print(f"best dev step {result.best_step}/{result.steps} · {result.examples_per_second:.1f} train examples/s "
                  f"· ECE with 10 equal-width bins")
    console.print(f"checkpoint: [bold]{result.checkpoint}[/]   mlflow run: {result.mlflow_run_id}")
