"""Issue 15's localisation methods on tiny random models: Fisher and gradient×movement scores (and saliency on a
single-task checkpoint), as methods and as --init; graft-ste and stitch-l1 (exact budget, determinism, an
update lowers the relaxed objective); graft-rescaled (alpha through the SkillPatch header and apply)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtgraft.errors import MtgraftError
from mtgraft.grafting import GraftConfig, run_graft
from mtgraft.grafting.catalog import METHODS
from mtgraft.grafting.methods import (
    MaskAdam,
    SelectContext,
    get_method,
    ste_objective_and_grad,
    stitch_objective_and_grad,
    task_gradients,
)
from mtgraft.grafting.space import GraftSpace, budget_k, topk_indices
from mtgraft.models import build_task_model, collate, encode_examples, load_checkpoint
from mtgraft.patches import SkillPatch, apply_patches, stitch
from mtgraft.tasks import get_task, make_splits
from mtgraft.testing import example_task_yaml, make_tiny_checkpoint, make_tiny_model

NEW = ["fisher", "grad-movement", "saliency", "graft-ste", "stitch-l1", "graft-rescaled"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("localize")
    pre = make_tiny_model("head", d / "pre", seed=1)
    ck = make_tiny_checkpoint(d / "ft", pre, example_task_yaml(), seed=2)
    return {"pre": pre, "ft": ck, "dir": d}


def _space(tiny) -> tuple[GraftSpace, object]:
    ft, meta = load_checkpoint(tiny["ft"])
    pre = build_task_model(tiny["pre"], "head", meta.tasks)
    return GraftSpace.build(ft, pre, torch.device("cpu")), meta


def _train(space: GraftSpace, k: int = 3):
    spec = get_task(example_task_yaml())
    splits = make_splits(spec, k, 13, None)
    return (encode_examples(space.model, spec.name, splits.train, 32),
            encode_examples(space.model, spec.name, splits.dev, 32))


def _ctx(space, k, train, dev, name, seed=0, **opts):
    settings = METHODS[name].settings({"updates": 4, "examples_per_update": 1024, "batch_size": 8,
                                       "candidates": 10, "patience": None, "init": "movement"}, opts)
    return SelectContext(space, k, train, dev, settings, seed)


def _loss(space, theta, batches) -> float:
    with torch.no_grad():
        return sum(float(torch.nn.functional.cross_entropy(space.forward(theta, b).float(), b["labels"]))
                   for b in batches) / len(batches)


# ------------------------------------------------------------------------------------ every new method


@pytest.mark.parametrize("name", NEW)
def test_exact_budget_and_same_seed_same_region(tiny, name):
    space, _ = _space(tiny)
    train, dev = _train(space)
    k = budget_k(0.01, space.numel)
    a = get_method(name).select(_ctx(space, k, train, dev, name, seed=5))
    space.cache.clear()  # recomputed from scratch, not read back
    b = get_method(name).select(_ctx(space, k, train, dev, name, seed=5))
    assert a.indices.numel() == k
    assert torch.equal(torch.unique(a.indices), a.indices)  # sorted, no repeats
    assert torch.equal(a.indices, b.indices) and a.scale == b.scale
    for h in a.info.get("history", []):  # the learners' region is exactly k at every update
        assert h["size"] == k


def test_new_methods_through_run_graft_on_a_single_task_checkpoint(tiny):
    """Every new method runs in ``mtgraft graft`` on a single-task checkpoint (saliency included), at exactly k,
    and records its own settings in its SkillPatch header."""
    cfg = GraftConfig(task=example_task_yaml(), finetuned=tiny["ft"], sparsity=[0.01], out=str(tiny["dir"] / "all"),
                      track=False, do_register=False, updates=2, method=["topk", *NEW], save_baselines=True,
                      method_options={"graft-ste": {"lr": 0.3}})
    r = run_graft(cfg, show_progress=False)[0]
    k = budget_k(0.01, r.graftable_size)
    by = {x["method"]: x for x in r.results}
    assert {x["region_size"] for x in r.results} == {k}
    for name in NEW:
        h = SkillPatch.load(by[name]["patch"]).header
        assert h.method == name and h.region_size == k
        assert h.method_settings == cfg.method_settings(name, {**cfg.learn_settings(), "init": "movement"})
    assert SkillPatch.load(by["graft-ste"]["patch"]).header.method_settings["lr"] == 0.3
    assert SkillPatch.load(by["saliency"]["patch"]).header.method_settings == {"saliency_steps": 4}
    # learned ones are compared with top-k at equal size (paired bootstrap)
    pairs = {(c["a"], c["b"]) for c in r.extra["comparisons"]}
    assert {("graft-ste", "topk"), ("stitch-l1", "topk"), ("graft-rescaled", "topk")} <= pairs


# ------------------------------------------------------------------------------------ scores


def test_fisher_and_gradient_scores_match_a_per_example_loop(tiny):
    space, _ = _space(tiny)
    train, _ = _train(space)
    grad, fisher = task_gradients(space, train)
    pad = space.model.tokenizer.pad_token_id
    gs = []
    for i in range(len(train)):
        theta = (space.pre + space.delta).requires_grad_(True)
        b = collate(train, [i], pad)
        torch.nn.functional.cross_entropy(space.forward(theta, b).float(), b["labels"]).backward()
        gs.append(theta.grad.detach())
    g = torch.stack(gs)
    torch.testing.assert_close(grad, g.mean(0), rtol=1e-4, atol=1e-10)
    torch.testing.assert_close(fisher, (g * g).mean(0), rtol=1e-4, atol=1e-14)
    k = budget_k(0.01, space.numel)
    sel = get_method("fisher").select(_ctx(space, k, train, None, "fisher"))
    assert torch.equal(sel.indices, topk_indices(space.delta ** 2 * (g * g).mean(0), k, space.delta.abs()))
    sel = get_method("grad-movement").select(_ctx(space, k, train, None, "grad-movement"))
    assert torch.equal(sel.indices, topk_indices((space.delta * g.mean(0)).abs(), k, space.delta.abs()))


@pytest.mark.parametrize("init", ["fisher", "grad-movement", "saliency"])
def test_new_scores_as_init_pick_the_base_patch(tiny, init):
    """--init X: the learned graft's update 0 (the base patch) is the method X's own region."""
    space, _ = _space(tiny)
    train, dev = _train(space)
    k = budget_k(0.01, space.numel)
    own = get_method(init).select(_ctx(space, k, train, dev, init))
    for learner in ("graft-ste", "stitch-l1", "graft"):
        settings = METHODS[learner].settings({"updates": 0, "examples_per_update": 64, "batch_size": 8,
                                              "candidates": 10, "patience": None, "init": init, "lr": 1e8,
                                              "sigmoid_bias": 10.0, "budget": "strict", "step_rule": "gd"})
        sel = get_method(learner).select(SelectContext(space, k, train, dev, settings, 0))
        assert torch.equal(sel.indices, own.indices), learner
    assert GraftConfig(finetuned="x", init=init).learn_settings()["init"] == init
    with pytest.raises(ValueError):
        GraftConfig(finetuned="x", init="magic")


# ------------------------------------------------------------------------------------ learners


def test_stitch_l1_update_lowers_the_relaxed_objective(tiny):
    """One Adam step (small lr) on J(S) = L(theta_pre + sigmoid(S)·delta) + l1·sum sigmoid(S)/k lowers J, and the
    closed-form gradient is autograd's."""
    space, _ = _space(tiny)
    train, _ = _train(space)
    batches = space.batches(train, 4)
    k = budget_k(0.01, space.numel)
    cand = topk_indices(space.delta.abs(), 10 * k)
    base = torch.zeros(cand.numel())
    base[:k] = 0  # positions of the base patch inside cand: the top k |delta| among them
    base[topk_indices(space.delta[cand].abs(), k)] = 1.0
    S = 3.0 * (2 * base - 1)
    j0, g = stitch_objective_and_grad(space, S, cand, k, 0.05, batches)

    Sa = S.clone().requires_grad_(True)
    theta = space.pre.index_add(0, cand, torch.sigmoid(Sa) * space.delta[cand])
    ja = sum(torch.nn.functional.cross_entropy(space.forward(theta, b).float(), b["labels"]) for b in batches)
    ja = ja / len(batches) + 0.05 * torch.sigmoid(Sa).sum() / k
    ja.backward()
    assert float(ja.detach()) == pytest.approx(j0, rel=1e-5)
    torch.testing.assert_close(g, Sa.grad, rtol=1e-3, atol=1e-4 * float(g.abs().max()))

    for normalise in ("global", "coordinate"):
        S1 = MaskAdam(S, 1e-2, normalise).step(S, g)
        j1, _ = stitch_objective_and_grad(space, S1, cand, k, 0.05, batches)
        assert j1 < j0, normalise


def test_graft_ste_gradient_is_straight_through_and_updates_lower_the_hard_loss(tiny):
    """graft-ste's forward is the hard top-k region (its loss is the objective); its gradient is autograd's
    through hard + sigmoid((S − tau)/T) − stop_grad(same). There is no smooth objective to descend, so the test
    of its updates is that they find a region of exactly k entries whose training loss is below the base
    patch's on this tiny model."""
    space, _ = _space(tiny)
    train, dev = _train(space)
    batches = space.batches(train, 8)
    k = budget_k(0.01, space.numel)
    cand = topk_indices(space.delta.abs(), 10 * k)
    base = torch.zeros(cand.numel())
    base[topk_indices(space.delta[cand].abs(), k)] = 1.0
    S = 1.0 * (2 * base - 1) + 0.01 * torch.rand(cand.numel(), generator=torch.Generator().manual_seed(0))
    loss, g = ste_objective_and_grad(space, S, cand, k, 0.5, batches)

    Sa = S.clone().requires_grad_(True)
    pos = topk_indices(S, k, space.delta[cand].abs())
    hard = torch.zeros_like(S)
    hard[pos] = 1.0
    tau = 0.5 * (float(S[pos].min()) + float(S[base == 0].max()))
    soft = torch.sigmoid((Sa - tau) / 0.5)
    theta = space.pre.index_add(0, cand, (hard + soft - soft.detach()) * space.delta[cand])
    la = sum(torch.nn.functional.cross_entropy(space.forward(theta, b).float(), b["labels"]) for b in batches)
    (la / len(batches)).backward()
    assert float(la.detach()) / len(batches) == pytest.approx(loss, rel=1e-5)
    assert loss == pytest.approx(_loss(space, space.theta_from_indices(cand[pos]), batches), rel=1e-5)
    torch.testing.assert_close(g, Sa.grad, rtol=1e-3, atol=1e-4 * float(g.abs().max()))

    ctx = _ctx(space, k, train, dev, "graft-ste", updates=8, lr=0.5)
    ctx.settings["updates"] = 8
    sel = get_method("graft-ste").select(ctx)
    hist = sel.info["history"]
    assert [h["size"] for h in hist] == [k] * 9
    assert min(h["objective"] for h in hist[1:]) < hist[1]["objective"]  # the hard objective went down
    base_idx = topk_indices(space.delta.abs(), k)
    assert not torch.equal(sel.indices, base_idx)  # it moved
    assert _loss(space, space.theta_from_indices(sel.indices), batches) < _loss(
        space, space.theta_from_indices(base_idx), batches)


def test_method_options_parse_and_unknown_keys_are_refused():
    cfg = GraftConfig(finetuned="x", method_options=["graft-ste.lr=0.2", "graft-rescaled.alphas=[1, 2]"])
    assert cfg.method_options == {"graft-ste": {"lr": 0.2}, "graft-rescaled": {"alphas": [1, 2]}}
    assert cfg.method_settings("graft-ste")["lr"] == 0.2
    assert cfg.method_settings("graft-ste")["updates"] == 10  # from the recipe
    with pytest.raises(ValueError, match="has no setting 'lrr'"):
        GraftConfig(finetuned="x", method_options={"graft-ste": {"lrr": 1}})
    with pytest.raises(ValueError, match="unknown method"):
        GraftConfig(finetuned="x", method_options=["nope.lr=1"])
    # the paper graft's settings stay exactly the recipe's
    assert GraftConfig(finetuned="x").method_settings("graft") == GraftConfig(finetuned="x").learn_settings()


# ------------------------------------------------------------------------------------ graft-rescaled


def test_rescaled_alpha_goes_through_the_header_and_apply(tiny, tmp_path):
    cfg = GraftConfig(task=example_task_yaml(), finetuned=tiny["ft"], sparsity=[0.01], out=str(tmp_path / "g"),
                      track=False, do_register=False, method=["graft-rescaled"],
                      method_options={"graft-rescaled": {"alphas": [3.0]}})  # alpha forced: the test of apply
    r = run_graft(cfg, show_progress=False)[0]
    entry = r.results[0]
    assert entry["scale"] == 3.0
    patch = SkillPatch.load(entry["patch"])
    assert patch.header.scale == 3.0 and patch.header.format_version == 2
    space, meta = _space(tiny)
    idx = torch.from_numpy(patch.flat_indices())
    # the file stores the fine-tuned values; alpha is applied on top
    torch.testing.assert_close(patch.flat_values(), (space.pre + space.delta)[idx])
    spec = get_task(example_task_yaml())
    enc = encode_examples(space.model, spec.name, make_splits(spec, 2, 13, None).test, 32)
    batch = collate(enc, range(len(enc)), space.model.tokenizer.pad_token_id)
    with torch.no_grad():
        expected = space.forward(space.theta_from_indices(idx, 3.0), batch)
        unscaled = space.forward(space.theta_from_indices(idx), batch)
    assert not torch.allclose(expected, unscaled)
    model = build_task_model(tiny["pre"], "head", meta.tasks)
    patch.apply_to_model(model)
    model.eval()
    with torch.no_grad():
        got = model(**{k: v for k, v in batch.items() if k != "labels"})
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    # patch apply / masks apply (apply_patches) writes the same parameters into a checkpoint
    apply_patches([patch], tiny["pre"], tmp_path / "applied")
    applied, _ = load_checkpoint(tmp_path / "applied")
    params = dict(applied.named_parameters())
    flat = torch.cat([params[n].detach().reshape(-1) for n in applied.graftable_names()])
    torch.testing.assert_close(flat, space.theta_from_indices(idx, 3.0), rtol=0, atol=1e-6)


def test_rescaled_alpha_is_chosen_on_train_and_dev(tiny):
    space, _ = _space(tiny)
    train, dev = _train(space)
    k = budget_k(0.01, space.numel)
    sel = get_method("graft-rescaled").select(_ctx(space, k, train, dev, "graft-rescaled", alphas=[1.0, 2.0, 4.0]))
    rows = sel.info["alphas"]
    assert [r["alpha"] for r in rows] == [1.0, 2.0, 4.0]
    best = max(rows, key=lambda r: (r["score"], -r["loss"]))
    assert sel.scale == best["alpha"] == sel.info["scale"]
    assert torch.equal(sel.indices, topk_indices(space.delta.abs(), k))


def test_old_patches_without_alpha_load_and_apply_unchanged(tiny, tmp_path):
    r = run_graft(GraftConfig(task=example_task_yaml(), finetuned=tiny["ft"], sparsity=[0.01], out=str(tmp_path / "t"),
                              track=False, do_register=False, method=["topk"], save_baselines=True),
                  show_progress=False)[0]
    p = SkillPatch.load(r.results[0]["patch"])
    assert p.header.scale is None and p.header.format_version == 1
    assert "scale" not in p.header.to_json_dict() or p.header.to_json_dict()["scale"] is None
    space, meta = _space(tiny)
    model = build_task_model(tiny["pre"], "head", meta.tasks)
    p.apply_to_model(model)
    params = dict(model.named_parameters())
    flat = torch.cat([params[n].detach().reshape(-1) for n in model.graftable_names()])
    assert torch.equal(flat, space.theta_from_indices(torch.from_numpy(p.flat_indices())))
    # alpha = 1 is no rescaling: the header keeps none and the file stays version 1
    from mtgraft.patches import make_header

    assert make_header(p.header, scale=1.0).scale is None
    assert make_header(p.header, scale=1.0).format_version == 1


def test_stitching_refuses_different_alphas(tiny):
    space, meta = _space(tiny)
    k = budget_k(0.01, space.numel)
    hdr = {"base_model": tiny["pre"], "base_hash": space.base_hash, "graftable": space.graftable_list(),
           "task": "t", "model_type": "head", "method": "graft-rescaled"}
    idx = np.sort(topk_indices(space.delta.abs(), k).numpy())
    vals = (space.pre + space.delta)[torch.from_numpy(idx)]
    a = SkillPatch.from_flat_values(idx, vals, {}, {**hdr, "scale": 2.0})
    b = SkillPatch.from_flat_values(idx, vals, {}, {**hdr, "scale": 3.0})
    with pytest.raises(MtgraftError, match="different alphas"):
        stitch([a, b])
    same, _ = stitch([a, a], "average")
    assert same.header.scale == 2.0
    bad = dict(a.header.to_json_dict(), scale=float("inf"))
    from mtgraft.patches import make_header

    with pytest.raises(MtgraftError, match="finite"):
        make_header(bad)
