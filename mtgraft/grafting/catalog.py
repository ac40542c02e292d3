"""The localisation methods as one table (mergekit style): name, one-line description, reference, whether it
learns from data, and the function in ``mtgraft.grafting.methods`` that selects its region.

This module imports no torch, so that listing methods (``mtgraft methods``) and validating a config are
instant; ``methods.get_method`` joins an entry with its implementation. A new method is one entry here plus
its select function.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PAPER = "https://arxiv.org/abs/2302.06600"
LOCALIZE_AND_STITCH = "https://arxiv.org/abs/2408.13656"


@dataclass(frozen=True)
class MethodInfo:
    """A localisation method as listed: ``select`` names its function in ``mtgraft.grafting.methods``."""

    name: str
    description: str
    reference: str
    learned: bool
    select: str
    #: which of the run's shared learning settings (the recipe + explicit options) the method reads
    uses: tuple[str, ...] = ()
    #: the method's own settings and their defaults (``GraftConfig.method_options`` overrides them)
    defaults: dict[str, Any] = field(default_factory=dict)

    def settings(self, shared: dict[str, Any], options: dict[str, Any] | None = None) -> dict[str, Any]:
        """What the method runs with (and its SkillPatch header and MLflow record): the shared settings it
        reads, then its own defaults, then ``options``. Unknown option keys are an error (ValueError)."""
        options = dict(options or {})
        unknown = sorted(set(options) - set(self.defaults) - set(self.uses))
        if unknown:
            known = ", ".join(sorted(set(self.defaults) | set(self.uses))) or "none"
            raise ValueError(f"method '{self.name}' has no setting '{unknown[0]}' (its settings: {known})")
        out = {k: shared[k] for k in self.uses if k in shared}
        out.update(self.defaults)
        out.update(options)
        return out


#: The shared settings every mask learner after the paper's reads from the recipe.
_LEARNER = ("updates", "examples_per_update", "batch_size", "candidates", "patience", "init")
_GRAFT = ("updates", "lr", "sigmoid_bias", "examples_per_update", "batch_size", "budget", "candidates", "patience",
          "step_rule", "init")


METHODS: dict[str, MethodInfo] = {m.name: m for m in [
    MethodInfo("topk", "base patch alone: global top-k of |theta_ft - theta_pre| (dataless)", PAPER, False,
               "select_topk"),
    MethodInfo("random", "k entries of the graftable set drawn uniformly at random (seeded)", PAPER, False,
               "select_random"),
    MethodInfo("bias-only", "top-k |delta| among bias entries only (capped at the number of biases)",
               "https://arxiv.org/abs/2106.10199", False, "select_bias_only"),
    MethodInfo("saliency", "top-k of the task's integrated-gradients attribution -delta·mean grad L along "
               "theta_pre -> theta_ft (uses the task's training data, no mask learning)",
               "https://arxiv.org/abs/1703.01365", False, "select_saliency", defaults={"saliency_steps": 4}),
    MethodInfo("fisher", "top-k of delta² · diagonal empirical Fisher at theta_ft (mean squared per-example "
               "gradient of the task loss on its training data; no mask learning)",
               "https://arxiv.org/abs/2111.09832", False, "select_fisher", defaults={"fisher_examples": 256}),
    MethodInfo("grad-movement", "top-k of |delta · grad L(theta_ft)| on the task's training data (first-order "
               "Taylor estimate of reverting an entry; no mask learning)",
               "https://arxiv.org/abs/1611.06440", False, "select_grad_movement", defaults={"fisher_examples": 256}),
    MethodInfo("graft", "learned binary graft: sigmoid mask around the base patch, GD on S (Panigrahi et al.)",
               PAPER, True, "learn_graft", uses=_GRAFT),
    MethodInfo("graft-ste", "learned graft, region always exactly k: hard top-k of logits S over the candidates in "
               "the forward pass, straight-through sigmoid gradient (temperature annealed), Adam steps on S",
               "https://arxiv.org/abs/1308.3432", True, "learn_graft_ste", uses=_LEARNER,
               defaults={"lr": 0.1, "normalise": "global", "temperature_start": 1.0, "temperature_end": 0.1,
                         "init_margin": 1.0}),
    MethodInfo("stitch-l1", "Localize-and-Stitch's localisation: mask sigmoid(S) over the candidates, Adam on "
               "task loss + lambda·sum sigmoid(S)/k, then the top k of sigmoid(S)",
               LOCALIZE_AND_STITCH, True, "learn_stitch_l1", uses=_LEARNER,
               defaults={"lr": 0.1, "normalise": "global", "l1": 1e-4, "sigmoid_bias": 3.0}),
    MethodInfo("graft-rescaled", "NOT fine-tuned values: the top-k region by the init score with its movement scaled "
               "by one alpha, theta_pre + alpha·delta, alpha chosen on train+dev from a grid (stored in the patch)",
               "https://arxiv.org/abs/2311.03099", True, "select_rescaled", uses=("init",),
               defaults={"alphas": [1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0]}),
]}

#: The scores ``--init`` may pick the base patch and the candidates by (``auto``: saliency for multi-task
#: checkpoints, movement otherwise).
INITS = ("auto", "movement", "saliency", "fisher", "grad-movement")
