"""Set algebra on SkillPatches of one base model, and stitching several skills onto that base.

All operations work on the global flat index space defined by the header's ``graftable`` list,
so two patches can only be combined when they were made for the same base (same ``base_hash``
and the same graftable names and shapes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch

from mtgraft.errors import MtgraftError
from mtgraft.patches.header import PatchHeader, make_header, short_hash
from mtgraft.patches.patch import SkillPatch, _torch_dtype
from mtgraft.utils import content_hash

Overlap = Literal["average", "sum", "first", "error"]
OVERLAP_POLICIES: tuple[str, ...] = ("average", "sum", "first", "error")


def check_same_base(patches: Sequence[SkillPatch]) -> None:
    """MtgraftError unless all patches were made for the same base model and graftable set."""
    if not patches:
        raise MtgraftError("no patches given")
    ref = patches[0].header
    for p in patches[1:]:
        h = p.header
        if h.base_hash != ref.base_hash:
            raise MtgraftError(
                f"patches were made for different base models ({ref.base_model} {short_hash(ref.base_hash)} "
                f"vs {h.base_model} {short_hash(h.base_hash)}); set algebra needs patches of the same base")
        if None not in (h.context_hash, ref.context_hash) and h.context_hash != ref.context_hash:
            raise MtgraftError(
                f"patches share a base body but were made with other embeddings/LM head ({ref.base_model} "
                f"{short_hash(ref.context_hash)} vs {h.base_model} {short_hash(h.context_hash)}); set algebra "
                "needs patches of the same base")
        if [(n, list(s)) for n, s in h.graftable] != [(n, list(s)) for n, s in ref.graftable]:
            raise MtgraftError("patches share a base hash but list different graftable tensors; "
                               "set algebra needs the same graftable set")


def _summary(p: SkillPatch) -> dict[str, Any]:
    h = p.header
    return {"task": h.task, "method": h.method, "method_settings": h.method_settings,
            "region_size": h.region_size, "sparsity": h.sparsity, "seed": h.seed,
            "payload_hash": h.payload_hash, "finetuned": h.finetuned, "metrics": h.metrics}


def _derived_header(a: PatchHeader, method: str, settings: dict[str, Any], **updates: Any) -> dict[str, Any]:
    """Header of a patch derived from ``a``: same base and provenance, new method, no metrics."""
    data = a.model_dump()
    for k in ("region_size", "sparsity", "head_params", "payload_hash", "code_version"):
        data.pop(k, None)
    data.update(method=method, method_settings=settings, sparsity_requested=None, metrics={})
    data.update(updates)
    return data


def intersection_size(a: SkillPatch, b: SkillPatch) -> int:
    """|a ∩ b|: number of graftable entries both patches graft."""
    check_same_base([a, b])
    return int(np.intersect1d(a.flat_indices(), b.flat_indices(), assume_unique=True).size)


def containment(a: SkillPatch, b: SkillPatch) -> float:
    """|a ∩ b| / |b| — the share of b's region that a also grafts (the paper's convention; asymmetric).

    0.0 when b is empty.
    """
    inter = intersection_size(a, b)
    return inter / b.region_size if b.region_size else 0.0


def jaccard(a: SkillPatch, b: SkillPatch) -> float:
    """|a ∩ b| / |a ∪ b|; 0.0 when both are empty."""
    inter = intersection_size(a, b)
    union = a.region_size + b.region_size - inter
    return inter / union if union else 0.0


def intersection(a: SkillPatch, b: SkillPatch) -> SkillPatch:
    """Entries grafted by both; values and heads are a's (use ``intersection(b, a)`` for b's)."""
    check_same_base([a, b])
    common, ia, _ = np.intersect1d(a.flat_indices(), b.flat_indices(), assume_unique=True, return_indices=True)
    vals = a.flat_values()[torch.from_numpy(ia.astype(np.int64))]
    hdr = _derived_header(a.header, "intersection", {"of": [_summary(a), _summary(b)]})
    return SkillPatch.from_flat_values(common, vals, a.head, hdr)


def difference(a: SkillPatch, b: SkillPatch) -> SkillPatch:
    """Entries grafted by a but not by b, with a's values and heads."""
    check_same_base([a, b])
    fa = a.flat_indices()
    keep = ~np.isin(fa, b.flat_indices(), assume_unique=True)
    vals = a.flat_values()[torch.from_numpy(keep)]
    hdr = _derived_header(a.header, "difference", {"of": [_summary(a), _summary(b)]})
    return SkillPatch.from_flat_values(fa[keep], vals, a.head, hdr)


def union(a: SkillPatch, b: SkillPatch, overlap: Overlap = "average", *,
          base: Mapping[str, torch.Tensor] | None = None) -> SkillPatch:
    """Entries grafted by a or b; where both set an entry, ``overlap`` decides (see :func:`stitch`)."""
    patch, _ = stitch([a, b], overlap, base=base, method="union")
    return patch


def _base_values(base: Mapping[str, torch.Tensor], hdr: PatchHeader, flat: torch.Tensor,
                 check_hash: bool) -> torch.Tensor:
    shapes = hdr.shapes()
    for name, shape in shapes.items():
        if name not in base:
            raise MtgraftError(f"base tensors have no '{name}' (needed for overlap='sum')")
        if tuple(base[name].shape) != shape:
            raise MtgraftError(f"base tensor '{name}' has shape {tuple(base[name].shape)}, patch says {shape}")
    if check_hash:
        h = content_hash((n, base[n]) for n in shapes)
        if h != hdr.base_hash:
            raise MtgraftError(f"the base tensors given (hash {short_hash(h)}) are not the base the patches "
                               f"were made for ({hdr.base_model}, {short_hash(hdr.base_hash)})")
    offs = hdr.offsets()
    out = torch.empty(flat.numel(), dtype=torch.float64)
    for name in shapes:
        start = offs[name]
        stop = start + base[name].numel()
        lo, hi = torch.searchsorted(flat, torch.tensor([start, stop])).tolist()
        if hi > lo:
            t = base[name].detach().reshape(-1)
            out[lo:hi] = t[(flat[lo:hi] - start).to(t.device)].to("cpu", torch.float64)
    return out


def stitch(patches: Sequence[SkillPatch], overlap: Overlap = "average", *,
           base: Mapping[str, torch.Tensor] | None = None, check_hash: bool = True,
           method: str = "stitch") -> tuple[SkillPatch, dict[str, Any]]:
    """Compose several patches of one base into one (Localize-and-Stitch); returns (patch, stats).

    Patches store fine-tuned values v_i = base + delta_i. On an entry that k > 1 patches set:

    - ``average``: mean of the v_i, which equals base + mean of the deltas — Localize-and-Stitch's
      rule (sum the masked task vectors, divide each weight by how many masks cover it);
    - ``sum``: base + sum of the deltas (task-arithmetic style, lambda = 1), i.e.
      sum(v_i) - (k - 1) * base; needs ``base`` (the base model's graftable tensors, hash-checked
      unless ``check_hash=False``). The result still stores fine-tuned-space values;
    - ``first``: the value of the first patch (in list order) that sets it;
    - ``error``: refuse (MtgraftError) if any entry is set by more than one patch.

    Rescaled patches (header ``scale`` alpha) keep their alpha: under one alpha for all patches every rule
    above holds for the applied values base + alpha·delta; patches of different alphas are refused.

    Heads of different names are all kept. Identical same-name heads are kept once; differing
    same-name heads are averaged (``average``, ``sum``: a head has no base to take a delta from),
    taken from the first patch (``first``) or refused (``error``).
    ``stats``: region_size, sizes, tasks, overlapping_entries (entries set by more than one patch),
    max_cover, overlap, heads_merged.
    """
    if overlap not in OVERLAP_POLICIES:
        raise MtgraftError(f"unknown overlap policy '{overlap}' (use {', '.join(OVERLAP_POLICIES)})")
    patches = list(patches)
    check_same_base(patches)
    types = {p.header.model_type for p in patches}
    if len(types) > 1:
        raise MtgraftError(f"cannot stitch patches of different model types ({', '.join(sorted(types))})")
    ref = patches[0].header
    scales = {p.header.scale for p in patches}
    if len(scales) > 1:  # a mean or sum of the stored values is only right under one alpha for all of them
        raise MtgraftError("cannot stitch patches rescaled by different alphas (scale "
                           + ", ".join("1" if a is None else f"{a:g}" for a in sorted(scales, key=lambda a: a or 1.0))
                           + "); stitch patches of one scale")

    # ---- body
    vdtype = _torch_dtype(ref.values_dtype)
    for p in patches[1:]:
        vdtype = torch.promote_types(vdtype, _torch_dtype(p.header.values_dtype))
    all_idx = torch.cat([torch.from_numpy(p.flat_indices()) for p in patches])
    all_val = torch.cat([p.flat_values().to(torch.float64) for p in patches])
    uniq, inv, counts = torch.unique(all_idx, sorted=True, return_inverse=True, return_counts=True)
    n_over = int((counts > 1).sum())
    if overlap == "error" and n_over:
        raise MtgraftError(f"{n_over} entries are grafted by more than one patch and overlap='error' "
                           "(use overlap=average, sum or first)")
    if overlap == "first":
        pos = torch.arange(all_idx.numel())
        first = torch.full((uniq.numel(),), all_idx.numel(), dtype=torch.long)
        first = first.scatter_reduce(0, inv, pos, reduce="amin")
        out = all_val[first]
    else:
        total = torch.zeros(uniq.numel(), dtype=torch.float64).index_add_(0, inv, all_val)
        if overlap == "sum" and n_over:
            if base is None:
                raise MtgraftError("overlap='sum' adds task vectors (fine-tuned - base) and needs the base "
                                   "model's tensors: pass base=")
            out = total - (counts - 1).to(torch.float64) * _base_values(base, ref, uniq, check_hash)
        elif overlap == "sum":
            out = total
        else:
            out = total / counts.to(torch.float64)
    out = out.to(vdtype)

    # ---- heads
    heads: dict[str, torch.Tensor] = {}
    groups: dict[str, list[torch.Tensor]] = {}
    for p in patches:
        for name, t in p.head.items():
            if name in groups:
                if tuple(t.shape) != tuple(groups[name][0].shape):
                    raise MtgraftError(f"head '{name}' has different shapes in the patches "
                                       f"({tuple(groups[name][0].shape)} vs {tuple(t.shape)})")
                if not any(torch.equal(t, g) for g in groups[name]):
                    groups[name].append(t)
            else:
                groups[name] = [t]
    merged = sorted(n for n, g in groups.items() if len(g) > 1)
    if merged and overlap == "error":
        raise MtgraftError(f"head '{merged[0]}' differs between patches and overlap='error'")
    for name, g in groups.items():
        if len(g) == 1 or overlap == "first":
            heads[name] = g[0].clone()
        else:
            heads[name] = torch.stack([x.to(torch.float64) for x in g]).mean(0).to(g[0].dtype)

    # ---- header
    tasks: list[str] = []
    info: dict[str, dict[str, Any]] = {}
    for p in patches:
        for t in p.header.tasks:
            if t not in tasks:
                tasks.append(t)
        for t, v in p.header.tasks_info.items():
            info.setdefault(t, v)
    datas = [p.header.data for p in patches]
    hdr = _derived_header(
        ref, method, {"overlap": overlap, "sources": [_summary(p) for p in patches]},
        task=tasks[0] if len(tasks) == 1 else tasks, tasks_info=info, seed=None, finetuned={},
        data=datas[0] if all(d == datas[0] for d in datas) else {}, values_dtype=str(vdtype).removeprefix("torch."),
    )
    patch = SkillPatch.from_flat_values(uniq, out, heads, make_header(hdr))
    stats = {
        "region_size": patch.region_size,
        "sizes": [p.region_size for p in patches],
        "tasks": [p.header.task for p in patches],
        "overlapping_entries": n_over,
        "max_cover": int(counts.max()) if counts.numel() else 0,
        "overlap": overlap,
        "heads_merged": merged,
    }
    return patch, stats
