"""Progress reporting for long work (layer 1: imports nothing of mtgraft but ``utils``-level modules).

The library owns its own stderr console; the CLI prints through the same one, so that progress bars and
messages never interleave badly. Library functions take ``show_progress`` and report through
``progress_bar``; nothing here knows about the CLI.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.console import Console

# Human output goes to stderr so that ``--json`` leaves stdout to one JSON object.
console = Console(stderr=True)


@contextlib.contextmanager
def progress_bar(total: int, description: str, enabled: bool = True) -> Iterator[Callable[..., None]]:
    """A rich progress bar on stderr; yields ``update(completed, info="")``."""
    if not enabled:
        yield lambda *a, **k: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    cols = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TimeRemainingColumn(), TextColumn("{task.fields[info]}")]
    with Progress(*cols, console=console, transient=False) as prog:
        tid = prog.add_task(description, total=total, info="")

        def update(completed: int, info: str = "") -> None:
            prog.update(tid, completed=completed, info=info)

        yield update


def warn(message: str) -> None:
    """One ``warning:`` line on stderr: what was skipped or changed, and why (nothing is skipped silently)."""
    from rich.markup import escape

    console.print(f"[yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)
