"""Fine-tuning (docs/method.md §1): the optimisers, a lean training loop and the train entry point.

The package's face: ``optim`` (trainable parameters, optimisers), ``distributed`` (mixed precision and data parallelism on accelerate),
``loop`` (batch streams and the training loop), ``single`` (``mtgraft train``), ``multitask`` (joint and
sequential runs; graft-based continual learning is the workflow ``mtgraft.workflows.continual``),
``strategies`` (continual-learning strategies of sequential runs) and ``catalog`` (those strategies as a table).
Names load on first use, so that listing the strategies (``mtgraft strategies``) does not load torch.
"""

from mtgraft.utils import lazy_face

_WHERE = {
    "DistContext": "distributed", "dist_context": "distributed", "is_main_process": "distributed",
    "launched_world_size": "distributed",
    "BatchStream": "loop", "EvalPoint": "loop", "LoopResult": "loop", "train_loop": "loop",
    "make_optimizer": "optim", "set_trainable": "optim",
    "TrainResult": "single", "task_infos": "single", "train": "single",
    "STRATEGIES": "catalog", "StrategyInfo": "catalog",
}
__all__ = sorted(_WHERE)
__getattr__, __dir__ = lazy_face(__name__, _WHERE)
