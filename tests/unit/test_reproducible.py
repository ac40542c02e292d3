"""Reproducible artifacts (issue 13): byte-identical SkillPatch files, one device-free selection order, and
output files that follow the umask."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save as st_save

from mtgraft.grafting import GraftConfig, run_graft
from mtgraft.grafting.methods import SelectContext, get_method
from mtgraft.grafting.space import GraftSpace, budget_k, topk_indices
from mtgraft.models import build_task_model, encode_examples, load_checkpoint
from mtgraft.patches import SkillPatch
from mtgraft.patches.header import HEADER_KEY
from mtgraft.tasks import get_task, make_splits
from mtgraft.testing import example_task_yaml, make_tiny_checkpoint, make_tiny_model
from mtgraft.utils import sha256_file


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("repro")
    pre = make_tiny_model("head", d / "pre", seed=1)
    ck = make_tiny_checkpoint(d / "ft", pre, example_task_yaml(), seed=2)
    return {"pre": pre, "ft": ck, "dir": d}


def _graft(tiny, out):
    cfg = GraftConfig(task=example_task_yaml(), finetuned=tiny["ft"], sparsity=[0.01], out=str(out), track=False,
                      do_register=False, updates=2, method=["graft"], candidates=3)
    return run_graft(cfg, show_progress=False)[0].results[0]["patch"]


def _header(path) -> dict:
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()[HEADER_KEY])


def test_same_inputs_and_seed_give_byte_identical_files(tiny):
    a, b = _graft(tiny, tiny["dir"] / "g1"), _graft(tiny, tiny["dir"] / "g2")
    assert sha256_file(a) == sha256_file(b)
    h = _header(a)
    assert "created_at" not in h
    text = json.dumps(h)
    # no host path: neither the checkpoint's folder, the output folder nor the local task's YAML
    for path in (tiny["ft"], str(tiny["dir"] / "g1"), example_task_yaml()):
        assert path not in text
    assert set(h["finetuned"]) == {"hash", "mlflow_run_id", "mode"}
    ft, _ = load_checkpoint(tiny["ft"])
    assert h["finetuned"]["hash"] == ft.base_hash()  # what identifies the fine-tuned model instead
    # where the checkpoint was is in results.json
    results = json.loads((tiny["dir"] / "g1" / "results.json").read_text())
    assert results["finetuned"] == str(os.path.realpath(tiny["ft"]))


def test_old_files_with_created_at_still_load(tiny, tmp_path):
    src = _graft(tiny, tiny["dir"] / "g3")
    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    h = json.loads(meta[HEADER_KEY])
    h["created_at"] = "2024-05-01T12:00:00+00:00"
    h["finetuned"] = {"path": "/old/host/ft", "mlflow_run_id": None, "mode": "single"}
    meta[HEADER_KEY] = json.dumps(h)
    old = tmp_path / "old.skillpatch.safetensors"
    old.write_bytes(st_save(tensors, metadata=meta))
    p = SkillPatch.load(old)
    assert "created_at" not in p.header.to_json_dict()
    assert p.header.finetuned["path"] == "/old/host/ft"
    resaved = p.save(tmp_path / "resaved.skillpatch.safetensors")
    assert "created_at" not in _header(resaved)


# -- the selection order: score desc, |delta| desc, flat index asc (docs/method.md §2, "Ties") -----------


def test_tied_scores_follow_the_documented_order():
    scores = torch.tensor([1.0, 3.0, 3.0, 3.0, 2.0, 3.0, 5.0])
    mags = torch.tensor([0.0, 1.0, 5.0, 1.0, 9.0, 5.0, 0.0])
    # 5.0 is above the cut; among the four 3.0s |delta| 5 (indices 2, 5) before 1 (1, 3), then the lower index
    assert topk_indices(scores, 3, mags).tolist() == [2, 5, 6]
    assert topk_indices(scores, 4, mags).tolist() == [1, 2, 5, 6]
    assert topk_indices(scores, 3).tolist() == [1, 2, 6]  # no tie-break key: the lower flat index
    # NaN ranks last, as -inf
    assert topk_indices(torch.tensor([float("nan"), 0.0, -1.0]), 2).tolist() == [1, 2]
    # every prefix against a reference sort in float64 with exact keys
    gen = torch.Generator().manual_seed(0)
    s = torch.randint(0, 4, (500,), generator=gen).float()
    t = torch.randint(0, 3, (500,), generator=gen).float()
    ref = np.lexsort((np.arange(500), -t.double().numpy(), -s.double().numpy()))
    for k in (1, 7, 100, 250, 499):
        assert topk_indices(s, k, t).tolist() == sorted(ref[:k].tolist())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_tied_scores_same_choice_on_gpu():
    gen = torch.Generator().manual_seed(1)
    s = torch.randint(0, 3, (100_000,), generator=gen).float()
    t = torch.randint(0, 3, (100_000,), generator=gen).float()
    for k in (10, 33_333, 50_000):
        assert torch.equal(topk_indices(s, k, t), topk_indices(s.cuda(), k, t.cuda()).cpu())


def test_base_patch_is_inside_the_candidates_with_ties(tiny):
    s = torch.zeros(1000)
    s[::3] = 1.0  # 334 tied entries on top, 666 tied below
    t = (torch.arange(1000) % 5).float()
    for k in (10, 334, 400):
        base = set(topk_indices(s, k, t).tolist())
        for m in (k, k + 1, 2 * k, 999):
            assert base <= set(topk_indices(s, m, t).tolist())
    # the learned graft: |delta| quantised into heavy ties; its base patch (update 0) is the first k entries
    # of the order, even with few candidates
    ft, meta = load_checkpoint(tiny["ft"])
    space = GraftSpace.build(ft, build_task_model(tiny["pre"], "head", meta.tasks), torch.device("cpu"))
    space.delta = torch.sign(space.delta) * torch.round(space.delta.abs() * 20) / 20
    mags = space.delta.abs().double().numpy()
    k = budget_k(0.05, space.numel)
    order = np.lexsort((np.arange(space.numel), -mags))
    assert mags[order[k - 1]] == mags[order[k]]  # the cut falls inside a tie
    spec = get_task(example_task_yaml())
    enc = encode_examples(space.model, spec.name, make_splits(spec, 2, 13, None).train, 32)
    ctx = SelectContext(space, k, enc, None, {"updates": 0, "candidates": 1.2, "budget": "strict"}, seed=0)
    sel = get_method("graft").select(ctx)
    assert sel.indices.tolist() == sorted(order[:k].tolist())
    assert sel.info["candidates"] == int(np.ceil(1.2 * k))


# -- files a colleague can read (item 8) -------------------------------------------------------------------


def test_checkpoint_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        pre = make_tiny_model("head", tmp_path / "pre", seed=1)
        ck = make_tiny_checkpoint(tmp_path / "ft", pre, example_task_yaml(), seed=2)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(ck).st_mode) == 0o755
    names = set(os.listdir(ck))
    assert {"model.safetensors", "task_heads.safetensors", "mtgraft.json"} <= names
    for name in names:
        assert stat.S_IMODE(os.stat(os.path.join(ck, name)).st_mode) == 0o644, name
