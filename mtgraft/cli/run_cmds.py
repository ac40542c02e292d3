"""``mtgraft run STUDY.yaml``: a whole study (train → graft → register → report) from one file."""

from __future__ import annotations

import typer

from mtgraft.cli.app import app
from mtgraft.cli.common import handle_errors, print_json
from mtgraft.progress import console


@app.command("run")
@handle_errors
def run_cmd(
    study: str = typer.Argument(..., help="Study YAML (see experiments/)."),
    out: str | None = typer.Option(None, "--out", help="Output folder (default: the study's 'out' or runs/<name>)."),
    restart: bool = typer.Option(False, "--restart", help="Ignore finished stages and run everything again."),
    tracking_uri: str | None = typer.Option(None, "--tracking-uri", help="MLflow tracking URI."),
    set_: list[str] | None = typer.Option(None, "--set", help="Override a study key: --set model=DIR, "
                                             "--set train.max_steps=50 (YAML values; repeatable)."),
    json_out: bool = typer.Option(False, "--json", help="Print the study summary as one JSON object."),
) -> None:
    """Run a study: every stage is an MLflow run; finished stages are skipped when rerun (resumable)."""
    from mtgraft.workflows.study import Study, load_study, parse_overrides

    over = parse_overrides(set_ or [])
    if tracking_uri:
        over["tracking_uri"] = tracking_uri
    cfg = load_study(study, over)
    st = Study(cfg, out=out, restart=restart, show_progress=not json_out, log=console.print)
    console.print(f"[bold]study {cfg.name}[/] ({cfg.kind}: {', '.join(cfg.tasks)}) → {st.out}")
    summary = st.run()
    if json_out:
        print_json(summary)
        return
    console.print(f"summary: [bold]{st.out / 'summary.md'}[/]")
    rep = summary.get("report")
    if rep:
        files = rep.get("files", {})
        console.print(f"overlap report: [bold]{files.get('html', rep.get('out'))}[/]  (Markdown twin: "
                      f"{files.get('md', '')})")
