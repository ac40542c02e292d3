"""Options shared by several commands, each written once, and ``with_options`` that adds a group to a command.

A group is a function whose parameters are typer options; ``@with_options(group, ...)`` appends them to the
command's own parameters (typer reads the composed signature), and the command receives them in ``**opts``.
"""
# No ``from __future__ import annotations`` here: typer reads these annotations as they are.

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from mtgraft.presets import option_help, recipe_help

F = TypeVar("F", bound=Callable[..., Any])

DATA = "Data"
MODEL = "Model"
OPT = "Optimisation"
OUT = "Output"
RECORDED = "Data (unset = as recorded with the checkpoint)"


def with_options(*groups: Callable[..., Any]) -> Callable[[F], F]:
    """Add the options of ``groups`` after the command's own parameters (the command takes ``**opts``)."""

    def deco(fn: F) -> F:
        own = [p for p in inspect.signature(fn, eval_str=True).parameters.values() if p.kind is not p.VAR_KEYWORD]
        names = {p.name for p in own}
        extra = [p for g in groups for p in inspect.signature(g).parameters.values() if p.name not in names]

        @functools.wraps(fn)
        def command(*args: Any, **kwargs: Any) -> Any:
            return fn(*args, **kwargs)

        params = [*own, *extra]
        params.sort(key=lambda p: getattr(p.default, "rich_help_panel", None) == OUT)  # output options last
        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command  # type: ignore[return-value]

    return deco


def output_options(
    tracking_uri: str | None = typer.Option(None, "--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or ./mlflow.db).", rich_help_panel=OUT),
    config: str | None = typer.Option(None, "--config", help="YAML file of these options (CLI options override).", rich_help_panel=OUT),
    json_out: bool = typer.Option(False, "--json", help="Print the result as one JSON object on stdout.", rich_help_panel=OUT),
) -> None:
    """--tracking-uri, --config, --json."""


def registry_options(
    tracking_uri: str | None = typer.Option(None, "--tracking-uri", help="MLflow tracking URI (e.g. http://host:5000); default: $MLFLOW_TRACKING_URI, else MLflow's local default store (./mlflow.db)."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as one JSON object on stdout."),
) -> None:
    """--tracking-uri, --json (the ``masks`` commands)."""


def resume_option(
    resume: bool = typer.Option(False, "--resume", help="Continue a killed run from its periodic state (<out>.resume/).", rich_help_panel=OUT),
) -> None:
    """--resume."""


def seeds_option(
    seeds: str | None = typer.Option(None, "--seeds", help="Comma list of seeds, e.g. 13,21,42: one run per seed (OUT/seed-<s>/) and their mean, sd and 95% interval (OUT/seeds.json); not with --seed.", rich_help_panel=DATA),
) -> None:
    """--seeds (``train``, ``train-multitask``, ``graft``)."""


def recorded_data_options(
    k: str | None = typer.Option(None, "--k", help="Examples per class for train (and dev), or 'all'.", rich_help_panel=RECORDED),
    data_seed: int | None = typer.Option(None, "--data-seed", help="Data seed of the k-shot splits.", rich_help_panel=RECORDED),
    max_test: str | None = typer.Option(None, "--max-test", help="Cap on test examples: an integer or 'auto' (all of a split of ≤ 2000, else a fixed subsample of 2000).", rich_help_panel=RECORDED),
    max_length: int | None = typer.Option(None, "--max-length", help="Max tokens per example.", rich_help_panel=RECORDED),
) -> None:
    """Data settings that default to what the checkpoint (or patch) recorded: ``graft`` and ``eval``."""


def training_options(
    model: str = typer.Option("minilm", "--model", help="HF model name or folder; 'minilm' = embedded default.", rich_help_panel=MODEL),
    type: str = typer.Option("head", "--type", help="Prediction type: head (a new head per task) | prompt | causal (the LM head, shared).", rich_help_panel=MODEL),
    k: str = typer.Option("64", "--k", help="Examples per class for train (and again for dev), or 'all'.", rich_help_panel=DATA),
    seed: int = typer.Option(13, "--seed", help="Data and training seed (paper: 13, 21, 42, 87, 100).", rich_help_panel=DATA),
    max_test: str = typer.Option("auto", "--max-test", help="Cap on test examples per task: 'auto' (all of a split of ≤ 2000, else a fixed stratified subsample of 2000), an integer, or 'all'.", rich_help_panel=DATA),
    max_length: int | None = typer.Option(None, "--max-length", help=option_help("max_length", "Max tokens per example."), rich_help_panel=DATA),
    recipe: str = typer.Option("auto", "--recipe", help=recipe_help(), rich_help_panel=OPT),
    pooling: str | None = typer.Option(None, "--pooling", help=option_help("pooling", "type head: what the new head reads: first (token) | mean (of the real tokens, padding excluded) | pooler (the pretrained pooler, frozen with --freeze-head) | auto (the pooling the model ships in its sentence-transformers config, else first)."), rich_help_panel=MODEL),
    optimizer: str | None = typer.Option(None, "--optimizer", help=option_help("optimizer", "sgd | adamw."), rich_help_panel=OPT),
    lr: float | None = typer.Option(None, "--lr", help=option_help("lr", "Learning rate."), rich_help_panel=OPT),
    weight_decay: float = typer.Option(1e-4, "--weight-decay", help="Not applied to biases and LayerNorm weights.", rich_help_panel=OPT),
    batch_size: int | None = typer.Option(None, "--batch-size", help=option_help("batch_size", "Global batch size (split across processes under accelerate launch)."), rich_help_panel=OPT),
    max_steps: int | None = typer.Option(None, "--max-steps", help=option_help("max_steps", "Training steps (per stage in a sequential run)."), rich_help_panel=OPT),
    eval_every: int = typer.Option(100, "--eval-every", help="Dev evaluation interval; the best dev state is kept (several tasks: mean dev accuracy).", rich_help_panel=OPT),
    grad_clip: float = typer.Option(1.0, "--grad-clip", rich_help_panel=OPT),
    head_lr: float | None = typer.Option(None, "--head-lr", help="lr of the new task heads (default: --lr).", rich_help_panel=OPT),
    freeze_embeddings: bool = typer.Option(True, "--freeze-embeddings/--no-freeze-embeddings", rich_help_panel=MODEL),
    freeze_head: bool = typer.Option(True, "--freeze-head/--no-freeze-head", help="Freeze the LM head (prompt/causal) and the pretrained pooler a head reads (--pooling pooler).", rich_help_panel=MODEL),
    bias_only: bool = typer.Option(False, "--bias-only", help="BitFit: train biases only (+ task heads).", rich_help_panel=MODEL),
    l1_to_pretrained: float = typer.Option(0.0, "--l1-to-pretrained", help="lambda of an L1 pull lambda*||theta - theta_pre||_1 on the body (proximal: each step soft-thresholds the movement by lr*lambda, so unneeded entries stay exactly pretrained).", rich_help_panel=OPT),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda.", rich_help_panel=MODEL),
    precision: str = typer.Option("fp32", "--precision", help="fp32 | bf16 | fp16 (mixed precision).", rich_help_panel=MODEL),
) -> None:
    """The options of fine-tuning, shared by ``train`` and ``train-multitask``."""
