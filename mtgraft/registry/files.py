"""REFs that may be local files: what ``show`` reports for a patch file, and REFs resolved to files."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mtgraft.errors import MtgraftError
from mtgraft.registry.naming import looks_like_path, model_name
from mtgraft.registry.records import ARTIFACT_DIR, SHA_TAG, row_from, version_tags
from mtgraft.registry.store import MaskRegistry
from mtgraft.utils import sha256_file


def file_info(path: str | os.PathLike) -> dict[str, Any]:
    """What ``show`` reports for a local patch file: the same fields and the tags it would be registered with."""
    from mtgraft.patches.patch import SkillPatch

    p = Path(path)
    patch = SkillPatch.load(p)
    h = patch.header
    sha = sha256_file(p)
    tags = version_tags(h, sha, f"{ARTIFACT_DIR}/{p.name}")
    out = row_from(model_name(h.task, h.base_model, h.base_hash), None, None, tags, [])
    out.update(ref=str(p), path=str(p), registered=False, tags=tags, metrics=h.metrics,
               lineage={"finetune_run_id": (h.finetuned or {}).get("mlflow_run_id"),
                        "finetuned_path": (h.finetuned or {}).get("path"),
                        "base_model": h.base_model, "base_hash": h.base_hash})
    return out


def local_patch(ref: str) -> Path | None:
    """The file a REF names if it is a local patch file; None for a registry reference;
    MtgraftError for something that looks like a path but does not exist."""
    p = Path(ref).expanduser()
    if p.is_file():
        return p
    if looks_like_path(ref) and "@" not in ref and not ref.startswith("models:/"):
        raise MtgraftError(f"patch file '{ref}' does not exist (nor is it a registry reference)")
    return None


@contextlib.contextmanager
def resolve_patch_files(refs: list[str], tracking_uri: str | None = None) -> Iterator[list[dict[str, Any]]]:
    """Yield one dict per REF (``path``, ``ref``, ``sha256``, ``registry``): local files as they are,
    registry entries downloaded (sha256-verified) into a temporary folder removed afterwards."""
    registry: MaskRegistry | None = None
    with tempfile.TemporaryDirectory(prefix="mtgraft-refs-") as tmp:
        out = []
        for i, ref in enumerate(refs):
            p = local_patch(ref)
            if p is not None:
                out.append({"ref": ref, "path": p, "sha256": sha256_file(p), "registry": False})
                continue
            if registry is None:
                registry = MaskRegistry(tracking_uri)
            dst = Path(tmp) / str(i)
            dst.mkdir()
            local, mv = registry.fetch(ref, dst)
            out.append({"ref": f"{mv.name}/{mv.version}", "path": local, "sha256": mv.tags[SHA_TAG],
                        "registry": True, "base_hash": mv.tags.get("mtgraft.base_hash")})
        yield out
