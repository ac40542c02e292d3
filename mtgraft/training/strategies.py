"""Continual-learning strategies of sequential runs (``mtgraft train-multitask --mode sequential --strategy``).

A strategy hooks into the stages of ``mtgraft.training.multitask._sequential``:

- ``before_stage(t)``: the model is the one stage t starts from (anchors, teachers, frozen entries are taken here);
- ``extra_loss(batch, logits)`` and ``after_step(step)``: passed to the training loop (``loop.train_loop``);
- ``after_stage(t)``: the loop has loaded stage t's best dev state (Fisher, buffer, pruning happen here);
- ``view(i)``: a context in which the model answers for task i (PackNet: the entries of later tasks reset);
- ``state_dict`` / ``load_state_dict``: what must outlive a kill between stages (kept with the finished stages'
  record in ``DIR.resume/stages.pt``); within a stage the loop's own periodic state suffices, because every
  per-stage quantity (anchor, teacher, frozen mask) is taken again in ``before_stage`` from the model the stage
  started from.

The table of strategies (descriptions, references) is ``mtgraft.training.catalog``. ``graft`` trains as
``naive``; its per-task SkillPatches are the workflow ``mtgraft.workflows.continual`` (training never imports
grafting). Definitions and departures from the references: docs/continual.md.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mtgraft.errors import MtgraftError
from mtgraft.models import Encoded, TaskModel, collate, model_inputs
from mtgraft.training.catalog import STRATEGIES

__all__ = ["Strategy", "body_params", "distillation_loss", "fisher_diagonal", "make_strategy", "readouts",
           "reservoir_update", "strategy_defaults"]


def strategy_defaults(name: str) -> dict[str, Any]:
    """The catalog entry of ``name`` (refuses an unknown strategy)."""
    if name not in STRATEGIES:
        raise MtgraftError(f"unknown strategy '{name}' (see 'mtgraft strategies': {', '.join(STRATEGIES)})")
    return {"lambda": STRATEGIES[name].default_lambda}


def body_params(model: TaskModel) -> list[tuple[str, torch.nn.Parameter]]:
    """The trainable tensors of the graftable body (no heads, embeddings or LM head), in canonical order."""
    params = dict(model.named_parameters())
    return [(n, params[n]) for n in model.graftable_names() if params[n].requires_grad]


# ------------------------------------------------------------------------------------------ pure parts


def reservoir_update(buffer: list[Any], n_seen: int, items: list[Any], capacity: int,
                     gen: torch.Generator) -> int:
    """Algorithm R (Vitter 1985): offer ``items`` one by one to ``buffer`` (changed in place); returns the new
    count of items offered so far. After n offers each of them is in the buffer with probability
    min(1, capacity / n)."""
    for item in items:
        n_seen += 1
        if len(buffer) < capacity:
            buffer.append(item)
        else:
            j = int(torch.randint(n_seen, (1,), generator=gen))
            if j < capacity:
                buffer[j] = item
    return n_seen


def distillation_loss(student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor],
                      temperature: float) -> torch.Tensor:
    """Σ_j KL(softmax(teacher_j / T) ‖ softmax(student_j / T)), batch mean (Avalanche's LwF, no T² factor)."""
    total = None
    for j, s in student.items():
        term = F.kl_div(F.log_softmax(s / temperature, dim=-1), F.softmax(teacher[j] / temperature, dim=-1),
                        reduction="batchmean")
        total = term if total is None else total + term
    if total is None:
        raise MtgraftError("distillation over no task")
    return total


def readouts(model: TaskModel, batch: dict[str, Any], tasks: list[str]) -> dict[str, torch.Tensor]:
    """The logits of each task in ``tasks`` on the inputs of ``batch`` (one backbone pass for ``head`` models;
    ``prompt``/``causal``: the batch's input read out through each task's label words)."""
    inputs = model_inputs(batch)
    if model.model_type == "head":
        from mtgraft.models.task_model import pool

        kw = {k: inputs[k] for k in ("input_ids", "attention_mask", "token_type_ids") if inputs.get(k) is not None}
        out = model.backbone(**kw)
        return {j: model.heads[j](model.dropout(pool(out, inputs["attention_mask"], model.tasks[j].head_input)))
                for j in tasks}
    return {j: model(**{**inputs, "task": j}) for j in tasks}


def fisher_diagonal(model: TaskModel, enc: Encoded, names: list[str], batch_size: int,
                    device: Any) -> dict[str, torch.Tensor]:
    """Empirical diagonal Fisher of ``names`` on ``enc``: the mean over mini-batches (in order) of the squared
    gradient of the batch's mean cross-entropy with the true labels (Avalanche's EWC importances). Eval mode
    (no dropout), so it draws no random numbers."""
    params = dict(model.named_parameters())
    ps = [params[n] for n in names]
    acc = [torch.zeros_like(p, device="cpu") for p in ps]
    was = model.training
    model.eval()
    pad = model.tokenizer.pad_token_id
    n_batches = 0
    for start in range(0, len(enc), batch_size):
        batch = collate(enc, range(start, min(start + batch_size, len(enc))), pad, device)
        loss = F.cross_entropy(model(**model_inputs(batch)), batch["labels"])
        grads = torch.autograd.grad(loss, ps, allow_unused=True)
        for a, g in zip(acc, grads, strict=True):
            if g is not None:
                a.add_(g.detach().to("cpu") ** 2)
        n_batches += 1
    model.train(was)
    return {n: a / max(1, n_batches) for n, a in zip(names, acc, strict=True)}


# ------------------------------------------------------------------------------------------ strategies


class Strategy:
    """``naive``: no hooks (the run is exactly today's sequential fine-tuning)."""

    name = "naive"
    has_views = False

    def __init__(self, cfg: Any, model: TaskModel, names: list[str], train: dict[str, Encoded], device: Any) -> None:
        self.cfg, self.model, self.names, self.train, self.device = cfg, model, names, train, device
        self.stage = -1
        self.body = body_params(model)

    # the loop's hooks: None means "no hook" (the loop then runs exactly as without a strategy)
    extra_loss: Any = None
    after_step: Any = None

    def settings(self) -> dict[str, Any]:
        return {}

    def before_stage(self, t: int) -> None:
        self.stage = t

    def after_stage(self, t: int) -> None:
        pass

    @contextlib.contextmanager
    def view(self, i: int) -> Iterator[None]:
        yield

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        pass

    def extra_bytes(self) -> dict[str, int]:
        """Bytes the strategy keeps beyond the one model, attributed to the tasks seen so far."""
        return {n: 0 for n in self.names[: self.stage + 1]}

    def tensors(self) -> dict[str, torch.Tensor]:
        """What the run folder keeps of the strategy (``strategy_state.safetensors``), if anything."""
        return {}

    def _lambda(self) -> float:
        lam = getattr(self.cfg, "strategy_lambda", None)
        return float(STRATEGIES[self.name].default_lambda if lam is None else lam)


class L2(Strategy):
    """λ Σ (θ − θ_prev)² over the body, θ_prev = the weights stage t started from (none in stage 1)."""

    name = "l2"

    def __init__(self, *a: Any, **k: Any) -> None:
        super().__init__(*a, **k)
        self.anchor: list[torch.Tensor] | None = None
        self.extra_loss = self._loss

    def settings(self) -> dict[str, Any]:
        return {"lambda": self._lambda()}

    def before_stage(self, t: int) -> None:
        super().before_stage(t)
        self.anchor = [p.detach().clone() for _, p in self.body] if t > 0 else None

    def penalty(self) -> torch.Tensor:
        if self.anchor is None:
            return torch.zeros((), device=self.body[0][1].device)
        return sum(((p - a) ** 2).sum() for (_, p), a in zip(self.body, self.anchor, strict=True))

    def _loss(self, batch: dict[str, Any], logits: torch.Tensor) -> torch.Tensor | None:
        return None if self.anchor is None else self._lambda() * self.penalty()


class EWC(L2):
    """Online EWC: λ Σ F̃ (θ − θ*)², θ* = the weights stage t started from, F ← decay·F + F_t after each stage
    (F_t: empirical diagonal Fisher of task t), F̃ = F / max F (so that λ·lr ≤ 1 keeps SGD stable)."""

    name = "ewc"

    def __init__(self, *a: Any, **k: Any) -> None:
        super().__init__(*a, **k)
        self.fisher: dict[str, torch.Tensor] | None = None
        self.weight: list[torch.Tensor] | None = None

    def settings(self) -> dict[str, Any]:
        return {"lambda": self._lambda(), "decay": self.cfg.ewc_decay, "fisher": "empirical, mini-batch squared "
                "gradients, divided by the largest entry"}

    def before_stage(self, t: int) -> None:
        super().before_stage(t)
        self._weights()

    def _weights(self) -> None:
        if self.fisher is None:
            self.weight = None
            return
        top = max(float(f.max()) for f in self.fisher.values())
        scale = 1.0 / top if top > 0 else 0.0
        self.weight = [(self.fisher[n] * scale).to(p.device) for n, p in self.body]

    def penalty(self) -> torch.Tensor:
        if self.anchor is None or self.weight is None:
            return torch.zeros((), device=self.body[0][1].device)
        return sum((w * (p - a) ** 2).sum()
                   for (_, p), a, w in zip(self.body, self.anchor, self.weight, strict=True))

    def _loss(self, batch: dict[str, Any], logits: torch.Tensor) -> torch.Tensor | None:
        return None if self.anchor is None or self.weight is None else self._lambda() * self.penalty()

    def after_stage(self, t: int) -> None:
        f = fisher_diagonal(self.model, self.train[self.names[t]], [n for n, _ in self.body], self.cfg.batch_size,
                            self.device)
        if self.fisher is None:
            self.fisher = f
        else:
            self.fisher = {n: self.cfg.ewc_decay * self.fisher[n] + f[n] for n in f}

    def state_dict(self) -> dict[str, Any]:
        return {"fisher": self.fisher}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.fisher = s.get("fisher")

    def extra_bytes(self) -> dict[str, int]:
        seen = self.names[: self.stage + 1]
        total = sum(p.numel() * 4 for _, p in self.body) if self.fisher is not None else 0
        return {n: total // max(1, len(seen)) for n in seen}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f"fisher.{n}": v.contiguous() for n, v in (self.fisher or {}).items()}


class Replay(Strategy):
    """A buffer of ``replay_size`` earlier examples (reservoir over every training example of the finished
    tasks, offered in a seeded random order after each stage); each step adds the cross-entropy of up to
    ``batch_size`` buffered examples drawn without replacement (global torch RNG: part of the resume state),
    each read out through its own task's head, summed and divided by the number drawn."""

    name = "replay"

    def __init__(self, *a: Any, **k: Any) -> None:
        super().__init__(*a, **k)
        self.buffer: list[tuple[int, int]] = []
        self.n_seen = 0
        self.gen = torch.Generator().manual_seed(int(self.cfg.seed) + 7919)
        self.extra_loss = self._loss

    def settings(self) -> dict[str, Any]:
        return {"size": self.cfg.replay_size, "sampling": "reservoir (Algorithm R) over examples",
                "replay_batch": self.cfg.batch_size}

    def after_stage(self, t: int) -> None:
        order = torch.randperm(len(self.train[self.names[t]]), generator=self.gen).tolist()
        self.n_seen = reservoir_update(self.buffer, self.n_seen, [(t, i) for i in order], self.cfg.replay_size,
                                       self.gen)

    def _loss(self, batch: dict[str, Any], logits: torch.Tensor) -> torch.Tensor | None:
        if not self.buffer:
            return None
        m = min(self.cfg.batch_size, len(self.buffer))
        pick = torch.randperm(len(self.buffer))[:m].tolist()
        groups: dict[int, list[int]] = {}
        for j in pick:
            t, i = self.buffer[j]
            groups.setdefault(t, []).append(i)
        pad = self.model.tokenizer.pad_token_id
        total = None
        for t in sorted(groups):
            b = collate(self.train[self.names[t]], groups[t], pad, self.device)
            ce = F.cross_entropy(self.model(**model_inputs(b)), b["labels"], reduction="sum")
            total = ce if total is None else total + ce
        return total / m

    def state_dict(self) -> dict[str, Any]:
        return {"buffer": list(self.buffer), "n_seen": self.n_seen, "gen": self.gen.get_state()}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.buffer = [tuple(x) for x in s["buffer"]]
        self.n_seen = s["n_seen"]
        self.gen.set_state(s["gen"])

    def extra_bytes(self) -> dict[str, int]:
        out = {n: 0 for n in self.names[: self.stage + 1]}
        for t, i in self.buffer:  # token ids (int32) and the label of each buffered example
            out[self.names[t]] = out.get(self.names[t], 0) + 4 * len(self.train[self.names[t]].input_ids[i]) + 4
        return out

    def buffer_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t, _ in self.buffer:
            out[self.names[t]] = out.get(self.names[t], 0) + 1
        return out


class LwF(Strategy):
    """λ Σ_{j<t} KL(teacher_j ‖ student_j) at temperature T on the current batch, over the earlier tasks' heads
    (or label words); the teacher is a frozen copy of the model stage t started from."""

    name = "lwf"

    def __init__(self, *a: Any, **k: Any) -> None:
        super().__init__(*a, **k)
        self.teacher: TaskModel | None = None
        self.extra_loss = self._loss

    def settings(self) -> dict[str, Any]:
        return {"lambda": self._lambda(), "temperature": self.cfg.lwf_temperature}

    def before_stage(self, t: int) -> None:
        import copy

        super().before_stage(t)
        self.teacher = None
        if t > 0:
            m = self.model
            old = self.names[:t]
            heads = {n: copy.deepcopy(m.heads[n]) for n in old} if m.model_type == "head" else None
            teacher = TaskModel(copy.deepcopy(m.backbone), m.model_type, [m.tasks[n] for n in old], m.tokenizer,
                                m.pretrained_name, heads=heads)
            teacher.eval()
            for p in teacher.parameters():
                p.requires_grad_(False)
            self.teacher = teacher

    def _loss(self, batch: dict[str, Any], logits: torch.Tensor) -> torch.Tensor | None:
        if self.teacher is None:
            return None
        old = self.names[: self.stage]
        with torch.no_grad():
            t_out = readouts(self.teacher, batch, old)
        s_out = readouts(self.model, batch, old)
        return self._lambda() * distillation_loss(s_out, t_out, self.cfg.lwf_temperature)


class PackNet(Strategy):
    """Per-task binary masks on the body (PackNet without its retraining step): stage t trains only the entries
    no earlier task owns (the others are put back after every optimiser step), then keeps the ``mask_keep``
    share of the free entries with the largest moves |θ − θ_start| (ties: lower flat index first), owned by task
    t from then on; its other moves are reset. Task i is evaluated with the entries of tasks after i reset to
    the pretrained values (task identity known at test time)."""

    name = "packnet"
    has_views = True

    def __init__(self, *a: Any, **k: Any) -> None:
        super().__init__(*a, **k)
        self.pre = [p.detach().clone() for _, p in self.body]
        self.owner = [torch.zeros(p.shape, dtype=torch.uint8) for _, p in self.body]
        self.start: list[torch.Tensor] | None = None
        self.frozen: list[torch.Tensor] | None = None
        self.after_step = self._restore_frozen

    def settings(self) -> dict[str, Any]:
        return {"keep": self.cfg.mask_keep, "retraining": "none"}

    def before_stage(self, t: int) -> None:
        super().before_stage(t)
        if t >= 255:
            raise MtgraftError("packnet keeps at most 254 tasks (one byte per entry)")
        self.start = [p.detach().clone() for _, p in self.body]
        self.frozen = [(o > 0).to(p.device) for o, (_, p) in zip(self.owner, self.body, strict=True)]

    def _restore_frozen(self, step: int) -> None:
        with torch.no_grad():
            for (_, p), s, f in zip(self.body, self.start, self.frozen, strict=True):
                p.copy_(torch.where(f, s, p))

    def after_stage(self, t: int) -> None:
        with torch.no_grad():
            self._restore_frozen(0)  # the best state was taken after a step, so it holds them already
            free = torch.cat([(o == 0).reshape(-1) for o in self.owner])
            moves = torch.cat([(p.detach().cpu() - s.cpu()).abs().reshape(-1)
                               for (_, p), s in zip(self.body, self.start, strict=True)])
            moves[~free] = -math.inf
            n_free = int(free.sum())
            k = min(n_free, round(self.cfg.mask_keep * n_free))
            order = torch.argsort(moves, descending=True, stable=True)
            keep = torch.zeros_like(free)
            keep[order[:k]] = True
            off = 0
            for (_, p), o, s in zip(self.body, self.owner, self.start, strict=True):
                n = p.numel()
                kp = keep[off:off + n].reshape(p.shape)
                fr = free[off:off + n].reshape(p.shape)
                o[kp] = t + 1
                p.copy_(torch.where((fr & ~kp).to(p.device), s, p))
                off += n

    @contextlib.contextmanager
    def view(self, i: int) -> Iterator[None]:
        saved = []
        with torch.no_grad():
            for (_, p), o, pre in zip(self.body, self.owner, self.pre, strict=True):
                later = (o > i + 1).to(p.device)
                saved.append(p.detach().clone() if bool(later.any()) else None)
                if saved[-1] is not None:
                    p.copy_(torch.where(later, pre, p))
        try:
            yield
        finally:
            with torch.no_grad():
                for (_, p), s in zip(self.body, saved, strict=True):
                    if s is not None:
                        p.copy_(s)

    def state_dict(self) -> dict[str, Any]:
        return {"owner": [o.clone() for o in self.owner]}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.owner = [o.clone() for o in s["owner"]]

    def extra_bytes(self) -> dict[str, int]:
        seen = self.names[: self.stage + 1]
        total = sum(o.numel() for o in self.owner)  # one byte per body entry
        return {n: total // max(1, len(seen)) for n in seen}

    def owned(self) -> dict[str, int]:
        counts = np.bincount(torch.cat([o.reshape(-1) for o in self.owner]).numpy(), minlength=len(self.names) + 1)
        return {"free": int(counts[0]), **{n: int(counts[t + 1]) for t, n in enumerate(self.names)}}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f"owner.{n}": o.contiguous() for (n, _), o in zip(self.body, self.owner, strict=True)}


_CLASSES: dict[str, type[Strategy]] = {"naive": Strategy, "graft": Strategy, "ewc": EWC, "l2": L2,
                                       "replay": Replay, "lwf": LwF, "packnet": PackNet}


def make_strategy(cfg: Any, model: TaskModel, names: list[str], train: dict[str, Encoded], device: Any,
                  world_size: int = 1) -> Strategy:
    """The strategy ``cfg.strategy`` for a sequential run of ``model`` over ``names`` (``world_size``: the number
    of processes; replay and lwf, whose extra forward passes bypass DDP, run in one only)."""
    strategy_defaults(cfg.strategy)
    if cfg.strategy in ("replay", "lwf") and world_size > 1:
        raise MtgraftError(f"strategy '{cfg.strategy}' runs in one process (its extra forward passes bypass DDP)")
    cls = _CLASSES[cfg.strategy]
    s = cls(cfg, model, names, train, device)
    s.name = cfg.strategy
    return s
