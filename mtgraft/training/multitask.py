"""Multi-task fine-tuning (docs/method.md §4): ``joint`` (one model on a mixture of tasks) and ``sequential``
(tasks one after another, continual learning), with the accuracy matrix and continual metrics.

A ``head`` model has one head per task on a shared body; ``prompt``/``causal`` models share the LM head
and use each task's template and label words. The run folder is a checkpoint of every task
(``mtgraft graft --task T --finetuned DIR`` and ``--all-tasks`` work on it); a sequential run also
keeps each stage's checkpoint in ``DIR/stage_<t>_<task>/`` and writes ``DIR/accuracy_matrix.{csv,json,png}``.

Crash safety (``--resume``): the training loops write their periodic state to ``DIR.resume/`` (``joint``, or
``stage-<t>`` per stage); a sequential run also keeps there the checkpoint of every finished stage and a
record of what the finished stages produced (``stages``: accuracy rows, metrics, the model after the last one,
the RNG states). A killed run rerun with ``--resume`` skips the finished stages and continues the interrupted
loop, ending with the same files and metrics, bit for bit on the CPU, as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator

from mtgraft.config import CommaList, TrainConfig
from mtgraft.errors import MtgraftError
from mtgraft.evaluation.predict import accuracy, evaluate_probs
from mtgraft.models import CheckpointMeta, Encoded, TaskInfo, TaskModel, encode_examples, save_checkpoint
from mtgraft.models.embedded import pretrained_record, provenance_tags
from mtgraft.progress import progress_bar
from mtgraft.resume import ResumeState, rng_state, set_rng_state
from mtgraft.training.distributed import DistContext, dist_context
from mtgraft.training.loop import BatchStream, LoopResult, train_loop
from mtgraft.training.optim import make_optimizer, set_trainable
from mtgraft.utils import (
    atomic_dir,
    default_out,
    ensure_writable_dir,
    provenance,
    safe_name,
    set_seed,
    write_json,
)

__all__ = ["MultitaskConfig", "MultitaskResult", "R0_NOTE", "sampling_weights", "train_multitask"]

Sampling = Literal["proportional", "uniform", "temperature"]
R0_NOTE = {
    "head": "r0[i]: test accuracy of the initial model, i.e. the pretrained body with task i's untrained "
            "(seeded random) head — the same head task i still has before its own stage, so FWT measures how "
            "the earlier stages moved the body as seen through a random probe (close to chance; read FWT with care)",
    "prompt": "r0[i]: zero-shot test accuracy of the pretrained masked LM with task i's template and label words",
    "causal": "r0[i]: zero-shot test accuracy of the pretrained causal LM with task i's template and label words",
}


class MultitaskConfig(TrainConfig):
    """Settings of ``mtgraft train-multitask``: those of ``mtgraft train`` plus tasks, mode and sampling."""

    task: str | None = Field(None, description="not used here: give 'tasks'")
    tasks: CommaList = Field(description="task names or task YAMLs; the training order in sequential mode")
    mode: Literal["joint", "sequential"] = "joint"
    sampling: Sampling = Field("proportional", description="joint mode: which task each batch comes from")
    temperature: float = Field(2.0, gt=0, description="T of temperature sampling: p_i proportional to n_i^(1/T)")
    graft: bool = Field(False, description="sequential mode: graft-based continual learning after training")
    graft_sparsity: float = Field(1e-4, gt=0, le=1)
    graft_method: str = "graft"
    graft_recipe: Literal["fast", "thorough", "paper"] = "thorough"
    graft_updates: int | None = Field(None, ge=0)
    strategy: str = Field("naive", description="sequential mode: continual-learning strategy (mtgraft strategies)")
    strategy_lambda: float | None = Field(None, ge=0, description="strength of ewc / l2 / lwf (default: the "
                                          "strategy's, see mtgraft strategies)")
    ewc_decay: float = Field(0.9, ge=0, le=1, description="online EWC: F <- decay * F + F_t after each stage")
    replay_size: int = Field(100, ge=1, description="replay: examples kept in the buffer (all tasks together)")
    lwf_temperature: float = Field(2.0, gt=0, description="lwf: distillation temperature")
    mask_keep: float = Field(0.2, gt=0, le=1, description="packnet: share of the free body entries a task keeps")

    @field_validator("strategy")
    @classmethod
    def _strategy_check(cls, v: str) -> str:
        from mtgraft.training.catalog import STRATEGIES

        if v not in STRATEGIES:
            raise ValueError(f"unknown strategy '{v}' (see 'mtgraft strategies': {', '.join(STRATEGIES)})")
        return v

    @field_validator("tasks")
    @classmethod
    def _tasks_check(cls, v: list[str]) -> list[str]:
        if len(v) < 2:
            raise ValueError("give at least two tasks (comma-separated); use 'mtgraft train' for one")
        if len(set(v)) != len(v):
            raise ValueError(f"a task is listed twice: {v}")
        return v

    @model_validator(mode="after")
    def _no_task(self) -> MultitaskConfig:
        if self.task is not None:
            raise ValueError("'task' is not an option of multi-task runs; give 'tasks' (a list)")
        if self.strategy != "naive" and self.mode != "sequential":
            raise ValueError(f"strategy '{self.strategy}' needs mode 'sequential' (a joint run sees every task at once)")
        if self.graft and self.mode != "sequential":
            raise ValueError("graft-based continual learning needs mode 'sequential' (for a joint run use "
                             "'mtgraft graft --all-tasks --finetuned DIR')")
        return self


def sampling_weights(sizes: list[int], sampling: str, temperature: float = 2.0) -> list[float]:
    """Probability of drawing each task's batch: proportional to n_i, uniform, or to n_i^(1/T) (temperature)."""
    if not sizes or any(n <= 0 for n in sizes):
        raise MtgraftError(f"every task needs training examples, got sizes {sizes}")
    n = np.asarray(sizes, dtype=np.float64)
    if sampling == "proportional":
        w = n
    elif sampling == "uniform":
        w = np.ones_like(n)
    elif sampling == "temperature":
        if temperature <= 0:
            raise MtgraftError(f"temperature must be positive, got {temperature:g}")
        w = n ** (1.0 / temperature)
    else:
        raise MtgraftError(f"unknown sampling '{sampling}' (use proportional, uniform or temperature)")
    return (w / w.sum()).tolist()


@dataclass
class MultitaskResult:
    """Outcome of ``mtgraft train-multitask`` (``to_json`` is the ``--json`` output)."""

    tasks: list[str]
    mode: str
    checkpoint: str
    test: dict[str, dict[str, Any]]
    dev: dict[str, dict[str, Any]]
    steps: int
    train_seconds: float
    examples_per_second: float
    mlflow_run_id: str | None
    config: dict[str, Any]
    data: dict[str, Any]
    best_step: int | None = None
    sampling: dict[str, Any] | None = None
    stages: list[dict[str, Any]] = field(default_factory=list)
    accuracy_matrix: list[list[float | None]] | None = None
    r0: list[float] | None = None
    continual: dict[str, Any] | None = None
    files: dict[str, str] = field(default_factory=dict)
    graft_cl: dict[str, Any] | None = None
    processes: int = 1
    strategy: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "tasks": self.tasks, "mode": self.mode, "checkpoint": self.checkpoint, "test": self.test,
            "dev": self.dev, "steps": self.steps, "processes": self.processes,
            "train_seconds": round(self.train_seconds, 3),
            "examples_per_second": round(self.examples_per_second, 2), "mlflow_run_id": self.mlflow_run_id,
            "data": self.data, "config": self.config, "ece_bins": 10,
        }
        if self.mode == "joint":
            out["best_step"] = self.best_step
            out["sampling"] = self.sampling
        else:
            from mtgraft.evaluation.continual import FORGETTING_VARIANTS

            out.update({
                "accuracy_matrix": self.accuracy_matrix,
                "accuracy_matrix_axes": {"rows": "stages (after training task t, in order)", "columns": self.tasks},
                "r0": self.r0, "r0_note": R0_NOTE.get(self.config.get("type", "head")),
                "continual": self.continual, "forgetting_variants": FORGETTING_VARIANTS,
                "stages": self.stages, "files": self.files,
            })
            if self.graft_cl is not None:
                out["graft_cl"] = self.graft_cl
            if self.strategy is not None:
                out["strategy"] = self.strategy
        return out


# --------------------------------------------------------------------------------------------
# helpers


def _task_source(ref: str) -> str:
    """What resolves the task again later: a catalog name as given, a YAML as an absolute path."""
    p = Path(ref)
    return str(p.resolve()) if p.is_file() else ref


def eval_tasks(model: TaskModel, encs: dict[str, Encoded], device: Any, dist: DistContext,
               full: bool = True) -> dict[str, dict[str, Any]]:
    """Metrics of ``model`` on each task's examples, each with that task's head/label words.

    With several processes each predicts its share of a task's examples and all gather the predictions.
    """
    out: dict[str, dict[str, Any]] = {}
    for name, enc in encs.items():
        probs = dist.predict(model, enc, device)
        out[name] = evaluate_probs(probs, enc.labels) if full else {"accuracy": accuracy(probs, enc.labels)}
    return out


def subset_model(model: TaskModel, names: list[str]) -> TaskModel:
    """A view of ``model`` with only the tasks ``names`` (shares the backbone and those heads)."""
    infos = [model.tasks[n] for n in names]
    heads = {n: model.heads[n] for n in names} if model.model_type == "head" else None
    return TaskModel(model.backbone, model.model_type, infos, model.tokenizer, model.pretrained_name, heads=heads)


@contextlib.contextmanager
def _run_dir(out: str, enabled: bool) -> Iterator[Path | None]:
    """The run folder, written to a temporary sibling and renamed at the end (None on non-main processes)."""
    if not enabled:
        yield None
        return
    with atomic_dir(out) as tmp:
        yield tmp


def _link_or_copy(src: str, dst: str) -> None:
    """Hard-link ``src`` to ``dst`` (same file system: no copy), else copy it."""
    import os

    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _trainable_state(model: TaskModel) -> dict[str, torch.Tensor]:
    """CPU copies of the trainable tensors of ``model``."""
    return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}


def _save_into(model: TaskModel, meta: CheckpointMeta, folder: Path) -> None:
    """Write a checkpoint's files into an existing folder (next to stage folders and reports)."""
    staged = folder / ".checkpoint"
    save_checkpoint(model, meta, staged)
    for f in staged.iterdir():
        f.rename(folder / f.name)
    shutil.rmtree(staged)


# --------------------------------------------------------------------------------------------
# the run


def train_multitask(cfg: MultitaskConfig, show_progress: bool = True) -> MultitaskResult:
    """Fine-tune ``cfg.model`` on ``cfg.tasks`` jointly or in sequence; evaluate every task; save the run.

    ``cfg.graft`` is not acted on here: ``mtgraft.workflows.continual.train_multitask_with_grafts`` runs this,
    then graft-based continual learning.
    """
    from mtgraft.models import build_task_model
    from mtgraft.tasks import get_task, make_splits
    from mtgraft.tracking import mlflow_run

    specs = [get_task(t) for t in cfg.tasks]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise MtgraftError(f"two of the tasks have the same name: {names}")
    sources = {n: _task_source(ref) for n, ref in zip(names, cfg.tasks, strict=True)}
    out = cfg.out or default_out("multitask", f"{cfg.mode}-{len(names)}tasks")
    parent = Path(out).parent if str(Path(out).parent) else Path(".")
    ensure_writable_dir(parent)
    if Path(out).exists() and not Path(out).is_dir():
        raise MtgraftError(f"--out '{out}' exists and is not a folder")
    dist = dist_context(cfg.device, cfg.precision)  # refuses fp16 off CUDA before any work
    device = dist.device(cfg.device)
    show = show_progress and dist.is_main
    splits = {n: make_splits(s, cfg.k, cfg.seed, cfg.max_test) for n, s in zip(names, specs, strict=True)}
    set_seed(cfg.seed)
    model = build_task_model(cfg.model, cfg.type, specs, pooling=cfg.pooling)
    pre_hash = model.base_hash()
    set_trainable(model, cfg.freeze_embeddings, cfg.freeze_head, cfg.bias_only)
    model.to(device)
    enc = {split: {n: encode_examples(model, n, getattr(splits[n], split), cfg.max_length) for n in names}
           for split in ("train", "dev", "test")}
    data = {"k": cfg.k, "seed": cfg.seed, "max_test": cfg.max_test, "max_length": cfg.max_length,
            **{f"n_{split}": {n: len(e) for n, e in enc[split].items()} for split in enc}}
    config = cfg.model_dump()
    config["out"] = out
    # periodic state (crash safety): checked against the settings that shape the result
    state = ResumeState(out)
    conf = {k: v for k, v in config.items() if k not in ("resume", "tracking_uri", "device")}
    if not cfg.resume and dist.is_main:
        state.clear()  # a run without --resume starts over: drop the state of an earlier run to this folder
    dist.wait()
    infos = [model.tasks[n] for n in names]
    tags = {"mtgraft.command": "train-multitask", "mtgraft.mode": cfg.mode, "mtgraft.tasks": ",".join(names),
            **provenance_tags(cfg.model)}
    common = {"model_type": cfg.type, "pretrained": pretrained_record(cfg.model, pre_hash), "data": data,
              "train_config": config, "task_sources": sources}
    with mlflow_run("multitask", f"{cfg.mode}-{'+'.join(names)}", cfg.tracking_uri, enabled=dist.is_main,
                    tags=tags) as run:
        run.log_params(config)
        run.log_config(config)
        run.set_tags({"mtgraft.checkpoint": str(Path(out).resolve())})
        rs = (state, conf)
        if cfg.mode == "joint":
            result, write = _joint(cfg, model, enc, names, infos, common, device, dist, run, show, rs)
        else:
            result, write = _sequential(cfg, model, enc, names, infos, common, device, dist, run, show, out, rs)
        with _run_dir(out, dist.is_main) as tmp:
            if tmp is not None:
                write(tmp)
        if dist.is_main:
            state.clear()  # the run folder is complete: its periodic state is no longer needed
    dist.wait()
    result.checkpoint, result.mlflow_run_id, result.config, result.data = out, run.run_id, config, data
    result.processes = dist.world_size
    if cfg.mode == "sequential":
        result.files = {k: str(Path(out) / Path(v).name) for k, v in result.files.items()}
    return result


def _loop(cfg: MultitaskConfig, model: TaskModel, stream: BatchStream, dev_encs: dict[str, Encoded], device: Any,
          dist: DistContext, run: Any, show: bool, label: str, prefix: str,
          resumer: tuple[ResumeState, str, dict[str, Any]] | None = None, strategy: Any = None) -> LoopResult:
    """One training loop; the dev score is the mean dev accuracy over ``dev_encs``.

    ``resumer`` = (state, name, config): the loop writes its periodic state under ``name`` at every
    evaluation and, with ``cfg.resume``, continues from it.
    """
    opt = make_optimizer(model, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.head_lr)

    def dev_eval() -> dict[str, float]:
        accs = {n: m["accuracy"] for n, m in eval_tasks(model, dev_encs, device, dist, full=False).items()}
        return {"accuracy": float(np.mean(list(accs.values()))), **{f"{safe_name(n)}/accuracy": a
                                                                   for n, a in accs.items()}}

    with progress_bar(cfg.max_steps, label, show) as upd:
        def on_eval(p: Any) -> None:
            run.log_metrics(p.dev, step=p.step, prefix=prefix)

        def prog(step: int, f: dict[str, Any]) -> None:
            if step % 10 == 0 or step == cfg.max_steps:
                upd(step, f"loss {f['loss']:.3f}  best dev acc {f['best_dev']:.3f}")

        return train_loop(model, stream, dev_eval, optimizer=opt, max_steps=cfg.max_steps, eval_every=cfg.eval_every,
                          grad_clip=cfg.grad_clip, device=device, precision=cfg.precision,
                          l1_to_pretrained=cfg.l1_to_pretrained, progress=prog, on_eval=on_eval, dist=dist,
                          resumer=resumer, resume=cfg.resume,
                          extra_loss=getattr(strategy, "extra_loss", None),
                          after_step=getattr(strategy, "after_step", None))


def _joint(cfg: MultitaskConfig, model: TaskModel, enc: dict[str, dict[str, Encoded]], names: list[str],
           infos: list[TaskInfo], common: dict[str, Any], device: Any, dist: DistContext, run: Any,
           show: bool, rs: tuple[ResumeState, dict[str, Any]]) -> tuple[MultitaskResult, Callable[[Path], None]]:
    sizes = [len(enc["train"][n]) for n in names]
    weights = sampling_weights(sizes, cfg.sampling, cfg.temperature)
    sampling = {"rule": cfg.sampling, "temperature": cfg.temperature if cfg.sampling == "temperature" else None,
                "weights": dict(zip(names, weights, strict=True))}
    run.log_metrics({f"sampling/{safe_name(n)}": w for n, w in zip(names, weights, strict=True)})
    stream = BatchStream([enc["train"][n] for n in names], cfg.batch_size, cfg.seed, weights)
    res = _loop(cfg, model, stream, enc["dev"], device, dist, run, show, f"joint {'+'.join(names)}", "dev/",
                resumer=(rs[0], "joint", rs[1]))
    test = eval_tasks(model, enc["test"], device, dist)
    dev = eval_tasks(model, enc["dev"], device, dist)
    for n in names:
        run.log_metrics(test[n], prefix=f"test/{safe_name(n)}/")
        run.log_metrics(dev[n], prefix=f"dev/final/{safe_name(n)}/")
    run.log_metrics({"test/mean_accuracy": float(np.mean([test[n]["accuracy"] for n in names])),
                     "best_step": res.best_step, "examples_per_second": res.examples_per_second,
                     "train_seconds": res.train_seconds})

    def write(tmp: Path) -> None:
        meta = CheckpointMeta(tasks=infos, mode="joint", order=names, mlflow_run_id=run.run_id,
                              metrics={"test": test, "dev": dev, "best_step": res.best_step, "sampling": sampling},
                              provenance=provenance(), **common)
        _save_into(model, meta, tmp)

    return MultitaskResult(names, "joint", "", test, dev, res.steps, res.train_seconds, res.examples_per_second,
                           None, {}, {}, best_step=res.best_step, sampling=sampling), write


def _sequential(cfg: MultitaskConfig, model: TaskModel, enc: dict[str, dict[str, Encoded]], names: list[str],
                infos: list[TaskInfo], common: dict[str, Any], device: Any, dist: DistContext, run: Any,
                show: bool, out: str,
                rs: tuple[ResumeState, dict[str, Any]]) -> tuple[MultitaskResult, Callable[[Path], None]]:
    from mtgraft.evaluation.continual import continual_metrics, mlflow_metric_keys, save_accuracy_matrix
    from mtgraft.training.strategies import make_strategy

    state, conf = rs
    T = len(names)
    strategy = make_strategy(cfg, model, names, enc["train"], device, dist.world_size)  # before any saved state
    r0 = [m["accuracy"] for m in eval_tasks(model, enc["test"], device, dist, full=False).values()]
    R = np.full((T, T), math.nan)
    stages: list[dict[str, Any]] = []
    total_seconds, total_seen, test = 0.0, 0, {}
    # What the finished stages produced, kept in the periodic state with the model after the last of them and
    # the RNG states there: a resumed run skips those stages and starts from that model.
    done: list[dict[str, Any]] = []
    saved = state.load("stages", conf) if cfg.resume else None
    if saved is not None:
        done = saved["done"]
        with torch.no_grad():
            named = dict(model.named_parameters())
            for n, v in saved["params"].items():
                named[n].copy_(v)
        set_rng_state(saved["rng"])
        strategy.load_state_dict(saved.get("strategy") or {})
        strategy.stage = len(done) - 1
    stage_bytes: list[dict[str, int]] = [d.get("extra_bytes", {}) for d in done]
    for t, name in enumerate(names):
        folder = f"stage_{t + 1}_{safe_name(name)}"
        seen = names[: t + 1]
        if t < len(done):  # finished before the run was killed; its checkpoint is in the state folder
            d = done[t]
            R[t] = d["accuracy_row"]
            test, stage = d["test"], d["stage"]
            total_seconds += d["train_seconds"]
            total_seen += d["examples_seen"]
            stages.append(stage)
            run.log_metrics({f"acc/stage_{t + 1}/task_{safe_name(n)}": R[t, i] for i, n in enumerate(names)})
            continue
        stream = BatchStream([enc["train"][name]], cfg.batch_size, cfg.seed)
        t0 = time.perf_counter()
        strategy.before_stage(t)
        res = _loop(cfg, model, stream, {name: enc["dev"][name]}, device, dist, run, show,
                    f"stage {t + 1}/{T} {name}", f"stage_{t + 1}/dev/", resumer=(state, f"stage-{t + 1}", conf),
                    strategy=strategy)
        strategy.after_stage(t)
        total_seconds += res.train_seconds
        total_seen += res.examples_seen
        test = _eval_views(strategy, model, enc["test"], names, device, dist)
        stage_bytes.append(strategy.extra_bytes())
        R[t] = [test[n]["accuracy"] for n in names]
        run.log_metrics({f"acc/stage_{t + 1}/task_{safe_name(n)}": R[t, i] for i, n in enumerate(names)})
        stage = {"stage": t + 1, "task": name, "checkpoint": str(Path(out) / folder), "best_step": res.best_step,
                 "best_dev": res.best_dev, "steps": res.steps, "train_seconds": round(res.train_seconds, 3),
                 "wall_seconds": round(time.perf_counter() - t0, 3)}
        stages.append(stage)
        done.append({"accuracy_row": R[t].tolist(), "test": test, "stage": stage,
                     "train_seconds": res.train_seconds, "examples_seen": res.examples_seen,
                     "extra_bytes": stage_bytes[-1]})
        if dist.is_main:
            meta = CheckpointMeta(tasks=infos[: t + 1], mode="sequential", order=seen, mlflow_run_id=run.run_id,
                                  metrics={"stage": t + 1, "test": {n: test[n] for n in seen},
                                           "best_step": res.best_step, "accuracy_row": R[t].tolist()},
                                  provenance=provenance(), **common)
            # the stage checkpoint waits in the state folder (it outlives a kill) and moves into the run folder
            # at the end; then the stage is recorded as finished and its loop state is dropped
            save_checkpoint(subset_model(model, seen), meta, state.dir / folder)
            state.save("stages", {"done": done, "params": _trainable_state(model), "rng": rng_state(),
                                  "strategy": strategy.state_dict()}, conf)
            state.path(f"stage-{t + 1}").unlink(missing_ok=True)
    cont = continual_metrics(R, r0)
    run.log_metrics(mlflow_metric_keys(R, names, r0))
    dev = _eval_views(strategy, model, enc["dev"], names, device, dist)
    for n in names:
        run.log_metrics(test[n], prefix=f"test/{safe_name(n)}/")
    matrix = [[None if not math.isfinite(v) else float(v) for v in row] for row in R]
    strat = _strategy_record(strategy, stage_bytes)
    run.log_metrics({"strategy/extra_bytes": strat["extra_bytes"]})
    eps = total_seen / total_seconds if total_seconds > 0 else float("nan")
    result = MultitaskResult(names, "sequential", "", test, dev, cfg.max_steps * T, total_seconds, eps, None, {}, {},
                             stages=stages, accuracy_matrix=matrix, r0=r0, continual=cont, files={}, strategy=strat)

    def write(tmp: Path) -> None:
        for t, name in enumerate(names):
            folder = f"stage_{t + 1}_{safe_name(name)}"
            src = state.dir / folder
            if not (src / "mtgraft.json").is_file():
                raise MtgraftError(f"the checkpoint of stage {t + 1} ({src}) is missing; rerun without --resume")
            shutil.copytree(src, tmp / folder, copy_function=_link_or_copy)
        result.files = {k: str(v) for k, v in save_accuracy_matrix(R, names, tmp, r0).items()}
        for f in result.files.values():
            run.log_artifact(f, "continual")
        rel_stages = [{**s, "checkpoint": Path(s["checkpoint"]).name} for s in stages]
        tensors = strategy.tensors()
        if tensors:
            from safetensors.torch import save_file

            save_file(tensors, str(tmp / "strategy_state.safetensors"))
            result.files["strategy_state"] = str(tmp / "strategy_state.safetensors")
        meta = CheckpointMeta(tasks=infos, mode="sequential", order=names, mlflow_run_id=run.run_id,
                              metrics={"test": test, "dev": dev, "accuracy_matrix": matrix, "r0": r0,
                                       "continual": cont, "stages": rel_stages, "strategy": strat},
                              provenance=provenance(), **common)
        _save_into(model, meta, tmp)
        write_json(tmp / "stages.json", {"order": names, "stages": rel_stages, "r0": r0,
                                         "r0_note": R0_NOTE.get(cfg.type)})

    return result, write


def _eval_views(strategy: Any, model: TaskModel, encs: dict[str, Encoded], names: list[str], device: Any,
                dist: DistContext) -> dict[str, dict[str, Any]]:
    """``eval_tasks``, each task seen through the strategy's view of it (PackNet: its own masks); strategies
    without views evaluate exactly as ``eval_tasks``."""
    if not strategy.has_views:
        return eval_tasks(model, encs, device, dist)
    out = {}
    for i, n in enumerate(names):
        with strategy.view(i):
            out[n] = eval_tasks(model, {n: encs[n]}, device, dist)[n]
    return out


def _strategy_record(strategy: Any, stage_bytes: list[dict[str, int]]) -> dict[str, Any]:
    """The strategy's name, settings and storage (bytes kept beyond the one model, per task, after each stage)."""
    from mtgraft.training.catalog import STRATEGIES

    info = STRATEGIES[strategy.name]
    last = stage_bytes[-1] if stage_bytes else {}
    rec: dict[str, Any] = {"name": strategy.name, "settings": strategy.settings(), "reference": info.reference,
                           "task_identity": info.task_identity, "keeps": info.keeps,
                           "extra_bytes": int(sum(last.values())), "extra_bytes_per_task": last,
                           "extra_bytes_by_stage": [int(sum(b.values())) for b in stage_bytes]}
    if strategy.name == "replay":
        rec["buffer"] = strategy.buffer_counts()
    if strategy.name == "packnet":
        rec["owned_entries"] = strategy.owned()
    return rec


def stage_dirs(run_dir: str | Path) -> list[tuple[str, Path]]:
    """(task, stage checkpoint folder) of a sequential run, in training order."""
    from mtgraft.models import read_checkpoint_meta

    meta = read_checkpoint_meta(run_dir)
    if meta.mode != "sequential":
        raise MtgraftError(f"'{run_dir}' is a {meta.mode} checkpoint, not a sequential multi-task run")
    stages = meta.metrics.get("stages") or []
    if len(stages) != len(meta.order or []):
        raise MtgraftError(f"'{run_dir}' does not list its stages (written by an older mtgraft?)")
    out = []
    for s in stages:
        p = Path(run_dir) / s["checkpoint"]
        if not p.is_dir():
            raise MtgraftError(f"stage checkpoint {p} of run '{run_dir}' is missing")
        out.append((s["task"], p))
    return out
