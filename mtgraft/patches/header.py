"""The JSON header of a SkillPatch: what the patch is, which base it belongs to, how it was made."""

from __future__ import annotations

import functools
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mtgraft.errors import MtgraftError

FORMAT = "mtgraft.skillpatch"
FORMAT_VERSION = 1
#: The version of a file whose region is rescaled (``scale`` alpha ≠ 1): a version-1 reader would apply its
#: values unscaled, so it must refuse the file (docs/skillpatch-format.md, "Versioning").
SCALED_FORMAT_VERSION = 2
#: The versions this mtgraft reads.
READ_VERSIONS = (FORMAT_VERSION, SCALED_FORMAT_VERSION)
#: Key of the JSON header in the safetensors metadata.
HEADER_KEY = "mtgraft_header"


@functools.lru_cache(maxsize=1)
def _code_version() -> tuple[str, str | None]:
    import mtgraft
    from mtgraft.utils import git_revision

    return mtgraft.__version__, git_revision()


def code_version() -> dict[str, Any]:
    """mtgraft's version and git revision (read once per process), as recorded in a patch header."""
    version, rev = _code_version()
    return {"mtgraft": version, "git_revision": rev}


def short_hash(h: str, n: int = 12) -> str:
    """``sha256:0123456789ab…`` — a content hash shortened for messages."""
    algo, _, hexd = h.partition(":")
    if not hexd:
        return h[:n] + "…"
    return f"{algo}:{hexd[:n]}…"


class PatchHeader(BaseModel):
    """Header of a SkillPatch (see docs/skillpatch-format.md). Unknown extra keys are kept."""

    model_config = ConfigDict(extra="allow", protected_namespaces=(), validate_assignment=True)

    format: Literal["mtgraft.skillpatch"] = FORMAT
    format_version: int = FORMAT_VERSION
    base_model: str = Field(description="base (pretrained) model name or path, as given")
    base_hash: str = Field(description="content_hash of the base model's graftable tensors, canonical order")
    context_hash: str | None = Field(
        None, description="content_hash of the base's other tensors the forward pass uses (embeddings; the LM "
                          "head of prompt/causal models); checked on apply when present (older patches lack it)")
    graftable: list[tuple[str, list[int]]] = Field(
        description="[name, shape] of every graftable tensor, canonical order: the global flat index space")
    graftable_size: int = Field(0, ge=0, description="total entries of the graftable tensors")
    task: str | list[str]
    tasks_info: dict[str, dict[str, Any]] = Field(default_factory=dict)
    model_type: Literal["head", "prompt", "causal"]
    method: str
    method_settings: dict[str, Any] = Field(default_factory=dict)
    scale: float | None = Field(
        None, description="alpha of a rescaled region: applying writes theta_pre + alpha·(val − theta_pre) on the "
                          "region; None (absent, every patch before issue 15) = 1, the fine-tuned values")
    sparsity_requested: float | None = None
    region_size: int = Field(0, ge=0, description="grafted entries in the graftable body")
    sparsity: float = Field(0.0, ge=0.0, le=1.0,
                            description="region_size / graftable_size (the task head is always grafted, not counted)")
    head_params: int = Field(0, ge=0)
    seed: int | None = None
    data: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    finetuned: dict[str, Any] = Field(default_factory=dict)
    code_version: dict[str, Any] = Field(default_factory=code_version)
    values_dtype: str = "float32"
    payload_hash: str | None = Field(None, description="content_hash of the stored tensors (set on save)")

    @model_validator(mode="before")
    @classmethod
    def _no_wall_clock(cls, data: Any) -> Any:
        # files before issue 13 carried a creation time; it is dropped on read so that the same inputs and
        # seeds give byte-identical files (docs/skillpatch-format.md, "Reproducibility")
        if isinstance(data, dict) and "created_at" in data:
            data = {k: v for k, v in data.items() if k != "created_at"}
        return data

    @field_validator("base_hash", "context_hash")
    @classmethod
    def _hash(cls, v: str | None) -> str | None:
        if v is not None and (":" not in v or not v.split(":", 1)[1]):
            raise ValueError("must look like 'sha256:<hex>'")
        return v

    @field_validator("scale")
    @classmethod
    def _scale(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError(f"scale must be a finite number, got {v}")
        return None if v == 1.0 else v

    @field_validator("graftable")
    @classmethod
    def _graftable(cls, v: list[tuple[str, list[int]]]) -> list[tuple[str, list[int]]]:
        seen: set[str] = set()
        for name, shape in v:
            if name in seen:
                raise ValueError(f"tensor '{name}' listed twice")
            seen.add(name)
            if any(d < 0 for d in shape):
                raise ValueError(f"tensor '{name}' has a negative dimension {shape}")
        return v

    @field_validator("task")
    @classmethod
    def _task(cls, v: str | list[str]) -> str | list[str]:
        if (isinstance(v, str) and not v) or (isinstance(v, list) and not v):
            raise ValueError("task must not be empty")
        return v

    @model_validator(mode="after")
    def _sizes(self) -> PatchHeader:
        total = sum(math.prod(shape) for _, shape in self.graftable)
        if self.graftable_size == 0:
            # set without re-validating (validate_assignment would recurse)
            self.__dict__["graftable_size"] = total
        elif self.graftable_size != total:
            raise ValueError(f"graftable_size {self.graftable_size} != sum of graftable shapes {total}")
        if self.region_size > total:
            raise ValueError(f"region_size {self.region_size} exceeds graftable_size {total}")
        if self.scale is not None and self.format_version != SCALED_FORMAT_VERSION:
            self.__dict__["format_version"] = SCALED_FORMAT_VERSION  # a version-1 reader must refuse it
        return self

    @property
    def tasks(self) -> list[str]:
        """The task(s) as a list (a union patch has several)."""
        return [self.task] if isinstance(self.task, str) else list(self.task)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Graftable tensor name -> shape, canonical order."""
        return {name: tuple(shape) for name, shape in self.graftable}

    def offsets(self) -> dict[str, int]:
        """Graftable tensor name -> offset of its first entry in the global flat index space."""
        out, off = {}, 0
        for name, shape in self.graftable:
            out[name] = off
            off += math.prod(shape)
        return out

    def to_json_dict(self) -> dict[str, Any]:
        """The header as plain JSON-able data (what is written to the file)."""
        return self.model_dump(mode="json")


def make_header(header: dict[str, Any] | PatchHeader, **updates: Any) -> PatchHeader:
    """Validate ``header`` (a dict or a PatchHeader) with ``updates`` applied; MtgraftError if invalid."""
    data = header.model_dump() if isinstance(header, PatchHeader) else dict(header)
    data.update(updates)
    try:
        return PatchHeader(**data)
    except ValidationError as e:
        from mtgraft.config import format_validation_error

        raise MtgraftError(format_validation_error(e, "SkillPatch header")) from None
