"""Region overlap metrics, chance baseline, segments and per-layer/module breakdowns."""

import math

import numpy as np
import pytest

from mtgraft.analysis.overlap import (
    Segments,
    as_region,
    breakdown_matrices,
    layer_and_module,
    overlap_matrices,
    pair_overlap,
    pair_overlap_breakdown,
    region_profile,
    to_jsonable,
)
from mtgraft.errors import MtgraftError


def test_pair_overlap_hand_example():
    a, b = np.array([1, 2, 3, 4]), np.array([3, 4, 5, 6, 7, 8])
    o = pair_overlap(a, b, 100)
    assert (o["size_a"], o["size_b"], o["intersection"]) == (4, 6, 2)
    assert o["frac_of_a_in_b"] == pytest.approx(2 / 4)
    assert o["frac_of_b_in_a"] == pytest.approx(2 / 6)  # the paper's containment of a in b
    assert o["jaccard"] == pytest.approx(2 / 8)
    assert o["overlap_coefficient"] == pytest.approx(2 / 4)
    assert o["expected_intersection"] == pytest.approx(4 * 6 / 100)
    assert o["enrichment"] == pytest.approx(2 / 0.24)
    # P(X >= 2), X ~ hypergeom(M=100, n=4, N=6), by hand
    total = math.comb(100, 6)
    p0 = math.comb(96, 6) / total
    p1 = 4 * math.comb(96, 5) / total
    assert o["p_value"] == pytest.approx(1 - p0 - p1, rel=1e-9)
    assert o["log10_p_value"] == pytest.approx(math.log10(1 - p0 - p1), rel=1e-9)


def test_pair_overlap_disjoint_identical_and_empty():
    d = pair_overlap([0, 1], [5, 6, 7], 10)
    assert d["intersection"] == 0 and d["jaccard"] == 0.0 and d["p_value"] == 1.0 and d["enrichment"] == 0.0
    same = pair_overlap([2, 4, 6], [2, 4, 6], 10)
    assert same["jaccard"] == 1.0 and same["frac_of_a_in_b"] == 1.0 and same["frac_of_b_in_a"] == 1.0
    assert same["p_value"] == pytest.approx(1 / math.comb(10, 3))
    e = pair_overlap([], [1, 2], 10)
    assert e["intersection"] == 0 and e["size_a"] == 0
    assert e["frac_of_a_in_b"] is None and e["overlap_coefficient"] is None and e["enrichment"] is None
    assert e["frac_of_b_in_a"] == 0.0 and e["jaccard"] == 0.0 and e["expected_intersection"] == 0.0
    assert e["p_value"] == 1.0
    both = pair_overlap([], [], 10)
    assert both["jaccard"] is None


def test_p_value_sanity_large_regions():
    P = 1_000_000
    rng = np.random.default_rng(0)
    a = np.sort(rng.choice(P, 1000, replace=False))
    same = pair_overlap(a, a, P)
    assert same["p_value"] < 1e-300
    assert same["log10_p_value"] < -1000  # stays finite where p underflows
    other = np.setdiff1d(np.arange(0, P, 997), a)[:1000]
    assert pair_overlap(a, other, P)["p_value"] == 1.0


def test_as_region_normalises_and_checks_bounds():
    assert as_region([5, 1, 5, 3]).tolist() == [1, 3, 5]
    assert as_region([]).dtype == np.int64
    with pytest.raises(MtgraftError):
        as_region([1, 10], P=10)
    with pytest.raises(MtgraftError):
        as_region([-1, 2])
    with pytest.raises(MtgraftError):
        pair_overlap([0.5], [1], 10)


def test_overlap_matrices_containment_asymmetry_and_json():
    regions = {"a": [1, 2, 3, 4], "b": [3, 4, 5, 6, 7, 8], "c": [50], "empty": []}
    m = overlap_matrices(regions, 100)
    assert m["tasks"] == ["a", "b", "c", "empty"]
    assert m["intersection"].tolist() == [[4, 2, 0, 0], [2, 6, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    c = m["containment"]  # row i, col j = |g_i ∩ g_j| / |g_j|
    assert c[0, 1] == pytest.approx(2 / 6) and c[1, 0] == pytest.approx(2 / 4)
    assert c[0, 0] == c[1, 1] == c[2, 2] == 1.0
    assert np.isnan(c[0, 3]) and c[3, 0] == 0.0
    assert m["jaccard"][0, 1] == m["jaccard"][1, 0] == pytest.approx(0.25)
    assert m["overlap_coefficient"][1, 0] == pytest.approx(0.5)
    assert m["expected"][0, 1] == pytest.approx(0.24)
    assert m["enrichment"][1, 0] == pytest.approx(2 / 0.24)
    assert m["p_value"][0, 1] == pytest.approx(pair_overlap(regions["a"], regions["b"], 100)["p_value"])
    assert m["p_value"][0, 2] == 1.0
    js = to_jsonable(m)
    assert js["containment"][0][3] is None and js["intersection"][0][1] == 2


def test_overlap_matrices_matches_pairwise_on_random_regions():
    P = 20_000
    rng = np.random.default_rng(1)
    regs = {f"t{i}": np.sort(rng.choice(P, int(rng.integers(50, 400)), replace=False)) for i in range(6)}
    regs["dup"] = regs["t0"]
    m = overlap_matrices(regs, P)
    names = list(regs)
    for i, x in enumerate(names):
        for j, y in enumerate(names):
            o = pair_overlap(regs[x], regs[y], P)
            assert m["intersection"][i, j] == o["intersection"]
            assert m["containment"][i, j] == pytest.approx(o["frac_of_b_in_a"])
            assert m["p_value"][i, j] == pytest.approx(o["p_value"], rel=1e-9, abs=1e-300)
    assert m["jaccard"][0, names.index("dup")] == 1.0


# --------------------------------------------------------------------------- segments and names

def bert_segments(n_layers=2, h=4, ffn=8, prefix="backbone."):
    items = []
    for i in range(n_layers):
        p = f"{prefix}encoder.layer.{i}."
        for q in ("query", "key", "value"):
            items += [(p + f"attention.self.{q}.weight", (h, h)), (p + f"attention.self.{q}.bias", (h,))]
        items += [(p + "attention.output.dense.weight", (h, h)), (p + "attention.output.dense.bias", (h,)),
                  (p + "attention.output.LayerNorm.weight", (h,)), (p + "attention.output.LayerNorm.bias", (h,)),
                  (p + "intermediate.dense.weight", (ffn, h)), (p + "intermediate.dense.bias", (ffn,)),
                  (p + "output.dense.weight", (h, ffn)), (p + "output.dense.bias", (h,)),
                  (p + "output.LayerNorm.weight", (h,)), (p + "output.LayerNorm.bias", (h,))]
    return Segments.from_named_shapes(items)


def test_layer_and_module_bert_names():
    n = "backbone.encoder.layer.3.attention.self.query.weight"
    assert layer_and_module(n) == (3, "attn_query")
    assert layer_and_module("backbone.encoder.layer.11.attention.self.key.bias") == (11, "attn_key")
    assert layer_and_module("backbone.encoder.layer.11.attention.self.key.bias", bias_separate=True) == (11, "bias")
    assert layer_and_module("encoder.layer.0.attention.self.value.weight") == (0, "attn_value")
    assert layer_and_module("encoder.layer.0.attention.output.dense.weight") == (0, "attn_output")
    assert layer_and_module("encoder.layer.0.attention.output.LayerNorm.weight") == (0, "layernorm")
    assert layer_and_module("encoder.layer.5.intermediate.dense.weight") == (5, "ffn_in")
    assert layer_and_module("encoder.layer.5.output.dense.bias") == (5, "ffn_out")
    assert layer_and_module("encoder.layer.5.output.LayerNorm.bias") == (5, "layernorm")
    assert layer_and_module("heads.rotten_tomatoes.weight") == (None, "other")
    assert layer_and_module("backbone.embeddings.LayerNorm.weight") == (None, "layernorm")


def test_layer_and_module_llama_and_gpt2_names():
    assert layer_and_module("model.layers.7.self_attn.q_proj.weight") == (7, "attn_query")
    assert layer_and_module("model.layers.7.self_attn.k_proj.weight") == (7, "attn_key")
    assert layer_and_module("model.layers.7.self_attn.v_proj.weight") == (7, "attn_value")
    assert layer_and_module("model.layers.7.self_attn.o_proj.weight") == (7, "attn_output")
    assert layer_and_module("model.layers.0.mlp.gate_proj.weight") == (0, "ffn_in")
    assert layer_and_module("model.layers.0.mlp.up_proj.weight") == (0, "ffn_in")
    assert layer_and_module("model.layers.0.mlp.down_proj.weight") == (0, "ffn_out")
    assert layer_and_module("model.layers.0.input_layernorm.weight") == (0, "layernorm")
    assert layer_and_module("model.layers.0.post_attention_layernorm.weight") == (0, "layernorm")
    assert layer_and_module("model.norm.weight") == (None, "layernorm")
    assert layer_and_module("transformer.h.2.attn.c_attn.weight") == (2, "attn_qkv")
    assert layer_and_module("transformer.h.2.attn.c_proj.bias") == (2, "attn_output")
    assert layer_and_module("transformer.h.2.mlp.c_fc.weight") == (2, "ffn_in")
    assert layer_and_module("transformer.h.2.mlp.c_proj.weight") == (2, "ffn_out")
    assert layer_and_module("transformer.h.2.ln_1.weight") == (2, "layernorm")
    assert layer_and_module("transformer.ln_f.bias") == (None, "layernorm")


def test_segments_offsets_lookup_and_local_round_trip():
    seg = bert_segments()
    per_layer = 3 * (16 + 4) + (16 + 4) + 8 + (32 + 8) + (32 + 4) + 8
    assert seg.total == 2 * per_layer
    assert seg.offsets[0] == 0 and seg.offsets[1] == 16 and seg.offsets[2] == 20
    ids = seg.segment_of([0, 15, 16, 19, 20, seg.total - 1])
    assert ids.tolist() == [0, 0, 1, 1, 2, len(seg) - 1]
    g = seg.to_global("backbone.encoder.layer.1.attention.self.query.bias", [0, 3])
    assert g.tolist() == [per_layer + 16, per_layer + 19]
    region = np.array([0, 5, 17, per_layer + 16, seg.total - 1])
    local = seg.to_local(region)
    assert local["backbone.encoder.layer.0.attention.self.query.weight"].tolist() == [0, 5]
    assert seg.region_from_local(local).tolist() == region.tolist()
    with pytest.raises(MtgraftError):
        seg.segment_of([seg.total])
    with pytest.raises(MtgraftError):
        Segments(("a", "b"), ((2,), (3,)), np.array([0, 2, 6]))


def test_region_profile_sums_and_density():
    seg = bert_segments()
    rng = np.random.default_rng(0)
    region = np.sort(rng.choice(seg.total, 40, replace=False))
    prof = region_profile(region, seg)
    assert prof["size"] == 40
    for key in ("by_layer_module", "by_layer", "by_module", "by_tensor"):
        assert sum(r["count"] for r in prof[key]) == 40
        assert sum(r["params"] for r in prof[key]) == seg.total
        assert sum(r["fraction"] for r in prof[key]) == pytest.approx(1.0)
    assert [r["layer"] for r in prof["by_layer"]] == [0, 1]
    # a region that is exactly layer 0's query weight
    q = np.arange(16)
    p = region_profile(q, seg, bias_separate=True)
    rec = {(r["layer"], r["module"]): r for r in p["by_layer_module"]}
    assert rec[(0, "attn_query")]["count"] == 16 and rec[(0, "attn_query")]["density"] == 1.0
    assert rec[(0, "bias")]["count"] == 0
    mod = {r["module"]: r for r in p["by_module"]}
    assert mod["attn_query"]["density"] == pytest.approx(16 / 32)  # 2 layers x 4x4 query weights
    assert mod["attn_query"]["fraction"] == 1.0


def test_pair_overlap_breakdown_and_matrices_agree():
    seg = bert_segments()
    per_layer = seg.total // 2
    a = np.array([0, 1, 2, 20, per_layer + 1, per_layer + 2])
    b = np.array([1, 2, 3, per_layer + 2, per_layer + 3])
    bd = pair_overlap_breakdown(a, b, seg)
    lay = {r["layer"]: r for r in bd["by_layer"]}
    assert lay[0]["intersection"] == 2 and lay[1]["intersection"] == 1
    assert lay[0]["expected"] == pytest.approx(4 * 3 / per_layer)
    assert lay[0]["enrichment"] == pytest.approx(2 / (4 * 3 / per_layer))
    assert bd["total"]["intersection"] == 3
    assert sum(r["intersection"] for r in bd["by_module"]) == 3
    mods = {r["module"]: r for r in bd["by_module"]}
    assert mods["attn_query"]["intersection"] == 3 and mods["attn_key"]["size_a"] == 1
    bm = breakdown_matrices({"a": a, "b": b}, seg, by="layer")
    assert bm["intersection"][0].tolist() == [[4, 2], [2, 3]]
    assert bm["intersection"][1, 0, 1] == 1
    assert bm["expected"][0, 0, 1] == pytest.approx(lay[0]["expected"])
    bmm = breakdown_matrices({"a": a, "b": b}, seg, by="module")
    keys = [g["module"] for g in bmm["groups"]]
    assert bmm["intersection"][keys.index("attn_query"), 0, 1] == 3
