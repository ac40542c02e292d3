"""Graft then register: ``mtgraft graft`` as one step of a workflow.

Grafting and the mask registry are independent parts; this workflow joins them: each SkillPatch a graft
writes is registered once it is in its final place, as a version linked to the graft's MLflow run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mtgraft.grafting import GraftConfig, GraftResult, OnWritten, run_graft
from mtgraft.registry import MaskRegistry


def graft_and_register(cfg: GraftConfig, show_progress: bool = True) -> list[GraftResult]:
    """Graft every task asked for, then register each written SkillPatch in the mask registry
    (unless ``cfg.do_register`` or ``cfg.track`` is off)."""
    return run_graft(cfg, show_progress, on_written=registrar(cfg.tracking_uri) if cfg.do_register and cfg.track
                     else None)


def registrar(tracking_uri: str | None) -> OnWritten:
    """A ``run_graft`` hook that registers a patch file as a version of the run that wrote it."""

    def register(path: Path, run_id: str | None) -> dict[str, Any]:
        r = MaskRegistry(tracking_uri).register_patch(path, run_id=run_id)
        return {"name": r.name, "version": r.version, "aliases": list(r.aliases)}

    return register
