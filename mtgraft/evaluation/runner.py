"""``mtgraft eval``: evaluate a checkpoint or a SkillPatch as the paper does (docs/method.md §3)."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from pydantic import Field

from mtgraft.config import DEFAULT_MAX_TEST, BaseConfig, CommaList, KShot, RecordedMaxTest
from mtgraft.errors import MtgraftError
from mtgraft.models import (
    CHECKPOINT_META,
    CheckpointMeta,
    TaskInfo,
    TaskModel,
    build_task_model,
    load_checkpoint,
    read_checkpoint_meta,
    resolve_task,
)
from mtgraft.utils import ensure_writable_dir, resolve_device, write_json


class EvalConfig(BaseConfig):
    """Settings of ``mtgraft eval``; data settings default to those recorded with the model/patch."""

    task: str | None = None
    model: str | None = None
    patch: str | None = None
    pretrained: str | None = None
    finetuned: str | None = None
    eval_tasks: CommaList = Field(default_factory=list)
    k: KShot = None
    data_seed: int | None = None
    max_test: RecordedMaxTest = None
    max_length: int | None = None
    device: str = "auto"
    out: str | None = None
    tracking_uri: str | None = None
    track: bool = True


def _with_head_of(pre: TaskModel, model: TaskModel, task: str) -> TaskModel:
    """The pretrained model carrying ``model``'s task head (P_0 of a ``head`` model)."""
    if model.model_type == "head":
        with torch.no_grad():
            src = dict(model.named_parameters())
            for n, p in pre.named_parameters():
                if n.startswith(f"heads.{task}."):
                    p.copy_(src[n])
    return pre


def _meta_if_checkpoint(path: str | None) -> CheckpointMeta | None:
    """The metadata of a checkpoint folder that still exists (None otherwise)."""
    if not path or not (Path(path) / CHECKPOINT_META).is_file():
        return None
    try:
        return read_checkpoint_meta(path)
    except MtgraftError as e:
        from mtgraft.progress import warn

        warn(f"the recorded fine-tuned checkpoint is unreadable, going on without it: {e}")
        return None


def evaluate(cfg: EvalConfig, show_progress: bool = True) -> dict[str, Any]:
    """Accuracy, macro-F1, ECE (10 bins), Brier, agreement with the fine-tuned model, Rel, OOD."""
    from mtgraft.evaluation.cache import get_cache, model_key, runtime_key, tensors_digest
    from mtgraft.evaluation.metrics import relative_gain, reliability_diagram
    from mtgraft.evaluation.predict import evaluate_probs, predict_probs
    from mtgraft.evaluation.uncertainty import N_BOOT, intervals
    from mtgraft.tasks import compatible, make_splits
    from mtgraft.utils import default_out

    if bool(cfg.model) == bool(cfg.patch):
        raise MtgraftError("give exactly one of --model DIR or --patch PATCH")
    device = resolve_device(cfg.device)
    finetuned_path: str | None = cfg.finetuned
    recorded_ref: dict[str, Any] = {}
    # 1. what to evaluate on, from the small files only (no model is loaded before every check passed)
    if cfg.patch:
        from mtgraft.patches import SkillPatch

        patch = SkillPatch.load(cfg.patch)
        h = patch.header
        tasks_info = [TaskInfo(**{"name": n, **v}) for n, v in h.tasks_info.items()]
        ptasks = [t.name for t in tasks_info]
        ft_meta = _meta_if_checkpoint((h.finetuned or {}).get("path"))
        ref = cfg.task or ptasks[0]
        spec = resolve_task(ref, ft_meta, f"patch {cfg.patch}", files=[h.tasks_info.get(ref, {}).get("spec_file")],
                            known=ref in ptasks)
        if spec.name not in ptasks and (cfg.task or spec.name) not in ptasks:
            raise MtgraftError(f"patch {cfg.patch} is for task(s) {ptasks}, not '{spec.name}'")
    else:
        meta = read_checkpoint_meta(cfg.model)
        spec = resolve_task(cfg.task or meta.tasks[0].name, meta, f"checkpoint {cfg.model}")
        meta.task(spec.name)
    known = ft_meta if cfg.patch else meta
    ospecs = [resolve_task(other, known) for other in cfg.eval_tasks]
    for ospec in ospecs:
        if not compatible(spec, ospec):
            raise MtgraftError(f"cannot evaluate '{spec.name}' on '{ospec.name}': label spaces differ "
                               f"({spec.labels} vs {ospec.labels})")
    # 2. the model
    if cfg.patch:
        base = cfg.pretrained or h.base_model
        model = build_task_model(base, h.model_type, tasks_info)
        patch.apply_to_model(model, patch.check_base(model, f"base model '{base}'"))
        pre_name = base
        data = dict(h.data)
        finetuned_path = finetuned_path or (h.finetuned or {}).get("path")
        recorded_ref = (h.metrics or {}).get("reference", {})
        what = {"patch": str(cfg.patch), "method": h.method, "region_size": h.region_size, "sparsity": h.sparsity}
    else:
        model, meta = load_checkpoint(cfg.model)
        pre_name = cfg.pretrained or meta.pretrained.get("name")
        data = dict(meta.data)
        extra = meta.model_extra or {}
        if meta.mode == "grafted":
            applied = extra.get("patches") or []
            if finetuned_path is None and len(applied) == 1:
                finetuned_path = applied[0].get("finetuned")
            recorded_ref = meta.metrics.get("reference", {})
        elif finetuned_path is None:
            finetuned_path = str(cfg.model)  # a fine-tuned checkpoint is its own reference
        what = {"model": str(cfg.model), "mode": meta.mode}
    task_name = spec.name
    for key, attr in (("k", "k"), ("seed", "data_seed"), ("max_test", "max_test"), ("max_length", "max_length")):
        v = getattr(cfg, attr)
        if v is not None:
            data[key] = v
    data.setdefault("k", 64)
    data.setdefault("seed", 13)
    data.setdefault("max_test", DEFAULT_MAX_TEST)
    data.setdefault("max_length", 128)
    ns = SimpleNamespace(k=data["k"], seed=data["seed"], max_test=data["max_test"])
    tests = {task_name: make_splits(spec, ns.k, ns.seed, ns.max_test).test}
    for ospec in ospecs:
        tests[ospec.name] = make_splits(ospec, ns.k, ns.seed, ns.max_test).test
    model.to(device)
    cache = get_cache()  # encoded test sets and predictions computed before are read back
    encs = {n: cache.encoded(model, task_name, ex, data["max_length"]) for n, ex in tests.items()}

    def run(m: TaskModel) -> dict[str, np.ndarray]:
        m.to(device)
        key = {"what": "model", "state": tensors_digest(m.state_dict()) if cache.enabled else None,
               **model_key(m, task_name), **runtime_key(device)}
        return {n: cache.probs(key, e, lambda e=e: predict_probs(m, e, 64, device)) for n, e in encs.items()}

    probs = run(model)
    ft_probs = None
    if finetuned_path and Path(finetuned_path).is_dir():
        if cfg.model and Path(finetuned_path).resolve() == Path(cfg.model).resolve():
            ft_probs = probs
        else:
            ft_model, _ = load_checkpoint(finetuned_path)
            ft_probs = run(ft_model)
            del ft_model
    pre_probs = None
    if pre_name:
        pre = build_task_model(pre_name, model.model_type, list(model.tasks.values()))
        pre_probs = run(_with_head_of(pre, model, task_name))
        del pre
    results: dict[str, Any] = {}
    for n, e in encs.items():
        ref = ft_probs[n].argmax(1) if ft_probs is not None else None
        m = evaluate_probs(probs[n], e.labels, ref)
        p1 = evaluate_probs(ft_probs[n], e.labels)["accuracy"] if ft_probs is not None else None
        p0 = evaluate_probs(pre_probs[n], e.labels)["accuracy"] if pre_probs is not None else None
        if n == task_name:
            p1 = p1 if p1 is not None else recorded_ref.get("finetuned", {}).get("accuracy")
            p0 = p0 if p0 is not None else recorded_ref.get("pretrained", {}).get("accuracy")
        m["pretrained_accuracy"] = p0
        m["finetuned_accuracy"] = p1
        m["rel"] = relative_gain(m["accuracy"], p0, p1) if p0 is not None and p1 is not None else None
        # paired bootstrap over the test examples (docs/method.md §3); Rel's interval only with P_0 and P_1
        # measured here on the same examples (not from recorded numbers)
        m.update(intervals(e.labels, probs[n].argmax(1), pre_probs[n].argmax(1) if pre_probs is not None else None,
                           ft_probs[n].argmax(1) if ft_probs is not None else None, seed=int(data["seed"])))
        if ref is None:
            m["agreement"] = None
        results[n] = m
    out = Path(cfg.out or default_out("eval", task_name))
    ensure_writable_dir(out)
    curves = {"evaluated": (probs[task_name], np.asarray(encs[task_name].labels))}
    if ft_probs is not None and ft_probs is not probs:
        curves["fine-tuned"] = (ft_probs[task_name], np.asarray(encs[task_name].labels))
    diag = reliability_diagram(curves, out / "reliability.png", title=f"{task_name}: reliability (10 equal-width bins)")
    report = {"task": task_name, **what, "data": data, "ece_bins": 10, "test": results[task_name],
              "uncertainty": {"method": "paired bootstrap over test examples", "n_boot": N_BOOT,
                              "seed": int(data["seed"]), "confidence": 0.95, "interval": "percentile"},
              "ood": {n: r for n, r in results.items() if n != task_name}, "reliability_diagram": str(diag),
              "finetuned": finetuned_path, "pretrained": pre_name, "out": str(out)}
    write_json(out / "eval.json", report)
    if cfg.track:
        from mtgraft.tracking import mlflow_run

        with mlflow_run("eval", f"eval-{task_name}", cfg.tracking_uri, tags={"mtgraft.command": "eval"}) as r:
            r.log_params({"task": task_name, **what, **{f"data.{k}": v for k, v in data.items()}})
            r.log_metrics(results[task_name], prefix="test/")
            r.log_metrics(report["ood"], prefix="ood/")
            r.log_artifact(out / "eval.json")
            r.log_artifact(diag)
            report["mlflow_run_id"] = r.run_id
    report["seconds"] = time.perf_counter()
    report.pop("seconds")
    return report
