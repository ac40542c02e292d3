"""Data parallelism (``accelerate launch`` / ``torchrun``): where a process stands in a data-parallel run."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from mtgraft.errors import MtgraftError
from mtgraft.utils import resolve_device


@dataclass
class DistContext:
    """Where this process stands in a data-parallel run; inactive (one process) unless launched with several.

    Under ``accelerate launch --multi_gpu --num_processes N`` (or ``torchrun``) every process runs the same
    command: each takes its share of every global batch, DDP averages the gradients, every process
    evaluates alike (so all keep the same best state), and only the main process logs and writes files.
    """

    accelerator: Any | None = None
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

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` wrapped for data-parallel training (DDP) when active, else ``model`` itself.

        A model is wrapped once (later loops over it, e.g. the stages of a sequential run, reuse the wrapper).
        """
        if not self.active:
            return model
        if id(model) not in self._wrapped:
            self._wrapped[id(model)] = self.accelerator.prepare_model(model)
        return self._wrapped[id(model)]

    def shard(self, idx: list[int]) -> list[int]:
        """This process's share of a global batch (every ``world_size``-th example from ``rank``)."""
        if not self.active:
            return idx
        if len(idx) < self.world_size:
            raise MtgraftError(f"a batch of {len(idx)} examples cannot be split across {self.world_size} processes; "
                               f"use --batch-size of at least {self.world_size}")
        return idx[self.rank::self.world_size]


_DIST: DistContext | None = None


def launched_world_size() -> int:
    """Number of processes this one was launched with (``WORLD_SIZE`` set by accelerate/torchrun; 1 if none)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def dist_context(device: str = "auto") -> DistContext:
    """The process's :class:`DistContext` (an ``accelerate.Accelerator`` when launched with several processes).

    CPU-only processes (no CUDA, or ``device='cpu'``) use the gloo backend.
    """
    global _DIST
    if _DIST is not None:
        return _DIST
    if launched_world_size() <= 1:
        return DistContext(None)
    from accelerate import Accelerator, DistributedDataParallelKwargs

    cpu = device == "cpu" or not torch.cuda.is_available()
    # one head per task: a batch of one task leaves the other heads without gradients
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    _DIST = DistContext(Accelerator(cpu=cpu, kwargs_handlers=[ddp]))
    return _DIST


def is_main_process() -> bool:
    """True unless this is a non-main process of a data-parallel launch (print and write only on main)."""
    if launched_world_size() <= 1:
        return True
    return int(os.environ.get("RANK", "0")) == 0
