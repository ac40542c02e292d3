"""SkillPatch: a graft region (flat indices + fine-tuned values), the task head and a JSON header.

One safetensors file; applying it to the base model gives the grafted model without the
fine-tuned checkpoint (``apply_patches`` composes patches onto a base and saves a checkpoint).
Format: docs/skillpatch-format.md.
"""

from mtgraft.patches.algebra import (
    OVERLAP_POLICIES,
    Overlap,
    check_same_base,
    containment,
    difference,
    intersection,
    intersection_size,
    jaccard,
    stitch,
    union,
)
from mtgraft.patches.apply import apply_patches
from mtgraft.patches.header import FORMAT, FORMAT_VERSION, HEADER_KEY, PatchHeader, make_header, short_hash
from mtgraft.patches.patch import SkillPatch, file_stats, index_dtype, sha256

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "HEADER_KEY",
    "OVERLAP_POLICIES",
    "Overlap",
    "PatchHeader",
    "SkillPatch",
    "apply_patches",
    "check_same_base",
    "containment",
    "difference",
    "file_stats",
    "index_dtype",
    "intersection",
    "intersection_size",
    "jaccard",
    "make_header",
    "sha256",
    "short_hash",
    "stitch",
    "union",
]
