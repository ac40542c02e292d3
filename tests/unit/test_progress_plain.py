"""Progress when stderr is not a terminal (a log file, CI, nohup): plain lines naming the work, step/total,
elapsed time and ETA, at a sensible interval, and never cut at 80 columns."""

from __future__ import annotations

import re
import subprocess
import sys

from mtgraft import progress

LINE = re.compile(r"^\[\d\d:\d\d:\d\d\] (?P<desc>.+): (?P<done>\d+)/(?P<total>\d+)(?: \(\d+%\))? · elapsed "
                  r"\d+:\d\d:\d\d · (?P<eta>ETA \d+:\d\d:\d\d|ETA \?|done)(?: · (?P<info>.*))?$")


def _lines(err: str) -> list[re.Match]:
    return [m for m in map(LINE.match, err.splitlines()) if m]


def test_plain_lines_name_the_task_and_give_an_eta(capsys, monkeypatch):
    monkeypatch.setenv(progress.PLAIN_INTERVAL_ENV, "0")
    assert not progress.console.is_terminal
    with progress.progress_bar(4, "graft hedge · graft s=0.001") as upd:
        for i in range(1, 5):
            upd(i, f"dev {0.5 + i / 10:.3f}")
    err = capsys.readouterr().err
    got = _lines(err)
    assert len(got) == 5, err  # the start, steps 1-3 (4 is the end), the end
    assert all(m["desc"] == "graft hedge · graft s=0.001" for m in got)
    assert [int(m["done"]) for m in got] == [0, 1, 2, 3, 4]
    assert got[0]["eta"] == "ETA ?" and got[1]["eta"].startswith("ETA ") and got[-1]["eta"] == "done"
    assert got[-1]["info"] == "dev 0.900"


def test_interval_limits_the_lines(capsys, monkeypatch):
    monkeypatch.setenv(progress.PLAIN_INTERVAL_ENV, "3600")
    with progress.progress_bar(1000, "train rotten_tomatoes") as upd:
        for i in range(1, 1001):
            upd(i)
    assert [int(m["done"]) for m in _lines(capsys.readouterr().err)] == [0, 1000]


def test_a_failure_does_not_print_done(capsys, monkeypatch):
    monkeypatch.setenv(progress.PLAIN_INTERVAL_ENV, "3600")
    try:
        with progress.progress_bar(10, "train x") as upd:
            upd(3)
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert [m["eta"] for m in _lines(capsys.readouterr().err)] == ["ETA ?"]


def test_non_terminal_console_is_wide():
    code = ("from mtgraft.progress import console; from rich.table import Table; t = Table('task'); "
            "t.add_row('joint rotten_tomatoes+movie_polarity+hedge+debate_party+another_long_task_name'); "
            "console.print(t)")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": "."}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert "debate_party+another_long_task_name" in r.stderr, r.stderr
