"""Every figure of the overlap report (PNG, matplotlib's Agg canvas, no pyplot state).

Heatmaps of the overlap matrices, the per-module / per-layer enrichment of every pair, each task's region
profile, the task graph, and (with transfer) the Rel heatmap and the overlap-vs-transfer scatter.
``report_figures(data, figdir)`` draws them all for a ``ReportData``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mtgraft.analysis.formatting import fmt_x
from mtgraft.analysis.stats import ALPHA, bonferroni_tests, group_name
from mtgraft.utils import atomic_file, finite_or_none

if TYPE_CHECKING:
    import networkx as nx

    from mtgraft.analysis.report_data import ReportData


def _fig(w: float, h: float, layout: str | None = "constrained") -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), layout=layout)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> Path:
    with atomic_file(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    return path


def _short(t: str, n: int = 18) -> str:
    return t if len(t) <= n else t[: n - 1] + "…"


def heatmap(values: np.ndarray, rows: list[str], cols: list[str], path: Path, title: str, cbar: str,
            text: Callable[[int, int], str], cmap: str = "viridis", norm: Any = None,
            mask: np.ndarray | None = None, xlabel: str = "", ylabel: str = "",
            cbar_ticks: tuple[list[float], list[str]] | None = None) -> Path:
    """One annotated heatmap PNG (masked cells grey); ``text(i, j)`` gives each cell's label."""
    import matplotlib as mpl

    v = np.array(values, dtype=np.float64)
    m = ~np.isfinite(v) if mask is None else (mask | ~np.isfinite(v))
    nr, nc = v.shape
    w = max(4.8, 1.5 + 0.85 * nc + 0.06 * max((len(r) for r in rows), default=0))
    h = max(3.6, 1.4 + 0.6 * nr)
    fig = _fig(w, h)
    ax = fig.add_subplot(111)
    cm = mpl.colormaps[cmap].with_extremes(bad="#d9d9d9")
    im = ax.imshow(np.ma.masked_array(v, m), cmap=cm, norm=norm, aspect="auto")
    ax.set_xticks(range(nc), [_short(c) for c in cols], rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(nr), [_short(r, 40) for r in rows], fontsize=8)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    import textwrap

    ax.set_title(textwrap.fill(title, max(40, int(w * 11))), fontsize=9)
    finite = v[~m]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    for i in range(nr):
        for j in range(nc):
            s = text(i, j)
            if not s:
                continue
            if m[i, j]:
                color = "black"
            else:
                rgba = im.cmap(im.norm(v[i, j])) if hi > lo or norm is not None else (1, 1, 1, 1)
                lum = 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2]
                color = "white" if lum < 0.5 else "black"
            ax.text(j, i, s, ha="center", va="center", fontsize=7.5, color=color)
    cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    cb.set_label(cbar, fontsize=8)
    cb.ax.tick_params(labelsize=7)
    if cbar_ticks:
        cb.set_ticks(cbar_ticks[0], labels=cbar_ticks[1])
    return _save(fig, path)


def _log2_ticks(lo: float, hi: float) -> tuple[list[float], list[str]]:
    ks = list(range(math.ceil(lo), math.floor(hi) + 1))
    step = max(1, math.ceil(len(ks) / 8))
    ks = ks[::step]
    return [float(k) for k in ks], [fmt_x(2.0 ** k) if k >= 0 else f"{2.0 ** k:.2g}×" for k in ks]


MIN_LOG2_SPAN = 0.5
"""The enrichment colour range (log2) spans at least this, so near-equal cells do not get extreme colours."""


def _enrichment_norm(lv: np.ndarray) -> tuple[Any, float, float, str]:
    """A colour scale fitted to the data's range of log2 enrichment: diverging around 1× (white) when the cells
    lie on both sides of chance, else sequential over the cells' own range (reds above chance, blues below),
    so cells that all lie far above chance are still told apart. (norm, lo, hi, colormap)."""
    from matplotlib.colors import Normalize, TwoSlopeNorm

    fin = lv[np.isfinite(lv)]
    if not fin.size:
        return TwoSlopeNorm(vmin=-1.0, vcenter=0.0, vmax=1.0), -1.0, 1.0, "RdBu_r"
    lo, hi = float(fin.min()), float(fin.max())
    if lo < 0 < hi:
        return TwoSlopeNorm(vmin=lo, vcenter=0.0, vmax=hi), lo, hi, "RdBu_r"
    if hi - lo < MIN_LOG2_SPAN:
        mid = (lo + hi) / 2
        lo, hi = mid - MIN_LOG2_SPAN / 2, mid + MIN_LOG2_SPAN / 2
    return Normalize(vmin=lo, vmax=hi), lo, hi, "Reds" if lo >= 0 else "Blues_r"


def _log2_ticks_fitted(lo: float, hi: float) -> tuple[list[float], list[str]]:
    """Colour-bar ticks: powers of two when the range holds at least three, else five evenly spaced values."""
    ticks, labels = _log2_ticks(lo, hi)
    if len(ticks) >= 3:
        return ticks, labels
    ks = list(np.linspace(lo, hi, 5))
    return [float(k) for k in ks], [fmt_x(float(2.0 ** k)) for k in ks]


def _log2_enrichment(e: np.ndarray, diag: np.ndarray) -> np.ndarray:
    """log2 of an enrichment matrix; 0× (log −inf) drawn one step below the smallest finite value, at most −3."""
    with np.errstate(divide="ignore", invalid="ignore"):
        lv = np.log2(e)
    fin = lv[np.isfinite(lv) & ~diag]
    floor_v = float(fin.min()) - 1 if fin.size else -3.0
    return np.where(np.isneginf(lv), min(floor_v, -3.0), lv)


def matrix_figures(mat: dict[str, Any], figdir: Path) -> dict[str, Path]:
    """Heatmaps of containment, Jaccard, enrichment (log scale) and -log10 p; the diagonal shows region sizes."""
    tasks = mat["tasks"]
    n = len(tasks)
    diag = np.eye(n, dtype=bool)
    sizes = mat["sizes"]

    def dtext(i: int, j: int, body: Callable[[int, int], str]) -> str:
        return f"|g|={int(sizes[i]):,}" if i == j else body(i, j)

    def ratio(key: str, fmt: str, title: str, cbar: str, **kw: Any) -> Path:
        v = np.asarray(mat[key], dtype=np.float64)
        return heatmap(v, tasks, tasks, figdir / f"heatmap_{key}.png", title, cbar,
                       lambda i, j: dtext(i, j, lambda a, b: format(v[a, b], fmt) if np.isfinite(v[a, b]) else "–"),
                       cmap="Blues", mask=diag, **kw)

    def enrichment(key: str, title: str, cbar: str) -> Path:
        e = np.asarray(mat[key], dtype=np.float64)
        lv = _log2_enrichment(e, diag)
        norm, lo, hi, cmap = _enrichment_norm(np.where(diag, np.nan, lv))
        return heatmap(lv, tasks, tasks, figdir / f"heatmap_{key}.png", title, f"{cbar}, fitted to the cells",
                       lambda i, j: dtext(i, j, lambda a, b: fmt_x(finite_or_none(e[a, b]))), cmap=cmap,
                       norm=norm, mask=diag, cbar_ticks=_log2_ticks_fitted(lo, hi))

    out = {}
    out["heatmap_containment"] = ratio(
        "containment", ".1%",
        "containment |g_i ∩ g_j| / |g_j| (share of column task's region that row task's graft also covers)",
        "containment", xlabel="task j (region g_j)", ylabel="task i (graft g_i)")
    out["heatmap_jaccard"] = ratio("jaccard", ".3f", "Jaccard |g_i ∩ g_j| / |g_i ∪ g_j|", "Jaccard")
    out["heatmap_enrichment"] = enrichment(
        "enrichment", "enrichment = observed / chance intersection (|g_i||g_j|/|P|); 1× = random",
        "enrichment (log scale)")
    if "enrichment_within_tensors" in mat:
        out["heatmap_enrichment_within_tensors"] = enrichment(
            "enrichment_within_tensors",
            "enrichment given where the regions lie: observed / Σ_t |g_i ∩ t|·|g_j ∩ t| / |t| over tensors t "
            "(1× = tasks merely favour the same tensors)", "enrichment within tensors (log scale)")
    nl = -np.asarray(mat["log10_p_value"], dtype=np.float64)
    thr = -math.log10(ALPHA / bonferroni_tests(n))
    out["heatmap_pvalue"] = heatmap(
        nl, tasks, tasks, figdir / "heatmap_pvalue.png",
        f"-log10 p (hypergeometric, more shared than chance); * = significant (Bonferroni threshold {thr:.1f} at α=0.05)",
        "-log10 p", lambda i, j: dtext(i, j, lambda a, b: f"{nl[a, b]:.1f}" + ("*" if nl[a, b] >= thr else "")),
        cmap="magma_r", mask=diag)
    return out


def breakdown_figure(bd: dict[str, Any], tasks: list[str], path: Path, what: str) -> Path:
    """Enrichment per group (columns) for every pair (rows), log scale, annotated."""
    n = len(tasks)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    groups = [group_name(g) for g in bd["groups"]]
    enr = bd["stat_enrichment"]
    v = np.full((len(pairs), len(groups)), np.nan)
    txt = [["" for _ in groups] for _ in pairs]
    for r, (i, j) in enumerate(pairs):
        for g in range(len(groups)):
            x = enr[g, i, j]
            sparse = bd["expected"][g, i, j] < 1
            if sparse and bd["intersection"][g, i, j] == 0:
                txt[r][g] = "·"
                continue
            if np.isfinite(x):
                v[r, g] = math.log2(x) if x > 0 else np.nan
                txt[r][g] = fmt_x(float(x)) + ("†" if sparse else "")
                if x == 0:
                    v[r, g] = -3.0
    norm, lo, hi, cmap = _enrichment_norm(v)
    marks = []
    if any("†" in t for row in txt for t in row):
        marks.append("† = chance expects < 1 shared entry (a tiny denominator)")
    if any(t == "·" for row in txt for t in row):
        marks.append("· = nothing shared where chance expects < 1")
    legend = f"; {'; '.join(marks)}" if marks else ""
    return heatmap(v, [f"{tasks[i]} × {tasks[j]}" for i, j in pairs], groups, path,
                   f"enrichment per {what} (observed / chance within the {what}){legend}",
                   "enrichment (log scale), fitted to the cells", lambda a, b: txt[a][b], cmap=cmap, norm=norm,
                   cbar_ticks=_log2_ticks_fitted(lo, hi), xlabel=what)


def profile_figures(profiles: dict[str, dict[str, Any]], figdir: Path) -> dict[str, Path]:
    """Per task: layer × module heatmap of the share of its region; and density relative to uniform per module/layer."""
    tasks = list(profiles)
    first = profiles[tasks[0]]
    layers = sorted({r["layer"] for r in first["by_layer_module"]}, key=lambda x: (x is None, x if x is not None else 0))
    mods = []
    for r in first["by_layer_module"]:
        if r["module"] not in mods:
            mods.append(r["module"])
    n = len(tasks)
    ncol = min(n, 3)
    nrow = math.ceil(n / ncol)
    fig = _fig(max(4.6, 3.7 * ncol + 0.8), (0.38 * len(layers) + 2.1) * nrow + 0.5)
    vmax = 0.0
    grids = {}
    for t in tasks:
        g = np.full((len(layers), len(mods)), np.nan)
        for r in profiles[t]["by_layer_module"]:
            if r["fraction"] is not None:
                g[layers.index(r["layer"]), mods.index(r["module"])] = r["fraction"]
        grids[t] = g
        if np.isfinite(g).any():
            vmax = max(vmax, float(np.nanmax(g)))
    im = None
    for k, t in enumerate(tasks):
        ax = fig.add_subplot(nrow, ncol, k + 1)
        g = grids[t]
        im = ax.imshow(g, cmap="YlOrRd", vmin=0, vmax=vmax or 1, aspect="auto")
        for i in range(len(layers)):
            for j in range(len(mods)):
                if np.isfinite(g[i, j]) and g[i, j] > 0:
                    ax.text(j, i, f"{100 * g[i, j]:.0f}" if g[i, j] >= 0.0095 else "<1", ha="center", va="center",
                            fontsize=6.5, color="white" if g[i, j] > 0.6 * vmax else "black")
        ax.set_xticks(range(len(mods)), mods, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(layers)), [f"L{x}" if x is not None else "–" for x in layers], fontsize=7)
        ax.set_title(f"{t} ({profiles[t]['size']:,})", fontsize=8)
    if im is not None:
        from matplotlib.ticker import PercentFormatter

        cb = fig.colorbar(im, ax=fig.axes, fraction=0.025, pad=0.02, format=PercentFormatter(xmax=1, decimals=0))
        cb.set_label("share of the task's region (%, annotated)", fontsize=8)
        cb.ax.tick_params(labelsize=7)
    fig.suptitle("Where each task's region sits: layer × module kind (share of region, %)", fontsize=9)
    out = {"profile_layer_module": _save(fig, figdir / "profile_layer_module.png")}

    fig = _fig(max(8.0, 1.2 * n + 6), 3.8)
    for k, by in enumerate(("module", "layer")):
        ax = fig.add_subplot(1, 2, k + 1)
        recs0 = profiles[tasks[0]][f"by_{by}"]
        keys = [r[by] for r in recs0]
        P = first["P"]
        width = 0.8 / n
        for ti, t in enumerate(tasks):
            prof = profiles[t]
            dens = [(r["density"] / (prof["size"] / P)) if prof["size"] and r["density"] is not None else 0.0
                    for r in prof[f"by_{by}"]]
            y = [math.log2(x) if x > 0 else -4.0 for x in dens]
            ax.bar(np.arange(len(keys)) + ti * width - 0.4 + width / 2, y, width=width, label=t)
        ax.axhline(0.0, color="black", linewidth=0.8)
        from matplotlib.ticker import FuncFormatter, MaxNLocator

        lo_y, hi_y = ax.get_ylim()
        if hi_y - lo_y > 2:
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{2.0 ** v:.3g}×"))
        ax.set_xticks(range(len(keys)), [str(x) if by == "module" else (f"L{x}" if x is not None else "–")
                                         for x in keys], rotation=35 if by == "module" else 0,
                      ha="right" if by == "module" else "center", fontsize=7)
        ax.set_ylabel("density / region's overall density (log scale)", fontsize=8)
        ax.set_title(f"per {by}: over- (>1×) or under-represented (<1×) vs a random region", fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
    fig.axes[0].legend(fontsize=7, loc="best")
    out["profile_density"] = _save(fig, figdir / "profile_density.png")
    return out


def _rel_half_widths(transfer: dict[str, Any], rows: list[str], tasks: list[str]) -> dict[tuple[int, int], float]:
    """Half the 95% interval of each Rel cell: the recorded ``rel_ci95`` where the transfer results carry one,
    else 1.96 × ``rel_se`` (normal approximation)."""
    out: dict[tuple[int, int], float] = {}
    col = {t: j for j, t in enumerate(tasks)}
    row = {g: i for i, g in enumerate(rows)}

    def half(rec: dict[str, Any]) -> float | None:
        ci = rec.get("rel_ci95")
        if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(x is not None for x in ci):
            return (float(ci[1]) - float(ci[0])) / 2
        se = rec.get("rel_se")
        return 1.96 * float(se) if se is not None and math.isfinite(float(se)) else None

    for r in transfer["results"]:
        i, j = row.get(r["graft"]), col.get(r["eval_task"])
        if i is not None and j is not None and (h := half(r)) is not None:
            out[(i, j)] = h
    for u in transfer["unions"]:
        i = row.get(f"∪ {u['name']}")
        for t, rec in u["results"].items():
            if i is not None and t in col and (h := half(rec)) is not None:
                out[(i, col[t])] = h
    return out


def transfer_figures(transfer: dict[str, Any], correlation: dict[str, Any] | None, figdir: Path) -> dict[str, Path]:
    """Rel heatmap (grafts and unions × eval tasks) and the overlap-vs-transfer scatter."""
    tasks = transfer["eval_tasks"]
    rows = list(transfer["grafts"])
    rel = [[np.nan if x is None else x for x in r] for r in transfer["rel"]]
    for u in transfer["unions"]:
        rows.append(f"∪ {u['name']}")
        rel.append([u["results"][t]["rel"] if t in u["results"] and u["results"][t]["rel"] is not None else np.nan
                    for t in tasks])
    v = np.array(rel, dtype=np.float64)
    avail = [[False] * len(tasks) for _ in rows]
    for i, r in enumerate(transfer["rel"]):
        for j, x in enumerate(r):
            avail[i][j] = x is not None
    for k, u in enumerate(transfer["unions"]):
        for j, t in enumerate(tasks):
            avail[len(transfer["grafts"]) + k][j] = t in u["results"]

    half = _rel_half_widths(transfer, rows, tasks)

    def text(i: int, j: int) -> str:
        if not avail[i][j]:
            return "n/a"
        if not np.isfinite(v[i, j]):
            return "–"
        h = half.get((i, j))
        return f"{v[i, j]:.2f}" + (f"\n±{h:.2f}" if h is not None else "")

    from matplotlib.colors import TwoSlopeNorm

    fin = v[np.isfinite(v)]
    lo = min(-0.1, float(fin.min())) if fin.size else -1
    hi = max(1.0, float(fin.max())) if fin.size else 1
    out = {"transfer_rel": heatmap(v, rows, tasks, figdir / "transfer_rel.png",
                                   "Rel of graft (row) on task (column), with the column task's head, ± half the 95% "
                                   "interval; n/a = other labels",
                                   "Rel", text, cmap="RdYlGn", norm=TwoSlopeNorm(vmin=lo, vcenter=0.0, vmax=hi),
                                   xlabel="evaluated on task", ylabel="graft")}
    if correlation and correlation["points"] and correlation.get("rho") is not None:  # none below its minimum n
        fig = _fig(5.2, 4.0)
        ax = fig.add_subplot(111)
        xs = [p["x"] for p in correlation["points"]]
        ys = [p["rel"] for p in correlation["points"]]
        ax.scatter(xs, ys, s=28, color="#4C72B0", edgecolor="black", linewidth=0.5)
        for p in correlation["points"]:
            ax.annotate(f"{p['graft']}→{p['eval_task']}", (p["x"], p["rel"]), fontsize=6, xytext=(3, 3),
                        textcoords="offset points")
        lo_x, hi_x = min(xs), max(xs)
        if lo_x > 2.0 and hi_x / lo_x < 10:
            # every pair far above chance, within one decade: a linear axis on the data (a chance line at
            # 1× would squeeze every point against the right edge)
            span = max(hi_x - lo_x, 0.05 * hi_x)
            ax.set_xlim(lo_x - 0.08 * span, hi_x + 0.55 * span)  # room for the labels on the right
            note = " (chance = 1×, far off the left edge)"
        else:
            log = all(x > 0 for x in xs)
            if log:
                ax.set_xscale("log")
            ax.axvline(1.0, color="gray", linestyle="--", linewidth=0.8)
            ax.set_xlim(right=hi_x * 3 if log else hi_x + 0.4 * (hi_x - lo_x + 1e-9))
            note = " (dashed: chance)"
        ax.set_xlabel(f"{correlation['x']} of the pair{note}", fontsize=8)
        ax.set_ylabel("Rel of graft i on task j", fontsize=8)
        rho = correlation.get("rho")
        ax.set_title(f"overlap vs transfer: Spearman ρ = {rho:.2f}, n = {correlation['n']}" if rho is not None
                     else f"overlap vs transfer ({correlation.get('note')})", fontsize=8)
        ax.tick_params(labelsize=7)
        out["overlap_vs_transfer"] = _save(fig, figdir / "overlap_vs_transfer.png")
    return out



LABEL_MIN_GAP = 0.22
"""Edge labels of the task graph sit at least this far apart (layout units; the circle has radius 1)."""
LABEL_SPOTS = (0.5, 0.32, 0.68, 0.22, 0.78)
"""Where along an edge its label may go (0 = one end, 1 = the other), tried in this order."""


def edge_label_positions(G: nx.Graph, pos: dict[Any, np.ndarray]) -> dict[tuple[Any, Any], np.ndarray]:
    """A spot on each edge for its label, so that no two labels overlap: the midpoint if free, else the first
    free spot of ``LABEL_SPOTS`` (crossing diagonals of four tasks on a circle share a midpoint)."""
    placed: list[np.ndarray] = []
    out = {}
    for u, v in sorted(G.edges, key=lambda e: (str(e[0]), str(e[1]))):
        a, b = np.asarray(pos[u], dtype=float), np.asarray(pos[v], dtype=float)
        spots = [a + t * (b - a) for t in LABEL_SPOTS]
        free = [xy for xy in spots if all(np.linalg.norm(xy - q) >= LABEL_MIN_GAP for q in placed)]
        xy = free[0] if free else max(spots, key=lambda s: min(np.linalg.norm(s - q) for q in placed))
        placed.append(xy)
        out[(u, v)] = xy
    return out


def draw_graph(G: nx.Graph, path: str | os.PathLike, title: str = "") -> Path:
    """PNG drawing: node area ~ region size, edge width ~ log2 enrichment, colours = communities, labelled."""
    import networkx as nx

    n = G.number_of_nodes()
    fig = _fig(7.5, 6.2, layout=None)
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
            for (u, v), xy in edge_label_positions(G, pos).items():
                ax.text(xy[0], xy[1], fmt_x(G.edges[u, v]["enrichment"]), fontsize=8, ha="center", va="center", zorder=5,
                        bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "#999999", "lw": 0.5,
                              "alpha": 0.9})
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
    sub = (f"edges: enrichment ≥ {me:g} and adjusted p ≤ {mp:g}; width ~ log2 enrichment (weakest to strongest edge)\n"
           "node area ~ region size; colour = community") if me is not None else ""
    ax.set_title((title + "\n" if title else "") + sub, fontsize=9)
    fig.subplots_adjust(left=0.02, right=0.98, top=0.86, bottom=0.02)
    return _save(fig, Path(path))


def report_figures(data: ReportData, figdir: Path) -> dict[str, Path]:
    """Every figure of the report for ``data``, into ``figdir``: {figure name: PNG path}."""
    labels = data.labels
    figs = matrix_figures(data.matrices, figdir)
    figs["breakdown_module"] = breakdown_figure(data.breakdown_module, labels, figdir / "breakdown_module.png",
                                                "module kind")
    figs["breakdown_layer"] = breakdown_figure(data.breakdown_layer, labels, figdir / "breakdown_layer.png", "layer")
    figs.update(profile_figures(data.profiles, figdir))
    figs["task_graph"] = draw_graph(data.graph, figdir / "task_graph.png", title="task graph")
    if data.transfer is not None:
        figs.update(transfer_figures(data.transfer, data.correlation, figdir))
    return figs
