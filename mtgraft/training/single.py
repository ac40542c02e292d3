"""``mtgraft train``: fine-tune a model on one task, keep the best dev state, evaluate on test, save."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtgraft.config import TrainConfig
from mtgraft.errors import MtgraftError
from mtgraft.evaluation.predict import accuracy, evaluate_probs
from mtgraft.models import CheckpointMeta, TaskInfo, build_task_model, encode_examples, save_checkpoint
from mtgraft.models.embedded import pretrained_record, provenance_tags
from mtgraft.progress import progress_bar
from mtgraft.training.distributed import dist_context
from mtgraft.training.loop import BatchStream, EvalPoint, train_loop
from mtgraft.training.optim import make_optimizer, set_trainable
from mtgraft.utils import default_out, ensure_writable_dir, provenance, set_seed


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
    dist = dist_context(cfg.device, cfg.precision)  # refuses fp16 off CUDA before any work
    device = dist.device(cfg.device)
    show_progress = show_progress and dist.is_main
    splits = make_splits(task, cfg.k, cfg.seed, cfg.max_test)
    set_seed(cfg.seed)
    model = build_task_model(cfg.model, cfg.type, [task], pooling=cfg.pooling)
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
                    tags={"mtgraft.command": "train", "mtgraft.task": task.name,
                          **provenance_tags(cfg.model)}) as run:
        run.log_params(config)
        run.log_config(config)
        run.set_tags({"mtgraft.checkpoint": str(Path(out).resolve())})
        opt = make_optimizer(model, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.head_lr)
        stream = BatchStream([enc_train], cfg.batch_size, cfg.seed)

        def dev_eval() -> dict[str, float]:
            probs = dist.predict(model, enc_dev, device)
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
        dev_probs = dist.predict(model, enc_dev, device)
        test_probs = dist.predict(model, enc_test, device)
        dev_m = evaluate_probs(dev_probs, enc_dev.labels)
        test_m = evaluate_probs(test_probs, enc_test.labels)
        run.log_metrics(test_m, prefix="test/")
        run.log_metrics({"best_step": res.best_step, "examples_per_second": res.examples_per_second,
                         "train_seconds": res.train_seconds})
        meta = CheckpointMeta(
            model_type=cfg.type, tasks=[info], pretrained=pretrained_record(cfg.model, pre_hash),
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
