"""Hostile or mismatched SkillPatches (issue 13, item 5): what the bad-input rows cannot show on their own.

The rows of ``test_bad_input.py`` show the one-line messages; these tests check what stays true around them:
the base hash still means "the graftable tensors" (registry names depend on it), the context hash covers the
embeddings (and a prompt/causal model's LM head), a refused patch changes nothing, a patch from before the
context hash applies without a word, and an int64 index cannot wrap into range.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from mtgraft.errors import MtgraftError
from mtgraft.models import TaskModel, build_task_model
from mtgraft.patches import SkillPatch
from mtgraft.patches.patch import MAX_HEADER_BYTES
from mtgraft.tasks import get_task
from mtgraft.testing import example_task_yaml, make_tiny_model
from mtgraft.utils import content_hash


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_tiny_model("head", tmp_path_factory.mktemp("hostile") / "tiny", seed=5)


def _model(path: str, model_type: str = "head") -> TaskModel:
    return build_task_model(path, model_type, [get_task(example_task_yaml())])


def _patch(model: TaskModel, context: bool = True) -> SkillPatch:
    """A small patch of ``model`` (a few entries of its first graftable tensor moved by 1) with its head."""
    params = dict(model.named_parameters())
    name = model.graftable_names()[0]
    header = {"base_model": "tiny", "base_hash": model.base_hash(), "task": "example_local",
              "graftable": [(n, list(params[n].shape)) for n in model.graftable_names()],
              "model_type": model.model_type, "method": "topk"}
    if context:
        header["context_hash"] = model.context_hash()
    idx = torch.tensor([0, 3, 5])
    vals = params[name].detach().reshape(-1)[idx] + 1.0
    head = {n: params[n].detach().clone() for n in model.head_param_names()}
    return SkillPatch(header, {name: idx}, {name: vals}, head)


def test_base_hash_still_covers_only_the_graftable_tensors(tiny: str) -> None:
    m = _model(tiny)
    params = dict(m.named_parameters())
    assert m.base_hash() == content_hash((n, params[n]) for n in m.graftable_names())
    ctx = m.context_names()
    assert ctx and all(".embeddings." in n for n in ctx)  # a head model: the embeddings (the pooler is unused)
    assert not set(ctx) & set(m.graftable_names())


def test_prompt_context_includes_the_lm_head(tiny: str) -> None:
    m = _model(tiny, "prompt")
    ctx = m.context_names()
    assert any(".embeddings." in n for n in ctx) and any(n.startswith("backbone.cls.") for n in ctx)


def test_other_embeddings_are_refused_and_nothing_changes(tiny: str, tmp_path: Path) -> None:
    base = _model(tiny)
    path = _patch(base).save(tmp_path / "p.safetensors")
    other = _model(tiny)
    with torch.no_grad():
        other.backbone.get_input_embeddings().weight.add_(0.5)
    before = {n: p.detach().clone() for n, p in other.named_parameters()}
    patch = SkillPatch.load(path)
    with pytest.raises(MtgraftError, match="has the patches' body but other embeddings"):
        patch.apply_to_model(other)
    assert all(torch.equal(before[n], p) for n, p in other.named_parameters())
    assert other.base_hash() == base.base_hash()  # the body matches: only the context hash tells them apart


def test_patch_without_context_hash_applies_without_a_word(tiny: str, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    """A patch written before the context hash existed loads and applies as before: no warning, no error."""
    base = _model(tiny)
    path = _patch(base, context=False).save(tmp_path / "old.safetensors")
    other = _model(tiny)
    with torch.no_grad():
        other.backbone.get_input_embeddings().weight.add_(0.5)  # not detectable without a context hash
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        patch = SkillPatch.load(path)
        assert patch.header.context_hash is None
        patch.apply_to_model(other)
    assert not got and not capsys.readouterr().err.strip()


def test_an_int64_index_cannot_wrap_into_range() -> None:
    header = {"base_model": "m", "base_hash": "sha256:00", "task": "t", "graftable": [("w", [4, 4])],
              "model_type": "head", "method": "topk"}
    with pytest.raises(MtgraftError, match=r"index 4294967297 is out of range for 'w' of shape \(4, 4\)"):
        SkillPatch(header, {"w": torch.tensor([2**32 + 1], dtype=torch.int64)}, {"w": torch.ones(1)})


def test_non_finite_head_is_refused_on_load(tiny: str, tmp_path: Path) -> None:
    patch = _patch(_model(tiny))
    key = next(iter(patch.head))
    patch.head[key] = patch.head[key].clone()
    patch.head[key].view(-1)[0] = float("inf")
    path = patch.save(tmp_path / "inf.safetensors")
    with pytest.raises(MtgraftError, match=rf"head/{key} holds 1 non-finite value\(s\) \(NaN or inf\)"):
        SkillPatch.load(path)


def test_header_limit_leaves_room_for_real_patches() -> None:
    """A real header is ~350 bytes per graftable tensor: the limit admits models with 10,000 tensors."""
    assert MAX_HEADER_BYTES >= 10_000 * 350
