"""The package's layers (docs/architecture.md) hold: every import runs downward, none runs up, no cycles.

Walks every module of ``mtgraft`` with ``ast`` (imports inside functions included) and checks each import
of another part of ``mtgraft`` against the documented layer order.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

import mtgraft
from mtgraft.layers import LAYERS, check_import, part_of

ROOT = Path(mtgraft.__file__).resolve().parent


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[str, int]]:
    """(imported module, line) for every import of mtgraft in ``path``, at any depth."""
    mod = _module_name(path)
    is_pkg = path.name == "__init__.py"
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "mtgraft" or target.startswith("mtgraft."):
                # ``from mtgraft.x import y`` may import the module mtgraft.x.y
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    out.append((sub if _is_module(sub) else target, node.lineno))
            elif target == "cli" or target.startswith("cli."):
                out.append((target, node.lineno))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in ("mtgraft", "cli"):
                    out.append((alias.name, node.lineno))
    return sorted(set(out), key=lambda t: t[1])


def _is_module(name: str) -> bool:
    rel = Path(*name.split(".")[1:])
    return (ROOT / rel).with_suffix(".py").is_file() or (ROOT / rel / "__init__.py").is_file()


def _all_modules() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_module_has_a_layer() -> None:
    missing = [_module_name(p) for p in _all_modules() if part_of(_module_name(p)) is None]
    assert not missing, f"modules outside the documented layers: {missing}"


def test_imports_follow_the_layer_order() -> None:
    bad = []
    for path in _all_modules():
        src = _module_name(path)
        for target, line in _imports(path):
            why = check_import(src, target)
            if why:
                bad.append(f"{path.relative_to(ROOT.parent)}:{line}: {src} -> {target}: {why}")
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)


def test_no_cycles_between_parts() -> None:
    g = nx.DiGraph()
    for path in _all_modules():
        src = part_of(_module_name(path))
        for target, _ in _imports(path):
            dst = part_of(target)
            if dst and src and dst != src:
                g.add_edge(src, dst)
    cycles = list(nx.simple_cycles(g))
    assert not cycles, f"cycles between parts of mtgraft: {cycles}"


def test_no_cycles_between_modules() -> None:
    # a package's face (its __init__) may import its own modules; any other loop of imports is a cycle
    g = nx.DiGraph()
    for path in _all_modules():
        src = _module_name(path)
        for target, _ in _imports(path):
            if path.name == "__init__.py" and target.startswith(src + "."):
                continue
            if target != src:
                g.add_edge(src, target)
    cycles = sorted(sorted(c) for c in nx.simple_cycles(g))
    assert not cycles, f"cycles between modules of mtgraft: {cycles}"


def test_the_checker_can_fail() -> None:
    # an upward import, a sideways one inside layer 4, and the CLI from the library are all refused
    assert check_import("mtgraft.models.task_model", "mtgraft.training")
    assert check_import("mtgraft.grafting.run", "mtgraft.registry")
    assert check_import("mtgraft.evaluation.predict", "mtgraft.cli.common")
    assert check_import("mtgraft.utils", "cli.common")
    assert not check_import("mtgraft.cli.app", "mtgraft.workflows.study")
    assert not check_import("mtgraft.grafting.run", "mtgraft.evaluation.predict")


@pytest.mark.parametrize("layer", range(len(LAYERS)))
def test_layers_are_documented(layer: int) -> None:
    doc = (ROOT.parent / "docs" / "architecture.md").read_text()
    for part in LAYERS[layer][1]:
        assert f"`{part}`" in doc, f"docs/architecture.md does not name `{part}` (layer {layer + 1})"
