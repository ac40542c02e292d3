"""overlap-report on hand-made SkillPatches whose overlaps are known: numbers, verdicts, graph, files, CLI."""

from __future__ import annotations

import csv
import json
import math
import re

import networkx as nx
import numpy as np
import pytest
import torch
from scipy.stats import hypergeom

from mtgraft.analysis.report import ReportData, analyse, build_report, fmt_p, fmt_x, load_inputs, pair_records
from mtgraft.errors import MtgraftError
from mtgraft.patches import SkillPatch

MODULES = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
           "intermediate.dense", "output.dense")


def graftable() -> list[tuple[str, list[int]]]:
    """A 2-layer BERT-like graftable set: per layer 6 linear [4, 4] + bias [4], and one LayerNorm weight [4]."""
    out = []
    for layer in range(2):
        for m in MODULES:
            out.append((f"backbone.encoder.layer.{layer}.{m}.weight", [4, 4]))
            out.append((f"backbone.encoder.layer.{layer}.{m}.bias", [4]))
        out.append((f"backbone.encoder.layer.{layer}.output.LayerNorm.weight", [4]))
    return out


P = 248  # 2 * (6 * (16 + 4) + 4)


def make_patch(task: str, idx, *, base_hash: str = "sha256:00aa11bb", labels=("negative", "positive"),
               table=None, method: str = "graft", sparsity: float | None = None, mode: str | None = None) -> SkillPatch:
    idx = np.unique(np.asarray(idx, dtype=np.int64))
    hdr = {"base_model": "tiny-bert", "base_hash": base_hash, "graftable": table or graftable(), "task": task,
           "tasks_info": {task: {"labels": list(labels)}}, "model_type": "head", "method": method,
           "sparsity_requested": sparsity, "metrics": {"test": {"accuracy": 0.75, "rel": 0.8}},
           "finetuned": {"mode": mode} if mode else {}}
    return SkillPatch.from_flat_values(idx, torch.arange(idx.size, dtype=torch.float32), {}, hdr)


# rotten_tomatoes = 0..39 (layer 0: query w+b, key w+b); movie_polarity = 20..59 (key w+b, value w+b):
# they share exactly layer 0's key weight (16) and key bias (4). hedge = debate_party = 124..163 (layer 1).
RT, MP, HEDGE = np.arange(0, 40), np.arange(20, 60), np.arange(124, 164)


@pytest.fixture(scope="module")
def four() -> list[SkillPatch]:
    return [make_patch("rotten_tomatoes", RT), make_patch("movie_polarity", MP),
            make_patch("hedge", HEDGE, labels=("certain", "uncertain")),
            make_patch("debate_party", HEDGE, labels=("democratic", "republican", "moderator"))]


@pytest.fixture(scope="module")
def res(four) -> ReportData:
    return analyse(four, min_enrichment=2.0)


def _pair(res: ReportData, a: str, b: str) -> dict:
    return next(r for r in res.pairs if {r["a"], r["b"]} == {a, b})


def test_partial_overlap_numbers(res):
    r = _pair(res, "rotten_tomatoes", "movie_polarity")
    assert (r["size_a"], r["size_b"], r["intersection"]) == (40, 40, 20)
    assert r["containment_a_in_b"] == pytest.approx(0.5) and r["containment_b_in_a"] == pytest.approx(0.5)
    assert r["jaccard"] == pytest.approx(20 / 60)
    assert r["overlap_coefficient"] == pytest.approx(0.5)
    assert r["expected"] == pytest.approx(40 * 40 / P)
    assert r["enrichment"] == pytest.approx(20 / (1600 / P))
    assert r["p_value"] == pytest.approx(hypergeom.sf(19, P, 40, 40), rel=1e-9)
    assert r["p_adjusted"] == pytest.approx(min(1.0, 6 * r["p_value"]))
    assert r["verdict"] == "beyond_chance"
    # both fill layer 0's key weight and bias completely: per-tensor chance = 16·16/16 + 4·4/4 = 20 = observed
    assert r["expected_within_tensors"] == pytest.approx(20.0) and r["enrichment_within_tensors"] == pytest.approx(1.0)
    m = res.matrices
    i, j = m["tasks"].index("rotten_tomatoes"), m["tasks"].index("movie_polarity")
    assert m["containment"][i, j] == pytest.approx(0.5)


def test_identical_regions(res):
    r = _pair(res, "hedge", "debate_party")
    assert r["intersection"] == 40
    assert r["containment_a_in_b"] == 1.0 and r["containment_b_in_a"] == 1.0
    assert r["jaccard"] == 1.0 and r["overlap_coefficient"] == 1.0
    assert r["enrichment"] == pytest.approx(P / 40)
    assert r["p_value"] == pytest.approx(1 / math.comb(P, 40), rel=1e-6)
    assert r["verdict"] == "beyond_chance"


def test_empty_intersection_is_below_chance_when_chance_expects_many(res):
    r = _pair(res, "rotten_tomatoes", "hedge")
    assert r["intersection"] == 0 and r["jaccard"] == 0.0 and r["enrichment"] == 0.0
    assert r["containment_a_in_b"] == 0.0 and r["p_value"] == 1.0
    assert r["p_value_depletion"] == pytest.approx(math.comb(P - 40, 40) / math.comb(P, 40), rel=1e-9)
    assert r["verdict"] == "below_chance"  # 0 shared where 6.5 were expected: they avoid each other


def test_empty_region_and_tiny_regions():
    tbl = [("backbone.encoder.layer.0.intermediate.dense.weight", [100, 100])]
    ps = [make_patch("a", [], table=tbl), make_patch("b", [1, 2], table=tbl), make_patch("c", [5, 6, 7], table=tbl)]
    out = analyse(ps)
    ab = _pair(out, "a", "b")
    assert ab["size_a"] == 0 and ab["intersection"] == 0
    assert ab["containment_a_in_b"] is None and ab["enrichment"] is None and ab["overlap_coefficient"] is None
    assert ab["verdict"] == "too_small"
    bc = _pair(out, "b", "c")
    assert bc["expected"] == pytest.approx(6 / 10_000) and bc["verdict"] == "too_small"
    assert any("says nothing about similarity" in s for s in out.summary["sentences"])


def test_breakdown_per_module_and_layer(res):
    bd = res.breakdown_module
    t = bd["tasks"]
    i, j = t.index("rotten_tomatoes"), t.index("movie_polarity")
    groups = [g["module"] for g in bd["groups"]]
    got = {groups[g]: int(bd["intersection"][g, i, j]) for g in range(len(groups))}
    assert got["attn_key"] == 16 and got["bias"] == 4 and got["attn_query"] == 0 and got["attn_value"] == 0
    k = groups.index("attn_key")
    assert bd["params"][k] == 32  # two layers' key weights
    assert bd["expected"][k, i, j] == pytest.approx(16 * 16 / 32)
    assert bd["stat_enrichment"][k, i, j] == pytest.approx(2.0)
    b = groups.index("bias")
    assert bd["params"][b] == 48 and bd["sizes"][b, i] == 8 and bd["sizes"][b, j] == 8
    assert bd["stat_enrichment"][b, i, j] == pytest.approx(4 / (64 / 48))
    assert bd["stat_p_value"][b, i, j] == pytest.approx(hypergeom.sf(3, 48, 8, 8), rel=1e-9)
    lay = res.breakdown_layer
    li = [g["layer"] for g in lay["groups"]]
    assert int(lay["intersection"][li.index(0), i, j]) == 20 and int(lay["intersection"][li.index(1), i, j]) == 0


def test_region_profile(res):
    prof = res.profiles["hedge"]
    by_layer = {r["layer"]: r for r in prof["by_layer"]}
    assert by_layer[1]["count"] == 40 and by_layer[1]["fraction"] == 1.0 and by_layer[0]["count"] == 0
    rt = {(r["layer"], r["module"]): r["count"] for r in res.profiles["rotten_tomatoes"]["by_layer_module"]}
    assert rt[(0, "attn_query")] == 16 and rt[(0, "attn_key")] == 16 and rt[(0, "bias")] == 8


def test_graph_and_communities(res):
    G = res.graph
    assert {frozenset(e) for e in G.edges} == {frozenset(("rotten_tomatoes", "movie_polarity")),
                                                frozenset(("hedge", "debate_party"))}
    assert res.graph_info["communities"] == [["debate_party", "hedge"], ["movie_polarity", "rotten_tomatoes"]]
    assert G.nodes["hedge"]["region_size"] == 40 and G.nodes["hedge"]["accuracy"] == 0.75


def test_summary_sentences(res):
    s = res.summary
    text = "\n".join(s["sentences"])
    assert re.search(r"rotten_tomatoes and movie_polarity share 3\.1× more parameters than two random regions", text)
    assert "hedge and debate_party share 6.2× more" in text
    assert "rotten_tomatoes and hedge share fewer parameters than chance" in text
    assert "Bonferroni" in text
    assert s["counts"] == {"beyond_chance": 2, "chance": 0, "below_chance": 4, "too_small": 0}
    # catalog domains: the one same-domain pair (sentiment) vs the rest
    assert s["domains"]["same_domain"]["n"] == 1
    assert s["domains"]["same_domain"]["median_enrichment"] == pytest.approx(20 / (1600 / P))
    assert "Same-domain vs cross-domain overlap: too few pairs to tell (1 pair within a domain" in text


def test_summary_says_when_everything_is_chance():
    tbl = [("backbone.encoder.layer.0.intermediate.dense.weight", [100, 100])]
    rng = np.random.default_rng(0)
    ps = [make_patch(t, rng.choice(10_000, 2000, replace=False), table=tbl) for t in ("a", "b", "c")]
    out = analyse(ps)
    assert all(r["verdict"] == "chance" for r in out.pairs)
    assert any("Every pair overlaps at about chance level" in s for s in out.summary["sentences"])
    assert out.graph.number_of_edges() == 0


def test_summary_names_a_common_core():
    tbl = [("backbone.encoder.layer.0.intermediate.dense.weight", [100, 100])]
    core = np.arange(30)
    ps = [make_patch(t, np.r_[core, 1000 * (k + 1):1000 * (k + 1) + 70], table=tbl) for k, t in enumerate("abc")]
    out = analyse(ps)
    assert all(r["verdict"] == "beyond_chance" for r in out.pairs)
    assert out.summary["core_size"] == 30
    assert any("Every pair, similar or not, shares more than chance; 30 entries lie in all 3 regions" in s
               for s in out.summary["sentences"])


def test_summary_flags_near_identical_joint_regions():
    tbl = [("backbone.encoder.layer.0.intermediate.dense.weight", [100, 100])]
    base = np.arange(100)
    ps = [make_patch(t, np.r_[base[: 100 - k], 5000 + k], table=tbl, mode="joint") for k, t in enumerate("abc")]
    text = " ".join(analyse(ps).summary["sentences"])
    assert "The regions are nearly identical (Jaccard 0.9" in text
    assert "base patch (top-k |θ_ft − θ_pre|) is the same for every task" in text


def test_report_data_keeps_the_dict_view(res):
    keys = ["labels", "patches", "sources", "nodes", "P", "segments", "header", "matrices", "pairs",
            "breakdown_layer", "breakdown_module", "pooled_layer", "pooled_module", "profiles", "graph",
            "graph_info", "transfer", "correlation", "correlation_containment", "summary", "seeds"]
    assert list(res.as_dict()) == keys and list(res.keys()) == keys
    assert res["pairs"] is res.pairs and res["summary"] is res.summary and res["transfer"] is None
    with pytest.raises(KeyError):
        res["nope"]
    j = res.to_json()
    assert list(j) == ["title", "tasks", "P", "base_model", "base_hash", "sizes", "pairs", "graph", "summary",
                       "transfer"]
    assert j["title"] == "Overlap of task regions: rotten_tomatoes, movie_polarity, hedge, debate_party"
    assert json.loads(json.dumps(j)) == j and json.loads(json.dumps(res.overlap_json("t")))["title"] == "t"


def test_pair_records_bonferroni():
    from mtgraft.analysis.overlap import overlap_matrices

    m = overlap_matrices({"a": np.arange(10), "b": np.arange(5, 15)}, 100)
    (r,) = pair_records(m)
    assert r["n_tests"] == 1 and r["p_adjusted"] == pytest.approx(r["p_value"])


def test_mismatched_bases_is_one_clear_error(four):
    other = make_patch("imdb", RT, base_hash="sha256:ffee0011")
    with pytest.raises(MtgraftError, match="all patches must share one base model") as e:
        analyse([four[0], other])
    assert "\n" not in str(e.value)


def test_duplicates_policies(four):
    dup = make_patch("rotten_tomatoes", MP, method="topk", sparsity=1e-3)
    with pytest.raises(MtgraftError, match="two patches for task 'rotten_tomatoes'"):
        load_inputs([four[0], dup, four[1]])
    labels, ps, _ = load_inputs([four[0], dup, four[1]], "first")
    assert labels == ["rotten_tomatoes", "movie_polarity"] and ps[0] is four[0]
    labels, _, _ = load_inputs([four[0], dup, four[1]], "label")
    assert labels == ["rotten_tomatoes[graft,s=0.16]", "rotten_tomatoes[topk,s=0.001]", "movie_polarity"]


def test_needs_two_patches_and_union_needs_transfer(four):
    with pytest.raises(MtgraftError, match="at least two"):
        analyse(four[:1])
    with pytest.raises(MtgraftError, match="--union needs --with-transfer"):
        analyse(four, unions=[["hedge", "debate_party"]])


def test_formatting():
    assert fmt_p(0.312) == "0.31" and fmt_p(0.0042) == "0.004" and fmt_p(3e-12) == "3e-12"
    assert fmt_p(0.0, -412.3) == "5e-413"
    assert fmt_x(3.14) == "3.1×" and fmt_x(0.0) == "0×" and fmt_x(None) == "n/a" and fmt_x(24.6) == "25×"


# ------------------------------------------------------------------------------- files, CLI, MLflow


@pytest.fixture(scope="module")
def cli_report(four, tmp_path_factory):
    from typer.testing import CliRunner

    import mtgraft.cli.app as cli_app

    cli_app._register()
    d = tmp_path_factory.mktemp("rep")
    files = []
    for p in four:
        files.append(str(p.save(d / f"{p.header.task}.skillpatch.safetensors")))
    out = d / "report"
    r = CliRunner().invoke(cli_app.app, ["overlap-report", "--patches", files[0], files[1], "--patches", files[2],
                                         files[3], "--no-track", "--json", "--out", str(out)])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout), out


def test_cli_json_and_files(cli_report):
    data, out = cli_report
    assert data["out"] == str(out)
    assert sorted(data["tasks"]) == ["debate_party", "hedge", "movie_polarity", "rotten_tomatoes"]
    for name in ("report.html", "report.md", "overlap.json", "task_graph.graphml", "task_graph.json",
                 "csv/containment.csv", "csv/enrichment.csv", "csv/pairs.csv", "csv/breakdown_module.csv",
                 "csv/breakdown_layer.csv", "csv/profiles.csv", "figures/heatmap_containment.png",
                 "figures/task_graph.png", "figures/profile_layer_module.png"):
        assert (out / name).is_file(), name
    assert data["files"]["html"] == str(out / "report.html")
    pr = next(p for p in data["pairs"] if {p["a"], p["b"]} == {"rotten_tomatoes", "movie_polarity"})
    assert pr["intersection"] == 20 and pr["jaccard"] == pytest.approx(1 / 3)
    assert not list(out.parent.glob(".report.tmp-*"))  # written atomically


def test_overlap_json_and_csv_numbers(cli_report):
    _, out = cli_report
    oj = json.loads((out / "overlap.json").read_text())
    t = oj["tasks"]
    i, j = t.index("rotten_tomatoes"), t.index("movie_polarity")
    assert oj["P"] == P
    assert oj["matrices"]["containment"][i][j] == pytest.approx(0.5)
    assert oj["matrices"]["intersection"][i][j] == 20
    h, d = t.index("hedge"), t.index("debate_party")
    assert oj["matrices"]["jaccard"][h][d] == 1.0 and oj["matrices"]["enrichment"][i][h] == 0.0
    with open(out / "csv" / "jaccard.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["task", *t]
    assert float(rows[1 + h][1 + d]) == 1.0
    assert oj["graph"]["edges"] == 2


def test_graphml_is_readable(cli_report):
    _, out = cli_report
    G = nx.read_graphml(out / "task_graph.graphml")
    assert G.has_edge("hedge", "debate_party") and not G.has_edge("hedge", "rotten_tomatoes")
    assert G.nodes["rotten_tomatoes"]["community"] == G.nodes["movie_polarity"]["community"]


def test_html_is_self_contained(cli_report):
    _, out = cli_report
    page = (out / "report.html").read_text()
    n_png = len(list((out / "figures").glob("*.png")))
    assert n_png >= 8
    assert page.count('src="data:image/png;base64,') == n_png
    assert "<img" in page and 'src="figures/' not in page
    assert "rotten_tomatoes and movie_polarity share 3.1×" in page
    md = (out / "report.md").read_text()
    for ref in re.findall(r"\]\((figures/[^)]+\.png)\)", md):
        assert (out / ref).is_file()
    assert md.count("](figures/") == n_png


def test_logged_as_mlflow_artifacts(four, tmp_path, mlflow_local_uri):
    import mlflow

    res = build_report(four[:2], tmp_path / "r", track=True, tracking_uri=mlflow_local_uri)
    assert res.mlflow_run_id
    client = mlflow.MlflowClient(mlflow_local_uri)
    names = {a.path for a in client.list_artifacts(res.mlflow_run_id, "overlap_report")}
    assert "overlap_report/report.html" in names and "overlap_report/overlap.json" in names
    run = client.get_run(res.mlflow_run_id)
    key = "enrichment/rotten_tomatoes__movie_polarity"
    assert run.data.metrics[key] == pytest.approx(20 / (1600 / P))


def test_select_patches_from_registry(four, tmp_path, mlflow_local_uri):
    from mtgraft.analysis.report import select_patches_from_registry
    from mtgraft.registry import MaskRegistry

    reg = MaskRegistry(mlflow_local_uri)
    for p in four[:2]:
        reg.register_patch(p.save(tmp_path / f"{p.header.task}.skillpatch.safetensors"))
    # a second rotten_tomatoes version: @latest must take it
    newer = make_patch("rotten_tomatoes", np.arange(100, 120))
    reg.register_patch(newer.save(tmp_path / "rt2.skillpatch.safetensors"))
    paths = select_patches_from_registry(["movie_polarity", "rotten_tomatoes"], None, "latest", mlflow_local_uri,
                                         tmp_path / "pulled")
    got = [SkillPatch.load(p) for p in paths]
    assert [g.header.task for g in got] == ["movie_polarity", "rotten_tomatoes"]
    assert got[1].region_size == 20  # the newest version
    every = select_patches_from_registry(None, "tiny-bert", "latest", mlflow_local_uri, tmp_path / "all")
    assert sorted(SkillPatch.load(p).header.task for p in every) == ["movie_polarity", "rotten_tomatoes"]
    # only versions made by 'graft': the newest topk version of rotten_tomatoes is skipped
    topk = make_patch("rotten_tomatoes", np.arange(150, 160), method="topk")
    reg.register_patch(topk.save(tmp_path / "rt3.skillpatch.safetensors"))
    (latest,) = select_patches_from_registry(["rotten_tomatoes"], None, "latest", mlflow_local_uri, tmp_path / "m1")
    assert SkillPatch.load(latest).header.method == "topk"
    (g,) = select_patches_from_registry(["rotten_tomatoes"], None, "latest", mlflow_local_uri, tmp_path / "m2",
                                        method="graft")
    assert SkillPatch.load(g).region_size == 20
    with pytest.raises(MtgraftError, match="no registered patch of task 'hedge'"):
        select_patches_from_registry(["hedge"], None, "latest", mlflow_local_uri, tmp_path / "x")
    with pytest.raises(MtgraftError, match="no alias 'nope'"):
        select_patches_from_registry(["movie_polarity"], None, "nope", mlflow_local_uri, tmp_path / "y")


def test_cli_refuses_files_and_selectors_together(tmp_path):
    from typer.testing import CliRunner

    import mtgraft.cli.app as cli_app

    cli_app._register()
    r = CliRunner().invoke(cli_app.app, ["overlap-report", "--patches", "a.safetensors", "--task", "imdb", "--no-track"])
    assert r.exit_code == 2
    assert "not both" in r.output


def test_summary_calls_a_small_consistent_domain_difference_by_its_name():
    """Every same-domain pair a little above every cross-domain pair (ratio < 1.25, Mann–Whitney p < 0.05):
    the summary must not call that 'about as much'."""
    tbl = [("backbone.encoder.layer.0.intermediate.dense.weight", [1000, 1000])]
    core = np.arange(300)  # in every region
    senti = np.arange(1000, 1040)  # 40 more entries shared by the sentiment tasks only
    tasks = ["rotten_tomatoes", "movie_polarity", "imdb", "hedge", "debate_party", "chat_topic"]
    ps = []
    for i, t in enumerate(tasks):
        own = 10_000 + 1000 * i + np.arange(700)
        idx = np.r_[core, senti, own[:660]] if i < 3 else np.r_[core, own]
        ps.append(make_patch(t, idx, table=tbl))
    text = " ".join(analyse(ps).summary["sentences"])
    assert "Tasks of the same domain (sentiment) overlap slightly but consistently more than" in text, text


def test_summary_states_equal_region_sizes_once():
    tbl = [("backbone.encoder.layer.0.intermediate.dense.weight", [100, 100])]
    ps = [make_patch(t, np.arange(50) + 50 * k, table=tbl) for k, t in enumerate("abc")]
    first = analyse(ps).summary["sentences"][0]
    assert first.startswith("3 task regions of 50 entries out of |P| = 10,000 graftable parameters (density 5.00e-03)")
