"""A small picture of where a SkillPatch's region sits: layers × module kinds, the number of grafted entries
in each cell (docs/method.md §2). Written beside each patch file (``<patch>.region.png``)
and logged with it to MLflow, so a graft run or a registered version shows its region without a download.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mtgraft.patches.layout import layer_and_module

if TYPE_CHECKING:
    from mtgraft.patches.patch import SkillPatch

PICTURE_SUFFIX = ".region.png"
KIND_ORDER = ("attn_query", "attn_key", "attn_value", "attn_qkv", "attn_output", "ffn_in", "ffn_out",
              "layernorm", "other")


def picture_path(patch_path: str | os.PathLike) -> Path:
    """``x.skillpatch.safetensors`` → ``x.skillpatch.region.png`` (beside the patch)."""
    p = Path(patch_path)
    stem = p.name[: -len(".safetensors")] if p.name.endswith(".safetensors") else p.stem
    return p.with_name(stem + PICTURE_SUFFIX)


def region_grid(patch: SkillPatch) -> dict[str, Any]:
    """Per (layer, module kind): grafted entries and total entries. Rows: layers in order (``None`` = outside
    any layer, e.g. embeddings' norms), columns: module kinds present."""
    counts: dict[tuple[int | None, str], list[int]] = {}
    for name, shape in patch.header.graftable:
        layer, kind = layer_and_module(name)
        cell = counts.setdefault((layer, kind), [0, 0])
        cell[1] += math.prod(shape)
        idx = patch.indices.get(name)
        cell[0] += int(idx.numel()) if idx is not None else 0
    layers = sorted({k[0] for k in counts}, key=lambda x: (x is None, x if x is not None else 0))
    kinds = [k for k in KIND_ORDER if any(c[1] == k for c in counts)]
    kinds += sorted({c[1] for c in counts} - set(kinds))
    grafted = np.zeros((len(layers), len(kinds)), dtype=np.int64)
    total = np.zeros_like(grafted)
    for (layer, kind), (g, t) in counts.items():
        i, j = layers.index(layer), kinds.index(kind)
        grafted[i, j] += g
        total[i, j] += t
    return {"layers": layers, "kinds": kinds, "grafted": grafted, "total": total}


def region_picture(patch: SkillPatch, path: str | os.PathLike, title: str | None = None) -> Path:
    """Write the picture (PNG, deterministic bytes for the same patch) and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import PowerNorm

    from mtgraft.utils import atomic_file

    g = region_grid(patch)
    count = g["grafted"].astype(np.float64)
    nr, nc = count.shape
    fig = plt.figure(figsize=(max(4.0, 1.2 + 0.75 * nc), max(2.6, 1.1 + 0.32 * nr)), dpi=90,
                     layout="constrained")
    ax = fig.add_subplot(111)
    vmax = float(count.max()) if count.size and count.max() > 0 else 1.0
    norm = PowerNorm(0.5, vmin=0.0, vmax=vmax)  # square root: small cells stay visible beside large ones
    im = ax.imshow(count, cmap="Purples", norm=norm, aspect="auto")
    for i in range(nr):
        for j in range(nc):
            if g["grafted"][i, j]:
                ax.text(j, i, f"{g['grafted'][i, j]:,}", ha="center", va="center", fontsize=6,
                        color="white" if norm(count[i, j]) > 0.6 else "black")
    ax.set_xticks(range(nc), g["kinds"], rotation=35, ha="right", fontsize=7)
    ax.set_yticks(range(nr), ["—" if x is None else str(x) for x in g["layers"]], fontsize=7)
    ax.set_ylabel("layer", fontsize=7)
    h = patch.header
    task = h.task if isinstance(h.task, str) else "+".join(h.task)
    ax.set_title(title or f"{task} · {h.method} · {patch.region_size:,} entries\n"
                 "grafted entries per layer and module kind (colour: square-root scale)", fontsize=7)
    cb = fig.colorbar(im, ax=ax, fraction=0.05, pad=0.02)
    cb.ax.tick_params(labelsize=6)
    out = Path(path)
    with atomic_file(out) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
    plt.close(fig)
    return out
