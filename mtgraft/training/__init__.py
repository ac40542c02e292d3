"""Fine-tuning (docs/method.md §1): the optimisers, a lean training loop and the train entry point.

The package's face: ``optim`` (trainable parameters, optimisers), ``distributed`` (mixed precision and data parallelism on accelerate),
``loop`` (batch streams and the training loop), ``single`` (``mtgraft train``) and ``multitask`` (joint and
sequential runs; graft-based continual learning is the workflow ``mtgraft.workflows.continual``).
"""

from mtgraft.training.distributed import DistContext, dist_context, is_main_process, launched_world_size
from mtgraft.training.loop import BatchStream, EvalPoint, LoopResult, train_loop
from mtgraft.training.optim import make_optimizer, set_trainable
from mtgraft.training.single import TrainResult, task_infos, train

__all__ = [
    "BatchStream",
    "DistContext",
    "EvalPoint",
    "LoopResult",
    "TrainResult",
    "dist_context",
    "is_main_process",
    "launched_world_size",
    "make_optimizer",
    "set_trainable",
    "task_infos",
    "train",
    "train_loop",
]
