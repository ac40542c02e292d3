"""The package's layers, as data: which part may import which (docs/architecture.md draws the picture).

A module may import parts of a lower layer. Inside a layer whose parts are *ordered*, a part may import the
parts listed before it; in an *independent* layer, parts never import each other. ``tests/unit/test_layers.py``
walks every import of the package (function-level ones included) and checks it with ``check_import``.
"""

from __future__ import annotations

# (name, parts, ordered): parts are module prefixes; the root module ``mtgraft`` itself matches only exactly.
LAYERS: list[tuple[str, list[str], bool]] = [
    ("core", ["mtgraft", "mtgraft.layers", "mtgraft.errors", "mtgraft.utils", "mtgraft.presets", "mtgraft.config",
              "mtgraft.progress", "mtgraft.resume", "mtgraft.tracking"], True),
    ("data and artifacts", ["mtgraft.tasks", "mtgraft.models", "mtgraft.patches"], True),
    ("evaluation", ["mtgraft.evaluation"], True),
    ("methods", ["mtgraft.training", "mtgraft.grafting", "mtgraft.registry"], False),
    ("analysis", ["mtgraft.analysis"], True),
    ("workflows", ["mtgraft.workflows"], True),
    ("interface", ["mtgraft.cli", "mtgraft.testing"], True),
]


def part_of(module: str) -> str | None:
    """The part (a name in ``LAYERS``) that ``module`` belongs to, or None."""
    best = None
    for _, parts, _ in LAYERS:
        for part in parts:
            if module == part or (part != "mtgraft" and module.startswith(part + ".")):
                if best is None or len(part) > len(best):
                    best = part
    return best


def _position(part: str) -> tuple[int, int, bool]:
    for layer, (_, parts, ordered) in enumerate(LAYERS):
        if part in parts:
            return layer, parts.index(part), ordered
    raise KeyError(part)


def check_import(src: str, target: str) -> str | None:
    """Why ``src`` may not import ``target`` (None when it may)."""
    if target == "cli" or target.startswith("cli."):
        return "the top-level 'cli' package is gone; the CLI is mtgraft.cli"
    a, b = part_of(src), part_of(target)
    if a is None or b is None:
        return f"'{src if a is None else target}' is in no layer"
    if a == b:
        return None
    (la, ia, ordered), (lb, ib, _) = _position(a), _position(b)
    if lb > la:
        return f"upward: layer {la + 1} ({LAYERS[la][0]}) imports layer {lb + 1} ({LAYERS[lb][0]})"
    if lb == la:
        if not ordered:
            return f"sideways: parts of layer {la + 1} ({LAYERS[la][0]}) do not import each other"
        if ib > ia:
            return f"inside layer {la + 1}, {a} comes before {b} and may not import it"
    return None
