"""The report's inputs: SkillPatches of one base model, one per task, from files, objects or the MLflow registry."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from mtgraft.errors import MtgraftError

Duplicates = Literal["error", "first", "label"]
DUPLICATE_POLICIES = ("error", "first", "label")


def _patch_label(p: Any) -> str:
    return "+".join(p.header.tasks)


def load_inputs(patches: Sequence[Any], duplicates: Duplicates = "error") -> tuple[list[str], list[Any], list[str]]:
    """(labels, SkillPatches, sources) from patch objects or files; all of one base, one patch per task.

    ``duplicates``: ``error`` (default) refuses two patches of the same task; ``first`` keeps the first;
    ``label`` keeps all, labelled ``task[method,s=sparsity]`` (e.g. to compare sparsities).
    """
    from mtgraft.patches import SkillPatch, short_hash

    if duplicates not in DUPLICATE_POLICIES:
        raise MtgraftError(f"unknown duplicates policy '{duplicates}' (use {', '.join(DUPLICATE_POLICIES)})")
    if not patches:
        raise MtgraftError("no patches given (pass patch files, or registry selectors --task/--base)")
    loaded: list[tuple[Any, str]] = []
    for p in patches:
        if isinstance(p, SkillPatch):
            loaded.append((p, f"<{_patch_label(p)} patch object>"))
        else:
            loaded.append((SkillPatch.load(p), str(p)))
    ref, ref_src = loaded[0]
    for p, src in loaded[1:]:
        h, r = p.header, ref.header
        if h.base_hash != r.base_hash:
            raise MtgraftError(
                f"all patches must share one base model: {ref_src} is for {r.base_model} ({short_hash(r.base_hash)}), "
                f"{src} for {h.base_model} ({short_hash(h.base_hash)})")
        if [(n, list(s)) for n, s in h.graftable] != [(n, list(s)) for n, s in r.graftable]:
            raise MtgraftError(f"{src} and {ref_src} share a base hash but list different graftable tensors")
    labels, out, srcs = [], [], []
    seen: dict[str, str] = {}
    for p, src in loaded:
        lab = _patch_label(p)
        if lab in seen:
            if duplicates == "error":
                raise MtgraftError(
                    f"two patches for task '{lab}' ({seen[lab]} and {src}); give one per task, or choose with "
                    "--duplicates first (keep the first) or --duplicates label (keep all, labelled by method and sparsity)")
            if duplicates == "first":
                continue
        seen.setdefault(lab, src)
        labels.append(lab)
        out.append(p)
        srcs.append(src)
    if duplicates == "label":
        counts = {x: labels.count(x) for x in labels}
        new = []
        for lab, p in zip(labels, out, strict=True):
            if counts[lab] > 1:
                s = p.header.sparsity_requested or p.header.sparsity
                lab = f"{lab}[{p.header.method},s={s:.2g}]"
            k, base = 2, lab
            while lab in new:
                lab, k = f"{base}#{k}", k + 1
            new.append(lab)
        labels = new
    return labels, out, srcs


def select_patches_from_registry(tasks: Sequence[str] | None = None, base: str | None = None, alias: str = "best",
                                 tracking_uri: str | None = None, dest: str | os.PathLike | None = None,
                                 method: str | None = None) -> list[Path]:
    """Download (sha256-verified) one registered patch per task — ``name@alias`` — into ``dest``; return the paths.

    No ``tasks``: every single-task patch registered for ``base``. Without ``base`` the tasks must have
    patches for exactly one base model. With ``method`` (e.g. ``graft``) only versions made by that
    method count: ``best`` = the highest recorded Rel among them, ``latest`` = the newest, another alias
    must point at one of them. ``dest`` defaults to a new temporary folder (the caller removes it).
    """
    import tempfile

    from mtgraft.registry import MaskRegistry

    reg = MaskRegistry(tracking_uri)
    want = list(dict.fromkeys(t for t in (tasks or []) if t))
    where = (f" for base '{base}'" if base else "") + (f" made by method '{method}'" if method else "")
    rows = []
    if want:
        for t in want:
            got = [r for r in reg.list_masks(task=t, base=base) if r["task"] == t
                   and (method is None or r["method"] == method)]
            if not got:
                raise MtgraftError(f"no registered patch of task '{t}'{where} in {reg.tracking_uri} "
                                   "(see 'mtgraft masks list')")
            rows += got
    else:
        rows = [r for r in reg.list_masks(base=base) if r["task"] and "+" not in r["task"]
                and (method is None or r["method"] == method)]
        if not rows:
            raise MtgraftError(f"no registered single-task patches{where} in {reg.tracking_uri}")
    bases = sorted({r["base_hash"] or "" for r in rows})
    if len(bases) > 1:
        names = sorted({f"{r['base_model']} ({(r['base_hash'] or '')[:15]}…)" for r in rows})
        raise MtgraftError(f"the selected patches belong to {len(bases)} base models ({'; '.join(names)}); "
                           "pick one with --base")
    by_task: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_task.setdefault(r["task"], []).append(r)
    order = want or sorted(by_task)
    out_dir = Path(dest) if dest else Path(tempfile.mkdtemp(prefix="mtgraft-report-inputs-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for t in order:
        versions = by_task[t]
        name = versions[0]["name"]
        if method is None:
            ref = f"{name}@{alias}"
        elif alias.lower() == "latest":
            ref = f"{name}/{max(int(r['version']) for r in versions)}"
        elif alias.lower() == "best":
            top = max(versions, key=lambda r: (r["rel"] if r["rel"] is not None else -math.inf, int(r["version"])))
            ref = f"{name}/{top['version']}"
        else:
            hit = [r for r in versions if alias in r["aliases"]]
            if not hit:
                raise MtgraftError(f"alias '{alias}' of '{name}' does not name a version made by method '{method}'")
            ref = f"{name}/{hit[0]['version']}"
        sub = out_dir / ref.replace("/", "_v")
        sub.mkdir(parents=True, exist_ok=True)
        local, _ = reg.fetch(ref, sub)
        paths.append(Path(local))
    return paths
