"""The task-similarity graph: tasks as nodes, region overlap beyond chance as weighted edges.

Edges join two tasks whose regions share at least ``min_enrichment`` times the parameters two random
regions of the same sizes would (and with hypergeometric p-value at most ``max_p``); edge weight =
enrichment. Communities come from networkx's greedy modularity maximisation (weighted, deterministic).
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

from mtgraft.errors import MtgraftError
from mtgraft.utils import atomic_file


def _finite(x: Any) -> float | None:
    if x is None:
        return None
    f = float(x)
    return f if math.isfinite(f) else None


def task_graph(
    matrices: Mapping[str, Any],
    node_attrs: Mapping[str, Mapping[str, Any]] | None = None,
    min_enrichment: float = 2.0,
    max_p: float = 0.05,
) -> nx.Graph:
    """Build the task graph from ``overlap_matrices`` output; node attributes from ``node_attrs[task]``.

    Nodes carry ``region_size`` (and whatever ``node_attrs`` gives, None values dropped); an edge (i, j)
    exists when enrichment >= ``min_enrichment`` and p <= ``max_p``; its attributes: weight (= enrichment),
    enrichment, log2_enrichment, jaccard, overlap_coefficient, intersection, expected, p_value,
    log10_p_value, containment_ij (|g_i∩g_j|/|g_j|) and containment_ji, keyed by the (sorted-by-input) pair.
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
    for i in range(len(tasks)):
        for j in range(i + 1, len(tasks)):
            e = _finite(enr[i, j])
            p = _finite(pv[i, j])
            if e is None or p is None or e < min_enrichment or p > max_p:
                continue
            G.add_edge(
                tasks[i], tasks[j],
                weight=e, enrichment=e, log2_enrichment=math.log2(e),
                jaccard=_finite(matrices["jaccard"][i][j]) or 0.0,
                overlap_coefficient=_finite(matrices["overlap_coefficient"][i][j]) or 0.0,
                intersection=int(matrices["intersection"][i][j]),
                expected=float(matrices["expected"][i][j]),
                p_value=p, log10_p_value=float(matrices["log10_p_value"][i][j]),
                containment_ij=_finite(matrices["containment"][i][j]) or 0.0,
                containment_ji=_finite(matrices["containment"][j][i]) or 0.0,
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


def draw_graph(G: nx.Graph, path: str | os.PathLike, title: str = "") -> Path:
    """PNG drawing: node area ~ region size, edge width ~ log2 enrichment, colours = communities, labelled."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    n = G.number_of_nodes()
    fig = Figure(figsize=(7.5, 6.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(111)
    ax.set_axis_off()
    if n == 0:
        ax.text(0.5, 0.5, "no tasks", ha="center", va="center")
    else:
        # circular layout, communities next to each other: deterministic and readable for a few tasks
        order = sorted(G.nodes, key=lambda v: (G.nodes[v].get("community", 0), str(v)))
        pos = nx.circular_layout(nx.path_graph(order)) if n > 1 else {order[0]: np.array([0.0, 0.0])}
        sizes = np.array([max(G.nodes[v].get("region_size", 0), 0) for v in G.nodes], dtype=np.float64)
        area = 1400 + 3200 * np.sqrt(sizes / sizes.max()) if sizes.max() > 0 else np.full(n, 900.0)
        cmap = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C",
                "#CCB974", "#64B5CD"]
        colors = [cmap[G.nodes[v].get("community", 0) % len(cmap)] for v in G.nodes]
        if G.number_of_edges():
            le = [max(d["log2_enrichment"], 0.0) for _, _, d in G.edges(data=True)]
            lo, hi = min(le), max(le)
            # weakest edge 1.5 pt, strongest 9 pt: differences stay visible when every edge is far above chance
            widths = [1.5 + 7.5 * (x - lo) / (hi - lo) if hi > lo else 5.0 for x in le]
            nx.draw_networkx_edges(G, pos, ax=ax, width=widths, edge_color="#555555", alpha=0.6)
            labels = {(u, v): (f"{d['enrichment']:.2g}×" if d["enrichment"] < 10 else f"{d['enrichment']:.0f}×")
                      for u, v, d in G.edges(data=True)}
            nx.draw_networkx_edge_labels(G, pos, edge_labels=labels, ax=ax, font_size=8, rotate=False,
                                         bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8})
        nx.draw_networkx_nodes(G, pos, ax=ax, node_size=area, node_color=colors, alpha=0.9,
                               edgecolors="black", linewidths=0.8)
        nlabels = {v: f"{v}\n{G.nodes[v].get('region_size', 0):,}" for v in G.nodes}
        nx.draw_networkx_labels(G, pos, labels=nlabels, ax=ax, font_size=8,
                                bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.7})
        xs = np.array([p[0] for p in pos.values()])
        ys = np.array([p[1] for p in pos.values()])
        padx = max(0.35, 0.25 * (xs.max() - xs.min()))
        pady = max(0.3, 0.2 * (ys.max() - ys.min()))
        ax.set_xlim(xs.min() - padx, xs.max() + padx)
        ax.set_ylim(ys.min() - pady, ys.max() + pady)
    me, mp = G.graph.get("min_enrichment"), G.graph.get("max_p")
    sub = (f"edges: enrichment ≥ {me:g} and p ≤ {mp:g}; width ~ log2 enrichment (weakest to strongest edge)\n"
           "node area ~ region size; colour = community") if me is not None else ""
    ax.set_title((title + "\n" if title else "") + sub, fontsize=9)
    fig.subplots_adjust(left=0.02, right=0.98, top=0.86, bottom=0.02)
    with atomic_file(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    return path
