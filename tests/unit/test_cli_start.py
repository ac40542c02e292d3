"""The CLI lives in the package and starts without the heavy libraries (timings: benchmarks/bench_cli_start.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "mlflow", "matplotlib", "sklearn", "datasets")

PROBE = """
import json, sys
sys.argv = ["mtgraft", *json.loads(sys.argv[1])]
from mtgraft.cli.app import main
try:
    main()
except SystemExit as e:
    code = e.code
else:
    code = 0
sys.stderr.write("\\nPROBE " + json.dumps({"code": code, "loaded": sorted(m for m in HEAVY if m in sys.modules)}) + "\\n")
""".replace("HEAVY", repr(HEAVY))


def _probe(args: list[str]) -> dict:
    p = subprocess.run([sys.executable, "-c", PROBE, json.dumps(args)], capture_output=True, text=True, timeout=120)
    line = [x for x in p.stderr.splitlines() if x.startswith("PROBE ")]
    assert line, p.stderr[-2000:]
    return json.loads(line[-1][len("PROBE "):])


@pytest.mark.parametrize("args", [["--help"], ["tasks", "list"], ["tasks", "show", "rotten_tomatoes"], ["methods"],
                                  ["strategies"], ["strategies", "--json"], ["train", "--help"], ["graft", "--help"]])
def test_quick_commands_load_no_heavy_library(args: list[str]) -> None:
    got = _probe(args)
    assert got["code"] in (0, None), got
    assert got["loaded"] == [], f"'mtgraft {' '.join(args)}' imported {got['loaded']}"


def test_the_probe_sees_heavy_imports() -> None:
    # the probe can fail: a command that does load torch is reported
    p = subprocess.run([sys.executable, "-c", "import sys, mtgraft.evaluation.predict; print('torch' in sys.modules)"],
                       capture_output=True, text=True, timeout=120)
    assert p.stdout.strip() == "True"


def test_the_library_has_no_entry_point_only_the_cli() -> None:
    """``python -m mtgraft.cli`` runs the app; the library package has no ``__main__`` importing its CLI."""
    import importlib.util

    assert importlib.util.find_spec("mtgraft.__main__") is None
    p = subprocess.run([sys.executable, "-m", "mtgraft.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    for cmd in ("train", "train-multitask", "graft", "overlap-report", "masks", "run"):
        assert cmd in p.stdout


def test_no_top_level_cli_package() -> None:
    import importlib.util

    spec = importlib.util.find_spec("cli")
    assert spec is None or "mtgraft" not in str(spec.origin or ""), "mtgraft still installs a top-level 'cli' package"
