"""overlap-report end to end on the real offline MiniLM and real task data (test splits capped small).

The patches are built here (random moves on real graftable tensors, regions chosen so that the two
sentiment tasks share entries), so the test needs no fine-tuning; transfer runs the real model on
real test examples through the catalog's splits.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.integration


def test_report_on_minilm_with_transfer(tmp_path):
    from mtgraft.analysis.report import build_report
    from mtgraft.models import TaskInfo, build_task_model
    from mtgraft.patches import SkillPatch
    from mtgraft.tasks import get_task

    tasks = ["rotten_tomatoes", "movie_polarity", "hedge"]
    infos = [TaskInfo.from_spec(get_task(t)) for t in tasks]
    model = build_task_model("minilm", "head", infos)
    names = model.graftable_names()
    params = dict(model.named_parameters())
    pre = torch.cat([params[n].detach().reshape(-1) for n in names])
    P = pre.numel()
    rng = np.random.default_rng(0)
    shared = rng.choice(P, 2000, replace=False)
    gen = torch.Generator().manual_seed(0)
    patches = []
    for t, info in zip(tasks, infos, strict=True):
        own = rng.choice(P, 3000, replace=False)
        reg = np.unique(np.concatenate([own, shared]) if t != "hedge" else own)
        idx = torch.from_numpy(reg)
        head = {n: p.detach().clone() + 0.1 * torch.randn(p.shape, generator=gen)
                for n, p in params.items() if n.startswith(f"heads.{t}.")}
        hdr = {"base_model": "minilm", "base_hash": model.base_hash(),
               "graftable": [(n, list(params[n].shape)) for n in names], "task": t,
               "tasks_info": {t: info.model_dump()}, "model_type": "head", "method": "graft",
               "data": {"k": 16, "seed": 13, "max_test": 1000, "max_length": 32},
               "metrics": {"test": {"n": 1000, "accuracy": 0.7},
                           "reference": {"pretrained": {"accuracy": 0.5}, "finetuned": {"accuracy": 0.8}}}}
        vals = pre[idx] + 0.01 * torch.randn(idx.numel(), generator=gen)
        patches.append(SkillPatch.from_flat_values(reg, vals, head, hdr))
    res = build_report(patches, tmp_path / "rep", with_transfer=True, unions=[["rotten_tomatoes", "movie_polarity"]],
                       max_test=32, device="cpu", track=False)
    oj = json.loads((res.out_dir / "overlap.json").read_text())
    rt_mp = next(p for p in oj["pairs"] if {p["a"], p["b"]} == {"rotten_tomatoes", "movie_polarity"})
    assert rt_mp["verdict"] == "beyond_chance" and rt_mp["intersection"] >= 2000
    assert oj["graph"]["edges"] == 1
    tr = oj["transfer"]
    assert tr["eval_tasks"] == tasks
    assert tr["rel"][0][2] is None and tr["rel"][2][0] is None  # hedge has other labels
    ref = tr["reference"]["rotten_tomatoes"]
    assert ref["n"] == 32 and ref["pretrained_source"] == "measured here"
    assert 0.0 <= ref["pretrained"] <= 1.0
    assert (res.out_dir / "figures" / "transfer_rel.png").is_file()
    assert res.summary["summary"]["domains"]["same_domain"]["n"] == 1
