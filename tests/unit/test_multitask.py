"""Multi-task fine-tuning on tiny random models and two local tasks: joint and sequential runs, their
checkpoints, the accuracy matrix, graft-based continual learning, and the CLI."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import mtgraft.cli.multitask_cmds  # noqa: F401  (registers the commands)
from mtgraft.cli.app import app
from mtgraft.config import build_config
from mtgraft.errors import MtgraftError
from mtgraft.evaluation.continual import continual_metrics
from mtgraft.evaluation.predict import predict_probs
from mtgraft.grafting import GraftConfig, run_graft
from mtgraft.models import encode_examples, load_checkpoint, read_checkpoint_meta
from mtgraft.tasks import get_task, make_splits
from mtgraft.testing import example_task_yaml, make_tiny_model, write_topic_task
from mtgraft.training.multitask import MultitaskConfig, sampling_weights, train_multitask
from mtgraft.workflows.continual import (
    ContinualGraftConfig,
    approach_metrics,
    continual_graft,
    train_multitask_with_grafts,
)


@pytest.fixture(scope="module")
def env(tmp_path_factory, mlflow_db_template):
    d = tmp_path_factory.mktemp("mt")
    db = d / "mlflow.db"
    shutil.copy(mlflow_db_template, db)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
        mp.chdir(d)
        yield {"dir": d, "head": make_tiny_model("head", d / "head", seed=3),
               "tasks": [example_task_yaml(), write_topic_task(d / "topic")]}


def _cfg(env, mode: str, out: str, **kw) -> MultitaskConfig:
    base = {"tasks": env["tasks"], "mode": mode, "model": env["head"], "k": 2, "max_test": None, "max_length": 32,
            "batch_size": 4, "max_steps": 4, "eval_every": 2, "lr": 0.05, "out": out}
    base.update(kw)
    return MultitaskConfig(**base)


@pytest.fixture(scope="module")
def joint(env):
    runner = CliRunner()
    out = env["dir"] / "joint"
    args = ["train-multitask", "--tasks", ",".join(env["tasks"]), "--mode", "joint", "--model", env["head"],
            "--k", "2", "--max-test", "all", "--max-length", "32", "--batch-size", "4", "--max-steps", "4",
            "--eval-every", "2", "--lr", "0.05", "--sampling", "uniform", "--out", str(out), "--json"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def sequential(env):
    return train_multitask(_cfg(env, "sequential", str(env["dir"] / "seq")), show_progress=False)


# ---------------------------------------------------------------------------------------------- pure parts


def test_sampling_weights_by_hand():
    assert sampling_weights([10, 30], "proportional") == pytest.approx([0.25, 0.75])
    assert sampling_weights([10, 30, 60], "uniform") == pytest.approx([1 / 3] * 3)
    w = sampling_weights([16, 64], "temperature", 2.0)  # sqrt: 4 and 8
    assert w == pytest.approx([1 / 3, 2 / 3])
    assert sampling_weights([16, 64], "temperature", 1.0) == pytest.approx(sampling_weights([16, 64], "proportional"))
    with pytest.raises(MtgraftError):
        sampling_weights([0, 5], "uniform")
    with pytest.raises(MtgraftError):
        sampling_weights([5, 5], "bogus")


def test_config_parsing_and_errors(tmp_path):
    c = MultitaskConfig(tasks="a, b,c", mode="sequential")
    assert c.tasks == ["a", "b", "c"] and c.mode == "sequential" and c.lr == MultitaskConfig(tasks="a,b").lr
    for bad in ({"tasks": "a"}, {"tasks": "a,a"}, {"tasks": "a,b", "task": "a"}, {"tasks": "a,b", "mode": "mixed"},
                {"tasks": "a,b", "sampling": "random"}, {"tasks": "a,b", "graft": True}):
        with pytest.raises(MtgraftError):
            build_config(MultitaskConfig, None, bad)
    y = tmp_path / "mt.yaml"
    y.write_text("tasks: [x, y]\nmode: sequential\nmax-steps: 7\n")
    c = build_config(MultitaskConfig, y, {"max_steps": 9})
    assert c.tasks == ["x", "y"] and c.max_steps == 9


def test_approach_metrics_replace_the_last_row():
    R = [[0.9, 0.5, 0.4], [0.7, 0.8, 0.5], [0.6, 0.7, 0.95]]
    m = approach_metrics(R, [0.9, 0.8, 0.95])  # grafts keep what each stage reached
    assert m["forgetting_final"] == pytest.approx(0.0) and m["bwt"] == pytest.approx(0.0)
    assert m["acc"] == pytest.approx((0.9 + 0.8 + 0.95) / 3)
    seq = approach_metrics(R, [0.6, 0.7, 0.95])
    assert seq == {k: v for k, v in continual_metrics(R).items() if k != "fwt"}
    assert seq["forgetting_final"] == pytest.approx(((0.9 - 0.6) + (0.8 - 0.7)) / 2)


# ---------------------------------------------------------------------------------------------- joint


def test_joint_json_and_checkpoint(env, joint):
    names = ["example_local", "tiny_topic"]
    assert joint["mode"] == "joint" and joint["tasks"] == names
    assert set(joint["test"]) == set(names)
    for n in names:
        assert {"accuracy", "macro_f1", "ece", "brier"} <= set(joint["test"][n])
    assert joint["sampling"]["weights"] == pytest.approx({n: 0.5 for n in names})
    meta = read_checkpoint_meta(joint["checkpoint"])
    assert meta.mode == "joint" and meta.order == names and [t.name for t in meta.tasks] == names
    assert meta.model_extra["task_sources"]["tiny_topic"] == str(Path(env["tasks"][1]).resolve())
    heads = load_file(str(Path(joint["checkpoint"]) / "task_heads.safetensors"))
    assert {"example_local.weight", "tiny_topic.weight"} <= set(heads)
    # one shared body: the reloaded checkpoint reproduces each task's reported accuracy with its own head
    model, _ = load_checkpoint(joint["checkpoint"])
    for ref, n in zip(env["tasks"], names, strict=True):
        test = make_splits(get_task(ref), 2, 13, None).test
        probs = predict_probs(model, encode_examples(model, n, test, 32))
        acc = float((probs.argmax(1) == np.array([e.label for e in test])).mean())
        assert acc == pytest.approx(joint["test"][n]["accuracy"])


def test_graft_one_task_of_a_joint_checkpoint(env, joint):
    cfg = GraftConfig(task=env["tasks"][1], finetuned=joint["checkpoint"], sparsity=[0.01], method=["graft"],
                      updates=2, out=str(env["dir"] / "g-joint"), track=False, do_register=False)
    res = run_graft(cfg, show_progress=False)
    assert len(res) == 1 and res[0].task == "tiny_topic"
    assert Path(res[0].results[0]["patch"]).is_file()


def test_prompt_type_shares_the_lm_head(env, tmp_path):
    prompt = make_tiny_model("prompt", tmp_path / "prompt", seed=4)
    r = train_multitask(_cfg(env, "joint", str(tmp_path / "p"), model=prompt, type="prompt", max_steps=2,
                             sampling="temperature", temperature=3.0), show_progress=False)
    assert not (Path(r.checkpoint) / "task_heads.safetensors").exists()
    model, meta = load_checkpoint(r.checkpoint)
    assert meta.model_type == "prompt" and not list(model.heads)
    # each task reads out its own label words through the one LM head
    assert model.tasks["tiny_topic"].label_words == ["food", "sport"]
    assert r.sampling["rule"] == "temperature"


# ---------------------------------------------------------------------------------------------- sequential


def test_sequential_accuracy_matrix_and_stages(env, sequential):
    r = sequential
    names = ["example_local", "tiny_topic"]
    R = np.array(r.accuracy_matrix, dtype=float)
    assert R.shape == (2, 2) and np.isfinite(R).all()
    # the last row is the final model's test accuracy
    assert R[-1] == pytest.approx([r.test[n]["accuracy"] for n in names])
    assert r.continual == continual_metrics(R, r.r0)
    js = r.to_json()
    assert {"accuracy_matrix", "continual", "test", "tasks", "mode", "checkpoint"} <= set(js)
    assert {"acc", "bwt", "fwt", "forgetting_final", "forgetting_max"} <= set(js["continual"])
    for ext in ("csv", "json", "png"):
        assert Path(r.checkpoint, f"accuracy_matrix.{ext}").stat().st_size > 0
    saved = json.loads(Path(r.checkpoint, "accuracy_matrix.json").read_text())
    np.testing.assert_allclose(saved["matrix"], r.accuracy_matrix)
    meta = read_checkpoint_meta(r.checkpoint)
    assert meta.mode == "sequential" and meta.order == names
    s1, s2 = (Path(s["checkpoint"]) for s in r.stages)
    m1, m2 = read_checkpoint_meta(s1), read_checkpoint_meta(s2)
    assert m1.order == names[:1] and [t.name for t in m1.tasks] == names[:1] and m2.order == names
    assert m1.metrics["accuracy_row"] == pytest.approx(R[0].tolist())
    # stage 2 trains only the shared body and its own head: task 1's head is untouched
    h1, h2 = load_file(str(s1 / "task_heads.safetensors")), load_file(str(s2 / "task_heads.safetensors"))
    assert set(h1) == {"example_local.weight", "example_local.bias"}
    assert torch.equal(h1["example_local.weight"], h2["example_local.weight"])
    b1, b2 = load_checkpoint(s1)[0], load_checkpoint(s2)[0]
    p1, p2 = dict(b1.named_parameters()), dict(b2.named_parameters())
    assert any(not torch.equal(p1[n], p2[n]) for n in b1.graftable_names())
    # the run is in MLflow under hierarchical keys
    import mlflow

    run = mlflow.MlflowClient().get_run(r.mlflow_run_id)
    assert run.data.metrics["acc/stage_2/task_tiny_topic"] == pytest.approx(R[1, 1])
    assert run.data.metrics["continual/acc"] == pytest.approx(r.continual["acc"])


def test_continual_graft_on_a_sequential_run(env, sequential):
    cfg = ContinualGraftConfig(run=sequential.checkpoint, sparsity=0.01, updates=2, track=False)
    res = continual_graft(cfg, show_progress=False)
    names = ["example_local", "tiny_topic"]
    assert res.tasks == names
    for n in names:
        row = res.per_task[n]
        # applying the patch to the pretrained model reproduces what the graft run measured
        assert row["own_graft"] == pytest.approx(row["own_graft_run_graft"])
        assert row["sequential"] == pytest.approx(sequential.test[n]["accuracy"])
        assert row["just_trained"] == pytest.approx(sequential.accuracy_matrix[row["stage"] - 1][row["stage"] - 1])
    # each graft comes from the checkpoint of the stage that trained its task
    from mtgraft.patches import SkillPatch

    p1 = SkillPatch.load(res.patches["example_local"])
    stage1, _ = load_checkpoint(sequential.stages[0]["checkpoint"])  # by content: the file holds no host path
    assert p1.header.finetuned["hash"] == stage1.base_hash()
    assert res.union_stats["region_size"] >= max(res.per_task[n]["region_size"] for n in names)
    st = res.storage
    assert 0 < st["patches_bytes"] < st["checkpoints_bytes"] and st["ratio"] > 1
    assert set(res.approaches) == {"sequential", "own_graft", "union"}
    assert res.approaches["sequential"]["forgetting_final"] == pytest.approx(sequential.continual["forgetting_final"])
    assert Path(res.out, "continual_graft.json").is_file()


def test_train_multitask_with_grafts_attaches_graft_cl(env):
    # train_multitask itself leaves --graft to the workflow, which grafts the finished run and attaches the result
    cfg = _cfg(env, "sequential", str(env["dir"] / "seq_graft"), graft=True, graft_sparsity=0.01, graft_recipe="fast",
               graft_updates=2)
    res = train_multitask_with_grafts(cfg, show_progress=False)
    names = ["example_local", "tiny_topic"]
    cl = res.graft_cl
    assert cl is not None and cl["tasks"] == names and cl["run"] == res.checkpoint
    assert cl["out"] == str(Path(res.checkpoint) / "continual_graft")
    assert cl["settings"]["sparsity"] == 0.01 and cl["settings"]["recipe"] == "fast"
    assert res.to_json()["graft_cl"] == cl
    written = json.loads(Path(cl["out"], "continual_graft.json").read_text())
    assert written["storage"] == cl["storage"] and written["patches"] == cl["patches"]
    assert train_multitask(cfg.model_copy(update={"out": str(env["dir"] / "seq_nograft")}),
                           show_progress=False).graft_cl is None


def test_continual_graft_refuses_a_joint_run(joint):
    with pytest.raises(MtgraftError, match="not a sequential"):
        continual_graft(ContinualGraftConfig(run=joint["checkpoint"], track=False), show_progress=False)


# ---------------------------------------------------------------------------------------------- CLI errors


@pytest.mark.parametrize("args, msg", [
    (["--tasks", "rotten_tomatoes"], "at least two tasks"),
    (["--tasks", "rotten_tomatoes,hedge", "--mode", "mixed"], "mode"),
    (["--tasks", "rotten_tomatoes,no_such_task"], "unknown task"),
    (["--tasks", "rotten_tomatoes,hedge", "--graft"], "sequential"),
])
def test_cli_user_errors_are_one_line(env, args, msg):
    r = CliRunner().invoke(app, ["train-multitask", *args, "--model", env["head"], "--out", str(env["dir"] / "x")])
    assert r.exit_code == 2
    assert msg in r.output and "Traceback" not in r.output
    assert not (env["dir"] / "x").exists()


def test_failed_run_leaves_nothing(env, monkeypatch):
    out = env["dir"] / "broken"

    def boom(*a, **k):
        raise MtgraftError("disk full (simulated)")

    monkeypatch.setattr("mtgraft.evaluation.continual.save_accuracy_matrix", boom)
    with pytest.raises(MtgraftError):
        train_multitask(_cfg(env, "sequential", str(out), max_steps=1, eval_every=1), show_progress=False)
    assert not out.exists()
    assert not [p for p in env["dir"].iterdir() if p.name.startswith(".broken")]


def test_nan_free_json(sequential):
    text = json.dumps(sequential.to_json(), allow_nan=False, default=str)
    assert "accuracy_matrix" in text
    assert all(v is None or math.isfinite(v) for row in sequential.accuracy_matrix for v in row)


# ---------------------------------------------------------------------------------------------- data parallel


def _rank(r, n):
    """A stand-in accelerator for process ``r`` of ``n``: accelerate's own ``split_between_processes``."""
    from types import MethodType, SimpleNamespace

    from accelerate import PartialState

    ns = SimpleNamespace(num_processes=n, process_index=r)
    ns.split_between_processes = MethodType(PartialState.split_between_processes, ns)
    return ns


def test_dist_context_shares_a_global_batch_and_its_loss(monkeypatch):
    import torch

    from mtgraft.training import DistContext, dist_context, is_main_process

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not dist_context().active and is_main_process()
    shares = [DistContext(_rank(r, 2)).share(list(range(5))) for r in (0, 1)]
    assert shares == [[0, 1, 2], [3, 4]]  # disjoint, together the whole batch, sizes differ by at most one
    with pytest.raises(MtgraftError, match="batch-size"):
        DistContext(_rank(0, 4)).share([0, 1])
    # unequal shares: the mean over processes of each share's loss is the global-batch mean
    logits, labels = torch.randn(5, 3), torch.tensor([0, 2, 1, 1, 0])
    mean = sum(DistContext(_rank(r, 2)).loss(logits[s], labels[s], 5) for r, s in enumerate(shares)) / 2
    torch.testing.assert_close(mean, torch.nn.functional.cross_entropy(logits, labels))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert not is_main_process()


def test_fp16_on_the_cpu_is_refused_before_any_work(env, tmp_path, monkeypatch):
    """accelerate would quietly train fp16 on the CPU in fp32: mtgraft refuses in one line, writes nothing."""
    import mtgraft.training.multitask as mt

    monkeypatch.setattr(mt, "train_loop", lambda *a, **k: pytest.fail("training started"))
    with pytest.raises(MtgraftError, match="fp16 needs a CUDA GPU") as e:
        train_multitask(_cfg(env, "joint", str(tmp_path / "never"), precision="fp16", device="cpu"),
                        show_progress=False)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "never").exists() and not (tmp_path / "never.resume").exists()


def test_joint_bf16_on_the_cpu(env, tmp_path):
    """A joint bf16 run on the CPU (prepared model autocasts; evaluation in bf16 too) trains and saves fp32."""
    r = train_multitask(_cfg(env, "joint", str(tmp_path / "bf16"), precision="bf16", device="cpu", max_steps=6,
                             eval_every=3), show_progress=False)
    model, meta = load_checkpoint(r.checkpoint)
    assert meta.train_config["precision"] == "bf16"
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
    assert all(math.isfinite(m["brier"]) for m in r.test.values())


def test_grafts_of_a_joint_checkpoint_get_per_task_regions(env, joint, tmp_path):
    """|delta| is one vector for all tasks of a joint model; the default (init auto -> saliency) is not."""
    from mtgraft.patches import SkillPatch

    regions = {}
    for init in ("movement", "auto"):
        cfg = GraftConfig(all_tasks=True, finetuned=joint["checkpoint"], sparsity=[0.05], method=["graft"],
                          updates=1, init=init, out=str(tmp_path / init), track=False, do_register=False)
        res = run_graft(cfg, show_progress=False)
        pats = [SkillPatch.load(r.results[0]["patch"]) for r in res]
        assert {p.header.method_settings["init"] for p in pats} == {"movement" if init == "movement"
                                                                       else "saliency"}
        regions[init] = [set(p.flat_indices().tolist()) for p in pats]
    jac = {init: len(a & b) / len(a | b) for init, (a, b) in regions.items()}
    assert jac["auto"] < jac["movement"]
