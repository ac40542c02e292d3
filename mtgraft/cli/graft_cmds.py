"""``mtgraft graft`` and ``mtgraft eval``."""

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
    print_json,
    run_config,
    seeds_of,
    table_out,
)
from mtgraft.cli.options import (
    OUT,
    RECORDED,
    output_options,
    recorded_data_options,
    resume_option,
    seeds_option,
)
from mtgraft.progress import console

LEARN = "Learned graft (unset = from --recipe)"


def graft_table(res: object) -> Table:
    """The table of every method at every sparsity, beside pretrained (+head) and fine-tuned."""
    from mtgraft.evaluation.uncertainty import format_interval

    t = Table(title=f"mtgraft graft · {res.task} · |P| = {res.graftable_size:,} graftable (head always grafted, "
                    f"{res.head_params:,} params)")
    for c in ("model", "sparsity", "region", "acc ± 95%", "macro-F1", "ECE", "Brier", "agree", "Rel [95% CI]",
              "time s"):
        t.add_column(c, justify="right" if c != "model" else "left")
    for name, m in (("pretrained (+head)", res.reference["pretrained"]), ("fine-tuned", res.reference["finetuned"])):
        t.add_row(name, "", "", _pm(m["accuracy"], m.get("accuracy_ci95")), fmt(m["macro_f1"]), fmt(m["ece"]),
                  fmt(m["brier"]), fmt(m.get("agreement")), format_interval(m.get("rel"), m.get("rel_ci95")), "")
    for r in res.results:
        m = r["test"]
        t.add_row(r["method"], f"{r['sparsity']:g}", f"{r['region_size']:,}", _pm(m["accuracy"], m.get("accuracy_ci95")),
                  fmt(m["macro_f1"]), fmt(m["ece"]), fmt(m["brier"]), fmt(m.get("agreement")),
                  format_interval(m.get("rel"), m.get("rel_ci95")), f"{r['seconds']:.1f}")
    return t


def _pm(v: float | None, ci: list[float] | None, nd: int = 3) -> str:
    """``0.620 ± 0.040`` (half the width of the 95% interval); the plain number without one."""
    from mtgraft.evaluation.uncertainty import format_ci

    return format_ci({"mean": v, "ci95": ci}, nd)


def comparisons_table(res: object) -> Table | None:
    """Each learned method against every other at the same size: paired differences over the test examples."""
    rows = [c for c in getattr(res, "extra", {}).get("comparisons") or [] if c["metric"] == "accuracy"]
    if not rows:
        return None
    from mtgraft.evaluation.uncertainty import format_interval

    rel = {(c["sparsity"], c["a"], c["b"]): c for c in res.extra["comparisons"] if c["metric"] == "rel"}
    t = Table(title="paired comparisons at equal size (bootstrap over the same test examples, 95% intervals)")
    for c in ("sparsity", "a − b", "Δacc [95% CI]", "p", "ΔRel [95% CI]", "p (Rel)"):
        t.add_column(c, justify="left" if c == "a − b" else "right")
    for c in rows:
        r = rel.get((c["sparsity"], c["a"], c["b"]), {})
        t.add_row(f"{c['sparsity']:g}", f"{c['a']} − {c['b']}", format_interval(c["diff"], c["ci95"]), _p(c["p"]),
                  format_interval(r.get("diff"), r.get("ci95")), _p(r.get("p")))
    return t


def _p(p: float | None) -> str:
    return "—" if p is None else f"{p:.3g}"


@command(app, "graft", recorded_data_options, seeds_option, resume_option, output_options)
def graft_cmd(
    ctx: typer.Context,
    task: str | None = typer.Option(None, "--task", help="Task to localise (a task of the checkpoint)."),
    all_tasks: bool = typer.Option(False, "--all-tasks", help="Graft every task of a multi-task checkpoint."),
    finetuned: str | None = typer.Option(None, "--finetuned", help="Fine-tuned checkpoint folder."),
    pretrained: str | None = typer.Option(None, "--pretrained", help="Pretrained model (default: the one the checkpoint records)."),
    sparsity: str = typer.Option("1e-4", "--sparsity", help="Comma list of region sizes as fractions of the graftable body."),
    method: str = typer.Option("graft,topk,random,bias-only", "--method", help="Comma list of methods (see 'mtgraft methods')."),
    recipe: str = typer.Option("thorough", "--recipe", help="thorough (default: strict budget, 100*k candidates, 10 updates) | fast (10*k candidates, early stop; ~5x cheaper) | paper (reference behaviour, region may grow).", rich_help_panel=LEARN),
    updates: int | None = typer.Option(None, "--updates", help="Mask updates (thorough and fast 10, paper 100).", rich_help_panel=LEARN),
    lr: float | None = typer.Option(None, "--lr", help="Step size on S (1e7).", rich_help_panel=LEARN),
    sigmoid_bias: float | None = typer.Option(None, "--sigmoid-bias", help="b in sigmoid(S - b) (10).", rich_help_panel=LEARN),
    examples_per_update: int | None = typer.Option(None, "--examples-per-update", help="Training examples per update (1024).", rich_help_panel=LEARN),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Mini-batch size; gradients averaged over an update (8).", rich_help_panel=LEARN),
    budget: str | None = typer.Option(None, "--budget", help="strict (exactly k entries) | free (round(gamma), may grow).", rich_help_panel=LEARN),
    candidates: float | None = typer.Option(None, "--candidates", help="Mask parameters only for the top c*k entries by the base score (see --init; thorough 100, fast 10, paper: all).", rich_help_panel=LEARN),
    patience: int | None = typer.Option(None, "--patience", help="Stop after this many updates without a better train+dev score.", rich_help_panel=LEARN),
    step_rule: str | None = typer.Option(None, "--step-rule", help="gd (reference) | normalized.", rich_help_panel=LEARN),
    init: str | None = typer.Option(None, "--init", help="What picks the base patch and candidates: movement (|delta|, the paper) | saliency (the task's integrated-gradients attribution) | fisher (delta² · diagonal empirical Fisher at theta_ft) | grad-movement (|delta · grad L(theta_ft)|) | auto (thorough, fast: saliency for multi-task checkpoints, else movement).", rich_help_panel=LEARN),
    method_options: list[str] | None = typer.Option(None, "--method-option", help="A method's own setting, METHOD.KEY=VALUE (repeatable), e.g. graft-ste.lr=0.2 or graft-rescaled.alphas=[1,2,4]; defaults in 'mtgraft methods'.", rich_help_panel=LEARN),
    seed: int = typer.Option(13, "--seed", help="Seed of the mask init and the random baseline."),
    eval_tasks: str | None = typer.Option(None, "--eval-tasks", help="Comma list of tasks with the same labels for OOD evaluation.", rich_help_panel=RECORDED),
    save_baselines: bool = typer.Option(False, "--save-baselines", help="Also write (and register) SkillPatches of the baselines.", rich_help_panel=OUT),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda."),
    out: str | None = typer.Option(None, "--out", help="Output folder (default runs/graft/<task>-<time>).", rich_help_panel=OUT),
    do_register: bool = typer.Option(True, "--register/--no-register", help="Register each SkillPatch in the MLflow mask registry.", rich_help_panel=OUT),
    **opts: Any,
) -> None:
    """Learn per-task graft regions (and baselines) at one or more sparsities; write SkillPatches."""
    from mtgraft.grafting import GraftConfig
    from mtgraft.workflows.seeds import graft_seeds

    seeds = seeds_of(ctx, opts)
    own = {k: v for k, v in locals().items() if k not in ("ctx", "opts", "seeds")}
    results = run_config(ctx, GraftConfig, {**own, **opts, "json_out": False},  # JSON of several tasks: below
                         lambda cfg, show_progress: graft_seeds(cfg, seeds, show_progress and not opts["json_out"]),
                         required=("finetuned",), ignore=SEEDS_KEY)
    if isinstance(results, dict):  # several seeds: the aggregate
        if opts["json_out"]:
            print_json(results)
        else:
            print_graft_seeds(results)
        return
    if opts["json_out"]:
        if len(results) == 1:
            print_json(results[0].to_json())
        else:
            first = results[0].to_json()
            print_json({"tasks": [r.task for r in results], "results": [x | {"task": r.task} for r in results
                                                                          for x in r.to_json()["results"]],
                        "per_task": [r.to_json() for r in results], "graftable_size": first["graftable_size"]})
        return
    for r in results:
        console.print(graft_table(r))
        if (ct := comparisons_table(r)) is not None:
            console.print(ct)
        console.print("ECE with 10 equal-width bins; Rel = (P_graft - P_0) / (P_1 - P_0); agreement with the "
                      "fine-tuned model's predictions; 95% intervals: paired bootstrap over the test examples.")
        console.print(f"results: [bold]{r.out}[/]   mlflow run: {r.mlflow_run_id}")


def print_graft_seeds(agg: dict) -> None:
    """The aggregate of a several-seed graft: per task, method and sparsity, mean ± 95% CI over seeds."""
    from mtgraft.evaluation.uncertainty import format_ci

    def ci(r: dict, key: str) -> str:
        return format_ci({"mean": r["mean"].get(key), "ci95": r["ci95"].get(key)}, 3)

    for task in agg["tasks"]:
        t = Table(title=f"mtgraft graft · {task} · mean ± 95% CI over {len(agg['seeds'])} seeds "
                        f"({', '.join(map(str, agg['seeds']))})")
        rows = [r for r in agg["results"] if r["task"] == task]
        oods = sorted({k.split(".")[1] for r in rows for k in r["mean"] if k.startswith("ood.") and k.endswith(".rel")})
        for c in ("model", "sparsity", "region", "acc", "ECE", "Rel", *[f"Rel {o}" for o in oods]):
            t.add_column(c, justify="left" if c == "model" else "right")
        for r in [x for x in agg["reference"] if x["task"] == task]:
            t.add_row(r["model"], "", "", ci(r, "accuracy"), ci(r, "ece"), "", *["" for _ in oods])
        for r in rows:
            t.add_row(r["method"], f"{r['sparsity']:g}", f"{r['mean']['region_size']:,.0f}", ci(r, "accuracy"),
                      ci(r, "ece"), ci(r, "rel"), *[ci(r, f"ood.{o}.rel") for o in oods])
        console.print(t)
        for c in agg["comparisons_over_seeds"]:
            if c["task"] == task and c["metric"] in ("accuracy", "rel") and c["mean_diff"] is not None:
                p = "—" if c["wilcoxon_p"] is None else f"{c['wilcoxon_p']:.3g}"
                console.print(f"{c['a']} − {c['b']} at {c['sparsity']:g}, {c['metric']}: "
                              f"{format_ci({'mean': c['mean_diff'], 'ci95': c['ci95']}, 3)} "
                              f"(Wilcoxon p {p}, smallest possible {c['min_possible_p']:.3g})", highlight=False)
    console.print(f"per seed: [bold]{agg['out']}[/]/seed-<s>/   aggregate: {agg['out']}/seeds.json")


@command(app, "eval", recorded_data_options, output_options)
def eval_cmd(
    ctx: typer.Context,
    task: str | None = typer.Option(None, "--task", help="Task to evaluate on (default: the model's/patch's)."),
    model: str | None = typer.Option(None, "--model", help="Checkpoint folder."),
    patch: str | None = typer.Option(None, "--patch", help="SkillPatch file (applied to its base model)."),
    pretrained: str | None = typer.Option(None, "--pretrained", help="Pretrained model for P_0 (default: recorded)."),
    finetuned: str | None = typer.Option(None, "--finetuned", help="Fine-tuned checkpoint for P_1/agreement (default: recorded)."),
    eval_tasks: str | None = typer.Option(None, "--eval-tasks", help="Comma list of tasks with the same labels (OOD)."),
    device: str = typer.Option("auto", "--device"),
    out: str | None = typer.Option(None, "--out", help="Output folder (eval.json, reliability.png).", rich_help_panel=OUT),
    **opts: Any,
) -> None:
    """Evaluate a checkpoint or a SkillPatch: accuracy, macro-F1, ECE (10 bins), Brier, agreement, Rel, OOD."""
    from mtgraft.evaluation.runner import EvalConfig, evaluate

    own = {k: v for k, v in locals().items() if k not in ("ctx", "opts")}
    rep = run_config(ctx, EvalConfig, {**own, **opts}, evaluate)
    if rep is None:
        return
    t = Table(title=f"mtgraft eval · {rep['task']}")
    from mtgraft.evaluation.uncertainty import format_interval

    for c in ("eval task", "acc ± 95%", "macro-F1", "ECE", "Brier", "agree", "P_0", "P_1", "Rel [95% CI]", "n"):
        t.add_column(c, justify="right" if c != "eval task" else "left")
    for name, m in [(rep["task"], rep["test"]), *rep["ood"].items()]:
        t.add_row(name, _pm(m["accuracy"], m.get("accuracy_ci95")), fmt(m["macro_f1"]), fmt(m["ece"]),
                  fmt(m["brier"]), fmt(m.get("agreement")), fmt(m.get("pretrained_accuracy")),
                  fmt(m.get("finetuned_accuracy")), format_interval(m.get("rel"), m.get("rel_ci95")), str(m["n"]))
    console.print(t)
    console.print(f"ECE with 10 equal-width bins · 95% intervals: paired bootstrap over the test examples · "
                  f"reliability diagram: {rep['reliability_diagram']}")


@app.command("methods")
@handle_errors
def methods_cmd(json_out: bool = typer.Option(False, "--json")) -> None:
    """List the localisation methods and the graft recipes."""
    from mtgraft.grafting import METHODS, RECIPES

    if json_out:
        print_json({"methods": [{"name": m.name, "description": m.description, "reference": m.reference,
                                 "learned": m.learned, "uses": list(m.uses), "defaults": m.defaults}
                                for m in METHODS.values()], "recipes": RECIPES})
        return
    t = Table(title="localisation methods")
    for c in ("name", "learned", "description", "reference", "own settings (--method-option)"):
        t.add_column(c)
    for m in METHODS.values():
        t.add_row(m.name, "yes" if m.learned else "no", m.description, m.reference,
                  ", ".join(f"{k}={v}" for k, v in m.defaults.items()) or "—")
    table_out.print(t)
    for name, r in RECIPES.items():
        console.print(f"recipe [bold]{name}[/]: " + ", ".join(f"{k}={v}" for k, v in r.items()))
