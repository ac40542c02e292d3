"""``mtgraft train-multitask`` (joint or sequential fine-tuning) and ``mtgraft continual-graft``."""

from __future__ import annotations

import typer
from rich.table import Table

from mtgraft.cli.app import app
from mtgraft.cli.common import handle_errors, print_json, resolve
from mtgraft.progress import console

DATA = "Data"
OPT = "Optimisation"
MODEL = "Model"
MT = "Multi-task"
GRAFT = "Graft-based continual learning (sequential)"
OUT = "Output"


def _f(v: object, nd: int = 4, signed: bool = False) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:+.{nd}f}" if signed else f"{v:.{nd}f}"
    return str(v)


@app.command("train-multitask")
@handle_errors
def train_multitask_cmd(
    ctx: typer.Context,
    tasks: str | None = typer.Option(None, "--tasks", help="Comma list of task names or task YAMLs (the order of a sequential run).", rich_help_panel=MT),
    mode: str = typer.Option("joint", "--mode", help="joint (one model on the mixture) | sequential (one task after another).", rich_help_panel=MT),
    sampling: str = typer.Option("proportional", "--sampling", help="joint: proportional | uniform | temperature (task of each batch).", rich_help_panel=MT),
    temperature: float = typer.Option(2.0, "--temperature", help="T of temperature sampling: p_i ~ n_i^(1/T).", rich_help_panel=MT),
    model: str = typer.Option("minilm", "--model", help="HF model name or folder; 'minilm' = embedded default.", rich_help_panel=MODEL),
    type: str = typer.Option("head", "--type", help="Prediction type: head (one head per task) | prompt | causal (shared LM head).", rich_help_panel=MODEL),
    k: str = typer.Option("64", "--k", help="Examples per class for train (and again for dev), or 'all'.", rich_help_panel=DATA),
    seed: int = typer.Option(13, "--seed", help="Data and training seed (paper: 13, 21, 42, 87, 100).", rich_help_panel=DATA),
    max_test: str = typer.Option("1000", "--max-test", help="Cap on test examples per task, or 'all'.", rich_help_panel=DATA),
    max_length: int = typer.Option(128, "--max-length", help="Max tokens per example.", rich_help_panel=DATA),
    optimizer: str = typer.Option("sgd", "--optimizer", help="sgd | adamw.", rich_help_panel=OPT),
    lr: float = typer.Option(1e-3, "--lr", rich_help_panel=OPT),
    weight_decay: float = typer.Option(1e-4, "--weight-decay", help="Not applied to biases and LayerNorm weights.", rich_help_panel=OPT),
    batch_size: int = typer.Option(2, "--batch-size", help="Global batch size (split across processes under accelerate launch).", rich_help_panel=OPT),
    max_steps: int = typer.Option(1000, "--max-steps", help="Steps in total (joint) or per stage (sequential).", rich_help_panel=OPT),
    eval_every: int = typer.Option(100, "--eval-every", help="Dev evaluation interval; the best dev state is kept (joint: mean dev accuracy).", rich_help_panel=OPT),
    grad_clip: float = typer.Option(1.0, "--grad-clip", rich_help_panel=OPT),
    head_lr: float | None = typer.Option(None, "--head-lr", help="lr of the task heads (default: --lr).", rich_help_panel=OPT),
    freeze_embeddings: bool = typer.Option(True, "--freeze-embeddings/--no-freeze-embeddings", rich_help_panel=MODEL),
    freeze_head: bool = typer.Option(True, "--freeze-head/--no-freeze-head", help="Freeze the LM head (prompt/causal).", rich_help_panel=MODEL),
    bias_only: bool = typer.Option(False, "--bias-only", help="BitFit: train biases only (+ task heads).", rich_help_panel=MODEL),
    l1_to_pretrained: float = typer.Option(0.0, "--l1-to-pretrained", help="lambda of an L1 penalty ||theta - theta_pre||_1.", rich_help_panel=OPT),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda.", rich_help_panel=MODEL),
    precision: str = typer.Option("fp32", "--precision", help="fp32 | bf16 | fp16 (mixed precision).", rich_help_panel=MODEL),
    graft: bool = typer.Option(False, "--graft", help="Sequential: then graft each task from its stage checkpoint and compare (see continual-graft).", rich_help_panel=GRAFT),
    graft_sparsity: float = typer.Option(1e-4, "--graft-sparsity", help="Region size of each graft (fraction of the graftable body).", rich_help_panel=GRAFT),
    graft_method: str = typer.Option("graft", "--graft-method", help="Localisation method of the per-stage grafts.", rich_help_panel=GRAFT),
    graft_recipe: str = typer.Option("thorough", "--graft-recipe", help="thorough | fast | paper.", rich_help_panel=GRAFT),
    graft_updates: int | None = typer.Option(None, "--graft-updates", help="Mask updates (default: the recipe's).", rich_help_panel=GRAFT),
    out: str | None = typer.Option(None, "--out", help="Run folder = checkpoint of all tasks (default runs/multitask/<mode>-<n>tasks-<time>).", rich_help_panel=OUT),
    tracking_uri: str | None = typer.Option(None, "--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or ./mlflow.db).", rich_help_panel=OUT),
    resume: bool = typer.Option(False, "--resume", help="Continue a killed run from its periodic state (<out>.resume/).", rich_help_panel=OUT),
    config: str | None = typer.Option(None, "--config", help="YAML file of these options (CLI options override).", rich_help_panel=OUT),
    json_out: bool = typer.Option(False, "--json", help="Print the result as one JSON object on stdout.", rich_help_panel=OUT),
) -> None:
    """Fine-tune one model on several tasks, jointly or one after another (continual); evaluate every task."""
    from mtgraft.training import is_main_process
    from mtgraft.training.multitask import MultitaskConfig
    from mtgraft.workflows.continual import train_multitask_with_grafts

    cfg = resolve(ctx, MultitaskConfig, config, locals(), required=("tasks",))
    result = train_multitask_with_grafts(cfg, show_progress=not json_out)
    if not is_main_process():
        return
    if json_out:
        print_json(result.to_json())
        return
    t = Table(title=f"mtgraft train-multitask · {result.mode} · test (ECE with 10 equal-width bins)")
    t.add_column("task")
    for key in ("accuracy", "macro_f1", "ece", "brier", "n"):
        t.add_column(key, justify="right")
    for name in result.tasks:
        m = result.test[name]
        t.add_row(name, *[_f(m.get(key)) if key != "n" else str(m.get(key)) for key in
                          ("accuracy", "macro_f1", "ece", "brier", "n")])
    console.print(t)
    if result.mode == "joint":
        w = ", ".join(f"{n} {p:.2f}" for n, p in result.sampling["weights"].items())
        console.print(f"sampling {result.sampling['rule']}: {w} · best dev step {result.best_step}/{result.steps}")
    else:
        console.print(matrix_table(result.tasks, result.accuracy_matrix, result.r0))
        c = result.continual
        console.print(f"ACC {_f(c['acc'])}  BWT {_f(c['bwt'], signed=True)}  FWT {_f(c['fwt'], signed=True)}  "
                      f"forgetting (final) {_f(c['forgetting_final'])}  forgetting (max) {_f(c['forgetting_max'])}")
        console.print(f"accuracy matrix: {result.files.get('png')}")
        if result.graft_cl:
            console.print(graft_cl_table(result.graft_cl))
    console.print(f"checkpoint: [bold]{result.checkpoint}[/]   mlflow run: {result.mlflow_run_id}")


def matrix_table(tasks: list[str], R: list[list[float | None]], r0: list[float] | None) -> Table:
    """R[stage, task] as a table (rows = stages, columns = tasks), with the starting row r0."""
    t = Table(title="accuracy matrix R[stage, task] (test accuracy after each stage)")
    t.add_column("after stage")
    for n in tasks:
        t.add_column(n, justify="right")
    if r0 is not None:
        t.add_row("0 (initial)", *[_f(v) for v in r0])
    for i, row in enumerate(R):
        t.add_row(f"{i + 1} ({tasks[i]})", *[_f(v) for v in row])
    return t


def graft_cl_table(res: dict) -> Table:
    """Per-task accuracy of the final sequential model, each task's own graft and the union of all grafts."""
    t = Table(title=f"graft-based continual learning · sparsity {res['settings']['sparsity']:g} · "
                    f"storage {res['storage']['patches_bytes']:,} B of patches vs "
                    f"{res['storage']['checkpoints_bytes']:,} B of checkpoints")
    for c in ("task", "just trained", "sequential", "own graft", "union", "region"):
        t.add_column(c, justify="left" if c == "task" else "right")
    for n, r in res["per_task"].items():
        t.add_row(n, _f(r["just_trained"]), _f(r["sequential"]), _f(r["own_graft"]), _f(r["union"]),
                  f"{r['region_size']:,}")
    a = res["approaches"]
    t.add_row("ACC", "", _f(a["sequential"]["acc"]), _f(a["own_graft"]["acc"]), _f(a["union"]["acc"]), "")
    for key, label in (("forgetting_final", "forgetting (final)"), ("forgetting_max", "forgetting (max)")):
        t.add_row(label, "", _f(a["sequential"][key]), _f(a["own_graft"][key]), _f(a["union"][key]), "")
    return t


@app.command("continual-graft")
@handle_errors
def continual_graft_cmd(
    ctx: typer.Context,
    run: str | None = typer.Option(None, "--run", help="Folder of a sequential 'mtgraft train-multitask' run."),
    sparsity: float = typer.Option(1e-4, "--sparsity", help="Region size of each graft (fraction of the graftable body)."),
    method: str = typer.Option("graft", "--method", help="Localisation method (a learned one writes patches: graft)."),
    recipe: str = typer.Option("thorough", "--recipe", help="thorough | fast | paper."),
    updates: int | None = typer.Option(None, "--updates", help="Mask updates (default: the recipe's)."),
    seed: int = typer.Option(13, "--seed"),
    overlap: str = typer.Option("average", "--overlap", help="Union of the grafts where they overlap: average | sum | first."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda."),
    out: str | None = typer.Option(None, "--out", help="Output folder (default RUN/continual_graft).", rich_help_panel=OUT),
    do_register: bool = typer.Option(False, "--register/--no-register", help="Register each SkillPatch in the mask registry.", rich_help_panel=OUT),
    tracking_uri: str | None = typer.Option(None, "--tracking-uri", help="MLflow tracking URI.", rich_help_panel=OUT),
    config: str | None = typer.Option(None, "--config", help="YAML file of these options (CLI options override).", rich_help_panel=OUT),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object on stdout.", rich_help_panel=OUT),
) -> None:
    """Graft each task of a sequential run from its stage checkpoint; compare with the final model (forgetting)."""
    from mtgraft.workflows.continual import ContinualGraftConfig, continual_graft

    cfg = resolve(ctx, ContinualGraftConfig, config, locals(), required=("run",))
    res = continual_graft(cfg, show_progress=not json_out)
    if json_out:
        print_json(res.to_json())
        return
    console.print(graft_cl_table(res.to_json()))
    console.print(f"storage: {res.storage['patches_bytes']:,} bytes for {len(res.tasks)} patches vs "
                  f"{res.storage['checkpoints_bytes']:,} bytes for {len(res.tasks)} checkpoints "
                  f"({res.storage['ratio']:.0f}x) · results: {res.out}/continual_graft.json")
