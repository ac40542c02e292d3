"""Overlap between task regions, with the chance baseline, and per-layer / per-module breakdowns.

A *region* is a sorted, unique ``np.int64`` array of global flat indices into a parameter space of
size ``P``: the concatenation, in a fixed order, of a model's graftable tensors, each flattened
(see ``docs/architecture.md``). ``Segments`` maps global indices back to tensors, layers and
module kinds. The chance model is two uniformly random regions of the same sizes (hypergeometric).
Definitions and empty-region conventions: ``docs/metrics.md``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mtgraft.errors import MtgraftError
from mtgraft.patches.layout import layer_and_module
from mtgraft.utils import finite_or_none

MODULE_KINDS: tuple[str, ...] = (
    "attn_query",
    "attn_key",
    "attn_value",
    "attn_qkv",
    "attn_output",
    "ffn_in",
    "ffn_out",
    "layernorm",
    "bias",
    "other",
)
"""Module kinds in report order. ``attn_qkv`` is a fused query/key/value projection (GPT-2 ``c_attn``)."""

_LN10 = math.log(10.0)


# --------------------------------------------------------------------------------------- regions


def _check_P(P: int) -> int:
    if int(P) != P or P < 1:
        raise MtgraftError(f"parameter-space size P must be a positive integer, got {P}")
    return int(P)


def as_region(indices: Any, P: int | None = None) -> np.ndarray:
    """Return ``indices`` as a sorted, unique int64 region; with ``P``, check they lie in [0, P)."""
    a = np.asarray(indices)
    if a.ndim != 1:
        a = a.reshape(-1)
    if a.size == 0:
        return np.zeros(0, dtype=np.int64)
    if not np.issubdtype(a.dtype, np.integer):
        raise MtgraftError(f"region indices must be integers, got dtype {a.dtype}")
    a = a.astype(np.int64, copy=False)
    if a.size > 1 and not bool(np.all(a[1:] > a[:-1])):
        a = np.unique(a)
    if a[0] < 0 or (P is not None and a[-1] >= P):
        raise MtgraftError(
            f"region indices must lie in [0, {P}), got range [{int(a[0])}, {int(a[-1])}]"
            if P is not None
            else f"region indices must be non-negative, got {int(a[0])}"
        )
    return a


def _pair_stats(inter: np.ndarray, na: np.ndarray, nb: np.ndarray, P: np.ndarray | int) -> dict[str, np.ndarray]:
    """Vectorised pair metrics (NaN where a ratio's denominator is 0)."""
    from scipy.stats import hypergeom  # deferred: scipy.stats is slow to import

    inter = np.asarray(inter, dtype=np.int64)
    na = np.asarray(na, dtype=np.int64)
    nb = np.asarray(nb, dtype=np.int64)
    fi, fa, fb = inter.astype(np.float64), na.astype(np.float64), nb.astype(np.float64)
    Pf = np.asarray(P, dtype=np.float64)
    union = fa + fb - fi
    mn = np.minimum(fa, fb)
    with np.errstate(divide="ignore", invalid="ignore"):
        frac_a = np.where(fa > 0, fi / fa, np.nan)
        frac_b = np.where(fb > 0, fi / fb, np.nan)
        jac = np.where(union > 0, fi / union, np.nan)
        ovc = np.where(mn > 0, fi / mn, np.nan)
        expected = np.where(Pf > 0, fa * fb / Pf, 0.0)
        enr = np.where(expected > 0, fi / expected, np.nan)
    # P(X >= observed) under the hypergeometric; exactly 1 when nothing is observed (skip the call).
    p = np.ones(inter.shape, dtype=np.float64)
    logp = np.zeros(inter.shape, dtype=np.float64)
    hit = inter > 0
    if np.any(hit):
        Pi = np.broadcast_to(np.asarray(P, dtype=np.int64), inter.shape)[hit]
        args = (inter[hit] - 1, Pi, na[hit], nb[hit])
        ph = hypergeom.sf(*args)
        p[hit] = ph
        with np.errstate(divide="ignore"):
            lh = np.log10(ph)
        tiny = ph < 1e-250  # sf underflows: only then pay for the (slow) logsf
        if np.any(tiny):
            lh[tiny] = hypergeom.logsf(*(x[tiny] for x in args)) / _LN10
        logp[hit] = lh
    return {
        "frac_of_a_in_b": frac_a,
        "frac_of_b_in_a": frac_b,
        "jaccard": jac,
        "overlap_coefficient": ovc,
        "expected_intersection": expected,
        "enrichment": enr,
        "p_value": p,
        "log10_p_value": logp,
    }


def pair_overlap(a: Any, b: Any, P: int) -> dict[str, Any]:
    """Overlap of two regions and its chance baseline (uniform random regions of the same sizes).

    Keys: size_a, size_b, P, intersection, frac_of_a_in_b = |a∩b|/|a|, frac_of_b_in_a = |a∩b|/|b|
    (the paper's containment of a in b), jaccard, overlap_coefficient, expected_intersection
    = |a||b|/P, enrichment = observed/expected, p_value = P(X >= observed), log10_p_value.
    A ratio whose denominator is 0 (an empty region) is None.
    """
    P = _check_P(P)
    a = as_region(a, P)
    b = as_region(b, P)
    inter = int(np.intersect1d(a, b, assume_unique=True).size)
    st = _pair_stats(np.array(inter), np.array(a.size), np.array(b.size), P)
    out: dict[str, Any] = {"size_a": int(a.size), "size_b": int(b.size), "P": P, "intersection": inter}
    for k, v in st.items():
        out[k] = finite_or_none(v)  # never inf here: every ratio has a positive denominator
    return out


def intersection_matrix(regions: Sequence[np.ndarray]) -> np.ndarray:
    """All pairwise intersection sizes [n, n] (int64) of already-validated regions, in one sparse product."""
    from scipy import sparse

    n = len(regions)
    sizes = np.array([r.size for r in regions], dtype=np.int64)
    if n == 0:
        return np.zeros((0, 0), dtype=np.int64)
    if sizes.sum() == 0:
        return np.zeros((n, n), dtype=np.int64)
    allidx = np.concatenate(regions)
    rows = np.repeat(np.arange(n, dtype=np.int64), sizes)
    _, cols = np.unique(allidx, return_inverse=True)
    inc = sparse.csr_matrix(
        (np.ones(allidx.size, dtype=np.int64), (rows, cols.reshape(-1))), shape=(n, int(cols.max()) + 1)
    )
    return np.asarray((inc @ inc.T).toarray(), dtype=np.int64)


def _validate_regions(regions: Mapping[str, Any], P: int) -> tuple[list[str], list[np.ndarray]]:
    if not isinstance(regions, Mapping):
        raise MtgraftError("regions must be a mapping {task name: indices}")
    names = [str(k) for k in regions]
    return names, [as_region(regions[k], P) for k in regions]


def overlap_matrices(regions: Mapping[str, Any], P: int) -> dict[str, Any]:
    """Pairwise overlap matrices (numpy [n, n], rows/columns in ``regions`` order; NaN = undefined).

    ``containment[i, j] = |g_i ∩ g_j| / |g_j|`` (the paper's, diagonal 1); also intersection,
    jaccard, overlap_coefficient, expected (= |g_i||g_j|/P), enrichment, p_value, log10_p_value.
    Use ``to_jsonable`` to turn the result into JSON (NaN → null).
    """
    P = _check_P(P)
    names, regs = _validate_regions(regions, P)
    n = len(regs)
    sizes = np.array([r.size for r in regs], dtype=np.int64)
    inter = intersection_matrix(regs)
    na = np.broadcast_to(sizes[:, None], (n, n))
    nb = np.broadcast_to(sizes[None, :], (n, n))
    # The metrics are symmetric except containment: compute the upper triangle once and mirror it.
    iu = np.triu_indices(n)
    st = _pair_stats(inter[iu], na[iu], nb[iu], P)

    def sym(v: np.ndarray) -> np.ndarray:
        m = np.empty((n, n), dtype=np.float64)
        m[iu] = v
        m.T[iu] = v
        return m

    with np.errstate(divide="ignore", invalid="ignore"):
        containment = np.where(nb > 0, inter / np.maximum(nb, 1), np.nan)
    return {
        "tasks": names,
        "P": P,
        "sizes": sizes,
        "intersection": inter,
        "containment": containment,
        "jaccard": sym(st["jaccard"]),
        "overlap_coefficient": sym(st["overlap_coefficient"]),
        "expected": sym(st["expected_intersection"]),
        "enrichment": sym(st["enrichment"]),
        "p_value": sym(st["p_value"]),
        "log10_p_value": sym(st["log10_p_value"]),
    }


def to_jsonable(obj: Any) -> Any:
    """Convert numpy arrays/scalars (recursively) to python lists/numbers, NaN and inf to None."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return finite_or_none(obj)
    return obj


# -------------------------------------------------------------------------------------- segments

@dataclass(frozen=True, eq=False)
class Segments:
    """The tensors making up a parameter space, in order: names, shapes and cumulative offsets.

    ``offsets`` has one entry per tensor plus the total: tensor k owns [offsets[k], offsets[k+1]).
    """

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    offsets: np.ndarray
    _cache: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = tuple(str(n) for n in self.names)
        shapes = tuple(tuple(int(d) for d in s) for s in self.shapes)
        if len(names) != len(shapes):
            raise MtgraftError(f"segments: {len(names)} names but {len(shapes)} shapes")
        if len(set(names)) != len(names):
            raise MtgraftError("segments: tensor names must be unique")
        sizes = np.array([math.prod(s) for s in shapes], dtype=np.int64)
        expect = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        off = np.asarray(self.offsets, dtype=np.int64).reshape(-1)
        if off.size == len(names):  # start offsets only: append the total
            off = np.concatenate([off, [off[-1] + sizes[-1]] if off.size else [0]]).astype(np.int64)
        if off.shape != expect.shape or not np.array_equal(off, expect):
            raise MtgraftError("segments: offsets do not match the tensor shapes (tensors must be contiguous, in order)")
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "shapes", shapes)
        object.__setattr__(self, "offsets", off)

    @classmethod
    def from_shapes(cls, names: Sequence[str], shapes: Sequence[Sequence[int]]) -> Segments:
        """Build from tensor names and shapes in the canonical (graftable) order."""
        sizes = [math.prod(int(d) for d in s) for s in shapes]
        return cls(tuple(names), tuple(tuple(s) for s in shapes), np.concatenate([[0], np.cumsum(sizes)]))

    @classmethod
    def from_named_shapes(cls, items: Mapping[str, Sequence[int]] | Iterable[tuple[str, Sequence[int]]]) -> Segments:
        """Build from ``{name: shape}`` or ``[(name, shape), ...]`` (e.g. a model's named parameters' shapes)."""
        pairs = list(items.items()) if isinstance(items, Mapping) else list(items)
        return cls.from_shapes([n for n, _ in pairs], [tuple(s) for _, s in pairs])

    @property
    def total(self) -> int:
        """P: the number of parameters in the space."""
        return int(self.offsets[-1])

    @property
    def sizes(self) -> np.ndarray:
        """Number of entries of each tensor."""
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.names)

    def segment_of(self, indices: Any) -> np.ndarray:
        """Tensor id (position in ``names``) of each global index."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.total):
            raise MtgraftError(f"indices must lie in [0, {self.total}) for this parameter space")
        return np.searchsorted(self.offsets, idx, side="right") - 1

    def to_global(self, name: str, local: Any) -> np.ndarray:
        """Global indices of flat positions ``local`` inside tensor ``name``."""
        try:
            k = self.names.index(name)
        except ValueError:
            raise MtgraftError(f"tensor '{name}' is not in this parameter space") from None
        loc = np.asarray(local, dtype=np.int64).reshape(-1)
        size = int(self.offsets[k + 1] - self.offsets[k])
        if loc.size and (loc.min() < 0 or loc.max() >= size):
            raise MtgraftError(f"flat indices for '{name}' must lie in [0, {size})")
        return loc + self.offsets[k]

    def region_from_local(self, local: Mapping[str, Any]) -> np.ndarray:
        """A region (sorted global indices) from ``{tensor name: flat indices within it}``."""
        parts = [self.to_global(n, v) for n, v in local.items()]
        return as_region(np.concatenate(parts) if parts else np.zeros(0, np.int64), self.total)

    def to_local(self, region: Any) -> dict[str, np.ndarray]:
        """Split a region into ``{tensor name: flat indices within it}`` (only tensors it touches)."""
        r = as_region(region, self.total)
        seg = self.segment_of(r)
        bounds = np.searchsorted(seg, np.arange(len(self.names) + 1), side="left")
        out = {}
        for k in np.flatnonzero(np.diff(bounds)):
            out[self.names[k]] = r[bounds[k] : bounds[k + 1]] - self.offsets[k]
        return out

    def kinds(self, bias_separate: bool = False) -> list[tuple[int | None, str]]:
        """(layer, module kind) of each tensor (see ``layer_and_module``)."""
        key = ("kinds", bias_separate)
        if key not in self._cache:
            self._cache[key] = [layer_and_module(n, bias_separate) for n in self.names]
        return self._cache[key]

    def groups(self, by: str, bias_separate: bool = False) -> tuple[list[Any], np.ndarray]:
        """Group keys and each tensor's group id for ``by`` in {"layer", "module", "layer_module"}."""
        key = ("groups", by, bias_separate)
        if key in self._cache:
            return self._cache[key]
        kinds = self.kinds(bias_separate)
        if by == "layer":
            raw = [layer for layer, _ in kinds]
        elif by == "module":
            raw = [mod for _, mod in kinds]
        elif by == "layer_module":
            raw = list(kinds)
        else:
            raise MtgraftError(f"unknown breakdown '{by}' (use layer, module or layer_module)")
        keys = sorted(set(raw), key=_group_sort_key)
        pos = {k: i for i, k in enumerate(keys)}
        gid = np.array([pos[k] for k in raw], dtype=np.int64)
        self._cache[key] = (keys, gid)
        return keys, gid


def _group_sort_key(k: Any) -> tuple:
    def one(x: Any) -> tuple:
        if x is None:
            return (2, 0)
        if isinstance(x, str):
            return (1, MODULE_KINDS.index(x) if x in MODULE_KINDS else len(MODULE_KINDS))
        return (0, x)

    return tuple(one(x) for x in k) if isinstance(k, tuple) else one(k)


def _group_record(by: str, key: Any) -> dict[str, Any]:
    if by == "layer":
        return {"layer": key}
    if by == "module":
        return {"module": key}
    return {"layer": key[0], "module": key[1]}


def _ratio(num: float, den: float) -> float | None:
    return float(num) / float(den) if den > 0 else None


def _group_counts(region: np.ndarray, segments: Segments) -> np.ndarray:
    return np.bincount(segments.segment_of(region), minlength=len(segments)).astype(np.int64)


def region_profile(region: Any, segments: Segments, bias_separate: bool = False) -> dict[str, Any]:
    """Where a region lies: counts per (layer, module kind), per layer, per module kind and per tensor.

    Each record has count, params (size of that group), fraction (count / region size) and
    density (count / params); None where the denominator is 0.
    """
    r = as_region(region, segments.total)
    counts = _group_counts(r, segments)
    sizes = segments.sizes
    n = int(r.size)
    out: dict[str, Any] = {"size": n, "P": segments.total, "bias_separate": bias_separate}
    for by in ("layer_module", "layer", "module"):
        keys, gid = segments.groups(by, bias_separate)
        c = np.bincount(gid, weights=counts, minlength=len(keys))
        s = np.bincount(gid, weights=sizes, minlength=len(keys))
        out[f"by_{by}"] = [
            {**_group_record(by, k), "count": int(c[i]), "params": int(s[i]),
             "fraction": _ratio(c[i], n), "density": _ratio(c[i], s[i])}
            for i, k in enumerate(keys)
        ]
    out["by_tensor"] = [
        {"name": name, "count": int(counts[k]), "params": int(sizes[k]),
         "fraction": _ratio(counts[k], n), "density": _ratio(counts[k], sizes[k])}
        for k, name in enumerate(segments.names)
    ]
    return out


def pair_overlap_breakdown(a: Any, b: Any, segments: Segments, bias_separate: bool = False) -> dict[str, Any]:
    """Intersection of two regions per layer, per module kind and per (layer, module), with chance.

    Within group g the chance intersection is |a_g|·|b_g| / P_g (random regions of the same
    per-group sizes). ``total`` holds ``pair_overlap(a, b, P)``.
    """
    P = segments.total
    ra, rb = as_region(a, P), as_region(b, P)
    inter = np.intersect1d(ra, rb, assume_unique=True)
    ca, cb, ci = (_group_counts(x, segments) for x in (ra, rb, inter))
    sizes = segments.sizes
    out: dict[str, Any] = {"total": pair_overlap(ra, rb, P), "bias_separate": bias_separate}
    for by in ("layer", "module", "layer_module"):
        keys, gid = segments.groups(by, bias_separate)
        ga, gb, gi, gs = (np.bincount(gid, weights=x, minlength=len(keys)) for x in (ca, cb, ci, sizes))
        recs = []
        for i, k in enumerate(keys):
            exp = ga[i] * gb[i] / gs[i] if gs[i] > 0 else 0.0
            recs.append({
                **_group_record(by, k), "params": int(gs[i]), "size_a": int(ga[i]), "size_b": int(gb[i]),
                "intersection": int(gi[i]), "expected": float(exp), "enrichment": _ratio(gi[i], exp),
            })
        out[f"by_{by}"] = recs
    return out


def breakdown_matrices(
    regions: Mapping[str, Any], segments: Segments, by: str = "layer", bias_separate: bool = False
) -> dict[str, Any]:
    """All-pairs breakdown at once: per group g, intersection [G, n, n], expected [G, n, n], sizes [G, n].

    Same numbers as ``pair_overlap_breakdown`` for every pair, computed with one sparse product per group.
    """
    from scipy import sparse

    names, regs = _validate_regions(regions, segments.total)
    keys, gid = segments.groups(by, bias_separate)
    G, n = len(keys), len(regs)
    params = np.bincount(gid, weights=segments.sizes, minlength=G).astype(np.int64)
    inter = np.zeros((G, n, n), dtype=np.int64)
    sizes = np.zeros((G, n), dtype=np.int64)
    lens = np.array([r.size for r in regs], dtype=np.int64)
    if n and lens.sum():
        allidx = np.concatenate(regs)
        rows = np.repeat(np.arange(n, dtype=np.int64), lens)
        uniq, cols = np.unique(allidx, return_inverse=True)
        cols = cols.reshape(-1)
        col_group = gid[segments.segment_of(uniq)]
        inc = sparse.csc_matrix((np.ones(allidx.size, dtype=np.int64), (rows, cols)), shape=(n, uniq.size))
        order = np.argsort(col_group, kind="stable")
        bounds = np.searchsorted(col_group[order], np.arange(G + 1), side="left")
        for g in range(G):
            sel = order[bounds[g] : bounds[g + 1]]
            if sel.size == 0:
                continue
            sub = inc[:, sel]
            inter[g] = (sub @ sub.T).toarray()
            sizes[g] = np.diagonal(inter[g])
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = sizes[:, :, None] * sizes[:, None, :] / np.where(params > 0, params, 1)[:, None, None].astype(np.float64)
    return {
        "tasks": names,
        "by": by,
        "groups": [_group_record(by, k) for k in keys],
        "params": params,
        "sizes": sizes,
        "intersection": inter,
        "expected": expected,
    }


def breakdown_stats(bd: Mapping[str, Any]) -> dict[str, Any]:
    """Pair metrics within each group of a ``breakdown_matrices`` result, all [G, n, n] (NaN = undefined).

    ``containment[g, i, j] = |g_i ∩ g_j ∩ group| / |g_j ∩ group|``; jaccard, overlap_coefficient,
    enrichment (observed / the group's chance |a_g||b_g|/P_g), p_value and log10_p_value as in ``pair_overlap``.
    """
    inter = np.asarray(bd["intersection"], dtype=np.int64)
    sizes = np.asarray(bd["sizes"], dtype=np.int64)
    params = np.asarray(bd["params"], dtype=np.int64)
    G = inter.shape[0]
    n = inter.shape[1] if inter.ndim == 3 else 0
    na = np.broadcast_to(sizes[:, :, None], (G, n, n))
    nb = np.broadcast_to(sizes[:, None, :], (G, n, n))
    Pg = np.broadcast_to(np.maximum(params, 1)[:, None, None], (G, n, n))
    st = _pair_stats(inter, na, nb, Pg)
    with np.errstate(divide="ignore", invalid="ignore"):
        containment = np.where(nb > 0, inter / np.maximum(nb, 1), np.nan)
    return {
        "containment": containment,
        "jaccard": st["jaccard"],
        "overlap_coefficient": st["overlap_coefficient"],
        "enrichment": st["enrichment"],
        "p_value": st["p_value"],
        "log10_p_value": st["log10_p_value"],
    }
