"""Benchmark the overlap metrics on random regions at sparsity 1e-4 of roberta-base's graftable body.

Usage: python benchmarks/bench_overlap.py [--out benchmarks/results/overlap.json] [--sizes 2 10 25 50 100]
Times (best of --repeats) and peak traced memory (tracemalloc) of ``overlap_matrices`` and of the
per-layer breakdown for all pairs: the pairwise loop over ``pair_overlap_breakdown`` and the
all-pairs ``breakdown_matrices``. Prints a markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
import tracemalloc
from collections.abc import Callable
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mtgraft.analysis.overlap import (  # noqa: E402
    Segments,
    breakdown_matrices,
    overlap_matrices,
    pair_overlap_breakdown,
)
from mtgraft.utils import provenance, write_json  # noqa: E402


def roberta_base_segments(n_layers: int = 12, hidden: int = 768, ffn: int = 3072) -> Segments:
    """The graftable tensors of roberta-base (everything under encoder.layer.*), in model order."""
    items: list[tuple[str, tuple[int, ...]]] = []
    for i in range(n_layers):
        p = f"backbone.encoder.layer.{i}."
        for q in ("query", "key", "value"):
            items += [(p + f"attention.self.{q}.weight", (hidden, hidden)), (p + f"attention.self.{q}.bias", (hidden,))]
        items += [
            (p + "attention.output.dense.weight", (hidden, hidden)), (p + "attention.output.dense.bias", (hidden,)),
            (p + "attention.output.LayerNorm.weight", (hidden,)), (p + "attention.output.LayerNorm.bias", (hidden,)),
            (p + "intermediate.dense.weight", (ffn, hidden)), (p + "intermediate.dense.bias", (ffn,)),
            (p + "output.dense.weight", (hidden, ffn)), (p + "output.dense.bias", (hidden,)),
            (p + "output.LayerNorm.weight", (hidden,)), (p + "output.LayerNorm.bias", (hidden,)),
        ]
    return Segments.from_named_shapes(items)


def measure(fn: Callable[[], Any], repeats: int) -> dict[str, float]:
    """Best wall time over ``repeats`` runs, and peak traced memory of one extra run."""
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    tracemalloc.start()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"seconds": best, "peak_mib": peak / 2**20}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/overlap.json")
    ap.add_argument("--sizes", type=int, nargs="+", default=[2, 10, 25, 50, 100])
    ap.add_argument("--sparsity", type=float, default=1e-4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    seg = roberta_base_segments()
    P = seg.total
    k = round(args.sparsity * P)
    rng = np.random.default_rng(args.seed)
    overlap_matrices({"w": np.arange(3)}, P)  # warm-up: scipy imports are not part of the timing
    rows = []
    for n in args.sizes:
        regions = {f"task{i}": np.sort(rng.choice(P, k, replace=False)) for i in range(n)}
        names = list(regions)

        def pairwise_loop(regions: dict = regions, names: list = names) -> None:
            for x, y in combinations(names, 2):
                pair_overlap_breakdown(regions[x], regions[y], seg)

        res = {
            "n_regions": n,
            "pairs": n * (n - 1) // 2,
            "overlap_matrices": measure(lambda r=regions: overlap_matrices(r, P), args.repeats),
            "breakdown_matrices_layer": measure(lambda r=regions: breakdown_matrices(r, seg, by="layer"), args.repeats),
            "breakdown_matrices_module": measure(lambda r=regions: breakdown_matrices(r, seg, by="module"), args.repeats),
            "pair_overlap_breakdown_loop": measure(pairwise_loop, args.repeats),
        }
        rows.append(res)
        print(f"n={n}: overlap_matrices {res['overlap_matrices']['seconds']:.3f}s", file=sys.stderr)

    out = {
        "benchmark": "overlap",
        "P": P,
        "region_size": k,
        "sparsity": args.sparsity,
        "repeats": args.repeats,
        "timing": "best of repeats (s); peak_mib = tracemalloc peak of one run",
        "machine": {"python": platform.python_version(), "processor": platform.processor() or platform.machine()},
        "provenance": provenance(),
        "results": rows,
    }
    write_json(args.out, out)
    cols = ["overlap_matrices", "breakdown_matrices_layer", "breakdown_matrices_module", "pair_overlap_breakdown_loop"]
    print(f"P = {P:,}, {k:,} indices per region (sparsity {args.sparsity:g}); best of {args.repeats}; "
          "time in s / peak traced MiB\n")
    print("| regions | pairs | " + " | ".join(cols) + " |")
    print("|---:|---:|" + "---:|" * len(cols))
    for r in rows:
        cells = [f"{r[c]['seconds']:.3f} / {r[c]['peak_mib']:.1f}" for c in cols]
        print(f"| {r['n_regions']} | {r['pairs']} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
