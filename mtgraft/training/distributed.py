"""Mixed precision and data parallelism on ``accelerate``: one ``Accelerator`` per run, in one process or many.

Every run (``mtgraft train``, ``train-multitask``) trains through an ``Accelerator(mixed_precision=...)``:
its prepared model (DDP when launched with several processes; accelerate's autocast with bf16/fp16), its
prepared optimizer, ``backward`` (gradient scaling with fp16), ``clip_grad_norm_`` (unscales first),
``split_between_processes`` (each process's share of a global batch and of an evaluation set) and
``gather_for_metrics`` (the predictions of all shares, on every process). In one process with fp32 these are
no-ops around the same torch calls, so results stay bit for bit what they were (docs/multitask.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from mtgraft.errors import MtgraftError
from mtgraft.evaluation.predict import check_precision, predict_probs
from mtgraft.models import Encoded
from mtgraft.utils import resolve_device

MIXED = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}  # --precision -> accelerate's mixed_precision


@dataclass
class DistContext:
    """Where this process stands in a run and the run's ``Accelerator`` (None: a probe that only answers ranks).

    Under ``accelerate launch --multi_gpu --num_processes N`` (or ``torchrun``) every process runs the same
    command: each takes its share of every global batch, DDP averages the gradients, each evaluates its share
    of a set and gathers all predictions (so all keep the same best state), and only the main process logs
    and writes files.
    """

    accelerator: Any | None = None
    precision: str = "fp32"
    _wrapped: dict[int, nn.Module] = field(default_factory=dict, repr=False)

    @property
    def world_size(self) -> int:
        return self.accelerator.num_processes if self.accelerator is not None else 1

    @property
    def rank(self) -> int:
        return self.accelerator.process_index if self.accelerator is not None else 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, requested: str) -> torch.device:
        """The accelerator's device when active, else ``resolve_device(requested)``."""
        return self.accelerator.device if self.active else resolve_device(requested)

    def wait(self) -> None:
        """Barrier across processes (no-op in a single process)."""
        if self.active:
            self.accelerator.wait_for_everyone()

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[nn.Module, Any]:
        """The prepared model (DDP when active; autocast with bf16/fp16) and the prepared optimizer.

        A model is prepared once (later loops over it, e.g. the stages of a sequential run, reuse it). The
        model stays where the caller put it (``device_placement=False``).
        """
        if id(model) not in self._wrapped:
            self._wrapped[id(model)] = self.accelerator.prepare_model(model)
        return self._wrapped[id(model)], self.accelerator.prepare_optimizer(optimizer)

    def share(self, idx: list[int]) -> list[int]:
        """This process's share of a global batch (``split_between_processes``: consecutive, sizes differ by ≤ 1)."""
        if len(idx) < self.world_size:
            raise MtgraftError(f"a batch of {len(idx)} examples cannot be split across {self.world_size} processes; "
                               f"use --batch-size of at least {self.world_size}")
        with self.accelerator.split_between_processes(idx) as mine:
            return list(mine)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, n_global: int) -> torch.Tensor:
        """Cross-entropy whose gradient, averaged by DDP over the processes, is that of the global-batch mean.

        One process: the plain mean. N processes: the share's sum × N / (global batch size), so that shares of
        unequal size (a batch of 3 on 2 processes) still weigh every example alike. accelerate has no primitive
        for this: its even-batch options pad a share by repeating examples, which would count them twice.
        """
        if not self.active:
            return nn.functional.cross_entropy(logits.float(), labels)
        return nn.functional.cross_entropy(logits.float(), labels, reduction="sum") * (self.world_size / n_global)

    def predict(self, model: nn.Module, enc: Encoded, device: torch.device) -> np.ndarray:
        """``predict_probs`` of ``model`` on ``enc``; when active each process predicts its share and all gather.

        Every process gets the whole [N, n_labels] array (in ``enc``'s order), so all take the same decisions.
        """
        if not self.active or len(enc) == 0:
            return predict_probs(model, enc, 64, device, self.precision)
        with self.accelerator.split_between_processes(list(range(len(enc)))) as mine:
            part = predict_probs(model, take(enc, list(mine)), 64, device, self.precision)
        parts = self.accelerator.gather_for_metrics([part], use_gather_object=True)
        return np.concatenate([p for p in parts if len(p)])


def take(enc: Encoded, idx: list[int]) -> Encoded:
    """The examples ``idx`` of ``enc``."""
    def pick(xs: list[Any] | None) -> Any:
        return [xs[i] for i in idx] if xs else xs

    return Encoded(enc.task, pick(enc.input_ids), pick(enc.token_type_ids), pick(enc.labels), pick(enc.positions))


_DIST: DistContext | None = None


def launched_world_size() -> int:
    """Number of processes this one was launched with (``WORLD_SIZE`` set by accelerate/torchrun; 1 if none)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def make_accelerator(device: str, precision: str) -> Any:
    """A fresh ``Accelerator`` for a run on ``device`` with ``precision`` (fp16 off CUDA is refused here).

    CPU-only processes (no CUDA, or ``device='cpu'``) of a launch use the gloo backend. accelerate keeps its
    settings in process-wide state; a run resets them (keeping a launch's process group), so that runs of
    different precisions can follow each other in one process.
    """
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from accelerate.state import AcceleratorState, GradientState

    launched = launched_world_size() > 1
    if launched:
        cpu = device == "cpu" or not torch.cuda.is_available()
    else:
        cpu = resolve_device(device).type == "cpu"
    check_precision(torch.device("cpu" if cpu else "cuda"), precision)
    AcceleratorState._reset_state(reset_partial_state=not launched)
    GradientState._reset_state()
    # one head per task: a batch of one task leaves the other heads without gradients
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    return Accelerator(cpu=cpu, mixed_precision=MIXED[precision], device_placement=False, kwargs_handlers=[ddp])


def dist_context(device: str = "auto", precision: str | None = None) -> DistContext:
    """The run's :class:`DistContext`; ``precision`` given: a new one with a fresh ``Accelerator``.

    Without ``precision`` it is the current run's context (after a run, e.g. to ask whether this process is
    the main one), or a probe that only answers ranks.
    """
    global _DIST
    launched = launched_world_size() > 1
    if precision is not None:
        ctx = DistContext(make_accelerator(device, precision), precision)
        if launched:  # a single process keeps nothing between runs (the context holds the run's model)
            _DIST = ctx
        return ctx
    if not launched:
        return DistContext(None)
    if _DIST is None:
        _DIST = DistContext(make_accelerator(device, "fp32"))
    return _DIST


def is_main_process() -> bool:
    """True unless this is a non-main process of a data-parallel launch (print and write only on main)."""
    if launched_world_size() <= 1:
        return True
    return int(os.environ.get("RANK", "0")) == 0
