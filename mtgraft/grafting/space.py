"""The graft space: theta_pre and delta = theta_ft - theta_pre over the graftable set, as flat vectors.

A ``GraftSpace`` holds one working model (pretrained values everywhere except the fine-tuned task
head) and evaluates it with any graftable vector theta via ``torch.func.functional_call`` — no model
is rebuilt or copied per update, and no parameter names are matched per step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.func import functional_call

from mtgraft.errors import MtgraftError
from mtgraft.models import Encoded, TaskModel, collate, model_inputs
from mtgraft.utils import release_freed_memory


@dataclass
class GraftSpace:
    """Flat graftable space of a (pretrained, fine-tuned) pair sharing one working model."""

    model: TaskModel  # fine-tuned heads, pretrained values elsewhere
    names: list[str]
    shapes: list[tuple[int, ...]]
    sizes: list[int]
    pre: torch.Tensor  # [N]
    delta: torch.Tensor  # [N]
    base_hash: str
    device: torch.device
    context_hash: str | None = None  # the pretrained model's embeddings (and LM head): see TaskModel.context_hash
    finetuned_hash: str | None = None  # content_hash of the fine-tuned graftable tensors (identifies theta_ft)
    cache: dict[Any, Any] = field(default_factory=dict, repr=False)  # data-dependent scores, per space

    @property
    def numel(self) -> int:
        return int(self.pre.numel())

    @classmethod
    def build(cls, finetuned: TaskModel, pretrained: TaskModel, device: torch.device) -> GraftSpace:
        """Flatten the graftable tensors; reset every non-graftable, non-head tensor to pretrained."""
        names = finetuned.graftable_names()
        if names != pretrained.graftable_names():
            raise MtgraftError("the fine-tuned and pretrained models have different graftable parameters "
                               "(is --pretrained the model this checkpoint was fine-tuned from?)")
        ft = dict(finetuned.named_parameters())
        pre = dict(pretrained.named_parameters())
        for n in names:
            if ft[n].shape != pre[n].shape:
                raise MtgraftError(f"shape mismatch for {n}: fine-tuned {tuple(ft[n].shape)} vs pretrained "
                                   f"{tuple(pre[n].shape)}")
        base_hash, ft_hash = pretrained.base_hash(), finetuned.base_hash()
        shapes, sizes = [tuple(ft[n].shape) for n in names], [ft[n].numel() for n in names]
        with torch.no_grad():
            pre_flat = torch.cat([pre[n].detach().reshape(-1).float() for n in names]).to(device)
            delta = torch.cat([ft[n].detach().reshape(-1).float() for n in names]).to(device)
            delta.sub_(pre_flat)  # in place: no third full-size vector
            graftable = set(names)
            for n, p in finetuned.named_parameters():
                if n not in graftable and not n.startswith("heads.") and n in pre:
                    p.copy_(pre[n])  # embeddings / LM head: pretrained values (the graft only moves P)
        for p in finetuned.parameters():
            p.requires_grad_(False)
        finetuned.eval()
        finetuned.to(device)
        # every forward pass supplies the graftable tensors (functional_call), so the working model's own body
        # is never read: point it at theta_pre (views, no storage of their own) and free the fine-tuned copy
        for n, t in zip(names, torch.split(pre_flat, sizes), strict=True):
            ft[n].data = t.view(ft[n].shape) if ft[n].dtype == t.dtype else t.view(ft[n].shape).to(ft[n].dtype)
        return cls(finetuned, names, shapes, sizes, pre_flat, delta, base_hash, device,
                   context_hash=pretrained.context_hash(), finetuned_hash=ft_hash)

    # -- parameters -----------------------------------------------------------------------------
    def params(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views of a flat theta as the model's graftable tensors."""
        return {n: t.view(s) for n, t, s in zip(self.names, torch.split(theta, self.sizes), self.shapes, strict=True)}

    def theta_from_indices(self, idx: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """theta_pre + delta on ``idx`` (a binary graft); with ``scale`` alpha, theta_pre + alpha·delta there."""
        theta = self.pre.clone()
        idx = idx.to(self.device)
        theta[idx] += self.delta[idx] if scale == 1.0 else scale * self.delta[idx]
        return theta

    def finetuned_values(self, idx: torch.Tensor) -> torch.Tensor:
        """theta_pre + delta at the flat indices ``idx`` (the fine-tuned values a patch stores)."""
        idx = idx.to(self.device)
        return self.pre[idx] + self.delta[idx]

    def candidate_params(self, cand: torch.Tensor, values: torch.Tensor) -> dict[str, torch.Tensor]:
        """The graftable tensors theta_pre + ``values`` on the sorted flat indices ``cand``, built tensor by tensor:
        a tensor with no candidate is a view of theta_pre (no copy, no gradient). A backward pass from them
        reaches ``values`` (m entries) without a full-size gradient vector: each tensor's gradient is gathered
        at its candidates and freed. The same floats as ``params(theta_pre.index_add(0, cand, values))``."""
        offs = torch.as_tensor(np.append(self.offsets(), self.numel), device=cand.device)
        bounds = torch.searchsorted(cand, offs).tolist()
        out = {}
        for i, (n, t, shape) in enumerate(zip(self.names, torch.split(self.pre, self.sizes), self.shapes, strict=True)):
            lo, hi = bounds[i], bounds[i + 1]
            if lo == hi:
                out[n] = t.view(shape)
            else:
                out[n] = t.index_add(0, cand[lo:hi] - int(offs[i]), values[lo:hi]).view(shape)
        return out

    def loss_and_grad(self, cand: torch.Tensor, values: torch.Tensor,
                      batches: list[dict[str, Any]]) -> tuple[float, torch.Tensor]:
        """The task loss at theta_pre + ``values`` on ``cand`` (sorted flat indices), averaged over ``batches``, and
        its gradient with respect to ``values``: equal to ``theta.grad[cand]`` of a full-size leaf theta (one
        backward pass per batch, summed in the same order) at a fraction of the memory."""
        release_freed_memory()  # the last update's scoring vectors: not under this step's copies
        u = values.detach().clone().requires_grad_(True)
        total = 0.0
        for batch in batches:
            params = self.candidate_params(cand, u)
            logits = functional_call(self.model, params, args=(), kwargs=model_inputs(batch))
            loss = torch.nn.functional.cross_entropy(logits.float(), batch["labels"]) / len(batches)
            loss.backward()
            total += float(loss.detach())
            del params, logits, loss
            release_freed_memory()  # this batch's tensor copies, before the next batch makes its own
        assert u.grad is not None
        return total, u.grad

    def forward(self, theta: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        """Logits of the working model with graftable parameters ``theta``."""
        return functional_call(self.model, self.params(theta), args=(), kwargs=model_inputs(batch))

    @torch.no_grad()
    def predict(self, theta: torch.Tensor, enc: Encoded, batch_size: int = 64) -> np.ndarray:
        """Softmax probabilities of the model at ``theta`` on ``enc``."""
        from mtgraft.evaluation.predict import predict_probs

        release_freed_memory()
        params = self.params(theta)
        return predict_probs(self.model, enc, batch_size, self.device,
                             forward=lambda **kw: functional_call(self.model, params, args=(), kwargs=kw))

    # -- structure ------------------------------------------------------------------------------
    def offsets(self) -> np.ndarray:
        """Start offset of each graftable tensor in the flat space."""
        return np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(np.int64)

    def bias_indices(self) -> torch.Tensor:
        """Flat indices of every bias entry of the graftable set."""
        offs = self.offsets()
        parts = [torch.arange(o, o + s) for n, o, s in zip(self.names, offs, self.sizes, strict=True)
                 if n.endswith(".bias")]
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)

    def graftable_list(self) -> list[tuple[str, list[int]]]:
        """[name, shape] pairs (the SkillPatch header's ``graftable``)."""
        return [(n, list(s)) for n, s in zip(self.names, self.shapes, strict=True)]

    def batches(self, enc: Encoded, batch_size: int) -> list[dict[str, Any]]:
        """Fixed mini-batches (in order) of ``enc`` on the device."""
        pad = self.model.tokenizer.pad_token_id
        return [collate(enc, range(s, min(s + batch_size, len(enc))), pad, self.device)
                for s in range(0, len(enc), batch_size)]


def budget_k(sparsity: float, numel: int) -> int:
    """k = round(s · |P|), with clear errors for s outside (0, 1] and k = 0."""
    if not (0 < sparsity <= 1):
        raise MtgraftError(f"sparsity must be in (0, 1], got {sparsity:g}")
    k = int(round(sparsity * numel))
    if k == 0:
        raise MtgraftError(f"sparsity {sparsity:g} of {numel:,} graftable parameters is an empty region (k = 0); "
                           f"use at least {1 / numel:.1e}")
    return k


def kth_largest(s: torch.Tensor, k: int, chunk: int = 1 << 22) -> torch.Tensor:
    """The k-th largest value of the flat ``s`` (1 <= k <= numel), exactly; found chunk by chunk so that no
    full-size (value, index) copy is made (``torch.topk`` over all of a 100M-entry body at k = 1M allocates
    over a gigabyte). Every one of the k largest values is among its own chunk's k largest, so the k largest
    of the chunks' k largest are the k largest overall."""
    if s.numel() <= chunk:
        return torch.topk(s, k, sorted=False).values.min()
    best: torch.Tensor | None = None
    for part in torch.split(s, chunk):
        top = torch.topk(part, min(k, part.numel()), sorted=False).values
        pool = top if best is None else torch.cat([best, top])
        best = torch.topk(pool, min(k, pool.numel()), sorted=False).values if pool.numel() > k else pool
    assert best is not None and best.numel() == k
    return best.min()


def topk_indices(scores: torch.Tensor, k: int, tiebreak: torch.Tensor | None = None) -> torch.Tensor:
    """Sorted flat indices of the first ``k`` entries in the selection order (global, not per tensor).

    The selection order is one total order (docs/method.md §2, "Ties"): score descending, then ``tiebreak``
    descending (|delta| where the callers have it), then flat index ascending; NaN counts as -inf. It is
    computed exactly (comparisons only, no torch.topk choice among equal values), so the same scores give
    the same entries on any device, and the first k entries of it are always inside the first m >= k:
    the base patch is inside the candidate set.
    """
    n = scores.numel()
    if k >= n:
        return torch.arange(n, device=scores.device)
    s = scores.detach().reshape(-1)
    if bool(torch.isnan(s).any()):
        s = torch.nan_to_num(s, nan=-math.inf)
    cut = kth_largest(s, k)  # the k-th largest value: the same wherever it is computed
    above = torch.nonzero(s > cut).reshape(-1)
    tied = torch.nonzero(s == cut).reshape(-1)  # ascending flat index
    need = k - above.numel()
    if tiebreak is not None and tied.numel() > need:
        t = torch.nan_to_num(tiebreak.detach().reshape(-1)[tied], nan=-math.inf)
        tied = tied[torch.sort(-t, stable=True).indices]  # tiebreak descending; equal ones keep index order
    return torch.sort(torch.cat([above, tied[:need]])).values
