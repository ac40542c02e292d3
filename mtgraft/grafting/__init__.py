"""Grafting (docs/method.md §2): find a tiny region whose fine-tuned values, grafted onto the pretrained model,
recover the fine-tuned performance. ``run_graft`` runs every method at every sparsity and writes SkillPatches.

The package's face: ``config`` (:class:`GraftConfig`, the recipes), ``run`` (the steps of a graft),
``methods`` (the localisation methods) and ``space`` (the flat graftable body).
"""

from mtgraft.grafting.config import DEFAULT_METHODS, RECIPES, GraftConfig, data_settings
from mtgraft.grafting.methods import METHODS
from mtgraft.grafting.run import GraftResult, OnWritten, graft_task, run_graft
from mtgraft.grafting.space import GraftSpace, budget_k, topk_indices

__all__ = [
    "DEFAULT_METHODS",
    "METHODS",
    "RECIPES",
    "GraftConfig",
    "GraftResult",
    "GraftSpace",
    "OnWritten",
    "budget_k",
    "data_settings",
    "graft_task",
    "run_graft",
    "topk_indices",
]
