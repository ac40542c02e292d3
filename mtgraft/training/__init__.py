"""Fine-tuning (METHOD.md §1): the optimisers, a lean training loop and the train entry point."""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mtgraft.config import TrainConfig
from mtgraft.errors import MtgraftError
from mtgraft.evaluation.predict import accuracy, autocast_ctx, evaluate_probs, predict_probs
from mtgraft.models import (
    CheckpointMeta,
    Encoded,
    TaskInfo,
    TaskModel,
    build_task_model,
    collate,
    encode_examples,
    model_inputs,
    save_checkpoint,
)
from mtgraft.progress import progress_bar
from mtgraft.utils import default_out, ensure_writable_dir, provenance, resolve_device, set_seed

# --------------------------------------------------------------------------------------------
# Trainable parameters and optimisers


def set_trainable(model: TaskModel, freeze_embeddings: bool = True, freeze_head: bool = True,
                  bias_only: bool = False) -> list[str]:
    """Set ``requires_grad`` per METHOD.md §1; returns the names of the trainable parameters."""
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


# --------------------------------------------------------------------------------------------
# Data parallelism (``accelerate launch`` / ``torchrun``)


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


# --------------------------------------------------------------------------------------------
# The loop


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


def train_loop(model: TaskModel, stream: BatchStream, dev_eval: Callable[[], dict[str, float]], *,
               optimizer: torch.optim.Optimizer, max_steps: int, eval_every: int, grad_clip: float,
               device: torch.device, precision: str = "fp32", l1_to_pretrained: float = 0.0,
               progress: Callable[[int, dict[str, Any]], None] | None = None,
               on_eval: Callable[[EvalPoint], None] | None = None,
               keep_best: bool = True, checkpoint_hook: Callable[[int], None] | None = None,
               start_step: int = 0, state: dict[str, Any] | None = None,
               dist: DistContext | None = None, resumer: Any = None, resume: bool = False) -> LoopResult:
    """Optimise cross-entropy for ``max_steps``; evaluate ``dev_eval`` every ``eval_every`` steps.

    Keeps (in memory) the trainable tensors of the best dev score and loads them at the end.
    With an active ``dist`` each process takes its share of every global batch and DDP averages the
    gradients, so N processes follow the same trajectory as one (up to float rounding, dropout aside).
    """
    ddp = dist is not None and dist.active
    net = dist.wrap(model) if ddp else model
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in trainable]
    pre = None
    if l1_to_pretrained > 0:
        pre = [p.detach().clone() for p in params]
    st = state or {}
    if resumer is not None and resume:
        saved = resumer[0].load(resumer[1], resumer[2])
        if saved is not None:
            from mtgraft.resume import set_rng_state

            with torch.no_grad():
                for (n, p) in trainable:
                    p.copy_(saved["params"][n])
            optimizer.load_state_dict(saved["optimizer"])
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
    loss_fn = nn.CrossEntropyLoss()
    net.train()
    last_loss = float("nan")
    for step in range(start_step + 1, max_steps + 1):
        t0 = time.perf_counter()
        enc, idx = stream.next()
        n_global = len(idx)
        if ddp:
            idx = dist.shard(idx)
        batch = collate(enc, idx, pad, device)
        with autocast_ctx(device, precision):
            logits = net(**model_inputs(batch))
        if ddp:
            # sum over this share / global batch size * N: DDP's mean over processes is the global-batch mean
            loss = nn.functional.cross_entropy(logits.float(), batch["labels"], reduction="sum") \
                * (dist.world_size / n_global)
        else:
            loss = loss_fn(logits.float(), batch["labels"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if pre is not None:
            with torch.no_grad():
                for p, p0 in zip(params, pre, strict=True):
                    if p.grad is not None:
                        p.grad.add_(torch.sign(p - p0), alpha=l1_to_pretrained)
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
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
            if resumer is not None and (dist is None or dist.is_main):
                from mtgraft.resume import rng_state

                resumer[0].save(resumer[1], {
                    "step": step, "params": {n: p.detach().to("cpu", copy=True) for n, p in trainable},
                    "optimizer": optimizer.state_dict(), "stream": stream.state_dict(), "rng": rng_state(),
                    "best_dev": best_dev, "best_step": best_step, "best_state": best_state, "history": history,
                    "seen": seen, "train_time": train_time}, resumer[2])
        if progress:
            progress(step, {"loss": last_loss, "best_dev": best_dev})
    if keep_best and best_state is not None:
        with torch.no_grad():
            named = dict(model.named_parameters())
            for n, v in best_state.items():
                named[n].copy_(v)
    model.eval()
    return LoopResult(best_step, best_dev, history, max_steps, train_time, seen)


# --------------------------------------------------------------------------------------------
# `mtgraft train`


@dataclass
class TrainResult:
    """Outcome of ``mtgraft train``."""

    checkpoint: str
    task: str
    test: dict[str, Any]
    dev: dict[str, Any]
    best_step: int
    steps: int
    train_seconds: float
    examples_per_second: float
    mlflow_run_id: str | None
    config: dict[str, Any]
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "task": self.task, "checkpoint": self.checkpoint, "test": self.test, "dev": self.dev,
            "best_step": self.best_step, "steps": self.steps, "train_seconds": round(self.train_seconds, 3),
            "examples_per_second": round(self.examples_per_second, 2), "mlflow_run_id": self.mlflow_run_id,
            "data": self.data, "config": self.config,
        }


def train(cfg: TrainConfig, show_progress: bool = True) -> TrainResult:
    """Fine-tune ``cfg.model`` on ``cfg.task``; keep the best dev checkpoint; evaluate on test; save."""
    from mtgraft.tasks import get_task, make_splits
    from mtgraft.tracking import mlflow_run

    task = get_task(cfg.task)
    out = cfg.out or default_out("train", task.name)
    ensure_writable_dir(Path(out).parent if Path(out).parent != Path("") else Path("."))
    if Path(out).exists() and not Path(out).is_dir():
        raise MtgraftError(f"--out '{out}' exists and is not a folder")
    dist = dist_context(cfg.device)
    device = dist.device(cfg.device)
    show_progress = show_progress and dist.is_main
    splits = make_splits(task, cfg.k, cfg.seed, cfg.max_test)
    set_seed(cfg.seed)
    model = build_task_model(cfg.model, cfg.type, [task])
    pre_hash = model.base_hash()
    set_trainable(model, cfg.freeze_embeddings, cfg.freeze_head, cfg.bias_only)
    model.to(device)
    info = model.tasks[task.name]
    enc_train = encode_examples(model, info.name, splits.train, cfg.max_length)
    enc_dev = encode_examples(model, info.name, splits.dev, cfg.max_length)
    enc_test = encode_examples(model, info.name, splits.test, cfg.max_length)
    data = {"k": cfg.k, "seed": cfg.seed, "max_test": cfg.max_test, "max_length": cfg.max_length,
            "n_train": len(enc_train), "n_dev": len(enc_dev), "n_test": len(enc_test)}
    config = cfg.model_dump()
    config["out"] = out
    with mlflow_run("train", f"train-{task.name}", cfg.tracking_uri, enabled=dist.is_main,
                    tags={"mtgraft.command": "train", "mtgraft.task": task.name}) as run:
        run.log_params(config)
        run.log_config(config)
        run.set_tags({"mtgraft.checkpoint": str(Path(out).resolve())})
        opt = make_optimizer(model, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.head_lr)
        stream = BatchStream([enc_train], cfg.batch_size, cfg.seed)

        def dev_eval() -> dict[str, float]:
            probs = predict_probs(model, enc_dev, 64, device, cfg.precision)
            return {"accuracy": accuracy(probs, enc_dev.labels)}

        with progress_bar(cfg.max_steps, f"train {task.name}", show_progress) as upd:
            def on_eval(p: EvalPoint) -> None:
                run.log_metrics(p.dev, step=p.step, prefix="dev/")

            def prog(step: int, f: dict[str, Any]) -> None:
                if step % 10 == 0 or step == cfg.max_steps:
                    upd(step, f"loss {f['loss']:.3f}  best dev acc {f['best_dev']:.3f}")

            from mtgraft.resume import ResumeState

            conf = {k: v for k, v in config.items() if k not in ("resume", "tracking_uri", "device", "max_steps")}
            resumer = (ResumeState(out), "train", conf)  # periodic state at every evaluation: --resume continues
            res = train_loop(model, stream, dev_eval, optimizer=opt, max_steps=cfg.max_steps,
                             eval_every=cfg.eval_every, grad_clip=cfg.grad_clip, device=device,
                             precision=cfg.precision, l1_to_pretrained=cfg.l1_to_pretrained,
                             progress=prog, on_eval=on_eval, dist=dist, resumer=resumer, resume=cfg.resume)
        dev_probs = predict_probs(model, enc_dev, 64, device, cfg.precision)
        test_probs = predict_probs(model, enc_test, 64, device, cfg.precision)
        dev_m = evaluate_probs(dev_probs, enc_dev.labels)
        test_m = evaluate_probs(test_probs, enc_test.labels)
        run.log_metrics(test_m, prefix="test/")
        run.log_metrics({"best_step": res.best_step, "examples_per_second": res.examples_per_second,
                         "train_seconds": res.train_seconds})
        meta = CheckpointMeta(
            model_type=cfg.type, tasks=[info], pretrained={"name": cfg.model, "hash": pre_hash},
            data=data, mode="single", order=[task.name], train_config=config,
            metrics={"test": test_m, "dev": dev_m, "best_step": res.best_step},
            mlflow_run_id=run.run_id, provenance=provenance(),
        )
        model.to("cpu")
        if dist.is_main:
            save_checkpoint(model, meta, out)
            resumer[0].clear()
    dist.wait()
    return TrainResult(out, task.name, test_m, dev_m, res.best_step, res.steps, res.train_seconds,
                       res.examples_per_second, run.run_id, config, data)


def task_infos(specs: list[Any]) -> list[TaskInfo]:
    """TaskInfo of catalog specs."""
    return [TaskInfo.from_spec(s) for s in specs]
