"""The mask registry through a real ``mlflow server`` (sqlite backend, local artifact folder).

Registers patches through the server, lists, pulls and applies them (onto the embedded MiniLM),
and registers 8 versions of one registered model from 8 processes at once.
"""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import mtgraft.cli.masks_cmds  # noqa: F401  (registers the 'masks' group)
from mtgraft.cli.app import app
from mtgraft.models import TaskInfo, build_task_model, load_checkpoint
from mtgraft.patches import SkillPatch
from mtgraft.registry import MaskRegistry, model_name
from mtgraft.utils import sha256_file

pytestmark = pytest.mark.integration


def _minilm_patch(model, names, task, flat, delta, path, rel, base_hash=None):
    """A patch for ``task`` on MiniLM: value base + delta at global flat indices ``flat``."""
    params = dict(model.named_parameters())
    base_flat = torch.cat([params[n].detach().reshape(-1) for n in names])
    idx = torch.as_tensor(np.unique(flat))
    values = base_flat[idx] + delta
    head = {n: params[n].detach() + delta for n in model.head_param_names(task)}
    info = model.tasks[task]
    hdr = {"base_model": "minilm", "base_hash": base_hash or model.base_hash(),
           "graftable": [(n, list(params[n].shape)) for n in names], "task": task,
           "tasks_info": {task: info.model_dump()}, "model_type": "head", "method": "random",
           "method_settings": {"sparsity": 1e-4}, "seed": 0, "data": {"k": 16, "seed": 13},
           "metrics": {"test": {"accuracy": 0.7, "ece": 0.1, "rel": rel}},
           "finetuned": {"path": "runs/ft", "mlflow_run_id": None}}
    return SkillPatch.from_flat_values(idx, values, head, hdr).save(path), base_flat


def test_register_list_pull_apply_through_server(mlflow_server, tmp_path):
    runner = CliRunner()
    u = ["--tracking-uri", mlflow_server]
    infos = [TaskInfo(name="rt", labels=["neg", "pos"]), TaskInfo(name="subj", labels=["subj", "obj"])]
    model = build_task_model("minilm", "head", infos)
    names = model.graftable_names()
    total = sum(int(p.numel()) for n, p in model.named_parameters() if n in set(names))
    rng = np.random.default_rng(0)
    shared = rng.choice(total, 50, replace=False)
    a_only = rng.choice(total, 500, replace=False)
    b_only = rng.choice(total, 500, replace=False)
    flat_a, flat_b = np.union1d(shared, a_only), np.union1d(shared, b_only)
    pa, base_flat = _minilm_patch(model, names, "rt", flat_a, 0.05, tmp_path / "rt.safetensors", rel=0.9)
    pb, _ = _minilm_patch(model, names, "subj", flat_b, -0.03, tmp_path / "subj.safetensors", rel=0.8)
    n_overlap = len(np.intersect1d(flat_a, flat_b))
    assert n_overlap >= 50

    r = runner.invoke(app, ["masks", "register", str(pa), str(pb), "--json", *u])
    assert r.exit_code == 0, r.output
    reg = json.loads(r.stdout)["registered"]
    name_a, name_b = (model_name(t, "minilm", model.base_hash()) for t in ("rt", "subj"))
    assert [d["ref"] for d in reg] == [f"{name_a}/1", f"{name_b}/1"]

    r = runner.invoke(app, ["masks", "list", "--task", "rt", "--json", *u])
    rows = json.loads(r.stdout)["masks"]
    assert [(x["name"], x["version"], x["aliases"], x["rel"]) for x in rows] == [(name_a, "1", ["latest", "best"], 0.9)]
    assert rows[0]["region_size"] == len(flat_a)

    pulled = tmp_path / "pulled.safetensors"
    r = runner.invoke(app, ["masks", "pull", f"{name_b}@best", "--out", str(pulled), *u])
    assert r.exit_code == 0, r.output
    assert pulled.read_bytes() == pb.read_bytes()

    # compose both skills onto the base; overlapping weights are averaged
    out = tmp_path / "grafted"
    r = runner.invoke(app, ["masks", "apply", f"{name_a}@latest", f"{name_b}/1", "--to", "minilm",
                            "--out", str(out), "--json", *u])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["overlapping_entries"] == n_overlap
    assert res["region_size"] == len(np.union1d(flat_a, flat_b))
    assert [p["ref"] for p in res["patches"]] == [f"{name_a}/1", f"{name_b}/1"]
    grafted, meta = load_checkpoint(out)
    assert meta.mode == "grafted" and set(grafted.tasks) == {"rt", "subj"}
    gparams = dict(grafted.named_parameters())
    got = torch.cat([gparams[n].detach().reshape(-1) for n in names])
    expect = base_flat.clone()
    expect[torch.as_tensor(flat_a)] += 0.05
    expect[torch.as_tensor(flat_b)] -= 0.03
    over = torch.as_tensor(np.intersect1d(flat_a, flat_b))
    expect[over] = base_flat[over] + (0.05 - 0.03) / 2
    assert torch.allclose(got, expect, atol=1e-6)
    p0 = dict(model.named_parameters())
    for n in model.head_param_names("rt"):
        assert torch.allclose(gparams[n], p0[n] + 0.05)

    # --overlap sum: base + the sum of both deltas on shared weights (a path works as a REF too)
    out_sum = tmp_path / "grafted-sum"
    r = runner.invoke(app, ["masks", "apply", str(pa), f"{name_b}@latest", "--out", str(out_sum),
                            "--overlap", "sum", "--json", *u])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["overlapping_entries"] == n_overlap
    gsum = dict(load_checkpoint(out_sum)[0].named_parameters())
    got = torch.cat([gsum[n].detach().reshape(-1) for n in names])
    expect[over] = base_flat[over] + 0.05 - 0.03
    assert torch.allclose(got, expect, atol=1e-6)

    # --overlap error refuses overlapping patches and writes nothing
    r = runner.invoke(app, ["masks", "apply", f"{name_a}/1", str(pb), "--out", str(tmp_path / "no"),
                            "--overlap", "error", *u])
    assert r.exit_code == 2 and "overlap" in r.stderr and not (tmp_path / "no").exists()

    # a patch registered for another base is refused by apply
    pc, _ = _minilm_patch(model, names, "rt", a_only, 0.01, tmp_path / "other.safetensors", rel=0.1,
                          base_hash="sha256:" + "0" * 64)
    MaskRegistry(mlflow_server).register_patch(pc)
    other = model_name("rt", "minilm", "sha256:" + "0" * 64)
    r = runner.invoke(app, ["masks", "apply", f"{other}@latest", "--to", "minilm", "--out", str(tmp_path / "no"), *u])
    assert r.exit_code == 2 and "refusing" in r.stderr and not (tmp_path / "no").exists()

    # unknown alias: one clear line
    r = runner.invoke(app, ["masks", "pull", f"{name_a}@prod", "--out", str(tmp_path / "x"), *u])
    assert r.exit_code == 2
    assert r.stderr.strip().splitlines() == [f"error: registered model '{name_a}' has no alias 'prod' "
                                             "(aliases: best, latest)"]


def _register_worker(uri: str, path: str, worker: int, barrier, out: str) -> None:
    # (MLflow keys its pooled HTTP sessions by process id: a forked child opens its own connections)
    barrier.wait(timeout=120)
    m = MaskRegistry(uri).register_patch(path, extra_tags={"test.worker": worker})
    Path(out).write_text(json.dumps(m.to_dict()))


def test_eight_concurrent_registrations(mlflow_server, make_skillpatch, tmp_path):
    n = 8
    task = "concurrency"
    paths = [make_skillpatch(f"c{i}.safetensors", task=task, rel=0.5 + 0.05 * i, seed=100 + i) for i in range(n)]
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(n)
    outs = [tmp_path / f"out{i}.json" for i in range(n)]
    procs = [ctx.Process(target=_register_worker, args=(mlflow_server, str(p), i, barrier, str(o)))
             for i, (p, o) in enumerate(zip(paths, outs, strict=True))]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
    assert [p.exitcode for p in procs] == [0] * n

    name = model_name(task, "minilm", "sha256:" + "ab" * 32)
    results = [json.loads(o.read_text()) for o in outs]
    assert {d["name"] for d in results} == {name}
    assert sorted(int(d["version"]) for d in results) == list(range(1, n + 1))

    reg = MaskRegistry(mlflow_server)
    versions = {int(r["version"]): r for r in reg.list_masks(task=task)}
    assert sorted(versions) == list(range(1, n + 1))
    for i, d in enumerate(results):
        mv = reg.client.get_model_version(name, d["version"])
        assert mv.tags["test.worker"] == str(i)
        assert mv.tags["mtgraft.seed"] == str(100 + i)
        assert float(mv.tags["mtgraft.rel"]) == pytest.approx(0.5 + 0.05 * i)
        assert mv.tags["mtgraft.patch_sha256"] == sha256_file(paths[i])
        got = reg.pull(f"{name}/{d['version']}", tmp_path / f"pulled{i}.safetensors")
        assert Path(got["path"]).read_bytes() == paths[i].read_bytes()
    # best ends on the highest Rel (worker 7), latest on the highest version
    assert str(reg.get_version(f"{name}@best").version) == results[n - 1]["version"]
    assert str(reg.get_version(f"{name}@latest").version) == str(n)


def test_default_experiment_artifacts_go_through_the_server(mlflow_server, make_skillpatch):
    reg = MaskRegistry(mlflow_server)
    run = reg.client.create_run("0")
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/0/")
    m = reg.register_patch(make_skillpatch("in-default.safetensors", task="default_exp"), run_id=run.info.run_id)
    assert reg.client.get_model_version(m.name, m.version).source.startswith("mlflow-artifacts:/0/")
