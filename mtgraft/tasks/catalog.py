"""The built-in task catalog: offline tasks from pinned package files, and the paper's hub tasks.

The tasks are data, in ``catalog.yaml`` next to this module (its header explains the format), read once
at import. Sizes, class counts and the reasons behind each choice are in docs/tasks.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from mtgraft.tasks.spec import (
    PAIR_TEMPLATE,
    SENTIMENT_LABELS,
    SENTIMENT_TEMPLATE,
    SENTIMENT_WORDS,
    HubSource,
    PackageSource,
    TaskSpec,
)

CATALOG_FILE = Path(__file__).with_name("catalog.yaml")

# A whole YAML value "$NAME" stands for the constant NAME of mtgraft.tasks.spec (only these).
_CONSTANTS: dict[str, Any] = {
    "$SENTIMENT_LABELS": SENTIMENT_LABELS,
    "$SENTIMENT_WORDS": SENTIMENT_WORDS,
    "$SENTIMENT_TEMPLATE": SENTIMENT_TEMPLATE,
    "$PAIR_TEMPLATE": PAIR_TEMPLATE,
}


def _resolve(value: Any) -> Any:
    """A fresh copy of ``value`` (YAML aliases share objects) with the ``$NAME`` constants filled in."""
    if isinstance(value, dict):
        return {k: _resolve(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v) for v in value]
    if isinstance(value, str) and value.startswith("$"):
        if value not in _CONSTANTS:
            raise ValueError(f"{CATALOG_FILE.name}: unknown constant {value!r} (known: {sorted(_CONSTANTS)})")
        return _resolve(_CONSTANTS[value])
    return value


def _offline(entry: dict[str, Any]) -> TaskSpec:
    return TaskSpec(**{**entry, "source": PackageSource(**entry["source"])})


def _hub(name: str, path: str, text_fields: list[str], labels: list[str], label_words: list[str],
         template: str, domain: str, config: str | None = None, test_split: str = "test",
         label_map: dict[str, str] | None = None, label_field: str = "label") -> TaskSpec:
    return TaskSpec(
        name=name, description=f"{name} (LM-BFF task set), from the Hugging Face hub",
        source=HubSource(path=path, config=config, test_split=test_split, text_fields=text_fields,
                         label_field=label_field, label_map=label_map),
        text_fields=text_fields,
        labels=labels, label_words=label_words, template=template, domain=domain, offline=False,
        license_note="see the dataset card on the hub",
    )


def _load() -> tuple[list[TaskSpec], list[TaskSpec]]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    data = _resolve(yaml.load(CATALOG_FILE.read_text(encoding="utf-8"), Loader=loader))
    return [_offline(e) for e in data["offline"]], [_hub(**e) for e in data["hub"]]


OFFLINE_TASKS: list[TaskSpec]
HUB_TASKS: list[TaskSpec]
OFFLINE_TASKS, HUB_TASKS = _load()

CATALOG: dict[str, TaskSpec] = {t.name: t for t in [*OFFLINE_TASKS, *HUB_TASKS]}
