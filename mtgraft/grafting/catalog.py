"""The localisation methods as one table (mergekit style): name, one-line description, reference, whether it
learns from data, and the function in ``mtgraft.grafting.methods`` that selects its region.

This module imports no torch, so that listing methods (``mtgraft methods``) and validating a config are
instant; ``methods.get_method`` joins an entry with its implementation. A new method is one entry here plus
its select function.
"""

from __future__ import annotations

from dataclasses import dataclass

PAPER = "https://arxiv.org/abs/2302.06600"


@dataclass(frozen=True)
class MethodInfo:
    """A localisation method as listed: ``select`` names its function in ``mtgraft.grafting.methods``."""

    name: str
    description: str
    reference: str
    learned: bool
    select: str


METHODS: dict[str, MethodInfo] = {m.name: m for m in [
    MethodInfo("topk", "base patch alone: global top-k of |theta_ft - theta_pre| (dataless)", PAPER, False,
               "select_topk"),
    MethodInfo("random", "k entries of the graftable set drawn uniformly at random (seeded)", PAPER, False,
               "select_random"),
    MethodInfo("bias-only", "top-k |delta| among bias entries only (capped at the number of biases)",
               "https://arxiv.org/abs/2106.10199", False, "select_bias_only"),
    MethodInfo("saliency", "top-k of the task's integrated-gradients attribution -delta·mean grad L along "
               "theta_pre -> theta_ft (uses the task's training data, no mask learning)",
               "https://arxiv.org/abs/1703.01365", False, "select_saliency"),
    MethodInfo("graft", "learned binary graft: sigmoid mask around the base patch, GD on S (Panigrahi et al.)",
               PAPER, True, "learn_graft"),
]}
