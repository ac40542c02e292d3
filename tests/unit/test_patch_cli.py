"""``mtgraft patch info|compare|stitch`` on tiny hand-made patches."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import mtgraft.cli.patch_cmds  # noqa: F401  (registers the 'patch' group)
from mtgraft.cli.app import app
from mtgraft.patches import SkillPatch


def _patch(tmp_path, name: str, flat: list[int], task: str, vals: list[float] | None = None):
    hdr = {"base_model": "tiny", "base_hash": "sha256:00", "graftable": [("u", [2, 3]), ("v", [4])], "task": task,
           "model_type": "head", "method": "graft", "metrics": {"accuracy": 0.875}, "seed": 13}
    values = torch.tensor(vals if vals is not None else [float(i) for i in flat])
    head = {f"heads.{task}.weight": torch.ones(2, 3)}
    p = SkillPatch.from_flat_values(np.array(flat), values, head, hdr)
    return p.save(tmp_path / f"{name}.safetensors")


@pytest.fixture()
def runner() -> CliRunner:
    return CliRunner()


def test_info_json_and_table(tmp_path, runner):
    path = _patch(tmp_path, "a", [0, 1, 7], "rt")
    r = runner.invoke(app, ["patch", "info", str(path), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["header"]["region_size"] == 3 and out["header"]["sparsity"] == pytest.approx(0.3)
    assert out["header"]["task"] == "rt" and out["file"]["bytes_per_grafted_param"] == pytest.approx(8.0)
    assert out["file"]["file_bytes"] == path.stat().st_size and len(out["sha256"]) == 64
    r = runner.invoke(app, ["patch", "info", str(path)])
    assert r.exit_code == 0
    assert "region size" in r.output and "3 of 10" in r.output and "0.8750" in r.output
    assert "graftable body" in r.output


def test_info_bad_file_is_one_line_error(tmp_path, runner):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a patch at all, just some bytes")
    r = runner.invoke(app, ["patch", "info", str(bad)])
    assert r.exit_code == 2
    assert "error:" in r.output and "not a readable SkillPatch" in r.output and "Traceback" not in r.output


def test_compare_and_stitch(tmp_path, runner):
    a = _patch(tmp_path, "a", [0, 1, 2, 6, 7], "a")
    b = _patch(tmp_path, "b", [2, 3, 7, 8], "b")
    r = runner.invoke(app, ["patch", "compare", str(a), str(b), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["intersection"] == 2 and out["containment_a_in_b"] == pytest.approx(0.5)
    assert out["jaccard"] == pytest.approx(2 / 7) and out["expected_intersection_by_chance"] == pytest.approx(2.0)
    dest = tmp_path / "ab.safetensors"
    r = runner.invoke(app, ["patch", "stitch", str(a), str(b), "--out", str(dest), "--json"])
    assert r.exit_code == 0, r.output
    st = json.loads(r.stdout)
    assert st["overlapping_entries"] == 2 and st["region_size"] == 7
    merged = SkillPatch.load(dest)
    assert merged.flat_indices().tolist() == [0, 1, 2, 3, 6, 7, 8] and merged.header.task == ["a", "b"]
    r = runner.invoke(app, ["patch", "stitch", str(a), str(b), "--out", str(tmp_path / "x.safetensors"),
                            "--overlap", "error"])
    assert r.exit_code == 2 and "overlap='error'" in r.output
    assert not (tmp_path / "x.safetensors").exists()
