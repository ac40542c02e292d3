"""Local tasks described by a small YAML file next to csv/tsv/jsonl data (see docs/tasks.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from mtgraft.config import format_validation_error
from mtgraft.errors import MtgraftError
from mtgraft.tasks.spec import PAIR_TEMPLATE, SENTIMENT_TEMPLATE, LocalSource, TaskSpec

ALLOWED_KEYS = {
    "name", "description", "train", "test", "format", "text_column", "text_b_column", "text_columns",
    "label_column", "labels", "label_words", "template", "domain", "license_note", "test_fraction",
    "max_chars", "notes", "empty_labels",
}
_EXT_FORMAT = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


def looks_like_path(name: str) -> bool:
    """True when ``name`` names a YAML file rather than a catalog task."""
    return name.endswith((".yaml", ".yml")) or "/" in name or "\\" in name


def _format_of(path: str, given: str | None, yaml_path: Path) -> str:
    if given:
        fmt = str(given).lower()
        if fmt not in ("csv", "tsv", "jsonl"):
            raise MtgraftError(f"task file {yaml_path}: format must be csv, tsv or jsonl, not '{given}'")
        return fmt
    ext = Path(path).suffix.lower()
    if ext not in _EXT_FORMAT:
        raise MtgraftError(
            f"task file {yaml_path}: cannot tell the format of '{path}' from its extension: set format: csv|tsv|jsonl")
    return _EXT_FORMAT[ext]


def _empty_labels(value: Any, yaml_path: Path) -> str:
    if value not in ("error", "drop"):
        raise MtgraftError(f"task file {yaml_path}: empty_labels must be 'error' or 'drop', not {value!r}")
    return str(value)


def load_local_task(path: str | Path) -> TaskSpec:
    """Read a task YAML: data paths are relative to the YAML's folder; labels inferred if absent."""
    p = Path(path)
    if not p.is_file():
        raise MtgraftError(f"task file not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise MtgraftError(f"task file {p} is not valid YAML: {str(e).splitlines()[0]}") from None
    except UnicodeDecodeError:
        raise MtgraftError(f"task file {p} is not UTF-8 text") from None
    if not isinstance(raw, dict):
        raise MtgraftError(f"task file {p} must hold a mapping (name, train, text_column, label_column, ...)")
    data: dict[str, Any] = {str(k).replace("-", "_"): v for k, v in raw.items()}
    unknown = sorted(set(data) - ALLOWED_KEYS)
    if unknown:
        raise MtgraftError(f"task file {p}: unknown key(s) {unknown} (allowed: {', '.join(sorted(ALLOWED_KEYS))})")
    if not data.get("train"):
        raise MtgraftError(f"task file {p}: 'train' (path of the training file) is required")

    base = p.resolve().parent
    files = {}
    for key in ("train", "test"):
        if data.get(key):
            f = (base / str(data[key])).resolve()
            if not f.is_file():
                raise MtgraftError(f"task file {p}: {key} file not found: {f}")
            files[key] = f
    fmt = _format_of(str(files["train"]), data.get("format"), p)

    text_col, text_b_col = data.get("text_column", "text"), data.get("text_b_column")
    if "text_columns" in data:
        cols = data["text_columns"]
        if isinstance(cols, str):
            cols = [cols]
        if not isinstance(cols, list) or not 1 <= len(cols) <= 2:
            raise MtgraftError(f"task file {p}: text_columns must list one or two column names")
        text_col, text_b_col = cols[0], (cols[1] if len(cols) > 1 else None)
    source = LocalSource(train=str(files["train"]), test=str(files["test"]) if "test" in files else None,
                         format=fmt, text_column=str(text_col),
                         text_b_column=None if text_b_col is None else str(text_b_col),
                         label_column=str(data.get("label_column", "label")),
                         empty_labels=_empty_labels(data.get("empty_labels", "error"), p))
    pair = source.text_b_column is not None

    labels = data.get("labels")
    if labels is None:
        from mtgraft.tasks.sources import local_table_rows

        seen = {r[2] for f in files.values() for r in local_table_rows(source, f, report=False)}
        labels = sorted(seen)
        if len(labels) < 2:
            raise MtgraftError(f"task file {p}: the data has {len(labels)} distinct label(s); a task needs at least 2")
    elif not isinstance(labels, list):
        raise MtgraftError(f"task file {p}: labels must be a list")
    labels = [str(x) for x in labels]
    label_words = data.get("label_words")
    label_words = [str(x) for x in label_words] if isinstance(label_words, list) else (label_words or list(labels))

    spec_kw: dict[str, Any] = dict(
        name=data.get("name") or p.stem,
        description=data.get("description", f"local task from {p.name}"),
        source=source,
        text_fields=[source.text_column] + ([source.text_b_column] if pair else []),
        labels=labels,
        label_words=label_words,
        template=data.get("template") or (PAIR_TEMPLATE if pair else SENTIMENT_TEMPLATE),
        domain=data.get("domain", "local"),
        license_note=data.get("license_note", ""),
        offline=True,
        notes=data.get("notes", ""),
    )
    for key in ("test_fraction", "max_chars"):
        if key in data:
            spec_kw[key] = data[key]
    try:
        return TaskSpec(**spec_kw, spec_file=str(p.resolve()))
    except ValidationError as e:
        raise MtgraftError(format_validation_error(e, f"task file {p}")) from None
