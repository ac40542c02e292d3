"""``mtgraft overlap-report``: overlap of task regions against chance, the task graph, transfer, one report."""

from __future__ import annotations

import functools
import tempfile

import typer
from rich.table import Table

from mtgraft.cli.app import app
from mtgraft.cli.common import handle_errors, print_json
from mtgraft.errors import MtgraftError
from mtgraft.progress import console

SELECT = "Which patches (registry selectors or files)"
ANALYSIS = "Analysis"
OUT = "Output"


def _split(values: list[str] | None) -> list[str]:
    """Repeated and comma-separated values as one list."""
    from mtgraft.config import split_list

    return [x for v in values or [] for x in split_list(v)]


@app.command("overlap-report")
@handle_errors
def overlap_report_cmd(
    task: list[str] | None = typer.Option(None, "--task", help="Task(s) to take from the registry (repeat or comma-separate); default: every task of --base.", rich_help_panel=SELECT),
    base: str | None = typer.Option(None, "--base", help="Base model of the registry patches (name, short name or start of its hash).", rich_help_panel=SELECT),
    alias: str = typer.Option("best", "--alias", help="Registry alias to take per task: best | latest | any alias you set.", rich_help_panel=SELECT),
    method: str | None = typer.Option(None, "--method", help="Only registry versions made by this method (e.g. graft); best/latest are then taken among them.", rich_help_panel=SELECT),
    patches: list[str] | None = typer.Option(None, "--patches", help="SkillPatch files (repeat the option, or list files after it).", rich_help_panel=SELECT),
    files: list[str] | None = typer.Argument(None, help="More SkillPatch files (same as --patches).", show_default=False),
    seeds: str | None = typer.Option(None, "--seeds", help="Comma list of seeds: the inputs are 'graft --seeds' output folders (seed-<s>/ each) or patch files (by the seed they record); each seed's regions give pair metrics, aggregated per pair (mean ± 95% CI over seeds); --method picks the folders' patches (default graft).", rich_help_panel=SELECT),
    duplicates: str = typer.Option("error", "--duplicates", help="Two patches of one task: error | first (keep the first) | label (keep all, labelled by method and sparsity).", rich_help_panel=SELECT),
    with_transfer: bool = typer.Option(False, "--with-transfer", help="Evaluate each graft on every task with the same labels (Rel), union grafts, overlap-vs-transfer correlation.", rich_help_panel=ANALYSIS),
    union: list[str] | None = typer.Option(None, "--union", help="A task group whose union graft to evaluate, e.g. --union a,b (repeatable; needs --with-transfer).", rich_help_panel=ANALYSIS),
    min_enrichment: float = typer.Option(2.0, "--min-enrichment", help="Task-graph edge when the overlap is at least this many times chance ...", rich_help_panel=ANALYSIS),
    max_p: float = typer.Option(0.05, "--max-p", help="... and its Bonferroni-adjusted hypergeometric p-value (the report's verdicts) is at most this.", rich_help_panel=ANALYSIS),
    max_test: str = typer.Option("recorded", "--max-test", help="Cap on test examples per task for transfer; 'recorded' (or 'all'): the test set each patch was measured on, as grafting used it (max_test auto: all of a split of ≤ 2000, else a fixed subsample of 2000); 'auto' or an integer: at most that many.", rich_help_panel=ANALYSIS),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda (transfer only).", rich_help_panel=ANALYSIS),
    out: str | None = typer.Option(None, "--out", help="Report folder (default runs/overlap/<tasks>-<time>).", rich_help_panel=OUT),
    title: str | None = typer.Option(None, "--title", help="Title of the report page.", rich_help_panel=OUT),
    tracking_uri: str | None = typer.Option(None, "--tracking-uri", help="MLflow tracking URI (registry and the report's run).", rich_help_panel=OUT),
    no_track: bool = typer.Option(False, "--no-track", help="Do not log the report folder as an MLflow run.", rich_help_panel=OUT),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object (out, files, per-pair metrics, summary) on stdout.", rich_help_panel=OUT),
) -> None:
    """How disjoint task regions are, against chance: metrics, task graph, transfer; an HTML/Markdown report."""
    from mtgraft.analysis.report import DUPLICATE_POLICIES, build_report, select_patches_from_registry
    from mtgraft.config import DEFAULT_MAX_TEST
    from mtgraft.utils import default_out
    from mtgraft.workflows.seeds import parse_seeds, report_seeds

    files_all = [*(patches or []), *(files or [])]
    tasks = _split(task)
    if duplicates not in DUPLICATE_POLICIES:
        raise MtgraftError(f"--duplicates must be one of {', '.join(DUPLICATE_POLICIES)}, got '{duplicates}'")
    seed_list = parse_seeds(seeds)
    if seed_list is not None and not files_all:
        raise MtgraftError("--seeds needs the output folders of 'mtgraft graft --seeds ...' (or patch files), "
                           "not registry selectors")
    if files_all and (tasks or base or (method and seed_list is None)):
        raise MtgraftError("give either patch files (--patches) or registry selectors (--task/--base/--method), "
                           "not both")
    mt_word = max_test.strip().lower()
    mt = None if mt_word in ("all", "recorded") else DEFAULT_MAX_TEST if mt_word == "auto" else _int(max_test, "--max-test")
    unions = [_split([u]) for u in (union or [])]
    with tempfile.TemporaryDirectory(prefix="mtgraft-report-") as tmp:
        if files_all:
            inputs = files_all
        else:
            console.print(f"selecting patches from the registry (alias '{alias}')…")
            inputs = [str(p) for p in select_patches_from_registry(tasks or None, base, alias, tracking_uri, tmp,
                                                                    method=method)]
        name = "-".join(tasks) if tasks else "patches"
        make = build_report if seed_list is None else functools.partial(report_seeds, seeds=seed_list,
                                                                          method=method or "graft")
        res = make(inputs, out or default_out("overlap", name[:60]), with_transfer=with_transfer,
                           unions=unions, min_enrichment=min_enrichment, max_p=max_p, max_test=mt, device=device,
                           title=title, duplicates=duplicates, track=not no_track, tracking_uri=tracking_uri,
                           show_progress=not json_out)  # type: ignore[arg-type]
    if json_out:
        print_json(res.to_json())
        return
    for s in res.summary["summary"]["sentences"]:
        console.print(f"• {s}", highlight=False, soft_wrap=True)
    if res.summary.get("seeds"):
        from mtgraft.analysis.seeds import seeds_rows

        header, rows = seeds_rows(res.summary["seeds"])
        t = Table(title=f"pairs over {res.summary['seeds']['n_seeds']} seeds (mean ± 95% CI)")
        for i, c in enumerate(header):
            t.add_column(c, justify="left" if i in (0, len(header) - 1) else "right")
        for r in rows:
            t.add_row(*r)
        console.print(t)
    if res.mlflow_run_id:
        console.print(f"mlflow run: {res.mlflow_run_id}")
    console.print(f"report: [bold]{res.paths['html']}[/] (Markdown: {res.paths['md']}; data: "
                  f"{res.paths['overlap_json']})", highlight=False, soft_wrap=True)


def _int(v: str, opt: str) -> int:
    try:
        n = int(v)
    except ValueError:
        raise MtgraftError(f"{opt} must be a positive integer or 'all', got '{v}'") from None
    if n <= 0:
        raise MtgraftError(f"{opt} must be a positive integer or 'all', got '{v}'")
    return n
