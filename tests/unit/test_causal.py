"""The paper's autoregressive regime on a tiny random Llama: prompts, padding, what trains (docs/method.md §1)."""

from __future__ import annotations

import torch

from mtgraft.models import build_task_model, collate, encode_examples
from mtgraft.models.encoding import causal_prompt
from mtgraft.models.task_model import TaskInfo
from mtgraft.tasks import Example
from mtgraft.testing import make_tiny_model
from mtgraft.training import set_trainable


def test_causal_prompt_stops_before_the_label():
    assert causal_prompt("{x} It was {mask} .") == "{x} It was"
    assert causal_prompt("{x} This is {mask} .") == "{x} This is"
    # label-first templates leave nothing to continue: the text, then " Answer:"
    assert causal_prompt("{mask} : {x}") == "{x} Answer:"
    assert causal_prompt("{x1} ? {mask} , {x2}") == "{x1} ?"


def _model(tmp_path):
    path = make_tiny_model("causal", tmp_path / "llama", seed=1)
    info = TaskInfo(name="t", labels=["neg", "pos"], label_words=["terrible", "great"],
                    template="{x} It was {mask} .")
    topic = TaskInfo(name="u", labels=["a", "b"], label_words=["sports", "music"], template="{mask} : {x}")
    return build_task_model(path, "causal", [info, topic])


def test_right_padding_gives_each_example_its_unpadded_logits(tmp_path):
    model = _model(tmp_path).eval()
    texts = ["a fine film", "dull , long and badly acted from start to the very end", "ok"]
    enc = encode_examples(model, "t", [Example(text=t, text_b=None, label=i % 2) for i, t in enumerate(texts)], 64)
    pad = model.tokenizer.pad_token_id
    with torch.no_grad():
        batch = collate(enc, range(3), pad)
        assert batch["attention_mask"][:, 0].all()  # padded on the right
        together = model(**{k: v for k, v in batch.items() if k != "labels"})
        for i in range(3):
            one = collate(enc, [i], pad)
            alone = model(**{k: v for k, v in one.items() if k != "labels"})
            torch.testing.assert_close(together[i], alone[0], rtol=1e-5, atol=1e-5)
    # the prompt ends right before the label word: the last token is "was"
    last = model.tokenizer.decode([enc.input_ids[0][enc.positions[0]]]).strip()
    assert last == "was"
    enc_u = encode_examples(model, "u", [Example(text="the match", text_b=None, label=0)], 64)
    assert model.tokenizer.decode(enc_u.input_ids[0]).replace(" ", "").endswith("thematchanswer:")


def test_embeddings_and_the_tied_lm_head_stay_frozen(tmp_path):
    model = _model(tmp_path)
    trainable = set(set_trainable(model))
    emb = model.backbone.get_input_embeddings().weight
    assert not emb.requires_grad and not model.backbone.get_output_embeddings().weight.requires_grad
    assert trainable == set(model.graftable_names())
    assert not any("embed" in n or "lm_head" in n for n in trainable)
