"""Prediction on encoded examples and the metrics of one set of predictions (layer 3).

Training, grafting and analysis all score models through these functions, so that a number means the same
thing wherever it appears (docs/method.md §3).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from mtgraft.errors import MtgraftError
from mtgraft.evaluation.metrics import classification_metrics
from mtgraft.models import Encoded, collate, model_inputs


def check_precision(device: torch.device, precision: str) -> None:
    """Refuse, in one line, a ``precision`` that cannot run on ``device`` (fp16 off CUDA)."""
    if precision not in ("fp32", "bf16", "fp16"):
        raise MtgraftError(f"unknown precision '{precision}' (use fp32, bf16 or fp16)")
    if precision == "fp16" and device.type != "cuda":
        raise MtgraftError(f"--precision fp16 needs a CUDA GPU (fp16 with gradient scaling does not run on "
                           f"the {device.type.upper()}); use --precision bf16 or fp32 there")


def autocast_ctx(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Mixed precision context for ``precision`` in (fp32, bf16, fp16): what accelerate's autocast enters."""
    check_precision(device, precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def predict_probs(model: nn.Module, enc: Encoded, batch_size: int = 64, device: torch.device | str = "cpu",
                  precision: str = "fp32", forward: Callable[..., torch.Tensor] | None = None) -> np.ndarray:
    """Softmax probabilities [N, n_labels] of ``model`` on ``enc`` (batches sorted by length).

    ``forward`` replaces ``model(**inputs)`` (used by grafting to run with other parameters).
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    order = sorted(range(len(enc)), key=lambda i: len(enc.input_ids[i]))
    out = np.zeros((len(enc), 0), dtype=np.float32)
    chunks: list[np.ndarray] = []
    pad = model.tokenizer.pad_token_id
    fwd = forward or (lambda **kw: model(**kw))
    with autocast_ctx(device, precision):
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            batch = collate(enc, idx, pad, device)
            logits = fwd(**model_inputs(batch)).float()
            chunks.append(torch.softmax(logits, dim=-1).cpu().numpy())
    if chunks:
        probs = np.concatenate(chunks)
        out = np.empty_like(probs)
        out[np.asarray(order)] = probs
    if was_training:
        model.train()
    return out


def evaluate_probs(probs: np.ndarray, labels: list[int] | np.ndarray, reference: np.ndarray | None = None,
                   n_labels: int | None = None) -> dict[str, Any]:
    """Accuracy, macro-F1, ECE (10 bins), Brier (and agreement with ``reference`` predictions)."""
    labels = np.asarray(labels)
    kw: dict[str, Any] = {}
    if probs.shape[1] == 2:
        kw["positive_label"] = 1
    return classification_metrics(probs, labels, reference_preds=reference, n_bins=10, **kw)


def accuracy(probs: np.ndarray, labels: list[int] | np.ndarray) -> float:
    """Plain accuracy (fast path used inside loops)."""
    return float((probs.argmax(1) == np.asarray(labels)).mean()) if len(labels) else float("nan")
