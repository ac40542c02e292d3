"""Benchmark how fast the ``mtgraft`` command starts: whole-process wall time and peak RSS of quick commands.

Usage: python benchmarks/bench_cli_start.py [--repeats 5] [--out benchmarks/results/cli_start.json]

Each command runs as a child process (the installed ``mtgraft`` script next to this Python) ``--repeats``
times; the table gives the median wall time and the median peak RSS (``ru_maxrss`` from ``os.wait4``), with
``python -c pass`` as the floor. Goal: ``--help``, ``tasks list``, ``tasks show`` and ``methods`` start in
≤ 0.5 s. The load average at start and end is recorded beside the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GOAL_S = 0.5
COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "mtgraft --help": ["--help"],
    "mtgraft tasks list": ["tasks", "list"],
    "mtgraft tasks show rotten_tomatoes": ["tasks", "show", "rotten_tomatoes"],
    "mtgraft methods": ["methods"],
}


def mtgraft_exe() -> str:
    """The ``mtgraft`` console script of the running interpreter's environment."""
    exe = Path(sys.executable).parent / "mtgraft"
    if not exe.exists():
        raise SystemExit(f"no mtgraft script next to {sys.executable}: install the project first")
    return str(exe)


def run_once(cmd: list[str]) -> tuple[float, int, int]:
    """(wall seconds, peak RSS in KiB, exit code) of one child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, int(usage.ru_maxrss), proc.returncode


def measure(repeats: int) -> dict[str, dict[str, object]]:
    exe = mtgraft_exe()
    out: dict[str, dict[str, object]] = {}
    for name, args in COMMANDS.items():
        cmd = args if args[0] == sys.executable else [exe, *args]
        run_once(cmd)  # warm the file cache; not counted
        runs = [run_once(cmd) for _ in range(repeats)]
        if any(code != 0 for _, _, code in runs):
            raise SystemExit(f"'{name}' failed (exit codes {[c for _, _, c in runs]})")
        walls = [w for w, _, _ in runs]
        out[name] = {"median_s": round(statistics.median(walls), 3), "min_s": round(min(walls), 3),
                     "max_s": round(max(walls), 3), "peak_rss_mib": round(statistics.median(r for _, r, _ in runs)
                                                                         / 1024, 1),
                     "goal_s": None if args[0] == sys.executable else GOAL_S}
        out[name]["meets_goal"] = None if out[name]["goal_s"] is None else out[name]["median_s"] <= GOAL_S
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cli_start.json"))
    a = ap.parse_args()
    load_start = os.getloadavg()
    res = measure(a.repeats)
    report = {"benchmark": "cli_start", "repeats": a.repeats, "goal_s": GOAL_S, "results": res,
              "load_average_start": [round(x, 2) for x in load_start],
              "load_average_end": [round(x, 2) for x in os.getloadavg()],
              "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()}}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"| command | median s | min–max s | peak RSS MiB | ≤ {GOAL_S} s |")
    print("|---|---|---|---|---|")
    for name, r in res.items():
        ok = "" if r["meets_goal"] is None else ("yes" if r["meets_goal"] else "**no**")
        print(f"| `{name}` | {r['median_s']:.2f} | {r['min_s']:.2f}–{r['max_s']:.2f} | {r['peak_rss_mib']:.0f} | {ok} |")
    print(f"\nload average {load_start[0]:.2f} at start, {os.getloadavg()[0]:.2f} at end; {a.repeats} runs each")


if __name__ == "__main__":
    main()
