"""``mtgraft patch apply`` on the embedded MiniLM: the saved checkpoint is the grafted model."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

import mtgraft.cli.patch_cmds  # noqa: F401  (registers the 'patch' group)
from mtgraft.cli.app import app
from mtgraft.models import TaskInfo, build_task_model, load_checkpoint
from mtgraft.patches import SkillPatch


@pytest.mark.integration
def test_patch_apply_minilm(tmp_path):
    info = TaskInfo(name="rt", labels=["negative", "positive"])
    base = build_task_model("minilm", "head", [info])
    names = base.graftable_names()
    params = {n: p.detach().clone() for n, p in base.named_parameters()}
    g = torch.Generator().manual_seed(0)
    masks = {n: torch.rand(params[n].shape, generator=g) < 1e-3 for n in names}
    ft = {n: t + 0.05 for n, t in params.items()}
    head = {n: ft[n] for n in base.head_param_names("rt")}
    hdr = {"base_model": "minilm", "base_hash": base.base_hash(),
           "graftable": [(n, list(params[n].shape)) for n in names], "task": "rt",
           "tasks_info": {"rt": info.model_dump()}, "model_type": "head", "method": "random"}
    path = SkillPatch.from_masks(masks, ft, head, hdr).save(tmp_path / "rt.safetensors")

    runner = CliRunner()
    out = tmp_path / "grafted"
    r = runner.invoke(app, ["patch", "apply", str(path), "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["region_size"] == sum(int(m.sum()) for m in masks.values())
    model, meta = load_checkpoint(out)
    assert meta.mode == "grafted"
    got = dict(model.named_parameters())
    for n in names:
        assert torch.equal(got[n], torch.where(masks[n], ft[n], params[n])), n
    for n in head:
        assert torch.equal(got[n], ft[n])

    # a patch made for another base is refused, nothing is written
    bad = SkillPatch.load(path)
    bad.header = bad.header.model_copy(update={"base_hash": "sha256:" + "0" * 64})
    bad_path = bad.save(tmp_path / "bad.safetensors")
    r = runner.invoke(app, ["patch", "apply", str(bad_path), "--out", str(tmp_path / "no")])
    assert r.exit_code == 2 and "refusing to apply" in r.output
    assert not (tmp_path / "no").exists()
