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
    scale: float = 1.0  # alpha: the region holds theta_pre + alpha·delta (1 = the fine-tuned values)


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


def task_gradients(space: GraftSpace, enc: Encoded, max_examples: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """The task loss's gradient at theta_ft, per example, over the first ``max_examples`` training examples:
    returns (mean gradient, mean squared gradient = the diagonal empirical Fisher at theta_ft).

    One forward and backward pass per example (mini-batches of one), into a flat leaf theta.
    """
    if enc is None or len(enc) == 0:
        raise MtgraftError("Fisher and gradient scores need training examples")
    n = min(len(enc), int(max_examples))
    key = ("task-gradients", id(enc), n)  # the same task data for every sparsity and method
    hit = space.cache.get(key)
    if hit is not None and hit[0] is enc:
        return hit[1]
    theta = (space.pre + space.delta).requires_grad_(True)
    g_sum, g_sq = torch.zeros_like(space.pre), torch.zeros_like(space.pre)
    for batch in space.batches(_subset(enc, range(n)), 1):
        loss = torch.nn.functional.cross_entropy(space.forward(theta, batch).float(), batch["labels"])
        (g,) = torch.autograd.grad(loss, theta)
        g_sum += g
        g_sq += g * g
    out = (g_sum / n, g_sq / n)
    space.cache[key] = (enc, out)
    return out


def base_scores(ctx: SelectContext) -> torch.Tensor:
    """The scores that pick the base patch and the candidates (``init``): |delta| ('movement', the paper), the
    task's integrated-gradients attribution ('saliency'), delta² · diagonal empirical Fisher at theta_ft
    ('fisher') or |delta · grad L(theta_ft)| ('grad-movement')."""
    init = ctx.settings.get("init", "movement")
    if init == "movement":
        return ctx.space.delta.abs()
    if init == "saliency":
        return _saliency_scores(ctx)
    if init == "fisher":
        return _fisher_scores(ctx)
    if init == "grad-movement":
        return _grad_movement_scores(ctx)
    raise MtgraftError(f"unknown init '{init}' (movement | saliency | fisher | grad-movement)")


def _fisher_scores(ctx: SelectContext) -> torch.Tensor:
    _, fisher = task_gradients(ctx.space, ctx.train, int(ctx.settings.get("fisher_examples", 256)))
    return ctx.space.delta.square() * fisher


def _grad_movement_scores(ctx: SelectContext) -> torch.Tensor:
    grad, _ = task_gradients(ctx.space, ctx.train, int(ctx.settings.get("fisher_examples", 256)))
    return (ctx.space.delta * grad).abs()


def select_fisher(ctx: SelectContext) -> Selection:
    return Selection(topk_indices(_fisher_scores(ctx), ctx.k, ctx.space.delta.abs()).cpu())


def select_grad_movement(ctx: SelectContext) -> Selection:
    return Selection(topk_indices(_grad_movement_scores(ctx), ctx.k, ctx.space.delta.abs()).cpu())


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


def _score(space: GraftSpace, theta: torch.Tensor, encs: list[Encoded], loss: bool = False) -> dict[str, float]:
    """Accuracy on train and dev and their pooled accuracy ``score``; with ``loss``, also the pooled mean
    cross-entropy ``loss`` (the tie-break of the newer learners)."""
    accs, correct, total, nll = {}, 0, 0, 0.0
    for name, enc in zip(("train", "dev"), encs, strict=False):
        if enc is None or len(enc) == 0:
            continue
        probs = space.predict(theta, enc)
        labels = np.asarray(enc.labels)
        ok = int((probs.argmax(1) == labels).sum())
        accs[name] = ok / len(enc)
        correct += ok
        total += len(enc)
        nll += float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).sum())
    accs["score"] = correct / total if total else float("nan")
    if loss:
        accs["loss"] = nll / total if total else float("nan")
    return accs


def _subset(enc: Encoded, sel: Any) -> Encoded:
    sel = list(sel)
    return Encoded(enc.task, [enc.input_ids[i] for i in sel],
                   [enc.token_type_ids[i] for i in sel] if enc.token_type_ids else None,
                   [enc.labels[i] for i in sel], [enc.positions[i] for i in sel] if enc.positions else [])


def _train_subset(ctx: SelectContext, n_ex: int) -> Encoded:
    """A fixed subset of at most ``n_ex`` training examples (seeded by the run's seed)."""
    train = ctx.train
    if len(train) > n_ex:
        train = _subset(train, torch.randperm(len(train), generator=torch.Generator().manual_seed(ctx.seed))[:n_ex].tolist())
    return train


def _candidate_set(ctx: SelectContext, cand_factor: float | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(candidates, base patch as a 0/1 vector over them, the init scores): the base patch and the candidates
    are the first k and the first m = c·k >= k entries of one selection order (so base ⊆ candidates);
    without ``cand_factor`` every graftable entry is a candidate."""
    space, k, dev = ctx.space, ctx.k, ctx.space.device
    scores = base_scores(ctx)
    mags = scores if ctx.settings.get("init", "movement") == "movement" else space.delta.abs()  # |delta| once
    base_idx = topk_indices(scores, k, mags)
    if cand_factor:
        m = min(space.numel, max(k, int(math.ceil(float(cand_factor) * k))))
        cand = topk_indices(scores, m, mags)
    else:
        cand = torch.arange(space.numel, device=dev)
    base_c = torch.zeros(cand.numel(), device=dev)
    base_c[torch.isin(cand, base_idx.to(dev))] = 1.0
    return cand, base_c, scores


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
    cand, base_c = _candidate_set(ctx, cand_factor)[:2]  # the scores (full size) are not kept
    delta_c = space.delta[cand]
    mags_c = delta_c.abs()
    gen = torch.Generator().manual_seed(ctx.seed)
    S = torch.rand(cand.numel(), generator=gen).to(dev)
    batches = space.batches(_train_subset(ctx, n_ex), bs)

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
    _, g = space.loss_and_grad(cand, gamma * delta_c, batches)  # dL/dtheta at the candidates
    return g * delta_c * (1 - 2 * base_c) * sig * (1 - sig)


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


# ---------------------------------------------------------------------------------------------
# Mask learners after the paper's: Adam on logits S over the candidates, region always exactly k


ADAM_EPS = 1e-20  # the gradients on S are ~1e-8 and smaller: Adam's usual 1e-8 would swamp them


class MaskAdam:
    """Adam on the logits S. ``normalise='global'`` (the default of the learners) divides the first moment by
    one second moment shared by all coordinates (the mean of g²), so an entry moves in proportion to its gradient
    and the few entries with the largest first-order gain cross the top-k threshold first; per-coordinate Adam
    (``'coordinate'``) moves every entry by about lr per step whatever its gradient (sign descent), so that
    after a few steps thousands of entries cross at once and the hard region turns over wholesale."""

    def __init__(self, S: torch.Tensor, lr: float, normalise: str = "global", betas: tuple[float, float] = (0.9, 0.999)):
        if normalise not in ("global", "coordinate"):
            raise MtgraftError(f"unknown normalise '{normalise}' (global | coordinate)")
        self.lr, self.normalise, self.betas = lr, normalise, betas
        self.m = torch.zeros_like(S)
        self.v = torch.zeros_like(S) if normalise == "coordinate" else torch.zeros((), dtype=S.dtype, device=S.device)
        self.t = 0

    def step(self, S: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        b1, b2 = self.betas
        self.t += 1
        self.m = b1 * self.m + (1 - b1) * g
        sq = g * g if self.normalise == "coordinate" else (g * g).mean()
        self.v = b2 * self.v + (1 - b2) * sq
        m_hat, v_hat = self.m / (1 - b1 ** self.t), self.v / (1 - b2 ** self.t)
        return S - self.lr * m_hat / (v_hat.sqrt() + ADAM_EPS)

    def state_dict(self) -> dict[str, Any]:
        return {"m": self.m.cpu(), "v": self.v.cpu(), "t": self.t}

    def load_state_dict(self, st: dict[str, Any]) -> None:
        self.m, self.v, self.t = st["m"].to(self.m.device), st["v"].to(self.m.device), int(st["t"])


def _hard(S: torch.Tensor, k: int, tiebreak: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Positions of the top k of S (the selection order, ``tiebreak`` = |delta|) and a threshold tau between the
    k-th and the (k+1)-th largest S."""
    pos = topk_indices(S, k, tiebreak)
    if k >= S.numel():
        return pos, float(S.min()) - 1.0
    inside = torch.zeros(S.numel(), dtype=torch.bool, device=S.device)
    inside[pos] = True
    return pos, 0.5 * (float(S[inside].min()) + float(S[~inside].max()))


def ste_objective_and_grad(space: GraftSpace, S: torch.Tensor, cand: torch.Tensor, k: int, temperature: float,
                           batches: list[dict[str, Any]]) -> tuple[float, torch.Tensor]:
    """graft-ste's forward and backward: the task loss of the hard region (the top k of S, exactly k entries)
    and the straight-through gradient dL/dS = (dL/dtheta ⊙ delta) ⊙ sigmoid'((S − tau)/T)/T, as if the mask
    were sigmoid((S − tau)/T) (tau between the k-th and (k+1)-th logits). L averaged over the batches."""
    delta_c = space.delta[cand]
    pos, tau = _hard(S, k, delta_c.abs())
    hard = torch.zeros_like(S)
    hard[pos] = 1.0
    total, g = space.loss_and_grad(cand, hard * delta_c, batches)
    sig = torch.sigmoid((S - tau) / temperature)
    return total, g * delta_c * sig * (1 - sig) / temperature


def stitch_objective_and_grad(space: GraftSpace, S: torch.Tensor, cand: torch.Tensor, k: int, l1: float,
                              batches: list[dict[str, Any]]) -> tuple[float, torch.Tensor]:
    """Localize-and-Stitch's relaxed objective J(S) = L(theta_pre + sigmoid(S) ⊙ delta) + l1·sum sigmoid(S)/k
    over the candidates (L averaged over the batches; the L1 term divided by k so that l1 does not depend on
    the budget), and its gradient in closed form from one backward pass per batch."""
    delta_c = space.delta[cand]
    sig = torch.sigmoid(S)
    total, g = space.loss_and_grad(cand, sig * delta_c, batches)
    total += l1 * float(sig.sum()) / k
    return total, (g * delta_c + l1 / k) * sig * (1 - sig)


def _adam_mask_learner(ctx: SelectContext, S0: torch.Tensor, cand: torch.Tensor,
                       objective: Callable[[torch.Tensor, float, list[dict[str, Any]]], tuple[float, torch.Tensor]]
                       ) -> Selection:
    """The loop the newer learners share: Adam on S (``lr``, ``normalise``: see :class:`MaskAdam`),
    ``objective(S, progress in [0, 1], batches)`` gives
    the relaxed objective and its gradient; after every update the region is the top k of S (exactly k), scored
    on train + dev, and the best by (accuracy, then lower loss) is kept; update 0 is the init region itself."""
    s, space = ctx.settings, ctx.space
    updates = int(s.get("updates", 10))
    n_ex = int(s.get("examples_per_update", 1024))
    bs = int(s.get("batch_size", 8))
    patience = s.get("patience")
    if ctx.train is None or len(ctx.train) == 0:
        raise MtgraftError("a learned mask needs training examples")
    mags_c = space.delta[cand].abs()
    k = min(ctx.k, cand.numel())
    batches = space.batches(_train_subset(ctx, n_ex), bs)
    S = S0.clone()
    opt = MaskAdam(S, float(s.get("lr", 0.1)), str(s.get("normalise", "global")))

    def region() -> torch.Tensor:
        return cand[topk_indices(S, k, mags_c)]

    def key(sc: dict[str, float]) -> tuple[float, float]:
        return sc["score"], -sc["loss"]

    st = ctx.state or {}
    if st:
        S = st["S"].to(S.device)
        opt.load_state_dict(st["opt"])
        start, best, best_idx, history = st["step"] + 1, st["best"], st["best_idx"].to(space.device), st["history"]
        since_best = st.get("since_best", 0)
    else:
        t0 = time.perf_counter()
        best_idx = region()
        best = _score(space, space.theta_from_indices(best_idx), [ctx.train, ctx.dev], loss=True)
        history = [{"update": 0, **best, "size": int(best_idx.numel()), "seconds": time.perf_counter() - t0}]
        start, since_best = 1, 0
        if ctx.progress:
            ctx.progress(0, updates, history[-1])
    for step in range(start, updates + 1):
        t0 = time.perf_counter()
        objective_value, grad = objective(S, (step - 1) / max(1, updates - 1), batches)
        S = opt.step(S, grad.to(S.dtype))
        idx = region()
        sc = _score(space, space.theta_from_indices(idx), [ctx.train, ctx.dev], loss=True)
        history.append({"update": step, **sc, "objective": objective_value, "size": int(idx.numel()),
                        "seconds": time.perf_counter() - t0})
        if key(sc) > key(best):
            best, best_idx, since_best = sc, idx, 0
        else:
            since_best += 1
        if ctx.progress:
            ctx.progress(step, updates, history[-1])
        if ctx.checkpoint:
            ctx.checkpoint({"S": S.cpu(), "opt": opt.state_dict(), "step": step, "best": best,
                            "best_idx": best_idx.cpu(), "history": history, "since_best": since_best})
        if patience and since_best >= int(patience):
            break
    best_update = max(history, key=lambda h: (h["score"], -h["loss"], -h["update"]))["update"]
    return Selection(torch.sort(best_idx).values.cpu(), {
        "history": history, "best_update": best_update, "best_score": best["score"],
        "updates_run": history[-1]["update"], "candidates": int(cand.numel())})


def learn_graft_ste(ctx: SelectContext) -> Selection:
    """graft-ste: logits S over the candidates (the first c·k entries by the init score), S = +margin on the base
    patch and −margin elsewhere, so the first region is the base patch. Each update: the task loss of the hard
    top-k region, the straight-through sigmoid gradient with a temperature annealed geometrically from
    ``temperature_start`` to ``temperature_end``, one Adam step. Settings: ``lr``, ``temperature_start``,
    ``temperature_end``, ``init_margin`` and the shared ``updates``, ``examples_per_update``, ``batch_size``,
    ``candidates``, ``patience``, ``init``."""
    s = ctx.settings
    cand, base_c = _candidate_set(ctx, s.get("candidates"))[:2]
    margin = float(s.get("init_margin", 1.0))
    t0, t1 = float(s.get("temperature_start", 1.0)), float(s.get("temperature_end", 0.1))
    k = min(ctx.k, cand.numel())

    def objective(S: torch.Tensor, frac: float, batches: list[dict[str, Any]]) -> tuple[float, torch.Tensor]:
        return ste_objective_and_grad(ctx.space, S, cand, k, t0 * (t1 / t0) ** frac, batches)

    return _adam_mask_learner(ctx, margin * (2 * base_c - 1), cand, objective)


def learn_stitch_l1(ctx: SelectContext) -> Selection:
    """stitch-l1 (Localize-and-Stitch's localisation): mask sigmoid(S) over the candidates, S = +b on the base patch
    and −b elsewhere (``sigmoid_bias`` b), Adam steps on task loss + ``l1``·sum sigmoid(S)/k, then the top k of
    sigmoid(S) (strict budget; the paper's own binarisation). Shared settings as graft-ste."""
    s = ctx.settings
    cand, base_c = _candidate_set(ctx, s.get("candidates"))[:2]
    b, l1 = float(s.get("sigmoid_bias", 3.0)), float(s.get("l1", 1e-3))
    k = min(ctx.k, cand.numel())

    def objective(S: torch.Tensor, _frac: float, batches: list[dict[str, Any]]) -> tuple[float, torch.Tensor]:
        return stitch_objective_and_grad(ctx.space, S, cand, k, l1, batches)

    return _adam_mask_learner(ctx, b * (2 * base_c - 1), cand, objective)


def select_rescaled(ctx: SelectContext) -> Selection:
    """graft-rescaled: the top-k region by the init score, its movement scaled by one alpha from the grid
    ``alphas``, chosen by train + dev accuracy (then lower loss; the first in the grid on a tie). Not the
    fine-tuned values: the SkillPatch stores them with alpha in its header, and applying it writes
    theta_pre + alpha·(value − theta_pre)."""
    space = ctx.space
    if ctx.train is None or len(ctx.train) == 0:
        raise MtgraftError("graft-rescaled chooses alpha on training examples")
    alphas = [float(a) for a in ctx.settings.get("alphas", [1.0])]
    if not alphas or any(not math.isfinite(a) for a in alphas):
        raise MtgraftError(f"graft-rescaled needs finite alphas, got {alphas}")
    idx = topk_indices(base_scores(ctx), ctx.k, space.delta.abs())
    rows, best = [], None
    for a in alphas:
        sc = _score(space, space.theta_from_indices(idx, a), [ctx.train, ctx.dev], loss=True)
        rows.append({"alpha": a, **sc})
        if best is None or (sc["score"], -sc["loss"]) > (best["score"], -best["loss"]):
            best = rows[-1]
    return Selection(idx.cpu(), {"alphas": rows, "scale": best["alpha"]}, scale=best["alpha"])
