"""Compose one or more SkillPatches onto their base model and save the grafted model as a checkpoint.

No registry here: a caller resolves registry references to files first (``mtgraft.registry.resolve_patch_files``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mtgraft.errors import MtgraftError
from mtgraft.patches.algebra import OVERLAP_POLICIES, check_same_base, stitch


def apply_patches(patches: list[Any], base_model: str | None, out_dir: str | os.PathLike,
                  overlap: str = "average", sources: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Stitch ``patches`` (SkillPatch objects of one base), graft them onto ``base_model`` and save
    a checkpoint folder at ``out_dir`` usable by ``mtgraft eval``; returns a summary with the
    number of overlapping entries. A base whose content hash differs from the patches' is refused.

    ``base_model``: a model name or folder, or an mtgraft checkpoint folder; None = the base
    recorded in the first patch. ``sources``: what the patches came from (ref, sha256), recorded
    in the checkpoint's metadata.
    """
    from mtgraft.models import (
        CHECKPOINT_META,
        CheckpointMeta,
        TaskInfo,
        build_task_model,
        load_checkpoint,
        save_checkpoint,
    )

    if not patches:
        raise MtgraftError("no patches to apply")
    if overlap not in OVERLAP_POLICIES:
        raise MtgraftError(f"unknown overlap policy '{overlap}' (use {', '.join(OVERLAP_POLICIES)})")
    check_same_base(patches)
    types = {p.header.model_type for p in patches}
    if len(types) > 1:
        raise MtgraftError(f"cannot compose patches of different model types ({', '.join(sorted(types))})")
    h0 = patches[0].header
    infos: dict[str, Any] = {}
    for p in patches:
        for t in p.header.tasks:
            if t in infos:
                continue
            if t not in p.header.tasks_info:
                raise MtgraftError(f"patch header has no tasks_info for task '{t}': cannot build its model")
            infos[t] = TaskInfo(name=t, **{k: v for k, v in p.header.tasks_info[t].items() if k != "name"})

    # stitch before loading the model, so that overlap='error' fails fast
    if len(patches) == 1:
        patch, stats = patches[0], {"overlapping_entries": 0, "max_cover": 1 if patches[0].region_size else 0}
    elif overlap != "sum":
        patch, stats = stitch(patches, overlap)  # type: ignore[arg-type]

    target = base_model or h0.base_model
    if (Path(target) / CHECKPOINT_META).is_file():
        model, meta0 = load_checkpoint(target)
        for info in infos.values():
            if info.name not in model.tasks:
                model.add_task(info)
        pretrained = dict(meta0.pretrained)
    else:
        model = build_task_model(target, h0.model_type, list(infos.values()))
        pretrained = {"name": target}
    if model.model_type != h0.model_type:
        raise MtgraftError(f"the patches are for a '{h0.model_type}' model, '{target}' is a "
                           f"'{model.model_type}' model")
    # layout, base hash and (when recorded) context hash: the patches share one base (check_same_base)
    model_hash = patches[0].check_base(model, f"base model '{target}'")
    names = model.graftable_names()

    if len(patches) > 1 and overlap == "sum":  # base + sum of the deltas: needs the base's tensors
        params = dict(model.named_parameters())
        patch, stats = stitch(patches, overlap, base={n: params[n] for n in names})  # type: ignore[arg-type]
    patch.apply_to_model(model, model_hash)

    srcs = sources or [{} for _ in patches]
    applied = [{**src, "task": p.header.task, "method": p.header.method, "region_size": p.region_size,
                "sparsity": p.header.sparsity, "finetuned": (p.header.finetuned or {}).get("path")} for p, src in zip(patches, srcs, strict=True)]
    meta = CheckpointMeta(
        model_type=h0.model_type, tasks=list(model.tasks.values()), pretrained={**pretrained, "hash": model_hash},
        data=patch.header.data, mode="grafted", metrics=patch.header.metrics if len(patches) == 1 else {},
        patches=applied, overlap=overlap, overlapping_entries=int(stats["overlapping_entries"]),
    )
    save_checkpoint(model, meta, out_dir)
    return {
        "checkpoint": str(out_dir), "base_model": target, "base_hash": model_hash,
        "tasks": list(infos), "patches": applied, "overlap": overlap,
        "overlapping_entries": int(stats["overlapping_entries"]), "max_cover": int(stats.get("max_cover", 0)),
        "region_size": patch.region_size, "sparsity": patch.header.sparsity, "head_params": patch.header.head_params,
    }
