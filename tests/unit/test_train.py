"""Training on tiny random models: the three prediction types, checkpoints, CLI errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mtgraft.config import TrainConfig
from mtgraft.evaluation.predict import predict_probs
from mtgraft.models import encode_examples, load_checkpoint
from mtgraft.tasks import get_task, make_splits
from mtgraft.testing import example_task_yaml, make_tiny_model
from mtgraft.training import train


@pytest.fixture(autouse=True)
def _mlflow_tmp(isolated_mlflow):
    """Every test here runs with its own tracking store (conftest ``isolated_mlflow``)."""


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    return {t: make_tiny_model(t, d / t, seed=3) for t in ("head", "prompt", "causal")}


@pytest.mark.parametrize("model_type", ["head", "prompt", "causal"])
def test_train_each_type_and_reload(tiny_models, tmp_path, model_type):
    cfg = TrainConfig(task=example_task_yaml(), model=tiny_models[model_type], type=model_type, k=2,
                      max_steps=6, eval_every=3, batch_size=2, lr=0.05, max_length=32, out=str(tmp_path / "ck"))
    r = train(cfg, show_progress=False)
    assert Path(r.checkpoint, "mtgraft.json").is_file()
    assert {"accuracy", "macro_f1", "ece", "brier"} <= set(r.test)
    model, meta = load_checkpoint(r.checkpoint)
    assert meta.model_type == model_type and meta.tasks[0].name == "example_local"
    assert meta.pretrained["hash"].startswith("sha256:")
    # the reloaded checkpoint reproduces the reported test accuracy
    spec = get_task(example_task_yaml())
    test = make_splits(spec, 2, 13, cfg.max_test).test
    probs = predict_probs(model, encode_examples(model, spec.name, test, 32))
    acc = float((probs.argmax(1) == np.array([e.label for e in test])).mean())
    assert acc == pytest.approx(r.test["accuracy"])
    # the run is in MLflow with its test metrics
    import mlflow

    run = mlflow.MlflowClient().get_run(r.mlflow_run_id)
    assert run.data.metrics["test/accuracy"] == pytest.approx(r.test["accuracy"])


def test_training_moves_only_trainable_parts(tiny_models, tmp_path):
    cfg = TrainConfig(task=example_task_yaml(), model=tiny_models["head"], k=2, max_steps=4, eval_every=2,
                      batch_size=2, lr=0.5, max_length=32, out=str(tmp_path / "ck"), bias_only=True)
    r = train(cfg, show_progress=False)
    ft, _ = load_checkpoint(r.checkpoint)
    from mtgraft.models import build_task_model

    pre = build_task_model(tiny_models["head"], "head", [get_task(example_task_yaml())])
    pp = dict(pre.named_parameters())
    moved = {n for n, p in ft.named_parameters()
             if n.startswith("backbone.") and not p.detach().equal(pp[n].detach())}
    assert moved, "nothing moved"
    assert all(n.endswith(".bias") for n in moved), moved  # BitFit: embeddings frozen, only biases move


def test_l1_pull_soft_thresholds_the_body_and_leaves_heads(tiny_models):
    """One proximal step: body entries move to theta_0 + sign(d)·max(|d| − lr·λ, 0); the task head is not pulled."""
    import torch

    from mtgraft.models import build_task_model
    from mtgraft.training.loop import L1Pull

    model = build_task_model(tiny_models["head"], "head", [get_task(example_task_yaml())])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pull = L1Pull(model, opt, lam=0.5)  # threshold lr·λ = 0.05
    body = dict(model.named_parameters())[model.graftable_names()[0]]
    head_name = next(n for n, _ in model.named_parameters() if n.startswith("heads."))
    head = dict(model.named_parameters())[head_name]
    b0, h0 = body.detach().clone(), head.detach().clone()
    d = torch.linspace(-0.2, 0.2, body.numel()).reshape(body.shape)
    with torch.no_grad():
        body.add_(d)
        head.add_(0.01)
    pull.step()
    want = b0 + torch.where(d.abs() > 0.05, d - 0.05 * torch.sign(d), torch.zeros_like(d))
    assert torch.allclose(body.detach(), want, atol=1e-6)
    assert int((body.detach() == b0).sum()) == int((d.abs() <= 0.05).sum()) > 0  # exactly pretrained there
    assert torch.equal(head.detach(), h0 + 0.01)


def test_l1_to_pretrained_training_moves_fewer_body_entries(tiny_models, tmp_path):
    """Training with the pull leaves more of the body exactly at its pretrained values than without it."""
    from mtgraft.models import build_task_model

    pre = build_task_model(tiny_models["head"], "head", [get_task(example_task_yaml())])
    pp = dict(pre.named_parameters())
    moved = {}
    for lam in (0.0, 0.05):
        cfg = TrainConfig(task=example_task_yaml(), model=tiny_models["head"], k=2, max_steps=4, eval_every=4,
                          batch_size=2, lr=0.5, max_length=32, out=str(tmp_path / f"ck{lam}"), l1_to_pretrained=lam)
        ft, _ = load_checkpoint(train(cfg, show_progress=False).checkpoint)
        fp = dict(ft.named_parameters())
        moved[lam] = sum(int((fp[n].detach() != pp[n].detach()).sum()) for n in ft.graftable_names())
    assert moved[0.0] > 0 and moved[0.05] < moved[0.0] / 2, moved


def _cli(args, tmp_path):
    from mtgraft.cli import app as appmod

    appmod._register()
    return CliRunner().invoke(appmod.app, args, catch_exceptions=False)


def test_cli_train_json(tiny_models, tmp_path):
    res = _cli(["train", "--task", example_task_yaml(), "--model", tiny_models["head"], "--k", "2", "--max-steps",
                "2", "--eval-every", "1", "--batch-size", "2", "--max-length", "32", "--out", str(tmp_path / "c"),
                "--json"], tmp_path)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["checkpoint"] == str(tmp_path / "c") and "accuracy" in out["test"]


def test_cli_config_yaml_and_override(tiny_models, tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text(f"task: {example_task_yaml()}\nmodel: {tiny_models['head']}\nk: 2\nmax_steps: 2\neval_every: 1\n"
                 f"batch_size: 2\nmax_length: 32\nout: {tmp_path / 'from_yaml'}\n")
    res = _cli(["train", "--config", str(y), "--max-steps", "1", "--json"], tmp_path)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["steps"] == 1 and out["config"]["k"] == 2 and out["checkpoint"] == str(tmp_path / "from_yaml")
    saved = json.loads((tmp_path / "from_yaml" / "mtgraft.json").read_text())
    assert saved["train_config"]["max_steps"] == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["--task", "no_such_task"], "unknown task"),
        (["--k", "500"], "k"),
        (["--type", "prompt", "--model", "minilm"], "masked LM"),
        (["--lr", "-1"], "lr"),
        (["--device", "tpu"], "device"),
        (["--precision", "fp16", "--device", "cpu"], "fp16 needs a CUDA GPU"),  # refused before any work
    ],
)
def test_cli_bad_input_one_line(tiny_models, tmp_path, args, message):
    base = ["train", "--task", example_task_yaml(), "--model", tiny_models["head"], "--max-steps", "1", "--k", "2",
            "--out", str(tmp_path / "never")]
    # later options win in click for repeated options
    res = _cli(base + args, tmp_path)
    assert res.exit_code != 0
    err = res.stderr if hasattr(res, "stderr") else res.output
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert message.lower() in lines[0].lower()
    assert "Traceback" not in res.output
    assert not (tmp_path / "never").exists()


def test_cli_unwritable_out(tiny_models, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    if os.access(ro, os.W_OK):  # root ignores permissions: use a path below a file instead
        blocker = tmp_path / "file"
        blocker.write_text("x")
        target = blocker / "out"
    else:
        target = ro / "out"
    res = _cli(["train", "--task", example_task_yaml(), "--model", tiny_models["head"], "--max-steps", "1",
                "--out", str(target)], tmp_path)
    assert res.exit_code != 0
    assert "error:" in res.output and "Traceback" not in res.output


# ---------------------------------------------------------------------------------------------- mixed precision


def _loop_losses(model_dir, precision, device="cpu", steps=40):
    """Train the tiny head model ``steps`` steps through ``train_loop`` in ``precision``; per-step losses and
    the dtypes the first body layer computed in."""
    import torch

    from mtgraft.models import build_task_model
    from mtgraft.training import BatchStream, dist_context, make_optimizer, set_trainable, train_loop

    spec = get_task(example_task_yaml())
    torch.manual_seed(0)
    model = build_task_model(model_dir, "head", [spec])
    set_trainable(model)
    dev = torch.device(device)
    model.to(dev)
    enc = encode_examples(model, spec.name, make_splits(spec, 3, 13, 8).train, 32)
    dtypes = set()
    layer = model.backbone.encoder.layer[0].attention.self.query
    layer.register_forward_hook(lambda m, i, o: dtypes.add(o.dtype) if m.training else None)
    losses = []
    dist = dist_context(device, precision)
    train_loop(model, BatchStream([enc], 6, 0), lambda: {"accuracy": 0.0}, optimizer=make_optimizer(
               model, "adamw", 1e-2, 0.0), max_steps=steps, eval_every=steps, grad_clip=1.0, device=dev,
               precision=precision, dist=dist, keep_best=False, progress=lambda s, f: losses.append(f["loss"]))
    assert all(p.dtype == torch.float32 for p in model.parameters())  # mixed precision: fp32 weights
    return losses, dtypes, dist


def test_bf16_on_the_cpu_learns(tiny_models):
    """accelerate's bf16 autocast on the CPU: the body computes in bf16 and the loss goes down."""
    import torch

    losses, dtypes, _ = _loop_losses(tiny_models["head"], "bf16")
    assert dtypes == {torch.bfloat16}
    assert all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="fp16 with gradient scaling needs CUDA")
def test_fp16_on_cuda_trains_with_gradient_scaling(tiny_models):
    import torch

    losses, dtypes, dist = _loop_losses(tiny_models["head"], "fp16", device="cuda")
    assert dtypes == {torch.float16} and dist.accelerator.scaler is not None
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses


def test_single_process_runs_on_a_fresh_accelerator_per_precision(tiny_models):
    """Runs of different precisions follow each other in one process (accelerate's state is reset per run)."""
    from mtgraft.training import dist_context

    for precision, mixed in (("bf16", "bf16"), ("fp32", "no"), ("bf16", "bf16")):
        dist = dist_context("cpu", precision)
        assert dist.accelerator.mixed_precision == mixed and not dist.active and dist.is_main
        assert dist.accelerator.scaler is None
