"""Trainable parameters (docs/method.md §1) and optimisers."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mtgraft.errors import MtgraftError
from mtgraft.models import TaskModel


def set_trainable(model: TaskModel, freeze_embeddings: bool = True, freeze_head: bool = True,
                  bias_only: bool = False) -> list[str]:
    """Set ``requires_grad`` per docs/method.md §1; returns the names of the trainable parameters."""
    emb = set(model.embedding_param_names())
    lm_head = set(model.lm_head_param_names())
    graftable = set(model.graftable_names())
    names = []
    for n, p in model.named_parameters():
        if n.startswith("heads."):
            train = True  # a new task head always trains
        elif n in lm_head:
            train = not freeze_head
        elif n in emb:
            train = not freeze_embeddings
        elif n in graftable:
            train = (not bias_only) or n.endswith(".bias")
        else:
            train = False
        p.requires_grad_(train)
        if train:
            names.append(n)
    if not names:
        raise MtgraftError("nothing to train with these freezing options")
    return names


def _no_decay(name: str, p: torch.Tensor) -> bool:
    return p.ndim < 2 or name.endswith(".bias") or "norm" in name.lower()


def make_optimizer(model: nn.Module, optimizer: str, lr: float, weight_decay: float,
                   head_lr: float | None = None) -> torch.optim.Optimizer:
    """SGD or AdamW; no weight decay on biases and LayerNorm weights; optional head lr."""
    groups: dict[tuple[bool, bool], list[torch.Tensor]] = {}
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        key = (_no_decay(n, p), n.startswith("heads."))
        groups.setdefault(key, []).append(p)
    param_groups = []
    for (nd, is_head), ps in sorted(groups.items()):
        g: dict[str, Any] = {"params": ps, "weight_decay": 0.0 if nd else weight_decay}
        if is_head and head_lr:
            g["lr"] = head_lr
        param_groups.append(g)
    if optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=lr)
    if optimizer == "adamw":
        return torch.optim.AdamW(param_groups, lr=lr)
    raise MtgraftError(f"unknown optimizer '{optimizer}' (use sgd or adamw)")
