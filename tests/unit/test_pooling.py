"""What a ``head`` reads (first token, mean of the real tokens, pretrained pooler) and the training presets
(issue 12 item 1): shapes and masking, the shipped pooling config, pooling kept through checkpoints and
patches, presets filling only unset options, ``--recipe paper``, and ``train --help`` naming the preset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from mtgraft.config import TrainConfig, build_config
from mtgraft.errors import MtgraftError
from mtgraft.models import (
    CheckpointMeta,
    TaskInfo,
    build_task_model,
    collate,
    encode_examples,
    load_checkpoint,
    load_pretrained_like,
    model_inputs,
    read_checkpoint_meta,
    resolve_model_path,
    save_checkpoint,
)
from mtgraft.models.loading import shipped_pooling
from mtgraft.models.task_model import pool
from mtgraft.presets import PAPER, choose
from mtgraft.tasks import get_task, make_splits
from mtgraft.testing import example_task_yaml, make_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    return make_tiny_model("head", tmp_path_factory.mktemp("tiny") / "head", seed=3)


@pytest.fixture(scope="module")
def tiny_with_pooler(tmp_path_factory) -> str:
    """A tiny BERT encoder saved with its pooler layer (BertModel), as real encoders ship it."""
    from transformers import BertConfig, BertModel

    from mtgraft.models import load_tokenizer

    out = tmp_path_factory.mktemp("tinypool") / "enc"
    tok = load_tokenizer(resolve_model_path("minilm"))
    torch.manual_seed(5)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=256)
    BertModel(cfg, add_pooling_layer=True).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def _spec():
    return get_task(example_task_yaml())


# -- pooling ---------------------------------------------------------------------------------------------
class _Out:
    def __init__(self, h: torch.Tensor, pooled: torch.Tensor | None = None) -> None:
        self.last_hidden_state, self.pooler_output = h, pooled


def test_pool_shapes_and_mean_ignores_padding() -> None:
    h = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    assert pool(_Out(h), mask, "first").equal(h[:, 0])
    m = pool(_Out(h), mask, "mean")
    assert m.shape == (2, 3)
    assert torch.allclose(m[0], h[0].mean(0)) and torch.allclose(m[1], h[1, :2].mean(0))
    h2 = h.clone()
    h2[1, 2:] = 1e6  # whatever sits at padded positions never reaches the mean
    assert torch.allclose(pool(_Out(h2), mask, "mean"), m)
    assert pool(_Out(h, h[:, 1]), mask, "pooler").equal(h[:, 1])
    with pytest.raises(MtgraftError, match="pooler"):
        pool(_Out(h), mask, "pooler")
    with pytest.raises(MtgraftError, match="unknown pooling"):
        pool(_Out(h), mask, "max")


def test_mean_head_gives_the_same_logits_padded_or_alone(tiny) -> None:
    model = build_task_model(tiny, "head", [_spec()], pooling="mean").eval()
    ex = make_splits(_spec(), 2, 13, 8).train[:3]
    enc = encode_examples(model, "example_local", ex, 32)
    assert len({len(x) for x in enc.input_ids}) > 1, "need examples of different lengths"
    with torch.no_grad():
        batch = model_inputs(collate(enc, list(range(len(ex))), model.tokenizer.pad_token_id))
        together = model(**batch)
        for i in range(len(ex)):
            alone = model(**model_inputs(collate(enc, [i], model.tokenizer.pad_token_id)))
            assert torch.allclose(alone[0], together[i], atol=1e-5)
    assert together.shape == (3, 2)


def test_shipped_pooling_of_the_embedded_model_and_of_folders(tmp_path, tiny) -> None:
    assert shipped_pooling(resolve_model_path("minilm")) == "mean"  # its 1_Pooling/config.json
    assert shipped_pooling(tiny) is None  # no sentence-transformers config: auto means first
    assert build_task_model(tiny, "head", [_spec()], pooling="auto").tasks["example_local"].pooling == "first"
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "modules.json").write_text(json.dumps([{"path": "", "type": "x.Transformer"},
                                                       {"path": "1_Pooling", "type": "x.models.Pooling"}]))
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    assert shipped_pooling(str(tmp_path)) == "first"
    (tmp_path / "1_Pooling" / "config.json").write_text("{not json")
    assert shipped_pooling(str(tmp_path)) is None


def test_pooler_head_needs_a_pretrained_pooler(tiny, tiny_with_pooler) -> None:
    with pytest.raises(MtgraftError, match="pretrained pooler"):
        build_task_model(tiny, "head", [_spec()], pooling="pooler")  # a masked LM saved without one
    m = build_task_model(tiny_with_pooler, "head", [_spec()], pooling="pooler")
    assert not any(n.startswith("backbone.pooler.") for n in m.graftable_names())
    assert {"backbone.pooler.dense.weight", "backbone.pooler.dense.bias"} <= set(m.context_names())
    first = build_task_model(tiny_with_pooler, "head", [_spec()], pooling="first")
    assert not any("pooler" in n for n in first.context_names())  # dropped when no head reads it
    with torch.no_grad():
        enc = encode_examples(m, "example_local", make_splits(_spec(), 2, 13, 8).train[:2], 32)
        assert m.eval()(**model_inputs(collate(enc, [0, 1], m.tokenizer.pad_token_id))).shape == (2, 2)


# -- recorded and restored ---------------------------------------------------------------------------------
@pytest.mark.parametrize("pooling", ["mean", "pooler"])
def test_pooling_is_recorded_and_restored_from_a_checkpoint(tiny, tiny_with_pooler, tmp_path, pooling) -> None:
    base = tiny_with_pooler if pooling == "pooler" else tiny
    model = build_task_model(base, "head", [_spec()], pooling=pooling)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    meta = CheckpointMeta(model_type="head", tasks=list(model.tasks.values()), pretrained={"name": base})
    save_checkpoint(model, meta, tmp_path / "ck")
    assert read_checkpoint_meta(tmp_path / "ck").tasks[0].pooling == pooling
    back, meta2 = load_checkpoint(tmp_path / "ck")
    assert back.tasks["example_local"].head_input == pooling
    enc = encode_examples(model, "example_local", make_splits(_spec(), 2, 13, 8).train[:3], 32)
    batch = model_inputs(collate(enc, [0, 1, 2], model.tokenizer.pad_token_id))
    with torch.no_grad():
        assert torch.allclose(model.eval()(**batch), back.eval()(**batch), atol=1e-6)
    # the pretrained model rebuilt for grafting/eval reads the same pooling
    assert load_pretrained_like(meta2).tasks["example_local"].pooling == pooling
    # a patch header carries it in tasks_info (TaskInfo.model_dump), and apply rebuilds TaskInfo from it
    info = TaskInfo(name="example_local", **{k: v for k, v in meta2.tasks[0].model_dump().items() if k != "name"})
    assert info.pooling == pooling


def test_old_checkpoints_without_pooling_mean_first_token(tiny, tmp_path) -> None:
    model = build_task_model(tiny, "head", [_spec()], pooling="first")
    save_checkpoint(model, CheckpointMeta(model_type="head", tasks=list(model.tasks.values()),
                                          pretrained={"name": tiny}), tmp_path / "ck")
    f = tmp_path / "ck" / "mtgraft.json"
    raw = json.loads(f.read_text())
    for t in raw["tasks"]:
        t.pop("pooling")
    f.write_text(json.dumps(raw))
    back, meta = load_checkpoint(tmp_path / "ck")
    assert meta.tasks[0].pooling is None and back.tasks["example_local"].head_input == "first"
    assert load_pretrained_like(meta).tasks["example_local"].head_input == "first"


# -- presets -------------------------------------------------------------------------------------------------
def test_the_preset_fills_only_unset_options(tmp_path) -> None:
    name, settings, why = choose("minilm", "head")
    c = TrainConfig(task="rotten_tomatoes")
    assert c.preset == name == "minilm-head" and c.pooling == "mean" == settings["pooling"]
    assert {k: getattr(c, k) for k in settings} == settings
    assert c.preset_filled == sorted(settings)
    given = TrainConfig(task="rotten_tomatoes", lr=0.2, max_length=96, pooling="first")
    assert (given.lr, given.max_length, given.pooling) == (0.2, 96, "first")
    assert given.batch_size == settings["batch_size"] and "lr" not in given.preset_filled
    y = tmp_path / "t.yaml"
    y.write_text("task: rotten_tomatoes\nbatch_size: 3\n")
    fromyaml = build_config(TrainConfig, y, {"max_steps": 7})
    assert (fromyaml.batch_size, fromyaml.max_steps, fromyaml.lr) == (3, 7, settings["lr"])
    assert "mean" in why.lower() and "docs/training.md" in why


def test_recipe_paper_gives_the_papers_settings() -> None:
    c = TrainConfig(task="rotten_tomatoes", recipe="paper")
    assert (c.optimizer, c.lr, c.batch_size, c.max_steps, c.max_length, c.pooling) == \
        ("sgd", 1e-3, 2, 1000, 128, "first")  # docs/method.md §1
    assert c.preset == "paper" and {k: getattr(c, k) for k in PAPER} == PAPER
    assert TrainConfig(task="x", recipe="paper", lr=0.5).lr == 0.5


def test_models_without_a_preset_get_the_papers_settings_and_auto_pooling(tiny) -> None:
    c = TrainConfig(task="x", model=tiny)
    assert (c.lr, c.batch_size, c.max_steps, c.pooling) == (1e-3, 2, 1000, "auto")
    assert TrainConfig(task="x", model="minilm", type="prompt").preset != "minilm-head"


def test_multitask_runs_take_the_same_presets() -> None:
    from mtgraft.training.multitask import MultitaskConfig

    c = MultitaskConfig(tasks="rotten_tomatoes,movie_polarity")
    assert c.preset == "minilm-head" and c.pooling == "mean" and c.lr == choose("minilm", "head")[1]["lr"]
    assert MultitaskConfig(tasks="a,b", recipe="paper").lr == 1e-3


@pytest.mark.parametrize("command", ["train", "train-multitask"])
def test_help_names_the_preset_in_force_and_why(command) -> None:
    from mtgraft.cli import app as appmod

    appmod._register()
    res = CliRunner().invoke(appmod.app, [command, "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0
    text = " ".join(res.output.split())
    for s in ("--recipe", "minilm-head", "mean pooling", "--pooling", "paper", "docs/method.md §1"):
        assert s in text, s
    assert Path(resolve_model_path("minilm"), "1_Pooling", "config.json").is_file()
