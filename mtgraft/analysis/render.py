"""The report page, HTML (self-contained: figures inlined) and Markdown, from the Jinja2 templates in ``templates/``.

``report.j2`` lays the page out once; ``html.j2`` and ``md.j2`` draw its blocks (heading, paragraph, list,
table, figure) in each form. This module turns a ``ReportData`` into the templates' context: the tables'
cells formatted here (``Table``), the figures as ``Figure`` (relative path, base64 PNG).
"""

from __future__ import annotations

import base64
import functools
import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtgraft.analysis.formatting import fmt_ci, fmt_communities, fmt_num, fmt_p, fmt_x
from mtgraft.analysis.report_data import ReportData


@dataclass(frozen=True)
class Table:
    """A table of the page: column names and rows of preformatted cells."""

    header: list[str]
    rows: list[list[str]]


@dataclass(frozen=True)
class Figure:
    """A PNG of the page: its path relative to the report folder and (HTML) its bytes in base64."""

    path: Path

    @property
    def rel(self) -> str:
        return f"figures/{self.path.name}"

    @property
    def data(self) -> str:
        return base64.b64encode(self.path.read_bytes()).decode("ascii")


@functools.cache
def _environment() -> Any:
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("mtgraft.analysis", "templates"), autoescape=False,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
                             undefined=jinja2.StrictUndefined)
    # html.escape (not markupsafe): quotes as &quot; / &#x27;, as the page has always had them
    env.filters.update(h=html.escape, spec=format, fmt_p=fmt_p, communities=fmt_communities)
    return env


def inputs_table(data: ReportData) -> Table:
    """One row per task: domain, method, sparsity, region size, recorded test accuracy and Rel (with their 95%
    intervals where the graft recorded them), source."""
    n = data.nodes

    def learnt(lab: str) -> str:
        return {True: "yes", False: "no (left out of conclusions)", None: "unknown"}[n[lab].get("learnt")]

    return Table(["task", "domain", "method", "sparsity", "region size", "test acc [95% CI]", "Rel [95% CI]",
                  "fine-tuning gain [95% CI]", "learnt", "source"],
                 [[lab, n[lab]["domain"] or "–", n[lab]["method"], f"{n[lab]['sparsity']:.2e}",
                   f"{n[lab]['region_size']:,}", fmt_ci(n[lab]["accuracy"], n[lab].get("accuracy_ci95")),
                   fmt_ci(n[lab]["rel"], n[lab].get("rel_ci95")),
                   fmt_ci(n[lab].get("gain"), n[lab].get("gain_ci95"), "+.3f"), learnt(lab),
                   n[lab]["source"]] for lab in data.labels])


def pairs_table(data: ReportData) -> Table:
    """One row per pair, most enriched first."""
    return Table(["a", "b", "|a|", "|b|", "shared", "expected", "enrichment", "p", "enrichment within tensors",
                  "containment a→b", "containment b→a", "Jaccard", "overlap coef.", "verdict"],
                 [[r["a"], r["b"], f"{r['size_a']:,}", f"{r['size_b']:,}", f"{r['intersection']:,}",
                   f"{r['expected']:.2f}", fmt_x(r["enrichment"]), fmt_p(r["p_value"], r["log10_p_value"]),
                   fmt_x(r.get("enrichment_within_tensors")),
                   fmt_num(r["containment_a_in_b"]), fmt_num(r["containment_b_in_a"]), fmt_num(r["jaccard"], ".4f"),
                   fmt_num(r["overlap_coefficient"]), r["verdict"].replace("_", " ")]
                  for r in sorted(data.pairs, key=lambda r: -(r["enrichment"] or 0))])


def pooled_table(pooled: list[dict[str, Any]]) -> Table:
    """Per module kind: shared entries summed over all pairs vs chance."""
    return Table(["module kind", "params", "shared (all pairs)", "expected", "enrichment"],
                 [[g["group"], f"{g['params']:,}", f"{g['observed']:,}", f"{g['expected']:.1f}",
                   fmt_x(g["enrichment"])] for g in pooled])


def transfer_tables(transfer: dict[str, Any]) -> dict[str, Table]:
    """Rel of each graft (and union) on each task; P_0 / P_1 per task and where they come from."""
    ts = transfer["eval_tasks"]
    ci = {(r["graft"], r["eval_task"]): r.get("rel_ci95") for r in transfer["results"]}
    rel = Table(["graft \\ task", *ts],
                [[g, *[("n/a" if x is None else fmt_ci(x, ci.get((g, t)), ".2f")) for x, t in zip(row, ts, strict=True)]]
                 for g, row in zip(transfer["grafts"], transfer["rel"], strict=True)]
                + [[f"∪ {u['name']}", *[(fmt_num(u["results"][t]["rel"], ".2f") if t in u["results"] else "n/a")
                                        for t in ts]] for u in transfer["unions"]])
    ref = Table(["task", "n test", "P_0 (pretrained + head)", "P_1 (fine-tuned)", "P_1 − P_0", "P_0 source",
                 "P_1 source"],
                [[t, str(r["n"]), fmt_num(r["pretrained"]), fmt_num(r["finetuned"]),
                  fmt_num(r.get("gain"), "+.3f"), r["pretrained_source"], r["finetuned_source"]]
                 for t, r in transfer["reference"].items()])
    return {"transfer_rel": rel, "transfer_reference": ref}


def context(data: ReportData, title: str, figures: dict[str, Path], max_test: int | None) -> dict[str, Any]:
    """What the templates read: the data's parts, the formatted tables and the figures."""
    tables = {"inputs": inputs_table(data), "pairs": pairs_table(data), "pooled_module": pooled_table(data.pooled_module)}
    if data.transfer is not None:
        tables.update(transfer_tables(data.transfer))
    if data.seeds is not None:
        from mtgraft.analysis.seeds import seeds_rows

        tables["seeds"] = Table(*seeds_rows(data.seeds))
    return {"title": title, "header": data.header, "P": data.matrices["P"], "sentences": data.summary["sentences"],
            "n_tests": data.pairs[0]["n_tests"] if data.pairs else 0, "graph_info": data.graph_info,
            "transfer": data.transfer, "correlation": data.correlation, "seeds": data.seeds,
            "correlation_containment": data.correlation_containment, "max_test": max_test, "tables": tables,
            "figures": {k: Figure(p) for k, p in figures.items()}}


def render(data: ReportData, title: str, figures: dict[str, Path], max_test: int | None, fmt: str) -> str:
    """The page in ``fmt`` (``html`` or ``md``); ``figures`` = {figure name: PNG path} (from ``report_figures``)."""
    return _environment().get_template("report.j2").render(fmt=fmt, **context(data, title, figures, max_test))
