"""Grafting on tiny random models: base patch, gradient, determinism, patch application, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtgraft.errors import MtgraftError
from mtgraft.grafting import GraftConfig, run_graft
from mtgraft.grafting.methods import SelectContext, get_method, grad_S_closed_form, grad_S_reference
from mtgraft.grafting.space import GraftSpace, budget_k, topk_indices
from mtgraft.models import build_task_model, collate, encode_examples, load_checkpoint
from mtgraft.patches import SkillPatch
from mtgraft.tasks import get_task, make_splits
from mtgraft.testing import example_task_yaml, make_tiny_checkpoint, make_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("graft")
    pre = make_tiny_model("head", d / "pre", seed=1)
    ck = make_tiny_checkpoint(d / "ft", pre, example_task_yaml(), seed=2)
    return {"pre": pre, "ft": ck, "dir": d}


def _space(tiny):
    ft, meta = load_checkpoint(tiny["ft"])
    pre = build_task_model(tiny["pre"], "head", meta.tasks)
    return GraftSpace.build(ft, pre, torch.device("cpu")), meta


def test_base_patch_is_exact_global_topk(tiny):
    space, _ = _space(tiny)
    for s in (1e-3, 1e-2, 0.1):
        k = budget_k(s, space.numel)
        idx = topk_indices(space.delta.abs(), k).numpy()
        assert len(idx) == k == round(s * space.numel)
        assert np.all(np.diff(idx) > 0)
        mags = space.delta.abs().numpy()
        # global, not per tensor: every chosen entry is at least as large as every unchosen one
        chosen = np.zeros(space.numel, bool)
        chosen[idx] = True
        assert mags[chosen].min() >= mags[~chosen].max()
        sel = get_method("topk").select(SelectContext(space, k))
        assert torch.equal(sel.indices, torch.from_numpy(idx))


def test_gradient_on_S_matches_autograd(tiny):
    space, meta = _space(tiny)
    spec = get_task(example_task_yaml())
    splits = make_splits(spec, 2, 13, None)
    enc = encode_examples(space.model, spec.name, splits.train, 32)
    batch = collate(enc, range(len(enc)), space.model.tokenizer.pad_token_id)
    k = budget_k(0.01, space.numel)
    base = torch.zeros(space.numel)
    base[topk_indices(space.delta.abs(), k)] = 1.0
    S = torch.rand(space.numel, generator=torch.Generator().manual_seed(0)) * 12  # some entries near/after b
    cand = torch.arange(space.numel)
    ours = grad_S_closed_form(space, S, cand, base, 10.0, [batch])
    ref = grad_S_reference(space, S, base, 10.0, batch)
    assert ref.abs().max() > 0
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-12)


def _graft(tiny, out, **kw):
    cfg = GraftConfig(task=example_task_yaml(), finetuned=tiny["ft"], sparsity=[0.01], out=str(out), track=False,
                      do_register=False, updates=3, **kw)
    return run_graft(cfg, show_progress=False)[0]


@pytest.mark.parametrize("n,k,chunk", [(1000, 1, 64), (1000, 999, 64), (10007, 123, 1000), (5000, 4000, 333),
                                         (300, 7, 1024)])
def test_kth_largest_chunk_by_chunk_is_exact(n, k, chunk):
    """The chunked k-th largest value equals torch.topk's over the whole vector (many ties: integer values)."""
    from mtgraft.grafting.space import kth_largest

    s = torch.randint(0, 50, (n,), generator=torch.Generator().manual_seed(n + k)).float()
    assert kth_largest(s, k, chunk=chunk) == torch.topk(s, k).values.min()


def test_candidate_gradient_equals_the_full_leaf_gradient_bit_for_bit(tiny):
    """GraftSpace.loss_and_grad (per-tensor, no full-size gradient) gives exactly theta.grad[cand] of a full
    leaf theta = theta_pre.index_add(cand, values) over several batches, and the same loss; the working model's
    body holds theta_pre as views (no copy of its own)."""
    space, _ = _space(tiny)
    spec = get_task(example_task_yaml())
    enc = encode_examples(space.model, spec.name, make_splits(spec, 2, 13, None).train, 32)
    batches = space.batches(enc, 2)
    assert len(batches) >= 2
    gen = torch.Generator().manual_seed(5)
    cand = torch.sort(torch.randperm(space.numel, generator=gen)[: space.numel // 7]).values
    values = torch.randn(cand.numel(), generator=gen) * 0.01
    theta = space.pre.index_add(0, cand, values).requires_grad_(True)
    want_loss = 0.0
    for b in batches:
        loss = torch.nn.functional.cross_entropy(space.forward(theta, b).float(), b["labels"]) / len(batches)
        loss.backward()
        want_loss += float(loss.detach())
    got_loss, g = space.loss_and_grad(cand, values, batches)
    assert torch.equal(g, theta.grad[cand]) and got_loss == want_loss
    assert bool(g.abs().sum() > 0)
    body = dict(space.model.named_parameters())[space.names[0]]
    assert body.data_ptr() == space.pre.data_ptr()


def test_same_seed_same_patch_bit_for_bit(tiny):
    a = _graft(tiny, tiny["dir"] / "g1", method=["graft"])
    b = _graft(tiny, tiny["dir"] / "g2", method=["graft"])
    pa, pb = SkillPatch.load(a.results[0]["patch"]), SkillPatch.load(b.results[0]["patch"])
    assert pa.region_size == budget_k(0.01, a.graftable_size)
    assert pa.header.payload_hash == pb.header.payload_hash
    for n in pa.indices:
        assert torch.equal(pa.indices[n], pb.indices[n])
        assert torch.equal(pa.values[n].view(torch.int32), pb.values[n].view(torch.int32))
    assert a.results[0]["test"] == b.results[0]["test"]


def test_paper_recipe_reports_real_region_size(tiny):
    r = _graft(tiny, tiny["dir"] / "g3", method=["graft"], recipe="paper", lr=1e9)
    patch = SkillPatch.load(r.results[0]["patch"])
    assert r.results[0]["region_size"] == patch.region_size  # the real size, which may differ from k
    assert r.results[0]["k"] == budget_k(0.01, r.graftable_size)


def test_applying_patch_reproduces_grafted_logits(tiny):
    r = _graft(tiny, tiny["dir"] / "g4", method=["graft"])
    patch = SkillPatch.load(r.results[0]["patch"])
    space, meta = _space(tiny)
    theta = space.theta_from_indices(torch.from_numpy(patch.flat_indices()))
    spec = get_task(example_task_yaml())
    enc = encode_examples(space.model, spec.name, make_splits(spec, 2, 13, None).test, 32)
    batch = collate(enc, range(len(enc)), space.model.tokenizer.pad_token_id)
    with torch.no_grad():
        expected = space.forward(theta, batch)
    model = build_task_model(tiny["pre"], "head", meta.tasks)
    patch.apply_to_model(model, model.base_hash())
    model.eval()
    with torch.no_grad():
        got = model(**{k: v for k, v in batch.items() if k != "labels"})
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_all_four_methods_same_size(tiny):
    r = _graft(tiny, tiny["dir"] / "g5")
    sizes = {x["method"]: x["region_size"] for x in r.results}
    k = budget_k(0.01, r.graftable_size)
    assert sizes["graft"] == sizes["topk"] == sizes["random"] == k
    assert sizes["bias-only"] <= k
    for x in r.results:
        assert {"accuracy", "ece", "rel", "brier", "agreement", "macro_f1"} <= set(x["test"])


@pytest.mark.parametrize("s", [0.0, -1e-3, 1.5])
def test_sparsity_outside_range_is_an_error(s):
    with pytest.raises(MtgraftError, match=r"sparsity must be in \(0, 1\]"):
        budget_k(s, 1000)


def test_empty_region_is_an_error():
    with pytest.raises(MtgraftError, match="k = 0"):
        budget_k(1e-6, 1000)


def test_saliency_attributes_the_loss_change(tiny):
    """Integrated gradients: the per-entry scores add up to L(theta_pre) - L(theta_ft) (completeness)."""
    from mtgraft.grafting.methods import task_saliency

    space, _ = _space(tiny)
    spec = get_task(example_task_yaml())
    enc = encode_examples(space.model, spec.name, make_splits(spec, 3, 13, None).train, 32)
    batches = space.batches(enc, 8)

    def loss(theta):
        with torch.no_grad():
            return sum(float(torch.nn.functional.cross_entropy(space.forward(theta, b).float(), b["labels"]))
                       for b in batches) / len(batches)

    gap = loss(space.pre) - loss(space.pre + space.delta)
    sal = task_saliency(space, enc, steps=32)
    assert abs(gap) > 1e-3
    assert float(sal.sum()) == pytest.approx(gap, rel=0.05, abs=1e-4)
    k = budget_k(0.01, space.numel)
    sel = get_method("saliency").select(SelectContext(space, k, enc, settings={"saliency_steps": 4}))
    assert torch.equal(sel.indices, topk_indices(task_saliency(space, enc, steps=4), k))


def test_init_saliency_changes_the_base_patch(tiny):
    mv = _graft(tiny, tiny["dir"] / "init-mv", method=["graft"], init="movement")
    sa = _graft(tiny, tiny["dir"] / "init-sa", method=["graft"], init="saliency")
    a = SkillPatch.load(mv.results[0]["patch"])
    b = SkillPatch.load(sa.results[0]["patch"])
    assert a.header.method_settings["init"] == "movement" and b.header.method_settings["init"] == "saliency"
    ia, ib = set(a.flat_indices().tolist()), set(b.flat_indices().tolist())
    assert len(ia) == len(ib) and ia != ib


def test_recipes_resolve_with_explicit_options_on_top():
    th = GraftConfig(finetuned="x", recipe="thorough").learn_settings()
    assert th["budget"] == "strict" and th["candidates"] == 100 and th["patience"] is None
    assert GraftConfig(finetuned="x", recipe="thorough", updates=3).learn_settings()["updates"] == 3
    assert GraftConfig(finetuned="x", recipe="paper").learn_settings()["init"] == "movement"
    with pytest.raises(ValueError):
        GraftConfig(finetuned="x", recipe="slow")
