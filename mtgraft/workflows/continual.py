"""Graft-based continual learning (docs/method.md §4) on a sequential multi-task run.

Each task's graft is learned from the checkpoint of the stage that trained it (with that task's data
only). Per task we compare three ways to keep every skill:

- ``sequential``: the final sequential model (one model, forgets);
- ``own_graft``: the pretrained model plus the task's own SkillPatch (task identity known at test time);
- ``union``: the pretrained model plus the union of all patches (``stitch``; task identity unknown for
  the body — each task still reads out through its own head/label words);

with ACC, BWT and forgetting (final and max) of each, taken against the run's accuracy matrix R, and the
storage of T patches against T full checkpoints, in bytes.

``train_multitask_with_grafts`` is ``mtgraft train-multitask``: the run, then (``--graft``) the above on it.
With ``--strategy graft`` it also builds the graft strategy's own accuracy matrices (``stage_matrices``):
after stage t the strategy holds the patches of tasks 1..t, so R_own[t, i] = task i's own graft (i ≤ t) and
R_union[t, i] = the union of patches 1..t read out through task i's head; the next task (i = t + 1, needed by
FWT) sees the union of patches 1..t with its untrained head in both.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from mtgraft.config import BaseConfig
from mtgraft.errors import MtgraftError
from mtgraft.training import dist_context
from mtgraft.training.multitask import MultitaskConfig, MultitaskResult, stage_dirs, train_multitask
from mtgraft.utils import ensure_writable_dir, provenance, resolve_device, safe_name, set_seed, write_json

__all__ = ["APPROACHES", "ContinualGraftConfig", "ContinualGraftResult", "approach_metrics", "continual_graft",
           "train_multitask_with_grafts"]

APPROACHES = {
    "sequential": "final sequential model",
    "own_graft": "pretrained + the task's own graft (task identity known at test time)",
    "union": "pretrained + union of all grafts (task identity unknown for the body; each task keeps its head)",
}


class ContinualGraftConfig(BaseConfig):
    """Settings of ``mtgraft continual-graft`` (per-stage grafts of a sequential run)."""

    run: str = Field(description="folder of a sequential 'mtgraft train-multitask' run")
    sparsity: float = Field(1e-4, gt=0, le=1)
    method: str = "graft"
    recipe: Literal["fast", "thorough", "paper"] = "thorough"
    updates: int | None = Field(None, ge=0)
    seed: int = 13
    overlap: Literal["average", "sum", "first"] = "average"
    device: str = "auto"
    out: str | None = Field(None, description="default: RUN/continual_graft")
    do_register: bool = False
    tracking_uri: str | None = None
    track: bool = True
    stage_matrices: bool = Field(False, description="also the graft strategy's per-stage accuracy matrices "
                                 "(own patch / union of the patches so far)")


@dataclass
class ContinualGraftResult:
    """What ``continual_graft`` measured (``to_json`` is the ``--json`` output)."""

    run: str
    out: str
    tasks: list[str]
    accuracy_matrix: list[list[float | None]]
    per_task: dict[str, dict[str, Any]]
    approaches: dict[str, dict[str, Any]]
    storage: dict[str, Any]
    patches: dict[str, str]
    settings: dict[str, Any]
    mlflow_run_id: str | None
    seconds: float
    union_stats: dict[str, Any] = field(default_factory=dict)
    stage_matrices: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        from mtgraft.evaluation.continual import FORGETTING_VARIANTS

        return {"run": self.run, "out": self.out, "tasks": self.tasks, "accuracy_matrix": self.accuracy_matrix,
                "per_task": self.per_task, "approaches": self.approaches, "approach_notes": APPROACHES,
                "forgetting_variants": FORGETTING_VARIANTS, "storage": self.storage, "patches": self.patches,
                "union": self.union_stats, "settings": self.settings, "mlflow_run_id": self.mlflow_run_id,
                "seconds": round(self.seconds, 2), "stage_matrices": self.stage_matrices,
                "sparsity_note": "region sizes count the graftable body only; the task head is always grafted"}


def approach_metrics(R: Any, final_acc: list[float]) -> dict[str, Any]:
    """ACC, BWT, forgetting (final, max) of an approach whose end-of-run accuracy on task i is ``final_acc[i]``.

    The same definitions as for the sequential model, with R's last row replaced by ``final_acc``
    (R[i, i], just after training task i, stays the reference).
    """
    from mtgraft.evaluation.continual import continual_metrics

    m = np.array(R, dtype=np.float64)
    if m.shape[0] != len(final_acc):
        raise MtgraftError(f"need {m.shape[0]} accuracies, got {len(final_acc)}")
    m[-1] = np.asarray(final_acc, dtype=np.float64)
    out = continual_metrics(m)
    out.pop("fwt", None)
    return out


def dir_bytes(path: str | Path) -> int:
    """Bytes of every file under ``path``."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def continual_graft(cfg: ContinualGraftConfig, show_progress: bool = True) -> ContinualGraftResult:
    """Graft each task from its stage checkpoint; evaluate own grafts and their union on the pretrained model."""
    from mtgraft.evaluation.predict import evaluate_probs, predict_probs
    from mtgraft.grafting import GraftConfig
    from mtgraft.models import build_task_model, encode_examples, read_checkpoint_meta
    from mtgraft.patches import SkillPatch, stitch
    from mtgraft.tasks import get_task, make_splits
    from mtgraft.tracking import mlflow_run
    from mtgraft.workflows.graft import graft_and_register

    t_start = time.perf_counter()
    run_dir = Path(cfg.run)
    meta = read_checkpoint_meta(run_dir)
    stages = stage_dirs(run_dir)
    names = [t for t, _ in stages]
    R = meta.metrics.get("accuracy_matrix")
    if R is None or len(R) != len(names):
        raise MtgraftError(f"'{run_dir}' has no accuracy matrix for its {len(names)} stages")
    Rm = np.array([[math.nan if v is None else v for v in row] for row in R], dtype=np.float64)
    sources = dict(getattr(meta, "task_sources", None) or (meta.model_extra or {}).get("task_sources") or {})
    out = Path(cfg.out or run_dir / "continual_graft")
    ensure_writable_dir(out)
    device = resolve_device(cfg.device)
    pre_name = meta.pretrained.get("name")
    if not pre_name:
        raise MtgraftError(f"'{run_dir}' does not record its pretrained model")

    # 1. one graft per task, from the checkpoint of the stage that trained it, with that task's data only
    patches: dict[str, Path] = {}
    graft_acc: dict[str, float] = {}
    region: dict[str, int] = {}
    for name, stage_dir in stages:
        gcfg = GraftConfig(task=sources.get(name, name), finetuned=str(stage_dir), sparsity=[cfg.sparsity],
                           method=[cfg.method], recipe=cfg.recipe, updates=cfg.updates, seed=cfg.seed,
                           device=cfg.device, out=str(out / safe_name(name)), do_register=cfg.do_register,
                           tracking_uri=cfg.tracking_uri, track=cfg.track)
        res = graft_and_register(gcfg, show_progress=show_progress)[0]
        entry = res.results[0]
        if not entry.get("patch"):
            raise MtgraftError(f"method '{cfg.method}' wrote no SkillPatch; use a learned method (graft)")
        patches[name] = Path(entry["patch"])
        graft_acc[name] = float(entry["test"]["accuracy"])
        region[name] = int(entry["region_size"])

    # 2. evaluate on the pretrained model: each task's own patch, then the union of all patches
    set_seed(cfg.seed)
    model = build_task_model(pre_name, meta.model_type, meta.tasks)
    rec_hash = meta.pretrained.get("hash")
    if rec_hash and model.base_hash() != rec_hash:
        raise MtgraftError(f"pretrained model '{pre_name}' is not the one run '{run_dir}' started from")
    model.to(device)
    pristine = {n: p.detach().clone() for n, p in model.named_parameters()}
    d = meta.data
    dcfg = SimpleNamespace(k=d.get("k"), seed=d.get("seed", 13), max_test=d.get("max_test"))
    enc = {n: encode_examples(model, n, make_splits(get_task(sources.get(n, n)), dcfg.k, dcfg.seed, dcfg.max_test).test,
                              d.get("max_length", 128)) for n in names}

    def restore() -> None:
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(pristine[n])

    def evaluate(task: str) -> dict[str, Any]:
        return evaluate_probs(predict_probs(model, enc[task], 64, device), enc[task].labels)

    loaded = [SkillPatch.load(patches[n]) for n in names]
    own: dict[str, dict[str, Any]] = {}
    for name, patch in zip(names, loaded, strict=True):
        restore()
        patch.apply_to_model(model)
        own[name] = evaluate(name)
    union_patch, ustats = stitch(loaded, cfg.overlap, base=pristine if cfg.overlap == "sum" else None)
    union_file = out / "union.skillpatch.safetensors"
    union_patch.save(union_file)
    restore()
    union_patch.apply_to_model(model)
    uni = {n: evaluate(n) for n in names}
    stage_mats = None
    if cfg.stage_matrices:
        stage_mats = _stage_matrices(names, loaded, own, uni, restore, model, evaluate, stitch, cfg.overlap, pristine,
                                     meta.metrics.get("r0"))

    # 3. per-task table, approach metrics, storage
    T = len(names)
    seq_final = [float(Rm[T - 1, i]) for i in range(T)]
    per_task: dict[str, dict[str, Any]] = {}
    for i, n in enumerate(names):
        just = float(Rm[i, i])
        per_task[n] = {
            "stage": i + 1, "just_trained": just, "sequential": seq_final[i], "own_graft": own[n]["accuracy"],
            "union": uni[n]["accuracy"], "own_graft_run_graft": graft_acc[n], "region_size": region[n],
            "drop": {"sequential": just - seq_final[i], "own_graft": just - own[n]["accuracy"],
                     "union": just - uni[n]["accuracy"]},
            "metrics": {"own_graft": own[n], "union": uni[n]},
        }
    approaches = {
        "sequential": approach_metrics(Rm, seq_final),
        "own_graft": approach_metrics(Rm, [own[n]["accuracy"] for n in names]),
        "union": approach_metrics(Rm, [uni[n]["accuracy"] for n in names]),
    }
    for k, v in approaches.items():
        v["drop_mean_all_tasks"] = float(np.mean([per_task[n]["drop"][k] for n in names]))
    patch_bytes = {n: patches[n].stat().st_size for n in names}
    ckpt_bytes = {n: dir_bytes(p) for n, p in stages}
    weights_bytes = {n: sum(f.stat().st_size for f in Path(p).glob("*.safetensors")) for n, p in stages}
    storage = {
        "patches_bytes": sum(patch_bytes.values()), "checkpoints_bytes": sum(ckpt_bytes.values()),
        "checkpoint_weights_bytes": sum(weights_bytes.values()), "union_patch_bytes": union_file.stat().st_size,
        "per_task": {n: {"patch_bytes": patch_bytes[n], "checkpoint_bytes": ckpt_bytes[n],
                         "checkpoint_weights_bytes": weights_bytes[n]} for n in names},
        "ratio": sum(ckpt_bytes.values()) / max(1, sum(patch_bytes.values())),
        "note": "T SkillPatch files against T full stage checkpoint folders (weights, heads, config, tokenizer)",
    }
    settings = {"sparsity": cfg.sparsity, "method": cfg.method, "recipe": cfg.recipe, "updates": cfg.updates,
                "seed": cfg.seed, "overlap": cfg.overlap}
    ustats = {k: v for k, v in ustats.items() if isinstance(v, (int, float, str, list, dict))}
    ustats["patch"] = str(union_file)
    matrix = [[None if not math.isfinite(v) else float(v) for v in row] for row in Rm]
    tags = {"mtgraft.command": "continual-graft", "mtgraft.run": str(run_dir.resolve())}
    if meta.mlflow_run_id:
        tags["mtgraft.parent_run_id"] = meta.mlflow_run_id
    with mlflow_run("multitask", f"continual-graft-{'+'.join(names)}", cfg.tracking_uri, enabled=cfg.track,
                    tags=tags) as run:
        run.log_params({**settings, "run": str(run_dir)})
        for k, v in approaches.items():
            run.log_metrics({m: x for m, x in v.items() if isinstance(x, float)}, prefix=f"graft_cl/{k}/")
        for n in names:
            run.log_metrics({a: per_task[n][a] for a in ("sequential", "own_graft", "union")},
                            prefix=f"graft_cl/task_{safe_name(n)}/")
        run.log_metrics({k: v for k, v in storage.items() if isinstance(v, (int, float))}, prefix="storage/")
        if stage_mats is not None:
            for k in ("own", "union"):
                run.log_metrics({m: x for m, x in stage_mats[k]["continual"].items() if isinstance(x, float)},
                                prefix=f"graft_strategy/{k}/")
        result = ContinualGraftResult(str(run_dir), str(out), names, matrix, per_task, approaches, storage,
                                      {n: str(p) for n, p in patches.items()}, settings, run.run_id,
                                      time.perf_counter() - t_start, ustats, stage_mats)
        write_json(out / "continual_graft.json", {**result.to_json(), "provenance": provenance()})
        run.log_artifact(out / "continual_graft.json")
    return result


def _stage_matrices(names: list[str], loaded: list[Any], own: dict[str, dict[str, Any]],
                    uni: dict[str, dict[str, Any]], restore: Any, model: Any, evaluate: Any, stitch: Any,
                    overlap: str, pristine: dict[str, Any], r0: list[float] | None) -> dict[str, Any]:
    """The graft strategy's accuracy matrices: task identity known (own patch) and unknown (union so far)."""
    from mtgraft.evaluation.continual import continual_metrics

    T = len(names)
    Ru = np.full((T, T), math.nan)
    for t in range(T):
        if t == T - 1:
            Ru[t] = [uni[n]["accuracy"] for n in names]
            continue
        up, _ = stitch(loaded[: t + 1], overlap, base=pristine if overlap == "sum" else None)
        restore()
        up.apply_to_model(model)  # heads of tasks 1..t from their patches; task t+1's head stays untrained
        for i in range(t + 2):
            Ru[t, i] = evaluate(names[i])["accuracy"]
    restore()
    Ro = Ru.copy()
    for t in range(T):
        for i in range(t + 1):
            Ro[t, i] = own[names[i]]["accuracy"]

    def pack(R: np.ndarray) -> dict[str, Any]:
        return {"accuracy_matrix": [[None if not math.isfinite(v) else float(v) for v in row] for row in R],
                "continual": continual_metrics(R, r0)}

    return {"own": pack(Ro), "union": pack(Ru), "r0": r0,
            "note": "R[t, i]: after stage t the strategy holds patches 1..t; own = task i's own patch (i <= t), "
                    "union = the stitched patches 1..t; i = t + 1 sees the union with its untrained head; "
                    "entries i > t + 1 are not evaluated (no metric reads them)"}


def train_multitask_with_grafts(cfg: MultitaskConfig, show_progress: bool = True) -> MultitaskResult:
    """``train_multitask``; then, with ``cfg.graft`` (sequential runs), graft-based continual learning on the run.

    ``--strategy graft`` implies ``--graft`` and adds the strategy's per-stage matrices (``result.strategy``).
    The grafts run on the main process only; their result (``continual_graft``'s JSON) is ``result.graft_cl``.
    """
    result = train_multitask(cfg, show_progress=show_progress)
    dist = dist_context(cfg.device)
    is_graft = cfg.strategy == "graft"
    if cfg.mode == "sequential" and (cfg.graft or is_graft) and dist.is_main:
        gcfg = ContinualGraftConfig(run=result.checkpoint, sparsity=cfg.graft_sparsity, method=cfg.graft_method,
                                    recipe=cfg.graft_recipe, updates=cfg.graft_updates, seed=cfg.seed,
                                    device=cfg.device, tracking_uri=cfg.tracking_uri, stage_matrices=is_graft)
        result.graft_cl = continual_graft(gcfg, show_progress=show_progress).to_json()
        if is_graft and result.strategy is not None:
            st = result.graft_cl["storage"]
            result.strategy.update({
                "settings": {"sparsity": cfg.graft_sparsity, "method": cfg.graft_method, "recipe": cfg.graft_recipe,
                             "updates": cfg.graft_updates},
                "matrices": result.graft_cl["stage_matrices"],
                "extra_bytes": int(st["patches_bytes"]),
                "extra_bytes_per_task": {n: v["patch_bytes"] for n, v in st["per_task"].items()},
                "graft_seconds": result.graft_cl["seconds"],
            })
    return result
