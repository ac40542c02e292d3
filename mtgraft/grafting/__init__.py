"""Grafting (docs/method.md §2): find a tiny region whose fine-tuned values, grafted onto the pretrained model,
recover the fine-tuned performance. ``run_graft`` runs every method at every sparsity and writes SkillPatches.

The package's face: ``config`` (:class:`GraftConfig`, the recipes), ``catalog`` (the methods as a table),
``run`` (the steps of a graft), ``methods`` (the methods' select functions) and ``space`` (the flat graftable
body). Names load on first use, so that listing methods or reading a config does not load torch.
"""

from mtgraft.utils import lazy_face

_WHERE = {
    "DEFAULT_METHODS": "config", "RECIPES": "config", "GraftConfig": "config", "data_settings": "config",
    "METHODS": "catalog", "MethodInfo": "catalog",
    "GraftResult": "run", "OnWritten": "run", "graft_task": "run", "run_graft": "run",
    "GraftSpace": "space", "budget_k": "space", "topk_indices": "space",
}
__all__ = sorted(_WHERE)
__getattr__, __dir__ = lazy_face(__name__, _WHERE)
