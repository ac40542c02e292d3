"""``mtgraft train``: fine-tune a model on one task."""

from __future__ import annotations

import typer
from rich.table import Table

from mtgraft.cli.app import app
from mtgraft.cli.common import handle_errors, print_json, resolve
from mtgraft.progress import console

DATA = "Data"
OPT = "Optimisation"
MODEL = "Model"
OUT = "Output"


@app.command("train")
@handle_errors
def train_cmd(
    ctx: typer.Context,
    task: str | None = typer.Option(None, "--task", help="Task name from 'mtgraft tasks list', or a task YAML.", rich_help_panel=DATA),
    model: str = typer.Option("minilm", "--model", help="HF model name or folder; 'minilm' = embedded default.", rich_help_panel=MODEL),
    type: str = typer.Option("head", "--type", help="Prediction type: head | prompt | causal.", rich_help_panel=MODEL),
    k: str = typer.Option("64", "--k", help="Examples per class for train (and again for dev), or 'all'.", rich_help_panel=DATA),
    seed: int = typer.Option(13, "--seed", help="Data and training seed (paper: 13, 21, 42, 87, 100).", rich_help_panel=DATA),
    max_test: str = typer.Option("1000", "--max-test", help="Cap on test examples, or 'all'.", rich_help_panel=DATA),
    max_length: int = typer.Option(128, "--max-length", help="Max tokens per example.", rich_help_panel=DATA),
    optimizer: str = typer.Option("sgd", "--optimizer", help="sgd | adamw.", rich_help_panel=OPT),
    lr: float = typer.Option(1e-3, "--lr", rich_help_panel=OPT),
    weight_decay: float = typer.Option(1e-4, "--weight-decay", help="Not applied to biases and LayerNorm weights.", rich_help_panel=OPT),
    batch_size: int = typer.Option(2, "--batch-size", rich_help_panel=OPT),
    max_steps: int = typer.Option(1000, "--max-steps", rich_help_panel=OPT),
    eval_every: int = typer.Option(100, "--eval-every", help="Dev evaluation interval; the best dev checkpoint is kept.", rich_help_panel=OPT),
    grad_clip: float = typer.Option(1.0, "--grad-clip", rich_help_panel=OPT),
    head_lr: float | None = typer.Option(None, "--head-lr", help="lr of the new task head (default: --lr).", rich_help_panel=OPT),
    freeze_embeddings: bool = typer.Option(True, "--freeze-embeddings/--no-freeze-embeddings", rich_help_panel=MODEL),
    freeze_head: bool = typer.Option(True, "--freeze-head/--no-freeze-head", help="Freeze the LM head (prompt/causal).", rich_help_panel=MODEL),
    bias_only: bool = typer.Option(False, "--bias-only", help="BitFit: train biases only (+ task head).", rich_help_panel=MODEL),
    l1_to_pretrained: float = typer.Option(0.0, "--l1-to-pretrained", help="lambda of an L1 penalty ||theta - theta_pre||_1.", rich_help_panel=OPT),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda.", rich_help_panel=MODEL),
    precision: str = typer.Option("fp32", "--precision", help="fp32 | bf16 | fp16 (mixed precision).", rich_help_panel=MODEL),
    out: str | None = typer.Option(None, "--out", help="Checkpoint folder (default runs/train/<task>-<time>).", rich_help_panel=OUT),
    tracking_uri: str | None = typer.Option(None, "--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or ./mlflow.db).", envvar=None, rich_help_panel=OUT),
    resume: bool = typer.Option(False, "--resume", help="Continue a killed run from its periodic state (<out>.resume/).", rich_help_panel=OUT),
    config: str | None = typer.Option(None, "--config", help="YAML file of these options (CLI options override).", rich_help_panel=OUT),
    json_out: bool = typer.Option(False, "--json", help="Print the result as one JSON object on stdout.", rich_help_panel=OUT),
) -> None:
    """Fine-tune a model on one task; keep the best dev checkpoint; evaluate on test."""
    from mtgraft.config import TrainConfig
    from mtgraft.training import train

    cfg = resolve(ctx, TrainConfig, config, locals(), required=("task",))
    result = train(cfg, show_progress=not json_out)
    if json_out:
        print_json(result.to_json())
        return
    t = Table(title=f"mtgraft train · {result.task}")
    t.add_column("split")
    for key in ("accuracy", "macro_f1", "ece", "brier", "n"):
        t.add_column(key, justify="right")
    for name, m in (("dev", result.dev), ("test", result.test)):
        t.add_row(name, *[f"{m.get(k, float('nan')):.4f}" if k != "n" else str(m.get(k)) for k in
                          ("accuracy", "macro_f1", "ece", "brier", "n")])
    console.print(t)
    console.print(f"best dev step {result.best_step}/{result.steps} · {result.examples_per_second:.1f} train examples/s "
                  f"· ECE with 10 equal-width bins")
    console.print(f"checkpoint: [bold]{result.checkpoint}[/]   mlflow run: {result.mlflow_run_id}")
