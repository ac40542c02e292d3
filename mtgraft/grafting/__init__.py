"""Grafting (METHOD.md §2): find a tiny region whose fine-tuned values, grafted onto the pretrained model,
recover the fine-tuned performance. ``run_graft`` runs every method at every sparsity and writes SkillPatches."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, field_validator

from mtgraft.config import BaseConfig, parse_k
from mtgraft.errors import MtgraftError
from mtgraft.grafting.methods import METHODS, SelectContext, Selection, get_method
from mtgraft.grafting.space import GraftSpace, budget_k, topk_indices
from mtgraft.models import (
    CheckpointMeta,
    build_task_model,
    encode_examples,
    load_checkpoint,
    read_checkpoint_meta,
)
from mtgraft.utils import atomic_dir, ensure_writable_dir, provenance, resolve_device, set_seed, write_json

__all__ = ["GraftConfig", "GraftSpace", "METHODS", "RECIPES", "budget_k", "run_graft", "topk_indices"]

#: Named recipes for the learned graft. ``paper`` reproduces the reference's behaviour (region may grow
#: past its budget); ``thorough`` is the default, chosen by measurement: the paper recipe's Rel or better at
#: equal region size in about a ninth of its time (docs/benchmarks.md#grafting); ``fast`` costs about a fifth
#: of ``thorough`` and stops early (the studies use it to stay within their time budget).
RECIPES: dict[str, dict[str, Any]] = {
    "paper": {"updates": 100, "lr": 1e7, "sigmoid_bias": 10.0, "examples_per_update": 1024, "batch_size": 8,
              "budget": "free", "candidates": None, "patience": None, "step_rule": "gd", "init": "movement"},
    "fast": {"updates": 10, "lr": 1e8, "sigmoid_bias": 10.0, "examples_per_update": 1024, "batch_size": 8,
             "budget": "strict", "candidates": 10, "patience": 2, "step_rule": "gd", "init": "auto"},
    # the default: strict budget, 100·k candidates, no early stop
    "thorough": {"updates": 10, "lr": 1e8, "sigmoid_bias": 10.0, "examples_per_update": 1024, "batch_size": 8,
                 "budget": "strict", "candidates": 100, "patience": None, "step_rule": "gd", "init": "auto"},
}
DEFAULT_METHODS = ["graft", "topk", "random", "bias-only"]


class GraftConfig(BaseConfig):
    """Settings of ``mtgraft graft``. Unset learning settings come from the recipe; unset data settings
    from the checkpoint."""

    task: str | None = None
    all_tasks: bool = False
    finetuned: str
    pretrained: str | None = None
    sparsity: list[float] = Field(default_factory=lambda: [1e-4])
    method: list[str] = Field(default_factory=lambda: list(DEFAULT_METHODS))
    recipe: Literal["fast", "thorough", "paper"] = "thorough"
    updates: int | None = Field(None, ge=0)
    lr: float | None = Field(None, gt=0)
    sigmoid_bias: float | None = None
    examples_per_update: int | None = Field(None, ge=1)
    batch_size: int | None = Field(None, ge=1)
    budget: Literal["strict", "free"] | None = None
    candidates: float | None = Field(None, ge=1)
    patience: int | None = Field(None, ge=1)
    step_rule: Literal["gd", "normalized"] | None = None
    init: Literal["auto", "movement", "saliency"] | None = None
    seed: int = 13
    k: int | None = None
    data_seed: int | None = None
    max_test: int | None = None
    max_length: int | None = None
    eval_tasks: list[str] = Field(default_factory=list)
    save_baselines: bool = False
    device: str = "auto"
    out: str | None = None
    do_register: bool = True
    tracking_uri: str | None = None
    track: bool = True
    resume: bool = False

    @field_validator("sparsity", "method", "eval_tasks", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [x.strip() for x in v.split(",") if x.strip()]
        if isinstance(v, (int, float)):
            return [v]
        return v

    @field_validator("sparsity")
    @classmethod
    def _sparsity(cls, v: list[float]) -> list[float]:
        if not v:
            raise ValueError("give at least one sparsity")
        for s in v:
            if not (0 < s <= 1):
                raise ValueError(f"sparsity must be in (0, 1], got {s:g}")
        return v

    @field_validator("method")
    @classmethod
    def _methods(cls, v: list[str]) -> list[str]:
        for m in v:
            if m not in METHODS:
                raise ValueError(f"unknown method '{m}' (available: {', '.join(METHODS)})")
        return v

    @field_validator("k", mode="before")
    @classmethod
    def _k(cls, v: Any) -> int | None:
        return parse_k(v) if v is not None else None

    def learn_settings(self) -> dict[str, Any]:
        """The recipe's settings with explicit options on top."""
        s = dict(RECIPES[self.recipe])
        for key in s:
            v = getattr(self, key)
            if v is not None:
                s[key] = v
        return s


@dataclass
class GraftResult:
    """Everything ``mtgraft graft`` produced for one task."""

    task: str
    out: str
    results: list[dict[str, Any]]
    reference: dict[str, dict[str, Any]]
    graftable_size: int
    head_params: int
    mlflow_run_id: str | None
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"task": self.task, "out": self.out, "graftable_size": self.graftable_size,
                "head_params": self.head_params, "sparsity_note": "sparsity and region_size count the "
                "graftable body only; the task head is always grafted", "ece_bins": 10,
                "reference": self.reference, "results": self.results, "mlflow_run_id": self.mlflow_run_id,
                "seconds": round(self.seconds, 2), **self.extra}


def data_settings(cfg: GraftConfig | Any, meta: CheckpointMeta) -> dict[str, Any]:
    """K, data seed, test cap, max length: explicit options, else what the checkpoint recorded."""
    d = dict(meta.data or {})
    out = {"k": d.get("k", 64), "seed": d.get("seed", 13), "max_test": d.get("max_test", 1000),
           "max_length": d.get("max_length", 128)}
    for key, attr in (("k", "k"), ("seed", "data_seed"), ("max_test", "max_test"), ("max_length", "max_length")):
        v = getattr(cfg, attr, None)
        if v is not None:
            out[key] = v
    return out


def safe_name(s: str) -> str:
    """A file-name-safe version of ``s``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s)


def _head_state(model: Any, task: str) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    return {n: params[n].detach().cpu().clone() for n in model.head_param_names(task)}


def run_graft(cfg: GraftConfig, show_progress: bool = True) -> list[GraftResult]:
    """Graft every task asked for (``--task`` or ``--all-tasks``) of a fine-tuned checkpoint."""
    meta = read_checkpoint_meta(cfg.finetuned)
    if cfg.all_tasks:  # local tasks are found again through the task YAML the checkpoint recorded
        tasks = [t.spec_file if t.spec_file and Path(t.spec_file).is_file() else t.name for t in meta.tasks]
    elif cfg.task:
        tasks = [cfg.task]
    else:
        raise MtgraftError("give --task T (or --all-tasks for a multi-task checkpoint)")
    if len(tasks) > 1:
        from mtgraft.utils import default_out

        base = Path(cfg.out or default_out("graft", "all-tasks"))
        return [graft_task(cfg.model_copy(update={"out": str(base / safe_name(info.name))}), t, meta, show_progress)
                for t, info in zip(tasks, meta.tasks, strict=True)]
    return [graft_task(cfg, t, meta, show_progress) for t in tasks]


def graft_task(cfg: GraftConfig, task_name: str, meta: CheckpointMeta, show_progress: bool = True) -> GraftResult:
    """Run every method at every sparsity for one task; write SkillPatches and results."""
    from mtgraft.evaluation.predict import evaluate_probs
    from mtgraft.patches import SkillPatch
    from mtgraft.progress import progress_bar
    from mtgraft.tasks import compatible, get_task, make_splits
    from mtgraft.tracking import check_reachable, mlflow_run
    from mtgraft.utils import default_out

    t_start = time.perf_counter()
    spec = get_task(task_name)
    info = meta.task(spec.name)
    # every check that needs no model comes first: a mistake costs no model loading
    ospecs = [get_task(other) for other in cfg.eval_tasks]
    for ospec in ospecs:
        if not compatible(spec, ospec):
            raise MtgraftError(f"cannot evaluate '{spec.name}' on '{ospec.name}': label spaces differ "
                               f"({spec.labels} vs {ospec.labels})")
    out = Path(cfg.out or default_out("graft", spec.name))
    ensure_writable_dir(out.parent if str(out.parent) else Path("."))
    if out.exists() and not out.is_dir():
        raise MtgraftError(f"--out '{out}' exists and is not a folder")
    if cfg.track:
        check_reachable(cfg.tracking_uri)
    device = resolve_device(cfg.device)
    dcfg = data_settings(cfg, meta)
    settings = cfg.learn_settings()
    if settings.get("init") == "auto":  # one base patch per task where |delta| cannot tell tasks apart
        settings["init"] = "saliency" if len(meta.tasks) > 1 else "movement"
    ks = {}
    # validate every sparsity before any work (k = 0 is an error)
    pre_name = cfg.pretrained or meta.pretrained.get("name")
    set_seed(cfg.seed)
    ft_model, _ = load_checkpoint(cfg.finetuned)
    pre_model = build_task_model(pre_name, meta.model_type, meta.tasks) if pre_name else None
    if pre_model is None:
        raise MtgraftError("the checkpoint does not record its pretrained model; pass --pretrained")
    rec_hash = meta.pretrained.get("hash")
    if rec_hash and pre_model.base_hash() != rec_hash:
        raise MtgraftError(f"pretrained model '{pre_name}' is not the one checkpoint {cfg.finetuned} was fine-tuned "
                           f"from (content hash differs)")
    space = GraftSpace.build(ft_model, pre_model, device)
    del pre_model
    for s in cfg.sparsity:
        ks[s] = budget_k(s, space.numel)
    splits = make_splits(spec, dcfg["k"], dcfg["seed"], dcfg["max_test"])
    enc = {name: encode_examples(space.model, spec.name, getattr(splits, name), dcfg["max_length"])
           for name in ("train", "dev", "test")}
    ood = {}
    for ospec in ospecs:
        osplits = make_splits(ospec, dcfg["k"], dcfg["seed"], dcfg["max_test"])
        ood[ospec.name] = encode_examples(space.model, spec.name, osplits.test, dcfg["max_length"])

    head = _head_state(space.model, spec.name)
    head_params = sum(v.numel() for v in head.values())
    theta_ft = space.pre + space.delta

    def eval_theta(theta: torch.Tensor, ref_preds: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
        probs = space.predict(theta, enc["test"])
        m = evaluate_probs(probs, enc["test"].labels, ref_preds["test"] if ref_preds else None)
        m["ood"] = {}
        for oname, oenc in ood.items():
            op = space.predict(theta, oenc)
            m["ood"][oname] = evaluate_probs(op, oenc.labels, ref_preds.get(oname) if ref_preds else None)
        m["_preds"] = {"test": probs.argmax(1), **{o: space.predict(theta, e).argmax(1) for o, e in ood.items()}} \
            if ref_preds is None else None
        m["_probs"] = probs
        return m

    ft_m = eval_theta(theta_ft)
    ft_preds = ft_m.pop("_preds")
    ft_probs = ft_m.pop("_probs")
    pre_m = eval_theta(space.pre.clone(), ft_preds)
    pre_m.pop("_preds")
    pre_probs = pre_m.pop("_probs")
    ft_m["agreement"] = 1.0

    from mtgraft.evaluation.metrics import relative_gain, reliability_diagram

    def add_rel(m: dict[str, Any]) -> None:
        m["rel"] = relative_gain(m["accuracy"], pre_m["accuracy"], ft_m["accuracy"])
        for oname, om in m.get("ood", {}).items():
            om["rel"] = relative_gain(om["accuracy"], pre_m["ood"][oname]["accuracy"], ft_m["ood"][oname]["accuracy"])

    add_rel(pre_m)
    add_rel(ft_m)
    reference = {"pretrained": pre_m, "finetuned": ft_m}
    results: list[dict[str, Any]] = []
    curves = {"fine-tuned": (ft_probs, np.asarray(enc["test"].labels)),
              "pretrained (+head)": (pre_probs, np.asarray(enc["test"].labels))}
    run_tags = {"mtgraft.command": "graft", "mtgraft.task": spec.name,
                "mtgraft.finetuned": str(Path(cfg.finetuned).resolve())}
    if meta.mlflow_run_id:
        run_tags["mtgraft.parent_run_id"] = meta.mlflow_run_id
        run_tags["mlflow.parentRunId"] = meta.mlflow_run_id
    with mlflow_run("graft", f"graft-{spec.name}", cfg.tracking_uri, enabled=cfg.track, tags=run_tags) as run:
        conf = cfg.model_dump()
        conf.update({"task": spec.name, "learn_settings": settings, "data": dcfg})
        run.log_params(conf)
        run.log_config(conf)
        run.log_metrics({"pretrained": pre_m, "finetuned": ft_m}, prefix="test/")
        written: list[tuple[dict[str, Any], Path]] = []
        from mtgraft.resume import ResumeState

        resumer = ResumeState(out)  # periodic mask-learning state: a killed run continues with --resume
        resume_conf = {"task": spec.name, "finetuned": str(Path(cfg.finetuned).resolve()), "seed": cfg.seed,
                       "settings": settings, "data": dcfg, "sparsity": cfg.sparsity, "method": cfg.method}
        with atomic_dir(out) as tmp:  # files go to a temporary sibling: nothing is left if a step fails
            for s in cfg.sparsity:
                k = ks[s]
                for mname in cfg.method:
                    method = get_method(mname)
                    t0 = time.perf_counter()
                    with progress_bar(settings["updates"] if method.learned else 1, f"{mname} s={s:g}",
                                      show_progress) as upd:
                        def prog(step: int, total: int, h: dict[str, Any], _s: float = s) -> None:
                            upd(step, f"train {h.get('train', float('nan')):.3f} dev {h.get('dev', float('nan')):.3f} "
                                      f"size {h['size']:,}")
                            run.log_metrics({f"graft_s{_s:g}/{k_}": v for k_, v in h.items() if k_ != "update"},
                                            step=step)

                        key = f"{safe_name(mname)}-s{s:g}"
                        done = resumer.load(f"selection-{key}", resume_conf) if cfg.resume else None
                        if done is not None:
                            sel = Selection(done["indices"], done["info"])
                        else:
                            ctx = SelectContext(
                                space, k, enc["train"], enc["dev"], settings, cfg.seed,
                                progress=prog if method.learned else None,
                                state=resumer.load(f"learn-{key}", resume_conf) if cfg.resume else None,
                                checkpoint=(lambda st, _k=key: resumer.save(f"learn-{_k}", st, resume_conf))
                                if method.learned else None)
                            sel = method.select(ctx)
                            resumer.save(f"selection-{key}", {"indices": sel.indices, "info": sel.info}, resume_conf)
                        upd(settings["updates"] if method.learned else 1)
                    seconds = time.perf_counter() - t0
                    idx = sel.indices
                    theta = space.theta_from_indices(idx)
                    m = eval_theta(theta, ft_preds)
                    probs = m.pop("_probs")
                    m.pop("_preds")
                    add_rel(m)
                    entry: dict[str, Any] = {
                        "method": mname, "sparsity": s, "k": k, "region_size": int(idx.numel()),
                        "region_fraction": idx.numel() / space.numel, "seconds": round(seconds, 3),
                        "patch": None, "test": m,
                    }
                    if method.learned:
                        entry["updates_run"] = sel.info.get("updates_run")
                        entry["best_update"] = sel.info.get("best_update")
                        entry["candidates"] = sel.info.get("candidates")
                        curves[f"graft s={s:g}"] = (probs, np.asarray(enc["test"].labels))
                    if method.learned or cfg.save_baselines:
                        header = {
                            "base_model": pre_name, "base_hash": space.base_hash, "graftable": space.graftable_list(),
                            "task": spec.name, "tasks_info": {spec.name: info.model_dump()},
                            "model_type": meta.model_type, "method": mname,
                            "method_settings": settings if method.learned else {}, "sparsity_requested": s,
                            "seed": cfg.seed, "data": dcfg,
                            "metrics": {"test": _strip(m), "reference": {"pretrained": _strip(pre_m),
                                                                          "finetuned": _strip(ft_m)}},
                            "finetuned": {"path": str(Path(cfg.finetuned).resolve()),
                                          "mlflow_run_id": meta.mlflow_run_id, "mode": meta.mode},
                        }
                        patch = SkillPatch.from_flat_values(idx.numpy(), theta_ft[idx.to(space.device)].cpu(), head,
                                                            header)
                        fname = f"{safe_name(spec.name)}-{mname}-s{s:g}.skillpatch.safetensors"
                        patch.save(tmp / fname)
                        entry["patch"] = str(out / fname)
                        entry["patch_bytes"] = (tmp / fname).stat().st_size
                        written.append((entry, tmp / fname))
                    run.log_metrics(_strip(m), prefix=f"test/{mname}_s{s:g}/")
                    run.log_metrics({"region_size": entry["region_size"], "seconds": seconds},
                                    prefix=f"{mname}_s{s:g}/")
                    results.append(entry)
            diag_name = f"{safe_name(spec.name)}-reliability.png"
            reliability_diagram(curves, tmp / diag_name, title=f"{spec.name}: reliability (10 equal-width bins)")
            # log and register only once every file is written: a failed write leaves no registry entry
            for entry, path in written:
                run.log_artifact(path, "skillpatch")
                if cfg.do_register and cfg.track:
                    entry["registered"] = _register(path, run.run_id, cfg.tracking_uri)
            run.log_artifact(tmp / diag_name)
            summary = {"task": spec.name, "reference": _strip_all(reference), "results": _strip_all(results),
                       "graftable_size": space.numel, "head_params": head_params, "data": dcfg,
                       "learn_settings": settings, "provenance": provenance()}
            write_json(tmp / "results.json", summary)
            run.log_artifact(tmp / "results.json")
        diag = out / diag_name
    resumer.clear()
    return GraftResult(spec.name, str(out), _strip_all(results), _strip_all(reference), space.numel, head_params,
                       run.run_id, time.perf_counter() - t_start, {"reliability_diagram": str(diag)})


def _strip(m: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in m.items() if not k.startswith("_")}


def _strip_all(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _strip_all(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, list):
        return [_strip_all(x) for x in obj]
    return obj


def _register(path: Path, run_id: str | None, tracking_uri: str | None) -> dict[str, Any] | None:
    try:
        from mtgraft.registry import MaskRegistry
    except ImportError:
        return None
    reg = MaskRegistry(tracking_uri)
    r = reg.register_patch(path, run_id=run_id)
    return {"name": r.name, "version": r.version, "aliases": list(getattr(r, "aliases", []) or [])}
