"""The registry's ``best`` means something (issue 16 item 4): a version whose Rel interval does not exceed 0,
or whose Rel is below the top-k baseline's at the same size, is tagged with why and never takes ``best``;
``masks list`` shows the flag."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import mtgraft.cli.masks_cmds  # noqa: F401  (registers the 'masks' group)
from mtgraft.cli.app import app
from mtgraft.errors import MtgraftError
from mtgraft.registry import NOT_BEST_TAG, MaskRegistry
from mtgraft.workflows.graft import baseline_flag, register_outputs


def test_rel_interval_at_or_below_zero_never_takes_best(mlflow_local_uri, make_skillpatch):
    reg = MaskRegistry(mlflow_local_uri)
    sure = reg.register_patch(make_skillpatch("a.safetensors", rel=0.40, rel_ci95=[0.10, 0.70], seed=1))
    noisy = reg.register_patch(make_skillpatch("b.safetensors", rel=0.90, rel_ci95=[-0.20, 1.60], seed=2))
    assert noisy.tags[NOT_BEST_TAG] == "Rel interval [-0.20, 1.60] does not exceed 0"
    assert NOT_BEST_TAG not in sure.tags
    rows = {r["version"]: r for r in reg.list_masks()}
    assert "best" in rows[sure.version]["aliases"] and "best" not in rows[noisy.version]["aliases"]
    assert rows[noisy.version]["flag"] == noisy.tags[NOT_BEST_TAG] and rows[sure.version]["flag"] is None
    assert rows[noisy.version]["rel_ci95"] == [-0.2, 1.6]
    r = CliRunner().invoke(app, ["masks", "list", "--tracking-uri", mlflow_local_uri])
    assert r.exit_code == 0 and "does not exceed 0" in r.output, r.output


def test_every_version_flagged_leaves_no_best(mlflow_local_uri, make_skillpatch):
    reg = MaskRegistry(mlflow_local_uri)
    m = reg.register_patch(make_skillpatch("c.safetensors", rel=-0.3, rel_ci95=[-0.9, 0.2]))
    assert all("best" not in r["aliases"] for r in reg.list_masks())
    with pytest.raises(MtgraftError) as e:
        reg.show("sst2@best")
    assert str(e.value) == (f"registered model '{m.name}' has no alias 'best' (aliases: latest); no version "
                            "earned it (v1: Rel interval [-0.90, 0.20] does not exceed 0)")


def _graft_folder(tmp, make_skillpatch, graft_rel: float, topk_rel: float):
    folder = tmp / "g"
    folder.mkdir()
    g = make_skillpatch("t-graft-s0.3.skillpatch.safetensors", rel=graft_rel, folder=folder, seed=3)
    results = [{"method": "graft", "sparsity": 0.3, "patch": str(g), "test": {"rel": graft_rel}},
               {"method": "topk", "sparsity": 0.3, "patch": None, "test": {"rel": topk_rel}}]
    (folder / "results.json").write_text(json.dumps({"task": "sst2", "results": results}))
    return folder, g


def test_below_top_k_at_the_same_size_never_takes_best(mlflow_local_uri, make_skillpatch, tmp_path):
    folder, g = _graft_folder(tmp_path, make_skillpatch, graft_rel=-0.28, topk_rel=0.21)
    assert baseline_flag(g) == {NOT_BEST_TAG: "Rel -0.28 below top-k's 0.21 at the same size"}
    res = register_outputs([folder], mlflow_local_uri)
    [m] = res["registered"]
    assert "best" not in m["aliases"]
    [row] = MaskRegistry(mlflow_local_uri).list_masks()
    assert row["flag"] == "Rel -0.28 below top-k's 0.21 at the same size"


def test_above_top_k_is_not_flagged(make_skillpatch, tmp_path):
    _, g = _graft_folder(tmp_path, make_skillpatch, graft_rel=0.6, topk_rel=0.21)
    assert baseline_flag(g) == {}
