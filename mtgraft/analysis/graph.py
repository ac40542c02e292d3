"""The task-similarity graph: tasks as nodes, region overlap beyond chance as weighted edges.

Edges join two tasks whose regions share at least ``min_enrichment`` times the parameters two random
regions of the same sizes would, and only pairs the report's statistics call ``beyond_chance`` (the same
Bonferroni-adjusted p-values as ``stats.pair_records``; the adjusted p at most ``max_p`` too): no edge joins a
pair the report calls chance. Edge weight = enrichment. Communities come from networkx's greedy modularity maximisation (weighted, deterministic).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np

from mtgraft.analysis.stats import ALPHA, pair_records
from mtgraft.errors import MtgraftError
from mtgraft.utils import atomic_file, finite_or_none


def task_graph(
    matrices: Mapping[str, Any],
    node_attrs: Mapping[str, Mapping[str, Any]] | None = None,
    min_enrichment: float = 2.0,
    max_p: float = ALPHA,
    pairs: Sequence[Mapping[str, Any]] | None = None,
) -> nx.Graph:
    """Build the task graph from ``overlap_matrices`` output; node attributes from ``node_attrs[task]``.

    Nodes carry ``region_size`` (and whatever ``node_attrs`` gives, None values dropped); an edge (i, j)
    exists when the pair's verdict (``pairs``: ``stats.pair_records(matrices)``, computed when not given) is
    ``beyond_chance``, its enrichment >= ``min_enrichment`` and its Bonferroni-adjusted p <= ``max_p``; its
    attributes: weight (= enrichment), enrichment, log2_enrichment, jaccard, overlap_coefficient, intersection,
    expected, p_value (unadjusted), p_adjusted, n_tests, log10_p_value, containment_ij (|g_i∩g_j|/|g_j|) and
    containment_ji, keyed by the (sorted-by-input) pair.
    """
    if min_enrichment <= 0:
        raise MtgraftError(f"--min-enrichment must be positive, got {min_enrichment:g}")
    if not (0 < max_p <= 1):
        raise MtgraftError(f"max_p must be in (0, 1], got {max_p:g}")
    tasks = list(matrices["tasks"])
    sizes = np.asarray(matrices["sizes"])
    G = nx.Graph(P=int(matrices["P"]), min_enrichment=float(min_enrichment), max_p=float(max_p))
    for i, t in enumerate(tasks):
        attrs = {"region_size": int(sizes[i])}
        for k, v in (node_attrs or {}).get(t, {}).items():
            if v is not None and isinstance(v, (int, float, str, bool)):
                attrs[k] = v
        G.add_node(t, **attrs)
    enr = np.asarray(matrices["enrichment"], dtype=np.float64)
    pv = np.asarray(matrices["p_value"], dtype=np.float64)
    tested = {(r["a"], r["b"]): r for r in (pair_records(matrices) if pairs is None else pairs)}
    for i in range(len(tasks)):
        for j in range(i + 1, len(tasks)):
            e = finite_or_none(enr[i, j])
            p = finite_or_none(pv[i, j])
            rec = tested.get((tasks[i], tasks[j]))
            if (e is None or p is None or rec is None or rec["verdict"] != "beyond_chance" or e < min_enrichment
                    or rec["p_adjusted"] > max_p):
                continue
            G.add_edge(
                tasks[i], tasks[j],
                weight=e, enrichment=e, log2_enrichment=math.log2(e),
                jaccard=finite_or_none(matrices["jaccard"][i][j]) or 0.0,
                overlap_coefficient=finite_or_none(matrices["overlap_coefficient"][i][j]) or 0.0,
                intersection=int(matrices["intersection"][i][j]),
                expected=float(matrices["expected"][i][j]),
                p_value=p, p_adjusted=float(rec["p_adjusted"]), n_tests=int(rec["n_tests"]),
                log10_p_value=float(matrices["log10_p_value"][i][j]),
                containment_ij=finite_or_none(matrices["containment"][i][j]) or 0.0,
                containment_ji=finite_or_none(matrices["containment"][j][i]) or 0.0,
            )
    return G


def communities(G: nx.Graph) -> list[list[str]]:
    """Communities by weighted greedy modularity (largest first; ties by name); singletons for isolated tasks."""
    from networkx.algorithms.community import greedy_modularity_communities

    if G.number_of_nodes() == 0:
        return []
    if G.number_of_edges() == 0:
        groups = [{n} for n in G.nodes]
    else:
        groups = [set(c) for c in greedy_modularity_communities(G, weight="weight")]
    out = [sorted(c) for c in groups]
    out.sort(key=lambda c: (-len(c), c[0]))
    return out


def annotate_communities(G: nx.Graph, comms: Sequence[Sequence[str]]) -> None:
    """Set node attribute ``community`` (index into ``comms``) and the graph's modularity (weighted)."""
    for k, c in enumerate(comms):
        for n in c:
            G.nodes[n]["community"] = k
    if G.number_of_edges():
        from networkx.algorithms.community import modularity

        G.graph["modularity"] = float(modularity(G, [set(c) for c in comms], weight="weight"))
    G.graph["n_communities"] = len(comms)


def write_graphml(G: nx.Graph, path: str | os.PathLike) -> Path:
    """Write GraphML (readable by networkx, Gephi, Cytoscape) atomically."""
    path = Path(path)
    H = G.copy()
    for _, d in H.nodes(data=True):
        for k in [k for k, v in d.items() if v is None]:
            del d[k]
    H.graph = {k: v for k, v in H.graph.items() if isinstance(v, (int, float, str, bool))}
    with atomic_file(path, "wb") as f:
        nx.write_graphml(H, f)
    return path


def node_link(G: nx.Graph) -> dict[str, Any]:
    """The graph as node-link JSON data (``nodes``, ``edges``, ``graph``)."""
    return nx.node_link_data(G, edges="edges")


def write_node_link(G: nx.Graph, path: str | os.PathLike) -> Path:
    """Write node-link JSON atomically."""
    path = Path(path)
    with atomic_file(path, "w") as f:
        json.dump(node_link(G), f, indent=2)
        f.write("\n")
    return path
