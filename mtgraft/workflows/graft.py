"""Graft then register: ``mtgraft graft`` as one step of a workflow."""

from __future__ import annotations

from mtgraft.grafting import GraftConfig, GraftResult, run_graft


def graft_and_register(cfg: GraftConfig, show_progress: bool = True) -> list[GraftResult]:
    """Graft every task asked for, then register each written SkillPatch in the mask registry."""
    return run_graft(cfg, show_progress)
