"""``ReportData``: every number of the overlap report, as ``analyse`` computes it, before anything is drawn or written.

The report is data → render: ``analyse`` builds one ``ReportData``; ``figures``, ``export`` and ``render``
turn it into PNGs, data files and the HTML/Markdown page. ``as_dict()`` (and ``data[key]``) gives the
dict ``analyse`` used to return, with the same keys and values; ``to_json(title)`` is the summary that
``build_report`` returns (and ``overlap-report --json`` prints); ``overlap_json(title)`` is ``overlap.json``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from mtgraft.analysis.graph import node_link
from mtgraft.analysis.overlap import to_jsonable

if TYPE_CHECKING:
    import networkx as nx

    from mtgraft.analysis.overlap import Segments
    from mtgraft.patches import PatchHeader, SkillPatch

MATRIX_KEYS = ("intersection", "containment", "jaccard", "overlap_coefficient", "expected", "enrichment",
               "p_value", "log10_p_value", "expected_within_tensors", "enrichment_within_tensors")
"""The [n, n] matrices of the report (besides ``sizes``), in the order of overlap.json and the CSV files."""

CONVENTIONS = {
    "containment": "containment[i][j] = |g_i ∩ g_j| / |g_j| (share of task j's region that g_i covers; paper)",
    "expected": "|g_i|·|g_j| / |P|: mean intersection of two uniformly random regions of the same sizes",
    "enrichment": "intersection / expected",
    "p_value": "hypergeometric P(X >= intersection) (more overlap than chance)",
    "p_value_depletion": "hypergeometric P(X <= intersection) (less overlap than chance)",
    "verdicts": "Bonferroni over pairs, alpha 0.05",
    "modules": "module kinds with every bias in 'bias' (bias_separate=True)",
    "expected_within_tensors": "sum over graftable tensors t of |g_i∩t|·|g_j∩t|/|t| (chance given each "
                               "region's count per tensor); enrichment_within_tensors = intersection / it",
}
"""What the numbers of overlap.json mean (written into it)."""


@dataclass(eq=False)
class ReportData:
    """Every number of one overlap report. Field order = the keys of ``as_dict()``.

    ``matrices`` is ``overlap_matrices`` plus the within-tensor chance; ``pairs`` one record per unordered
    pair (``stats.pair_records``); ``breakdown_*`` the per-group counts with ``stat_*`` statistics;
    ``pooled_*`` the groups summed over pairs; ``graph`` the networkx task graph and ``graph_info`` its
    summary; ``transfer``/``correlation``/``correlation_containment`` only with transfer; ``summary`` the
    prose findings (``prose.summarise``); ``seeds`` the pair metrics aggregated over seeds
    (``analysis.seeds.aggregate_pairs``) when the report was made over several seeds.
    """

    labels: list[str]
    patches: list[SkillPatch]
    sources: list[str]
    nodes: dict[str, dict[str, Any]]
    P: int
    segments: Segments
    header: PatchHeader
    matrices: dict[str, Any]
    pairs: list[dict[str, Any]]
    breakdown_layer: dict[str, Any]
    breakdown_module: dict[str, Any]
    pooled_layer: list[dict[str, Any]]
    pooled_module: list[dict[str, Any]]
    profiles: dict[str, dict[str, Any]]
    graph: nx.Graph
    graph_info: dict[str, Any]
    transfer: dict[str, Any] | None = None
    correlation: dict[str, Any] | None = None
    correlation_containment: dict[str, Any] | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    seeds: dict[str, Any] | None = None

    # ------------------------------------------------------------------ the dict view (analyse's old result)

    def keys(self) -> list[str]:
        """The keys of ``as_dict()``."""
        return [f.name for f in fields(self)]

    def __getitem__(self, key: str) -> Any:
        if key not in self.keys():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def as_dict(self) -> dict[str, Any]:
        """{field: value} (the objects themselves, not copies)."""
        return {k: getattr(self, k) for k in self.keys()}

    # ------------------------------------------------------------------------------------ JSON views

    def default_title(self) -> str:
        """The page title when none is given."""
        return f"Overlap of task regions: {', '.join(self.labels)}"

    def transfer_summary(self) -> dict[str, Any] | None:
        """Transfer in brief (Rel matrix, unions, both Spearman correlations without their points), JSON-able."""
        if self.transfer is None:
            return None
        tr = self.transfer
        return to_jsonable({
            "rel": tr["rel"], "grafts": tr["grafts"], "eval_tasks": tr["eval_tasks"],
            "unions": [{k: u[k] for k in ("name", "region_size", "mean_rel", "results")} for u in tr["unions"]],
            "spearman_enrichment": {k: v for k, v in (self.correlation or {}).items() if k != "points"},
            "spearman_containment": {k: v for k, v in (self.correlation_containment or {}).items() if k != "points"}})

    def to_json(self, title: str | None = None) -> dict[str, Any]:
        """The report's summary: tasks, sizes, pairs, graph, findings and transfer in brief (``ReportResult.summary``)."""
        h0 = self.header
        return {
            "title": title or self.default_title(), "tasks": self.labels, "P": self.P,
            "base_model": h0.base_model, "base_hash": h0.base_hash,
            "sizes": {lab: int(s) for lab, s in zip(self.labels, self.matrices["sizes"], strict=True)},
            "pairs": to_jsonable(self.pairs), "graph": self.graph_info, "summary": self.summary,
            "transfer": self.transfer_summary(),
            **({"seeds": to_jsonable(self.seeds)} if self.seeds is not None else {}),
        }

    def overlap_json(self, title: str | None = None) -> dict[str, Any]:
        """The content of overlap.json: every number of the report, JSON-able (NaN and inf → null)."""
        h0, mat = self.header, self.matrices
        out: dict[str, Any] = {
            "format": "mtgraft.overlap-report", "format_version": 1, "title": title or self.default_title(),
            "base_model": h0.base_model, "base_hash": h0.base_hash, "model_type": h0.model_type, "P": mat["P"],
            "tasks": self.labels, "inputs": [{"task": lab, **self.nodes[lab]} for lab in self.labels],
            "conventions": dict(CONVENTIONS),
            "matrices": to_jsonable({k: mat[k] for k in ("sizes", *MATRIX_KEYS)}),
            "pairs": to_jsonable(self.pairs),
            "breakdown": {
                by: to_jsonable({"groups": bd["groups"], "params": bd["params"], "sizes": bd["sizes"],
                                 "intersection": bd["intersection"], "expected": bd["expected"],
                                 **{k.removeprefix("stat_"): bd[k] for k in bd if k.startswith("stat_")}})
                for by, bd in (("layer", self.breakdown_layer), ("module", self.breakdown_module))},
            "pooled": {"layer": to_jsonable(self.pooled_layer), "module": to_jsonable(self.pooled_module)},
            "profiles": to_jsonable(self.profiles),
            "graph": {**self.graph_info, "node_link": node_link(self.graph)},
            "summary": self.summary,
        }
        if self.seeds is not None:
            out["seeds"] = self.seeds
        if self.transfer is not None:
            out["transfer"] = to_jsonable({**self.transfer, "spearman_enrichment": self.correlation,
                                           "spearman_containment": self.correlation_containment})
        return to_jsonable(out)
