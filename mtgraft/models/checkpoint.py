"""Checkpoints: ``save_pretrained`` output plus task heads and ``mtgraft.json`` (what later stages need)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from safetensors.torch import load_file, save_file
from torch import nn

from mtgraft.errors import MtgraftError
from mtgraft.models.loading import load_backbone, load_tokenizer
from mtgraft.models.task_model import TaskInfo, TaskModel, build_task_model
from mtgraft.utils import atomic_dir, provenance

CHECKPOINT_META = "mtgraft.json"
HEADS_FILE = "task_heads.safetensors"


class CheckpointMeta(BaseModel):
    """The small JSON next to ``save_pretrained`` output: what later stages need to know."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())
    format: str = "mtgraft.checkpoint"
    format_version: int = 1
    model_type: str
    tasks: list[TaskInfo]
    pretrained: dict[str, Any]  # {"name": ..., "hash": ...}
    data: dict[str, Any] = {}
    mode: str = "single"  # single | joint | sequential | grafted
    order: list[str] | None = None
    train_config: dict[str, Any] = {}
    metrics: dict[str, Any] = {}
    mlflow_run_id: str | None = None
    provenance: dict[str, Any] = {}

    def task(self, name: str) -> TaskInfo:
        """The task entry named ``name`` (clear error if the checkpoint never saw it)."""
        for t in self.tasks:
            if t.name == name:
                return t
        have = ", ".join(t.name for t in self.tasks)
        raise MtgraftError(f"the checkpoint was trained on [{have}], not on task '{name}'")


def save_checkpoint(model: TaskModel, meta: CheckpointMeta, out: str | Path) -> Path:
    """Write ``save_pretrained`` output + task heads + ``mtgraft.json`` atomically into ``out``."""
    out = Path(out)
    meta = meta.model_copy(update={"provenance": meta.provenance or provenance()})
    with atomic_dir(out) as tmp:
        model.backbone.save_pretrained(tmp, safe_serialization=True)
        model.tokenizer.save_pretrained(tmp)
        if model.model_type == "head":
            heads = {n[len("heads."):]: p.detach().cpu().contiguous() for n, p in model.named_parameters()
                     if n.startswith("heads.")}
            save_file(heads, str(tmp / HEADS_FILE))
        (tmp / CHECKPOINT_META).write_text(meta.model_dump_json(indent=2))
    return out


def read_checkpoint_meta(path: str | Path) -> CheckpointMeta:
    """Read and validate a checkpoint folder's ``mtgraft.json``."""
    p = Path(path)
    f = p / CHECKPOINT_META
    if not p.is_dir():
        raise MtgraftError(f"checkpoint folder not found: {p}")
    if not f.is_file():
        raise MtgraftError(f"'{p}' is not an mtgraft checkpoint (no {CHECKPOINT_META}); train one with 'mtgraft train'")
    try:
        return CheckpointMeta.model_validate_json(f.read_text())
    except ValidationError as e:  # name what is wrong, not pydantic's "1 validation error for ..."
        detail = "; ".join((".".join(map(str, x["loc"])) + ": " if x["loc"] else "") + x["msg"] for x in e.errors()[:3])
        raise MtgraftError(f"corrupt checkpoint metadata {f}: {detail}") from None
    except ValueError as e:
        raise MtgraftError(f"corrupt checkpoint metadata {f}: {str(e).splitlines()[0]}") from None


def load_checkpoint(path: str | Path) -> tuple[TaskModel, CheckpointMeta]:
    """Load a checkpoint folder written by :func:`save_checkpoint`."""
    p = Path(path)
    meta = read_checkpoint_meta(p)
    tok = load_tokenizer(str(p))
    try:
        backbone = load_backbone(str(p), meta.model_type, pooler=any(t.pooling == "pooler" for t in meta.tasks))
    except MtgraftError as e:
        raise MtgraftError(f"corrupt or incomplete checkpoint {p}: {e}") from None
    except Exception as e:  # safetensors/torch errors on truncated weights
        raise MtgraftError(f"corrupt or incomplete checkpoint {p}: {str(e).splitlines()[0]}") from None
    heads = None
    if meta.model_type == "head":
        hf = p / HEADS_FILE
        try:
            state = load_file(str(hf))
        except Exception as e:
            raise MtgraftError(f"corrupt or incomplete checkpoint {p}: cannot read {HEADS_FILE} ({e})") from None
        heads = {}
        for t in meta.tasks:
            w, b = state.get(f"{t.name}.weight"), state.get(f"{t.name}.bias")
            if w is None or b is None:
                raise MtgraftError(f"corrupt checkpoint {p}: no head for task '{t.name}'")
            lin = nn.Linear(w.shape[1], w.shape[0])
            with torch.no_grad():
                lin.weight.copy_(w)
                lin.bias.copy_(b)
            heads[t.name] = lin
    model = TaskModel(backbone, meta.model_type, meta.tasks, tok,
                      pretrained_name=meta.pretrained.get("name", ""), heads=heads)
    return model, meta


def resolve_task(ref: str, meta: CheckpointMeta | None = None, what: str = "the checkpoint",
                 files: Iterable[str | None] = (), known: bool = False) -> Any:
    """The TaskSpec of ``ref``: a catalog name or a task YAML path as given, else the name of a local task that a
    checkpoint (``meta``) or a patch (``files``: its tasks' ``spec_file``) recorded with its task YAML.

    ``known``: ``ref`` is a task of what the caller read (a patch's), so a name not found is a local task.
    A task is known by its name wherever the checkpoint knows it (``mtgraft graft``/``eval --task mytask``
    after ``mtgraft train --task path/to/mytask.yaml``). A local task the checkpoint knows whose YAML is gone
    is one clear error; any other unknown name is the catalog's "unknown task …; did you mean" error.
    """
    from mtgraft.tasks import get_task
    from mtgraft.tasks.catalog import CATALOG
    from mtgraft.tasks.local import looks_like_path

    if ref in CATALOG or looks_like_path(ref):
        return get_task(ref)
    candidates = list(files)
    if meta is not None:
        known = known or any(t.name == ref for t in meta.tasks)
        candidates += [t.spec_file for t in meta.tasks if t.name == ref]
        candidates.append(((meta.model_extra or {}).get("task_sources") or {}).get(ref))
        candidates.append((meta.train_config or {}).get("task"))
    for cand in candidates:
        if isinstance(cand, str) and (cand in CATALOG or Path(cand).is_file()):
            spec = get_task(cand)
            if spec.name == ref:
                return spec
    if known or any(isinstance(c, str) for c in files):  # files: recorded for ``ref``
        raise MtgraftError(f"{what} is for the local task '{ref}', whose task YAML is not recorded or no longer "
                           f"exists: give --task PATH.yaml")
    return get_task(ref)


def load_pretrained_like(meta: CheckpointMeta, pretrained: str | None = None) -> TaskModel:
    """The pretrained model a checkpoint came from (same type, tasks and pooling, new heads)."""
    name = pretrained or meta.pretrained.get("name")
    if not name:
        raise MtgraftError("the checkpoint does not record its pretrained model; pass --pretrained")
    return build_task_model(name, meta.model_type, meta.tasks)


def json_dump(obj: Any) -> str:
    """Compact JSON for tags and params."""
    return json.dumps(obj, sort_keys=True, default=str)
