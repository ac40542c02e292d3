"""Analysis: overlap between task regions (with chance baselines) and per-layer/module breakdowns."""

from mtgraft.analysis.overlap import (
    MODULE_KINDS,
    Segments,
    as_region,
    breakdown_matrices,
    intersection_matrix,
    layer_and_module,
    overlap_matrices,
    pair_overlap,
    pair_overlap_breakdown,
    region_profile,
    to_jsonable,
)

__all__ = [
    "MODULE_KINDS",
    "Segments",
    "as_region",
    "breakdown_matrices",
    "intersection_matrix",
    "layer_and_module",
    "overlap_matrices",
    "pair_overlap",
    "pair_overlap_breakdown",
    "region_profile",
    "to_jsonable",
]
