"""The localisation methods' implementations: one select function per entry of ``grafting.catalog.METHODS``."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mtgraft.errors import MtgraftError
from mtgraft.grafting.catalog import METHODS
from mtgraft.grafting.space import GraftSpace, topk_indices
from mtgraft.models import Encoded


@dataclass
class SelectContext:
    """What a method may use: the space, the budget, data for learned methods, settings, a seed."""

    space: GraftSpace
    k: int
    train: Encoded | None = None
    dev: Encoded | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    progress: Callable[[int, int, dict[str, Any]], None] | None = None
    state: dict[str, Any] | None = None  # resume state of a learned method
    checkpoint: Callable[[dict[str, Any]], None] | None = None


@dataclass
class Selection:
    """A region: sorted flat indices, plus what the method reports (history, timings)."""

    indices: torch.Tensor
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Method:
    """A localisation method."""

    name: str
    description: str
    reference: str
    learned: bool
    select: Callable[[SelectContext], Selection]


def get_method(name: str) -> Method:
    """A method by name: its catalog entry joined with its select function (clear error listing the others)."""
    if name not in METHODS:
        raise MtgraftError(f"unknown method '{name}' (available: {', '.join(METHODS)})")
    info = METHODS[name]
    return Method(info.name, info.description, info.reference, info.learned, globals()[info.select])


# ---------------------------------------------------------------------------------------------
# Data-free baselines


def select_topk(ctx: SelectContext) -> Selection:
    return Selection(topk_indices(ctx.space.delta.abs(), ctx.k).cpu())


def task_saliency(space: GraftSpace, enc: Encoded, steps: int = 4, batch_size: int = 8) -> torch.Tensor:
    """Integrated-gradients attribution of the task's loss change to each graftable entry.

    score_i = -delta_i · mean_j dL/dtheta_i(theta_pre + a_j·delta), a_j = (j + 1/2)/steps (midpoint rule):
    by the fundamental theorem of calculus the scores sum to about L(theta_pre) - L(theta_ft), and a large
    score marks an entry whose fine-tuned value lowers *this task's* loss. Unlike |delta|, it differs
    between the tasks of one jointly fine-tuned model (each task has its own data and head).
    """
    if enc is None or len(enc) == 0:
        raise MtgraftError("task saliency needs training examples")
    key = ("saliency", id(enc), steps, batch_size)  # the same task data for every sparsity and method
    hit = space.cache.get(key)
    if hit is not None and hit[0] is enc:
        return hit[1]
    batches = space.batches(enc, batch_size)
    total = torch.zeros_like(space.pre)
    for j in range(steps):
        a = (j + 0.5) / steps
        theta = (space.pre + a * space.delta).requires_grad_(True)
        for batch in batches:
            logits = space.forward(theta, batch)
            loss = torch.nn.functional.cross_entropy(logits.float(), batch["labels"]) / (len(batches) * steps)
            loss.backward()
        total += theta.grad.detach()
    scores = -(total * space.delta)
    space.cache[key] = (enc, scores)
    return scores


def base_scores(ctx: SelectContext) -> torch.Tensor:
    """The scores that pick the base patch and the candidates: |delta| ('movement', the paper) or the
    task's integrated-gradients attribution ('saliency')."""
    init = ctx.settings.get("init", "movement")
    if init == "movement":
        return ctx.space.delta.abs()
    if init == "saliency":
        return _saliency_scores(ctx)
    raise MtgraftError(f"unknown init '{init}' (movement | saliency)")


def _saliency_scores(ctx: SelectContext) -> torch.Tensor:
    return task_saliency(ctx.space, ctx.train, int(ctx.settings.get("saliency_steps", 4)),
                         int(ctx.settings.get("batch_size", 8)))


def select_saliency(ctx: SelectContext) -> Selection:
    return Selection(topk_indices(_saliency_scores(ctx), ctx.k, ctx.space.delta.abs()).cpu())


def select_random(ctx: SelectContext) -> Selection:
    rng = np.random.default_rng(ctx.seed)
    idx = rng.choice(ctx.space.numel, size=min(ctx.k, ctx.space.numel), replace=False)
    return Selection(torch.from_numpy(np.sort(idx).astype(np.int64)))


def select_bias_only(ctx: SelectContext) -> Selection:
    bias = ctx.space.bias_indices()
    if bias.numel() == 0:
        raise MtgraftError("the model has no bias parameters in its graftable set (bias-only is undefined)")
    k = min(ctx.k, bias.numel())
    mags = ctx.space.delta[bias.to(ctx.space.device)].abs().cpu()
    chosen = bias[topk_indices(mags, k)]  # bias indices ascend, so ties go to the lower flat index
    return Selection(chosen, {"capped_at_bias_count": k < ctx.k})



# ---------------------------------------------------------------------------------------------
# The learned graft (docs/method.md §2)


def _score(space: GraftSpace, theta: torch.Tensor, encs: list[Encoded]) -> dict[str, float]:
    accs, correct, total = {}, 0, 0
    for name, enc in zip(("train", "dev"), encs, strict=False):
        if enc is None or len(enc) == 0:
            continue
        probs = space.predict(theta, enc)
        ok = int((probs.argmax(1) == np.asarray(enc.labels)).sum())
        accs[name] = ok / len(enc)
        correct += ok
        total += len(enc)
    accs["score"] = correct / total if total else float("nan")
    return accs


def learn_graft(ctx: SelectContext) -> Selection:
    """Learn the binary graft by gradient descent on S (sigmoid parametrisation around the base patch).

    Settings: ``updates``, ``lr``, ``sigmoid_bias``, ``examples_per_update``, ``batch_size``,
    ``budget`` ('strict' = exactly k entries by learned scores, 'free' = round(gamma) as the reference),
    ``candidates`` (None = every graftable entry; an int c = only the top c·k entries by |delta| get a
    mask parameter), ``patience`` (stop after this many updates without a better train+dev score),
    ``step_rule`` ('gd' = plain gradient descent, the reference; 'normalized' = step of lr·g/max|g|),
    ``init`` ('movement' = base patch and candidates by |delta|, the paper; 'saliency' = by the task's
    integrated-gradients attribution, which separates the tasks of one jointly fine-tuned model).
    """
    s = ctx.settings
    space, k = ctx.space, ctx.k
    updates = int(s.get("updates", 100))
    lr = float(s.get("lr", 1e7))
    b = float(s.get("sigmoid_bias", 10.0))
    n_ex = int(s.get("examples_per_update", 1024))
    bs = int(s.get("batch_size", 8))
    budget = s.get("budget", "strict")
    cand_factor = s.get("candidates")
    patience = s.get("patience")
    step_rule = s.get("step_rule", "gd")
    if ctx.train is None or len(ctx.train) == 0:
        raise MtgraftError("the learned graft needs training examples")
    dev = space.device
    scores, mags = base_scores(ctx), space.delta.abs()
    # base patch and candidates: the first k and the first m >= k of one selection order (so base ⊆ candidates)
    base_idx = topk_indices(scores, k, mags)
    if cand_factor:
        m = min(space.numel, max(k, int(math.ceil(float(cand_factor) * k))))
        cand = topk_indices(scores, m, mags)
    else:
        cand = torch.arange(space.numel, device=dev)
    base_c = torch.zeros(cand.numel(), device=dev)
    base_c[torch.isin(cand, base_idx.to(dev))] = 1.0
    delta_c = space.delta[cand]
    mags_c = delta_c.abs()
    gen = torch.Generator().manual_seed(ctx.seed)
    S = torch.rand(cand.numel(), generator=gen).to(dev)
    # a fixed subset of at most n_ex training examples, in mini-batches of bs
    train = ctx.train
    if len(train) > n_ex:
        sel = torch.randperm(len(train), generator=torch.Generator().manual_seed(ctx.seed))[:n_ex].tolist()
        train = Encoded(train.task, [train.input_ids[i] for i in sel],
                        [train.token_type_ids[i] for i in sel] if train.token_type_ids else None,
                        [train.labels[i] for i in sel], [train.positions[i] for i in sel] if train.positions else [])
    batches = space.batches(train, bs)

    def gamma_of(S_: torch.Tensor) -> torch.Tensor:
        return base_c + (1 - 2 * base_c) * torch.sigmoid(S_ - b)

    def binarise(S_: torch.Tensor) -> torch.Tensor:
        g = gamma_of(S_)
        if budget == "strict":
            # exactly k entries, the first k in the selection order (gamma desc, |delta| desc, index asc);
            # cand ascends, so positions in it order like flat indices and the result stays sorted
            return cand[topk_indices(g, min(k, cand.numel()), mags_c)]
        return cand[g >= 0.5]

    history: list[dict[str, Any]] = []
    st = ctx.state or {}
    if st:
        S = st["S"].to(dev)
        start = st["step"] + 1
        best = st["best"]
        best_idx = st["best_idx"].to(dev)
        history = st["history"]
        since_best = st.get("since_best", 0)
    else:
        t0 = time.perf_counter()
        idx0 = binarise(S)
        sc = _score(space, space.theta_from_indices(idx0), [ctx.train, ctx.dev])
        history.append({"update": 0, **sc, "size": int(idx0.numel()), "seconds": time.perf_counter() - t0})
        best, best_idx, since_best, start = sc["score"], idx0, 0, 1
        if ctx.progress:
            ctx.progress(0, updates, history[-1])
    for step in range(start, updates + 1):
        t0 = time.perf_counter()
        grad_S = grad_S_closed_form(space, S, cand, base_c, b, batches)
        if step_rule == "normalized":
            S = S - lr * grad_S / (grad_S.abs().max() + 1e-30)
        else:
            S = S - lr * grad_S
        idx = binarise(S)
        sc = _score(space, space.theta_from_indices(idx), [ctx.train, ctx.dev])
        history.append({"update": step, **sc, "size": int(idx.numel()), "seconds": time.perf_counter() - t0})
        if sc["score"] > best:
            best, best_idx, since_best = sc["score"], idx, 0
        else:
            since_best += 1
        if ctx.progress:
            ctx.progress(step, updates, history[-1])
        if ctx.checkpoint:
            ctx.checkpoint({"S": S.detach().cpu(), "step": step, "best": best, "best_idx": best_idx.cpu(),
                            "history": history, "since_best": since_best})
        if patience and since_best >= int(patience):
            break
    best_update = max(history, key=lambda h: (h["score"], -h["update"]))["update"]
    return Selection(best_idx.cpu(), {"history": history, "best_update": best_update, "best_score": best,
                                      "updates_run": history[-1]["update"], "candidates": int(cand.numel())})


def grad_S_closed_form(space: GraftSpace, S: torch.Tensor, cand: torch.Tensor, base_c: torch.Tensor, b: float,
                       batches: list[dict[str, Any]]) -> torch.Tensor:
    """dL/dS = (dL/dtheta ⊙ delta) ⊙ (1 − 2·base) ⊙ sigmoid'(S − b) (docs/method.md §2), L averaged over batches.

    One backward pass per mini-batch into a flat leaf theta; no gradient for any model parameter.
    """
    delta_c = space.delta[cand]
    sig = torch.sigmoid(S - b)
    gamma = base_c + (1 - 2 * base_c) * sig
    theta = space.pre.index_add(0, cand, gamma * delta_c).requires_grad_(True)
    for batch in batches:
        logits = space.forward(theta, batch)
        loss = torch.nn.functional.cross_entropy(logits.float(), batch["labels"]) / len(batches)
        loss.backward()
    return theta.grad[cand] * delta_c * (1 - 2 * base_c) * sig * (1 - sig)


def grad_S_reference(space: GraftSpace, S: torch.Tensor, base: torch.Tensor, b: float,
                     batch: dict[str, Any]) -> torch.Tensor:
    """dL/dS by autograd through gamma (for tests; the loop uses the closed form of docs/method.md §2)."""
    S = S.detach().clone().requires_grad_(True)
    gamma = base + (1 - 2 * base) * torch.sigmoid(S - b)
    theta = space.pre + gamma * space.delta
    logits = space.forward(theta, batch)
    loss = torch.nn.functional.cross_entropy(logits.float(), batch["labels"])
    loss.backward()
    return S.grad.detach()
