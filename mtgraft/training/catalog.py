"""The continual-learning strategies of sequential runs as one table: name, one-line description, reference,
what each keeps per task, whether it needs the task's identity at test time, and its options.

This module imports no torch, so that listing strategies (``mtgraft strategies``) and validating a config are
instant; ``mtgraft.training.strategies.make_strategy`` joins an entry with its implementation (``graft`` is
run by the workflow ``mtgraft.workflows.continual``, because training never imports grafting). A new strategy
is one entry here plus its class there.
"""

from __future__ import annotations

from dataclasses import dataclass

AVALANCHE = "https://avalanche-api.continualai.org/en/v0.6.0/training.html"


@dataclass(frozen=True)
class StrategyInfo:
    """A continual-learning strategy as listed."""

    name: str
    description: str
    reference: str
    keeps: str
    task_identity: bool
    options: tuple[str, ...] = ()
    default_lambda: float | None = None


STRATEGIES: dict[str, StrategyInfo] = {s.name: s for s in [
    StrategyInfo("naive", "fine-tune each task in turn from the previous stage's model (the lower bound)",
                 "https://arxiv.org/abs/1904.07734", "nothing beyond the model", False),
    StrategyInfo("ewc", "online EWC: CE + lambda * sum F (theta - theta*)^2 over the body; F = decay * F + "
                 "squared mini-batch gradients after each stage, divided by its largest entry",
                 "https://arxiv.org/abs/1612.00796 · online: https://arxiv.org/abs/1805.06370",
                 "one Fisher and one anchor copy of the body (shared by all tasks)", False,
                 ("strategy_lambda", "ewc_decay"), 10.0),
    StrategyInfo("l2", "CE + lambda * sum (theta - theta_prev)^2 over the body, theta_prev = previous stage's weights",
                 "https://arxiv.org/abs/1612.00796", "one anchor copy of the body", False, ("strategy_lambda",), 1.0),
    StrategyInfo("replay", "fixed-size buffer of earlier tasks' training examples (reservoir sampling); each step "
                 "adds the CE of a batch drawn uniformly from the buffer",
                 "https://arxiv.org/abs/1902.10486", "the buffered examples (token ids)", False, ("replay_size",)),
    StrategyInfo("lwf", "learning without forgetting: CE + lambda * sum_j KL(teacher_j || student_j) at "
                 "temperature T over the earlier tasks' heads on the current inputs; teacher = model at stage start",
                 "https://arxiv.org/abs/1606.09282", "nothing beyond the model (the teacher lives one stage)", False,
                 ("strategy_lambda", "lwf_temperature"), 1.0),
    StrategyInfo("packnet", "per-task binary masks on the body: a task trains only entries no earlier task owns, "
                 "then keeps the top mask_keep share of its moves (the rest reset); task i is evaluated with the "
                 "entries of tasks <= i", "https://arxiv.org/abs/1711.05769",
                 "an owner map of the body (1 byte per entry) and the model", True, ("mask_keep",)),
    StrategyInfo("graft", "naive training; each stage's task kept as a SkillPatch learned on that stage's model; "
                 "a task asked for by name runs on pretrained + its own patch, an unknown one on the union of all",
                 "https://arxiv.org/abs/2302.06600 · union: https://arxiv.org/abs/2408.13656",
                 "one SkillPatch per task (region values and head)", True,
                 ("graft_sparsity", "graft_method", "graft_recipe", "graft_updates")),
]}
