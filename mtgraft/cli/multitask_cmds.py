"""``mtgraft train-multitask`` (joint or sequential fine-tuning), ``mtgraft continual-graft`` and
``mtgraft strategies`` (the continual-learning strategies of sequential runs)."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from mtgraft.cli.app import app
from mtgraft.cli.common import (
    SEEDS_KEY,
    command,
    fmt,
    handle_errors,
    metrics_table,
    print_json,
    run_config,
    seeds_of,
    seeds_table,
    table_out,
)
from mtgraft.cli.options import OUT, output_options, resume_option, seeds_option, training_options
from mtgraft.progress import console

MT = "Multi-task"
GRAFT = "Graft-based continual learning (sequential)"
CL = "Continual strategy (sequential)"


@command(app, "train-multitask", training_options, seeds_option, resume_option, output_options)
def train_multitask_cmd(
    ctx: typer.Context,
    tasks: str | None = typer.Option(None, "--tasks", help="Comma list of task names or task YAMLs (the order of a sequential run).", rich_help_panel=MT),
    mode: str = typer.Option("joint", "--mode", help="joint (one model on the mixture) | sequential (one task after another).", rich_help_panel=MT),
    sampling: str = typer.Option("proportional", "--sampling", help="joint: proportional | uniform | temperature (task of each batch).", rich_help_panel=MT),
    temperature: float = typer.Option(2.0, "--temperature", help="T of temperature sampling: p_i ~ n_i^(1/T).", rich_help_panel=MT),
    graft: bool = typer.Option(False, "--graft", help="Sequential: then graft each task from its stage checkpoint and compare (see continual-graft).", rich_help_panel=GRAFT),
    graft_sparsity: float = typer.Option(1e-4, "--graft-sparsity", help="Region size of each graft (fraction of the graftable body).", rich_help_panel=GRAFT),
    graft_method: str = typer.Option("graft", "--graft-method", help="Localisation method of the per-stage grafts.", rich_help_panel=GRAFT),
    graft_recipe: str = typer.Option("thorough", "--graft-recipe", help="thorough | fast | paper.", rich_help_panel=GRAFT),
    graft_updates: int | None = typer.Option(None, "--graft-updates", help="Mask updates (default: the recipe's).", rich_help_panel=GRAFT),
    strategy: str = typer.Option("naive", "--strategy", help="Sequential: naive | ewc | l2 | replay | lwf | packnet | graft (see 'mtgraft strategies').", rich_help_panel=CL),
    strategy_lambda: float | None = typer.Option(None, "--strategy-lambda", help="Strength of ewc / l2 / lwf (default: the strategy's).", rich_help_panel=CL),
    ewc_decay: float = typer.Option(0.9, "--ewc-decay", help="Online EWC: F <- decay * F + F_t after each stage.", rich_help_panel=CL),
    replay_size: int = typer.Option(100, "--replay-size", help="Replay: examples in the buffer (all earlier tasks together).", rich_help_panel=CL),
    lwf_temperature: float = typer.Option(2.0, "--lwf-temperature", help="LwF: distillation temperature.", rich_help_panel=CL),
    mask_keep: float = typer.Option(0.2, "--mask-keep", help="PackNet: share of the free body entries each task keeps.", rich_help_panel=CL),
    out: str | None = typer.Option(None, "--out", help="Run folder = checkpoint of all tasks (default runs/multitask/<mode>-<n>tasks-<time>).", rich_help_panel=OUT),
    **opts: Any,
) -> None:
    """Fine-tune one model on several tasks, jointly or one after another (continual); evaluate every task."""
    from mtgraft.training import is_main_process
    from mtgraft.training.multitask import MultitaskConfig
    from mtgraft.workflows.continual import train_multitask_with_grafts
    from mtgraft.workflows.seeds import train_multitask_seeds

    seeds = seeds_of(ctx, opts)
    own = {k: v for k, v in locals().items() if k not in ("ctx", "opts", "seeds")}
    work = (train_multitask_with_grafts if seeds is None
            else (lambda cfg, show_progress: train_multitask_seeds(cfg, seeds, show_progress)))
    result = run_config(ctx, MultitaskConfig, {**own, **opts}, work, required=("tasks",), emit=is_main_process,
                        ignore=SEEDS_KEY)
    if result is None:
        return
    if isinstance(result, dict):  # several seeds: the aggregate
        fields = [(f"{n} acc", f"test.{n}.accuracy") for n in result["tasks"]]
        if result["mode"] == "sequential":
            fields += [("ACC", "continual.acc"), ("BWT", "continual.bwt")]
        console.print(seeds_table(f"mtgraft train-multitask · {result['mode']} · test", result, fields))
        console.print(f"checkpoints: [bold]{result['out']}[/]/seed-<s>/   aggregate: {result['out']}/seeds.json")
        return
    t = metrics_table(f"mtgraft train-multitask · {result.mode} · test (ECE with 10 equal-width bins)", "task",
                      [(name, result.test[name]) for name in result.tasks])
    console.print(t)
    if result.mode == "joint":
        w = ", ".join(f"{n} {p:.2f}" for n, p in result.sampling["weights"].items())
        console.print(f"sampling {result.sampling['rule']}: {w} · best dev step {result.best_step}/{result.steps}")
    else:
        console.print(matrix_table(result.tasks, result.accuracy_matrix, result.r0))
        c = result.continual
        console.print(f"ACC {fmt(c['acc'])}  BWT {fmt(c['bwt'], signed=True)}  FWT {fmt(c['fwt'], signed=True)}  "
                      f"forgetting (final) {fmt(c['forgetting_final'])}  forgetting (max) {fmt(c['forgetting_max'])}")
        console.print(f"accuracy matrix: {result.files.get('png')}")
        if result.graft_cl:
            console.print(graft_cl_table(result.graft_cl))
        st = result.strategy or {}
        if st.get("name") == "graft" and st.get("matrices"):
            for k, label in (("own", "task identity known: own patch"), ("union", "unknown: union of patches")):
                m = st["matrices"][k]["continual"]
                console.print(f"graft strategy ({label}): ACC {fmt(m['acc'])}  BWT {fmt(m['bwt'], signed=True)}  "
                              f"forgetting (final) {fmt(m['forgetting_final'])}")
        if st:
            console.print(f"strategy {st.get('name')}: {st.get('extra_bytes', 0):,} bytes kept beyond the model")
    console.print(f"checkpoint: [bold]{result.checkpoint}[/]   mlflow run: {result.mlflow_run_id}")


def matrix_table(tasks: list[str], R: list[list[float | None]], r0: list[float] | None) -> Table:
    """R[stage, task] as a table (rows = stages, columns = tasks), with the starting row r0."""
    t = Table(title="accuracy matrix R[stage, task] (test accuracy after each stage)")
    t.add_column("after stage")
    for n in tasks:
        t.add_column(n, justify="right")
    if r0 is not None:
        t.add_row("0 (initial)", *[fmt(v) for v in r0])
    for i, row in enumerate(R):
        t.add_row(f"{i + 1} ({tasks[i]})", *[fmt(v) for v in row])
    return t


def graft_cl_table(res: dict) -> Table:
    """Per-task accuracy of the final sequential model, each task's own graft and the union of all grafts."""
    t = Table(title=f"graft-based continual learning · sparsity {res['settings']['sparsity']:g} · "
                    f"storage {res['storage']['patches_bytes']:,} B of patches vs "
                    f"{res['storage']['checkpoints_bytes']:,} B of checkpoints")
    for c in ("task", "just trained", "sequential", "own graft", "union", "region"):
        t.add_column(c, justify="left" if c == "task" else "right")
    for n, r in res["per_task"].items():
        t.add_row(n, fmt(r["just_trained"]), fmt(r["sequential"]), fmt(r["own_graft"]), fmt(r["union"]),
                  f"{r['region_size']:,}")
    a = res["approaches"]
    t.add_row("ACC", "", fmt(a["sequential"]["acc"]), fmt(a["own_graft"]["acc"]), fmt(a["union"]["acc"]), "")
    for key, label in (("forgetting_final", "forgetting (final)"), ("forgetting_max", "forgetting (max)")):
        t.add_row(label, "", fmt(a["sequential"][key]), fmt(a["own_graft"][key]), fmt(a["union"][key]), "")
    return t


@command(app, "continual-graft", output_options)
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
    **opts: Any,
) -> None:
    """Graft each task of a sequential run from its stage checkpoint; compare with the final model (forgetting)."""
    from mtgraft.workflows.continual import ContinualGraftConfig, continual_graft

    own = {k: v for k, v in locals().items() if k not in ("ctx", "opts")}
    res = run_config(ctx, ContinualGraftConfig, {**own, **opts}, continual_graft, required=("run",))
    if res is None:
        return
    console.print(graft_cl_table(res.to_json()))
    console.print(f"storage: {res.storage['patches_bytes']:,} bytes for {len(res.tasks)} patches vs "
                  f"{res.storage['checkpoints_bytes']:,} bytes for {len(res.tasks)} checkpoints "
                  f"({res.storage['ratio']:.0f}x) · results: {res.out}/continual_graft.json")


@app.command("strategies")
@handle_errors
def strategies_cmd(json_out: bool = typer.Option(False, "--json")) -> None:
    """List the continual-learning strategies of 'train-multitask --mode sequential --strategy NAME'."""
    from mtgraft.training.catalog import STRATEGIES

    if json_out:
        print_json({"strategies": [{"name": s.name, "description": s.description, "reference": s.reference,
                                    "keeps": s.keeps, "task_identity": s.task_identity, "options": list(s.options),
                                    "default_lambda": s.default_lambda} for s in STRATEGIES.values()]})
        return
    t = Table(title="continual-learning strategies (train-multitask --mode sequential --strategy NAME)")
    for c in ("name", "task id at test", "description", "keeps per task", "reference"):
        t.add_column(c)
    for s in STRATEGIES.values():
        t.add_row(s.name, "yes" if s.task_identity else "no", s.description, s.keeps, s.reference)
    table_out.print(t)
