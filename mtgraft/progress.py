"""Progress reporting for long work (layer 1: imports nothing of mtgraft but ``utils``-level modules).

The library owns its own stderr console; the CLI prints through the same one, so that progress bars and
messages never interleave badly. Library functions take ``show_progress`` and report through
``progress_bar``; nothing here knows about the CLI.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator

from rich.console import Console

# Human output goes to stderr so that ``--json`` leaves stdout to one JSON object.
console = Console(stderr=True)
if not console.is_terminal and "COLUMNS" not in os.environ:  # a log file, CI, nohup: no 80-column cut
    console.width = 200

PLAIN_INTERVAL_ENV = "MTGRAFT_PROGRESS_INTERVAL"
PLAIN_INTERVAL = 30.0  # seconds between plain progress lines when stderr is not a terminal


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def plain_interval() -> float:
    """Seconds between plain progress lines (``$MTGRAFT_PROGRESS_INTERVAL``, default 30)."""
    try:
        return max(float(os.environ.get(PLAIN_INTERVAL_ENV, PLAIN_INTERVAL)), 0.0)
    except ValueError:
        return PLAIN_INTERVAL


@contextlib.contextmanager
def _plain_progress(total: int, description: str) -> Iterator[Callable[..., None]]:
    """Progress as plain lines for logs: at the start, then at most every ``plain_interval()`` seconds, and at
    the end; each line names the work (``description``), step/total, elapsed time and ETA."""
    t0 = time.monotonic()
    every = plain_interval()
    state = {"last": t0, "done": 0, "info": ""}

    def line(completed: int, info: str, final: bool = False) -> None:
        elapsed = time.monotonic() - t0
        pct = f" ({100 * completed / total:.0f}%)" if total else ""
        if final:
            eta = "done"
        elif completed > 0 and total:
            eta = f"ETA {_clock(elapsed / completed * (total - completed))}"
        else:
            eta = "ETA ?"
        tail = f" · {info}" if info else ""
        console.print(f"[{time.strftime('%H:%M:%S')}] {description}: {completed}/{total}{pct} · elapsed "
                      f"{_clock(elapsed)} · {eta}{tail}", markup=False, highlight=False, soft_wrap=True)

    def update(completed: int, info: str = "") -> None:
        state["done"], state["info"] = completed, info
        now = time.monotonic()
        if now - state["last"] >= every and completed < total:
            state["last"] = now
            line(completed, info)

    line(0, "")
    ok = False
    try:
        yield update
        ok = True
    finally:
        if ok:
            line(int(state["done"]), str(state["info"]), final=True)


@contextlib.contextmanager
def progress_bar(total: int, description: str, enabled: bool = True) -> Iterator[Callable[..., None]]:
    """A rich progress bar on stderr (plain timed lines when stderr is not a terminal: a log file, CI, nohup);
    yields ``update(completed, info="")``. ``description`` should name the task the work belongs to."""
    if not enabled:
        yield lambda *a, **k: None
        return
    if not console.is_terminal:
        with _plain_progress(total, description) as update:
            yield update
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
