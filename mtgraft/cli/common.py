"""Shared CLI plumbing: config resolution from options, error handling, JSON output."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mtgraft.errors import MtgraftError
from mtgraft.progress import console

if TYPE_CHECKING:  # pydantic models are built when a command runs, not when --help is shown
    from mtgraft.config import BaseConfig

# Human output goes to stderr so that ``--json`` leaves stdout to one JSON object; listing and inspection
# commands (tasks list/show, masks list/show, patch info, methods) print their tables to stdout (``table_out``)
# so that they can be piped.
table_out = Console()
F = TypeVar("F", bound=Callable[..., Any])


def explicit_options(ctx: typer.Context, params: dict[str, Any], skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The options the user actually gave on the command line (or env), by name."""
    out = {}
    for name, value in params.items():
        if name in skip:
            continue
        src = ctx.get_parameter_source(name)
        # typer vendors its own click: compare the enum by name
        if src is not None and getattr(src, "name", str(src)) not in ("DEFAULT", "DEFAULT_MAP"):
            out[name] = value
    return out


def resolve(ctx: typer.Context, cls: type[BaseConfig], config: str | None, params: dict[str, Any],
            skip: tuple[str, ...] = ("config", "json_out", "ctx"), section: str | None = None,
            required: tuple[str, ...] = (), ignore: tuple[str, ...] = ()) -> Any:
    """Defaults < YAML (``--config``) < explicit CLI options, validated by ``cls``."""
    over = explicit_options(ctx, params, skip)
    # options a command requires but which a YAML may provide; typer sees them as optional
    for name in required:
        if name not in over and params.get(name) is not None:
            over[name] = params[name]
    from mtgraft.config import build_config

    return build_config(cls, config, over, section=section, ignore=ignore)


def handle_errors(fn: F) -> F:
    """Turn user errors into one clear line and a non-zero exit (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MtgraftError as e:
            # escape: a message may hold [brackets] (task lists) that rich would take for markup
            console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            console.print("[bold red]interrupted[/]")
            raise typer.Exit(130) from None
        except OSError as e:
            if os.environ.get("MTGRAFT_DEBUG"):
                raise
            where = f" '{e.filename}'" if getattr(e, "filename", None) else ""
            console.print(f"[bold red]error:[/] {escape(f'{e.strerror or e}{where}')}", highlight=False,
                          soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def seeds_of(ctx: typer.Context, opts: dict[str, Any]) -> list[int] | None:
    """Take ``--seeds`` out of ``opts``, parsed (None when not given); an error when ``--seed`` was given too.
    Without either on the command line, a ``seeds:`` key of the ``--config`` YAML counts as ``--seeds`` (the
    command then passes ``ignore=SEEDS_KEY`` to :func:`run_config`); a YAML with both ``seed`` and ``seeds``
    is the same error as the two options together."""
    from mtgraft.workflows.seeds import parse_seeds

    raw = opts.pop("seeds", None)
    seed_given = bool(explicit_options(ctx, {"seed": None}))
    if raw is not None:
        return parse_seeds(raw, seed_given=seed_given)
    if opts.get("config") and not seed_given:
        from mtgraft.config import load_yaml

        data = load_yaml(opts["config"])
        if isinstance(data, dict) and data.get("seeds") is not None:
            if data.get("seed") is not None:
                raise MtgraftError(f"config {opts['config']}: give either 'seed' or 'seeds', not both "
                                   "(seeds: [13] is the same as seed: 13)")
            return parse_seeds(data["seeds"], option=f"seeds in {opts['config']}")
    return None


SEEDS_KEY = ("seeds",)  # the YAML key seeds_of reads, which the run configs themselves do not have


def print_json(obj: Any) -> None:
    """Print one JSON object on stdout."""
    from mtgraft.utils import _json_default

    sys.stdout.write(json.dumps(obj, default=_json_default) + "\n")
    sys.stdout.flush()


def run_config(ctx: typer.Context, cls: type[BaseConfig], params: dict[str, Any], work: Callable[..., Any],
               required: tuple[str, ...] = (), emit: Callable[[], bool] = lambda: True,
               ignore: tuple[str, ...] = ()) -> Any:
    """Resolve ``cls`` from ``params`` (the command's options, ``config`` and ``json_out`` among them), run
    ``work(cfg, show_progress=...)``; with ``--json`` print the result's JSON and return None.

    ``emit`` says whether this process reports at all (False on the non-main ranks of a distributed run).
    """
    json_out = bool(params.get("json_out"))
    cfg = resolve(ctx, cls, params.get("config"), params, required=required, ignore=ignore)
    result = work(cfg, show_progress=not json_out)
    if not emit():
        return None
    if json_out:
        print_json(result if isinstance(result, dict) else result.to_json())
        return None
    return result


METRIC_COLUMNS = ("accuracy", "macro_f1", "ece", "brier", "n")


def fmt(v: object, nd: int = 4, signed: bool = False) -> str:
    """A table cell: floats with ``nd`` decimals (signed on request), None as an em dash."""
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:+.{nd}f}" if signed else f"{v:.{nd}f}"
    return str(v)


def metrics_table(title: str, label: str, rows: list[tuple[str, dict[str, Any]]]) -> Table:
    """Accuracy, macro-F1, ECE, Brier and n of each row (a split or a task)."""
    t = Table(title=title)
    t.add_column(label)
    for key in METRIC_COLUMNS:
        t.add_column(key, justify="right")
    for name, m in rows:
        t.add_row(name, *[fmt(m.get(key)) for key in METRIC_COLUMNS])
    return t


def dotted(record: Any, key: str) -> Any:
    """``record["a"]["b"]`` for ``key`` "a.b" (None when missing)."""
    for part in key.split("."):
        record = record.get(part) if isinstance(record, dict) else None
    return record


def seeds_table(title: str, agg: dict[str, Any], fields: list[tuple[str, str]], label: str = "seed") -> Table:
    """One row per seed, then mean ± half-width of the 95% interval over seeds, of ``fields`` (column,
    dotted key of the per-seed records / the aggregate)."""
    from mtgraft.evaluation.uncertainty import format_ci

    t = Table(title=f"{title} · {len(agg['seeds'])} seeds")
    t.add_column(label)
    for name, _ in fields:
        t.add_column(name, justify="right")
    for s in agg["seeds"]:
        t.add_row(str(s), *[fmt(dotted(agg["per_seed"][str(s)], key)) for _, key in fields])
    t.add_row("mean ± 95% CI", *[format_ci({"mean": agg["mean"].get(key), "ci95": agg["ci95"].get(key)}, 4)
                                 for _, key in fields])
    return t


def command(group: typer.Typer, name: str, *option_groups: Callable[..., Any]) -> Callable[[F], F]:
    """Register ``fn`` as ``name`` on ``group``, with one-line errors and the shared ``option_groups``."""
    from mtgraft.cli.options import with_options

    def deco(fn: F) -> F:
        group.command(name)(handle_errors(with_options(*option_groups)(fn)))
        return fn

    return deco


def field_table(title: str, key: str = "field", **value_style: Any) -> Table:
    """A two-column table without header: a bold name, then its value (``value_style`` for that column)."""
    t = Table(title=title, show_header=False)
    t.add_column(key, style="bold")
    t.add_column("value", **value_style)
    return t
