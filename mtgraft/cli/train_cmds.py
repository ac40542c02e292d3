"""``mtgraft train``: fine-tune a model on one task."""

from __future__ import annotations

from typing import Any

import typer

from mtgraft.cli.app import app
from mtgraft.cli.common import command, metrics_table, run_config
from mtgraft.cli.options import DATA, OUT, output_options, resume_option, training_options
from mtgraft.progress import console


@command(app, "train", training_options, resume_option, output_options)
def train_cmd(
    ctx: typer.Context,
    task: str | None = typer.Option(None, "--task", help="Task name from 'mtgraft tasks list', or a task YAML.", rich_help_panel=DATA),
    out: str | None = typer.Option(None, "--out", help="Checkpoint folder (default runs/train/<task>-<time>).", rich_help_panel=OUT),
    **opts: Any,
) -> None:
    """Fine-tune a model on one task; keep the best dev checkpoint; evaluate on test."""
    from mtgraft.config import TrainConfig
    from mtgraft.training import train

    result = run_config(ctx, TrainConfig, {"task": task, "out": out, **opts}, train, required=("task",))
    if result is None:
        return
    t = metrics_table(f"mtgraft train · {result.task}", "split", [("dev", result.dev), ("test", result.test)])
    console.print(t)
    console.print(f"best dev step {result.best_step}/{result.steps} · {result.examples_per_second:.1f} train examples/s "
                  f"· ECE with 10 equal-width bins")
    console.print(f"checkpoint: [bold]{result.checkpoint}[/]   mlflow run: {result.mlflow_run_id}")
