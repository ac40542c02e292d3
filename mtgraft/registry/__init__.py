"""The mask registry: SkillPatches as versions of MLflow registered models (docs/registry.md).

``MaskRegistry(tracking_uri)`` registers, lists, shows, pulls, aliases and deletes patches;
``apply_patches`` composes patches onto their base model and saves a checkpoint.
"""

from __future__ import annotations

import os
from typing import Any

from mtgraft.registry.apply import apply_patches
from mtgraft.registry.naming import (
    BEST,
    LATEST,
    Ref,
    base_short_name,
    check_alias_name,
    model_name,
    parse_ref,
)
from mtgraft.registry.store import (
    ARTIFACT_DIR,
    EXPERIMENT,
    KIND,
    KIND_TAG,
    MaskRegistry,
    RegisteredMask,
    file_info,
    local_patch,
    resolve_patch_files,
    version_tags,
)


def register_patch(patch_path: str | os.PathLike, run_id: str | None = None, tracking_uri: str | None = None,
                   extra_tags: dict[str, Any] | None = None) -> RegisteredMask:
    """Register one patch file (what ``mtgraft graft`` calls unless ``--no-register``)."""
    return MaskRegistry(tracking_uri).register_patch(patch_path, run_id=run_id, extra_tags=extra_tags)


def list_masks(task: str | None = None, base: str | None = None, tracking_uri: str | None = None) -> list[dict[str, Any]]:
    """Registered SkillPatch versions, optionally of one task and/or base model."""
    return MaskRegistry(tracking_uri).list_masks(task=task, base=base)


def pull(ref: str, out: str | os.PathLike, tracking_uri: str | None = None) -> dict[str, Any]:
    """Download a registered patch to ``out`` after checking its sha256."""
    return MaskRegistry(tracking_uri).pull(ref, out)


__all__ = [
    "ARTIFACT_DIR",
    "BEST",
    "EXPERIMENT",
    "KIND",
    "KIND_TAG",
    "LATEST",
    "MaskRegistry",
    "Ref",
    "RegisteredMask",
    "apply_patches",
    "base_short_name",
    "check_alias_name",
    "file_info",
    "local_patch",
    "list_masks",
    "model_name",
    "parse_ref",
    "pull",
    "register_patch",
    "resolve_patch_files",
    "version_tags",
]
