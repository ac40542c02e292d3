"""The training loop: seeded mini-batch streams, dev evaluation, the best dev state, periodic resume state."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from mtgraft.models import Encoded, TaskModel, collate, model_inputs
from mtgraft.training.distributed import DistContext, dist_context


@dataclass
class EvalPoint:
    """Dev evaluation at one step."""

    step: int
    dev: dict[str, float]


@dataclass
class LoopResult:
    """What a training loop did."""

    best_step: int
    best_dev: float
    history: list[EvalPoint]
    steps: int
    train_seconds: float
    examples_seen: int
    final_state: dict[str, torch.Tensor] | None = None

    @property
    def examples_per_second(self) -> float:
        return self.examples_seen / self.train_seconds if self.train_seconds > 0 else float("nan")


class BatchStream:
    """Seeded stream of shuffled mini-batches from one or more encoded tasks.

    ``weights`` picks the task of each batch (joint multi-task training); a batch holds one task.
    """

    def __init__(self, encs: list[Encoded], batch_size: int, seed: int, weights: list[float] | None = None) -> None:
        self.encs = encs
        self.batch_size = batch_size
        self.gen = torch.Generator().manual_seed(seed)
        self.weights = torch.tensor(weights or [1.0] * len(encs), dtype=torch.float64)
        self.perms = [self._perm(len(e)) for e in encs]
        self.pos = [0] * len(encs)

    def _perm(self, n: int) -> list[int]:
        return torch.randperm(n, generator=self.gen).tolist()

    def next(self) -> tuple[Encoded, list[int]]:
        t = 0 if len(self.encs) == 1 else int(torch.multinomial(self.weights, 1, generator=self.gen))
        enc = self.encs[t]
        idx: list[int] = []
        while len(idx) < self.batch_size:
            if self.pos[t] >= len(self.perms[t]):
                self.perms[t] = self._perm(len(enc))
                self.pos[t] = 0
            take = min(self.batch_size - len(idx), len(self.perms[t]) - self.pos[t])
            idx.extend(self.perms[t][self.pos[t]:self.pos[t] + take])
            self.pos[t] += take
            if len(enc) < self.batch_size and len(idx) >= len(enc):
                break
        return enc, idx

    def state_dict(self) -> dict[str, Any]:
        return {"gen": self.gen.get_state(), "perms": copy.deepcopy(self.perms), "pos": list(self.pos)}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.gen.set_state(s["gen"])
        self.perms = s["perms"]
        self.pos = s["pos"]


class L1Pull:
    """The proximal step of an L1 pull λ·‖θ − θ_0‖₁ on the graftable body (docs/method.md §1, "Localisable fine-tuning").

    θ_0 is the body when the pull is built (the pretrained model; a sequential stage's start). After each optimiser
    step every body entry is soft-thresholded towards θ_0 by lr·λ (its parameter group's current learning rate):
    θ ← θ_0 + sign(θ − θ_0)·max(|θ − θ_0| − lr·λ, 0). This is proximal gradient descent on the penalty: unlike adding
    λ·sign(θ − θ_0) to the gradient, entries the task does not need end exactly at θ_0 (δ = 0), and the pull is
    outside gradient clipping, so it never shrinks the task's gradient. Task heads are not pulled (they start
    random, not pretrained).
    """

    def __init__(self, model: TaskModel, optimizer: torch.optim.Optimizer, lam: float) -> None:
        names = set(model.graftable_names())
        body = {id(p) for n, p in model.named_parameters() if n in names}
        self.lam = float(lam)
        self.entries = [(p, p.detach().clone(), g) for g in optimizer.param_groups for p in g["params"]
                        if id(p) in body and p.requires_grad]

    @torch.no_grad()
    def step(self) -> None:
        for p, p0, group in self.entries:
            d = p - p0
            p.copy_(p0 + torch.sign(d) * (d.abs() - group["lr"] * self.lam).clamp_min_(0))


def train_loop(model: TaskModel, stream: BatchStream, dev_eval: Callable[[], dict[str, float]], *,
               optimizer: torch.optim.Optimizer, max_steps: int, eval_every: int, grad_clip: float,
               device: torch.device, precision: str = "fp32", l1_to_pretrained: float = 0.0,
               progress: Callable[[int, dict[str, Any]], None] | None = None,
               on_eval: Callable[[EvalPoint], None] | None = None,
               keep_best: bool = True, checkpoint_hook: Callable[[int], None] | None = None,
               start_step: int = 0, state: dict[str, Any] | None = None,
               dist: DistContext | None = None, resumer: Any = None, resume: bool = False,
               extra_loss: Callable[[dict[str, Any], torch.Tensor], torch.Tensor | None] | None = None,
               after_step: Callable[[int], None] | None = None) -> LoopResult:
    """Optimise cross-entropy for ``max_steps``; evaluate ``dev_eval`` every ``eval_every`` steps.

    Keeps (in memory) the trainable tensors of the best dev score and loads them at the end.
    Runs on ``dist``'s accelerator (a fresh one for ``device`` and ``precision`` when not given): its prepared
    model and optimizer, ``backward``, ``clip_grad_norm_``. The global batches come from ``stream`` (seeded,
    part of the resume state) on every process alike; with several processes each takes its share
    (``split_between_processes``) and DDP averages the gradients, so N processes follow the same trajectory
    as one (up to float rounding, dropout aside).

    Continual-learning strategies (``mtgraft.training.strategies``) hook in with ``extra_loss(batch, logits)``
    (a term added to the batch loss before the backward pass: a penalty, a replay or a distillation loss) and
    ``after_step(step)`` (called after each optimiser step, e.g. to restore frozen entries). Without them the
    loop is what it always was.
    """
    if dist is None or dist.accelerator is None:
        dist = dist_context(device.type, precision)
    acc = dist.accelerator
    net, opt = dist.prepare(model, optimizer)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in trainable]
    pull = L1Pull(model, optimizer, l1_to_pretrained) if l1_to_pretrained > 0 else None  # anchored before a resume
    st = state or {}
    if resumer is not None and resume:
        saved = resumer[0].load(resumer[1], resumer[2])
        if saved is not None:
            from mtgraft.resume import set_rng_state

            with torch.no_grad():
                for (n, p) in trainable:
                    p.copy_(saved["params"][n])
            opt.load_state_dict(saved["optimizer"])
            if acc.scaler is not None and saved.get("scaler"):
                acc.scaler.load_state_dict(saved["scaler"])
            stream.load_state_dict(saved["stream"])
            set_rng_state(saved["rng"])
            st = saved
            start_step = saved["step"]
    best_dev = st.get("best_dev", -math.inf)
    best_step = st.get("best_step", 0)
    best_state = st.get("best_state")
    history: list[EvalPoint] = st.get("history", [])
    seen = st.get("seen", 0)
    train_time = st.get("train_time", 0.0)
    pad = model.tokenizer.pad_token_id
    net.train()
    last_loss = float("nan")
    for step in range(start_step + 1, max_steps + 1):
        t0 = time.perf_counter()
        enc, idx = stream.next()
        n_global = len(idx)
        if dist.active:
            idx = dist.share(idx)
        batch = collate(enc, idx, pad, device)
        logits = net(**model_inputs(batch))  # the prepared model autocasts (bf16/fp16) and returns fp32
        loss = dist.loss(logits, batch["labels"], n_global)
        if extra_loss is not None:
            extra = extra_loss(batch, logits)
            if extra is not None:
                loss = loss + extra
        opt.zero_grad(set_to_none=True)
        acc.backward(loss)  # fp16: scaled by the gradient scaler
        if grad_clip > 0:
            acc.clip_grad_norm_(params, grad_clip)  # unscales first (fp16)
        opt.step()  # fp16: skipped when the scaled gradients overflowed; the scale then shrinks
        if pull is not None:
            pull.step()
        if after_step is not None:
            after_step(step)
        train_time += time.perf_counter() - t0
        seen += n_global
        last_loss = loss.item()
        if step % eval_every == 0 or step == max_steps:
            dev = dev_eval()
            net.train()
            point = EvalPoint(step, dev)
            history.append(point)
            if on_eval:
                on_eval(point)
            score = dev.get("accuracy", -math.inf)
            if score > best_dev:
                best_dev, best_step = score, step
                if keep_best:
                    best_state = {n: p.detach().to("cpu", copy=True) for n, p in trainable}
            if checkpoint_hook:
                checkpoint_hook(step)
            if resumer is not None and dist.is_main:
                from mtgraft.resume import rng_state

                resumer[0].save(resumer[1], {
                    "step": step, "params": {n: p.detach().to("cpu", copy=True) for n, p in trainable},
                    "optimizer": opt.state_dict(), "stream": stream.state_dict(), "rng": rng_state(),
                    "best_dev": best_dev, "best_step": best_step, "best_state": best_state, "history": history,
                    "seen": seen, "train_time": train_time,
                    "scaler": acc.scaler.state_dict() if acc.scaler is not None else None}, resumer[2])
        if progress:
            progress(step, {"loss": last_loss, "best_dev": best_dev})
    if keep_best and best_state is not None:
        with torch.no_grad():
            named = dict(model.named_parameters())
            for n, v in best_state.items():
                named[n].copy_(v)
    model.eval()
    return LoopResult(best_step, best_dev, history, max_steps, train_time, seen)
