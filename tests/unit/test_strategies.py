"""Continual-learning strategies of sequential runs (issue 17) on a tiny random model and small local tasks:
the pure parts (reservoir sampling, penalties, distillation), each strategy's invariants, naive unchanged,
the listing, and resume of every strategy (its state — Fisher, buffer, masks — survives a stop)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import mtgraft.cli.multitask_cmds  # noqa: F401  (registers the commands)
from mtgraft.cli.app import app
from mtgraft.errors import MtgraftError
from mtgraft.models import build_task_model, encode_examples, load_checkpoint
from mtgraft.resume import ResumeState
from mtgraft.tasks import get_task, make_splits
from mtgraft.testing import example_task_yaml, make_tiny_model, write_topic_task
from mtgraft.training.catalog import STRATEGIES
from mtgraft.training.multitask import MultitaskConfig, train_multitask
from mtgraft.training.optim import set_trainable
from mtgraft.training.strategies import (
    EWC,
    L2,
    LwF,
    Replay,
    distillation_loss,
    make_strategy,
    readouts,
    reservoir_update,
)

QUESTION_ROWS = [
    ("Where did you park the car?", "question"), ("Is the museum open on Mondays?", "question"),
    ("How long does the train take?", "question"), ("Who left the window open?", "question"),
    ("Can we meet after lunch?", "question"), ("What time is the concert?", "question"),
    ("The car is parked behind the bank.", "statement"), ("The museum closes early on Mondays.", "statement"),
    ("The train takes about an hour.", "statement"), ("Someone left the window open.", "statement"),
    ("We can meet after lunch.", "statement"), ("The concert starts at eight.", "statement"),
]


def write_question_task(folder: Path) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "q.csv").write_text("text,kind\n" + "\n".join(f'"{t}",{y}' for t, y in QUESTION_ROWS) + "\n")
    (folder / "q.yaml").write_text("name: tiny_question\ntrain: q.csv\ntext_column: text\nlabel_column: kind\n"
                                   "labels: [question, statement]\ndomain: form\n")
    return str(folder / "q.yaml")


@pytest.fixture(scope="module")
def env(tmp_path_factory, mlflow_db_template):
    d = tmp_path_factory.mktemp("strat")
    db = d / "mlflow.db"
    shutil.copy(mlflow_db_template, db)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
        mp.chdir(d)
        yield {"dir": d, "head": make_tiny_model("head", d / "head", seed=5),
               "tasks": [example_task_yaml(), write_topic_task(d / "topic"), write_question_task(d / "q")]}


def _args(env, out, strategy="naive", n_tasks=2, **kw):
    base = {"tasks": env["tasks"][:n_tasks], "mode": "sequential", "model": env["head"], "k": 2, "max_test": None,
            "max_length": 32, "batch_size": 2, "max_steps": 6, "eval_every": 2, "lr": 0.05, "out": str(out),
            "strategy": strategy}
    base.update(kw)
    return base


def _parts(env, strategy="naive", n_tasks=2, **kw):
    """A tiny model, its trainable settings and the tasks' train encodings, with a strategy on it."""
    cfg = MultitaskConfig(**_args(env, env["dir"] / "unused", strategy, n_tasks, **kw))
    specs = [get_task(t) for t in cfg.tasks]
    torch.manual_seed(0)
    model = build_task_model(cfg.model, "head", specs)
    set_trainable(model)
    names = [s.name for s in specs]
    train = {s.name: encode_examples(model, s.name, make_splits(s, 2, 13, None).train, 32) for s in specs}
    return cfg, model, names, train, make_strategy(cfg, model, names, train, "cpu")


def _move(model, scale, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n in model.graftable_names():
            p = dict(model.named_parameters())[n]
            p.add_(scale * torch.randn(p.shape, generator=gen))


# ---------------------------------------------------------------------------------------------- the listing


def test_catalog_lists_every_strategy_with_a_reference():
    assert list(STRATEGIES) == ["naive", "ewc", "l2", "replay", "lwf", "packnet", "graft"]
    for s in STRATEGIES.values():
        assert s.description and s.reference.startswith("https://") and s.keeps
    r = CliRunner().invoke(app, ["strategies", "--json"])
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout)["strategies"]
    assert [s["name"] for s in got] == list(STRATEGIES)


def test_config_refuses_unknown_strategies_and_joint_mode():
    with pytest.raises(Exception, match="unknown strategy"):
        MultitaskConfig(tasks="a,b", mode="sequential", strategy="si")
    with pytest.raises(Exception, match="needs mode 'sequential'"):
        MultitaskConfig(tasks="a,b", mode="joint", strategy="ewc")
    assert MultitaskConfig(tasks="a,b").strategy == "naive"


# ---------------------------------------------------------------------------------------------- replay


def test_reservoir_is_uniform_over_everything_offered():
    """Each of N offered items ends in a buffer of M with probability M/N, whatever its position or batch: the
    inclusion counts over many seeded draws pass a chi-square test of uniformity, and the buffer is full."""
    from scipy.stats import chisquare

    N, M, trials = 40, 8, 3000
    counts = np.zeros(N)
    for s in range(trials):
        gen = torch.Generator().manual_seed(s)
        buf: list[int] = []
        n = reservoir_update(buf, 0, list(range(25)), M, gen)  # a first task of 25 examples
        n = reservoir_update(buf, n, list(range(25, N)), M, gen)  # then 15 more
        assert n == N and len(buf) == M and len(set(buf)) == M
        counts[buf] += 1
    assert counts.sum() == M * trials
    assert chisquare(counts).pvalue > 0.001
    np.testing.assert_allclose(counts / trials, M / N, atol=0.04)
    # fewer items than capacity: all kept
    buf = []
    assert reservoir_update(buf, 0, [1, 2, 3], 10, torch.Generator().manual_seed(0)) == 3 and buf == [1, 2, 3]


def test_replay_buffer_spans_the_finished_tasks(env):
    cfg, model, names, train, st = _parts(env, "replay", n_tasks=3, replay_size=3)
    assert isinstance(st, Replay)
    st.before_stage(0)
    assert st.extra_loss(None, None) is None  # nothing buffered yet
    st.after_stage(0)
    assert len(st.buffer) == 3 and {t for t, _ in st.buffer} == {0}
    st.before_stage(1)
    st.after_stage(1)
    assert len(st.buffer) == 3 and st.n_seen == len(train[names[0]]) + len(train[names[1]])
    model.train()
    loss = st.extra_loss(None, None)
    assert loss.ndim == 0 and float(loss.detach()) > 0 and loss.requires_grad
    assert sum(st.extra_bytes().values()) > 0


# ---------------------------------------------------------------------------------------------- penalties


@pytest.mark.parametrize("name", ["ewc", "l2"])
def test_penalty_is_zero_at_the_anchor_and_grows_as_weights_move(env, name):
    cfg, model, names, train, st = _parts(env, name)
    assert isinstance(st, (EWC, L2))
    st.before_stage(0)
    assert st.extra_loss(None, None) is None  # stage 1: no earlier task, no penalty
    st.after_stage(0)
    if name == "ewc":
        assert st.fisher is not None and max(float(f.max()) for f in st.fisher.values()) > 0
    st.before_stage(1)
    at_anchor = st.extra_loss(None, None)
    assert float(at_anchor.detach()) == 0.0
    values = []
    for scale in (1e-3, 2e-3, 4e-3):
        saved = {n: p.detach().clone() for n, p in model.named_parameters()}
        _move(model, scale)
        values.append(float(st.extra_loss(None, None).detach()))
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(saved[n])
    assert 0 < values[0] < values[1] < values[2]
    assert values[1] / values[0] == pytest.approx(4.0, rel=1e-3)  # quadratic in the move
    lam = st._lambda()
    assert lam == STRATEGIES[name].default_lambda
    # the gradient of the penalty pulls towards the anchor
    _move(model, 1e-3)
    st.extra_loss(None, None).backward()
    body = dict(st.body)
    n0 = next(iter(body))
    move = body[n0].detach() - st.anchor[0]
    assert float((body[n0].grad * move).sum()) > 0


def test_ewc_fisher_is_online_and_survives_a_state_round_trip(env):
    cfg, model, names, train, st = _parts(env, "ewc", ewc_decay=0.5)
    st.before_stage(0)
    st.after_stage(0)
    f1 = {n: v.clone() for n, v in st.fisher.items()}
    st.before_stage(1)
    st.after_stage(1)
    from mtgraft.training.strategies import fisher_diagonal

    f2 = fisher_diagonal(model, train[names[1]], list(f1), cfg.batch_size, "cpu")
    for n in f1:
        torch.testing.assert_close(st.fisher[n], 0.5 * f1[n] + f2[n])
    other = make_strategy(cfg, model, names, train, "cpu")
    other.load_state_dict(st.state_dict())
    for n in f1:
        assert torch.equal(other.fisher[n], st.fisher[n])


# ---------------------------------------------------------------------------------------------- lwf


def test_lwf_loss_is_zero_when_the_student_is_the_teacher(env):
    cfg, model, names, train, st = _parts(env, "lwf")
    assert isinstance(st, LwF)
    st.before_stage(0)
    assert st.extra_loss(None, None) is None
    st.before_stage(1)  # the teacher: a frozen copy of the model stage 2 starts from
    from mtgraft.models import collate

    batch = collate(train[names[1]], [0, 1, 2], model.tokenizer.pad_token_id)
    model.eval()  # no dropout: the student is exactly the teacher
    assert float(st.extra_loss(batch, None).detach()) == pytest.approx(0.0, abs=1e-7)
    s = readouts(model, batch, names[:1])
    assert float(distillation_loss(s, {k: v.detach() for k, v in s.items()}, 2.0).detach()) == pytest.approx(0.0, abs=1e-7)
    _move(model, 0.05)
    moved = st.extra_loss(batch, None)
    assert float(moved.detach()) > 0 and moved.requires_grad
    # the readout of the old task is the model's own forward for that task
    torch.testing.assert_close(readouts(model, batch, names[:1])[names[0]],
                               model(**{**{k: v for k, v in batch.items() if k != "labels"}, "task": names[0]}))


# ---------------------------------------------------------------------------------------------- runs


@pytest.fixture(scope="module")
def naive(env):
    return train_multitask(MultitaskConfig(**_args(env, env["dir"] / "naive")), show_progress=False)


def test_naive_and_graft_train_exactly_as_before(env, naive):
    """``naive`` is today's sequential run; ``graft`` trains the same way (its patches come afterwards)."""
    from mtgraft.training.strategies import Strategy

    st = _parts(env)[-1]
    assert type(st) is Strategy and st.extra_loss is None and st.after_step is None and not st.has_views
    g = train_multitask(MultitaskConfig(**_args(env, env["dir"] / "graft-train", "graft")), show_progress=False)
    assert g.accuracy_matrix == naive.accuracy_matrix and g.test == naive.test
    a = load_file(str(Path(naive.checkpoint) / "model.safetensors"))
    b = load_file(str(Path(g.checkpoint) / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert naive.strategy["name"] == "naive" and naive.strategy["extra_bytes"] == 0


def test_packnet_never_changes_a_frozen_earlier_tasks_entries(env):
    out = env["dir"] / "packnet"
    r = train_multitask(MultitaskConfig(**_args(env, out, "packnet", n_tasks=3, mask_keep=0.3)), show_progress=False)
    owner = {k.removeprefix("owner."): v for k, v in load_file(str(out / "strategy_state.safetensors")).items()}
    pre, _ = build_task_model(env["head"], "head", [get_task(t) for t in env["tasks"]]), None
    pre_p = dict(pre.named_parameters())
    stages = [dict(load_checkpoint(Path(s["checkpoint"]))[0].named_parameters()) for s in r.stages]
    final = dict(load_checkpoint(out)[0].named_parameters())
    n_owned = {1: 0, 2: 0, 3: 0}
    for n, o in owner.items():
        for t in (1, 2, 3):
            n_owned[t] += int((o == t).sum())
        # free entries stayed pretrained; task t's entries keep their stage-t values in every later model
        assert torch.equal(final[n][o == 0], pre_p[n].detach()[o == 0])
        for t in (1, 2):
            for later in range(t, 3):
                assert torch.equal(stages[later][n][o == t], stages[t - 1][n][o == t])
    total = sum(o.numel() for o in owner.values())
    assert n_owned[1] == round(0.3 * total)
    assert n_owned[2] == round(0.3 * (total - n_owned[1]))
    # task 1 seen through its masks is the stage-1 model: it forgets nothing
    R = np.array(r.accuracy_matrix)
    assert R[2, 0] == R[0, 0] and R[1, 0] == R[0, 0] and R[2, 1] == R[1, 1]
    assert r.continual["bwt"] == 0.0 and r.strategy["owned_entries"]["free"] == total - sum(n_owned.values())
    assert r.strategy["extra_bytes"] == total


# ---------------------------------------------------------------------------------------------- resume


def _payload(r):
    j = r.to_json()
    keep = ("tasks", "test", "dev", "accuracy_matrix", "r0", "continual")
    out = {k: j.get(k) for k in keep}
    out["stages"] = [{k: s[k] for k in ("stage", "task", "best_step", "best_dev")} for s in j["stages"]]
    out["strategy"] = {k: v for k, v in (j.get("strategy") or {}).items()}
    return out


def _weights(folder: Path) -> dict[str, bytes]:
    return {str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*.safetensors"))}


@pytest.fixture(scope="module")
def naive3(env):
    train_multitask(MultitaskConfig(**_args(env, env["dir"] / "naive3", "naive", n_tasks=3, max_steps=4)),
                    show_progress=False)
    return _weights(env["dir"] / "naive3")


@pytest.mark.parametrize("strategy", ["ewc", "l2", "replay", "lwf", "packnet"])
def test_every_strategy_resumes_mid_stage_and_at_a_boundary(env, monkeypatch, strategy, naive3):
    """Stopped in stage 2 after its first periodic state (the strategy's state from stage 1 — Fisher, buffer,
    masks — in ``stages.pt``): the rerun with ``--resume`` ends bit for bit like an uninterrupted run."""
    d = env["dir"] / f"resume-{strategy}"
    ref = train_multitask(MultitaskConfig(**_args(env, d / "ref", strategy, n_tasks=3, max_steps=4)),
                          show_progress=False)
    out = d / "stopped"
    save = ResumeState.save
    calls = {"n": 0}

    def failing_save(self, name, st, config=None):
        if name == "stage-3" and st["step"] >= 4:
            calls["n"] += 1
            raise RuntimeError("stopped")
        save(self, name, st, config)

    monkeypatch.setattr(ResumeState, "save", failing_save)
    with pytest.raises(RuntimeError, match="stopped"):
        train_multitask(MultitaskConfig(**_args(env, out, strategy, n_tasks=3, max_steps=4)), show_progress=False)
    monkeypatch.setattr(ResumeState, "save", save)
    state = d / "stopped.resume"
    saved = torch.load(state / "stages.pt", weights_only=False)["state"]
    assert saved["strategy"] is not None and len(saved["done"]) == 2
    if strategy == "ewc":
        assert saved["strategy"]["fisher"]
    if strategy == "replay":
        assert len(saved["strategy"]["buffer"]) == min(100, saved["strategy"]["n_seen"])
        assert {t for t, _ in saved["strategy"]["buffer"]} == {0, 1}
    if strategy == "packnet":
        assert int(sum((o == 2).sum() for o in saved["strategy"]["owner"])) > 0
    assert (state / "stage-3.pt").is_file() and not out.exists()
    got = train_multitask(MultitaskConfig(**_args(env, out, strategy, n_tasks=3, max_steps=4), resume=True),
                          show_progress=False)
    assert _payload(got) == _payload(ref)
    assert _weights(d / "ref") == _weights(out)
    assert not state.exists()
    # and the strategy did something: the run is not the naive one
    assert naive3["model.safetensors"] != _weights(out)["model.safetensors"]


def test_lwf_and_replay_refuse_several_processes(env):
    cfg, model, names, train, _ = _parts(env)
    for name in ("lwf", "replay"):
        c = MultitaskConfig(**_args(env, env["dir"] / "two", name))
        with pytest.raises(MtgraftError, match="one process"):
            make_strategy(c, model, names, train, "cpu", world_size=2)
    make_strategy(MultitaskConfig(**_args(env, env["dir"] / "two", "ewc")), model, names, train, "cpu", world_size=2)


def test_cli_strategy_graft_keeps_a_patch_per_task_with_its_matrices(env):
    """``train-multitask --strategy graft``: naive training, one SkillPatch per stage, and the strategy's own
    accuracy matrices (own patch: never forgets; union of the patches so far)."""
    out = env["dir"] / "cli-graft"
    args = ["train-multitask", "--tasks", ",".join(env["tasks"][:2]), "--mode", "sequential", "--model", env["head"],
            "--k", "2", "--max-test", "all", "--max-length", "32", "--batch-size", "2", "--max-steps", "4",
            "--eval-every", "2", "--lr", "0.05", "--strategy", "graft", "--graft-sparsity", "0.01",
            "--graft-updates", "1", "--out", str(out), "--json"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    j = json.loads(r.stdout)
    st = j["strategy"]
    assert st["name"] == "graft" and st["task_identity"] is True
    assert set(st["extra_bytes_per_task"]) == {"example_local", "tiny_topic"} and st["extra_bytes"] > 0
    own = np.array(st["matrices"]["own"]["accuracy_matrix"], dtype=float)
    assert own[1, 0] == own[0, 0] and st["matrices"]["own"]["continual"]["bwt"] == 0.0
    uni = np.array(st["matrices"]["union"]["accuracy_matrix"], dtype=float)
    assert uni[0, 0] == own[0, 0]  # the union of one patch is that patch
    assert uni[1].tolist() == [j["graft_cl"]["per_task"][n]["union"] for n in ("example_local", "tiny_topic")]
    assert j["graft_cl"]["per_task"]["example_local"]["own_graft"] == own[1, 0]


@pytest.mark.parametrize("strategy", ["lwf", "replay", "packnet"])
def test_strategies_run_on_a_prompt_model(env, strategy):
    """``prompt`` models share the LM head: LwF distils each earlier task's label words read at the current
    input's mask; replay reads each buffered example through its own template; PackNet masks the body alike."""
    if "prompt" not in env:
        env["prompt"] = make_tiny_model("prompt", env["dir"] / "prompt", seed=5)
    r = train_multitask(MultitaskConfig(**_args(env, env["dir"] / f"prompt-{strategy}", strategy, model=env["prompt"],
                                                type="prompt", max_steps=4, replay_size=3)), show_progress=False)
    R = np.array(r.accuracy_matrix, dtype=float)
    assert R.shape == (2, 2) and np.isfinite(R).all() and r.strategy["name"] == strategy
