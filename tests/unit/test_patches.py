"""SkillPatch: file format, apply, errors, set algebra and stitching on tiny tensors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from mtgraft.errors import MtgraftError
from mtgraft.patches import (
    FORMAT_VERSION,
    HEADER_KEY,
    PatchHeader,
    SkillPatch,
    containment,
    difference,
    file_stats,
    intersection,
    intersection_size,
    jaccard,
    sha256,
    stitch,
    union,
)
from mtgraft.utils import content_hash


class Tiny(nn.Module):
    """A tiny 'task model': embeddings (not graftable), a body (graftable), a task head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 6)
        self.backbone = nn.Sequential(nn.Linear(6, 7), nn.LayerNorm(7), nn.Linear(7, 5))
        self.heads = nn.ModuleDict({"rt": nn.Linear(5, 2)})


def graftable(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_parameters() if n.startswith("backbone.")]


@pytest.fixture()
def pair() -> tuple[Tiny, Tiny]:
    torch.manual_seed(0)
    base = Tiny()
    ft = Tiny()
    ft.load_state_dict(base.state_dict())
    with torch.no_grad():
        for p in ft.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return base, ft


def header_for(base: nn.Module, task: str = "rt", **kw) -> dict:
    params = dict(base.named_parameters())
    names = graftable(base)
    return {
        "base_model": "tiny", "base_hash": content_hash((n, params[n]) for n in names),
        "graftable": [(n, list(params[n].shape)) for n in names], "task": task, "model_type": "head",
        "method": "graft", "method_settings": {"lr": 1e7}, "seed": 1, **kw,
    }


def random_masks(model: nn.Module, p: float, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    return {n: torch.rand(params[n].shape, generator=g) < p for n in graftable(model)}


def make_patch(base: nn.Module, ft: nn.Module, masks: dict, task: str = "rt", **kw) -> SkillPatch:
    fp = dict(ft.named_parameters())
    head = {n: t for n, t in fp.items() if n.startswith(f"heads.{task}.")}
    return SkillPatch.from_masks(masks, fp, head, header_for(base, task, **kw))


# ------------------------------------------------------------------ construction, file round trip


def test_from_masks_fills_header_and_indices(pair):
    base, ft = pair
    masks = random_masks(base, 0.3, 1)
    p = make_patch(base, ft, masks)
    total = sum(m.numel() for m in masks.values())
    region = sum(int(m.sum()) for m in masks.values())
    assert p.region_size == region == p.header.region_size
    assert p.header.graftable_size == total
    assert p.header.sparsity == pytest.approx(region / total)
    assert p.header.head_params == 5 * 2 + 2
    assert p.header.values_dtype == "float32"
    fp = dict(ft.named_parameters())
    for n, idx in p.indices.items():
        assert idx.dtype == torch.int32
        assert torch.equal(idx.long(), torch.nonzero(masks[n].reshape(-1)).reshape(-1))
        assert torch.equal(p.values[n], fp[n].detach().reshape(-1)[idx.long()])
    # masks() gives them back
    for n, m in p.masks().items():
        assert torch.equal(m, masks[n])


def test_roundtrip_bit_exact(pair, tmp_path):
    base, ft = pair
    p = make_patch(base, ft, random_masks(base, 0.4, 2), metrics={"acc": 0.81}, data={"k": 64, "seed": 13})
    out = p.save(tmp_path / "p.safetensors")
    assert out.is_file() and not list(tmp_path.glob(".*tmp*"))
    q = SkillPatch.load(out)
    assert list(q.indices) == list(p.indices)
    for n in p.indices:
        assert torch.equal(q.indices[n], p.indices[n]) and q.indices[n].dtype == torch.int32
        assert torch.equal(q.values[n], p.values[n]) and q.values[n].dtype == p.values[n].dtype
    assert set(q.head) == set(p.head) and all(torch.equal(q.head[k], p.head[k]) for k in p.head)
    assert q.header.to_json_dict() == p.header.to_json_dict()
    assert q.header.metrics == {"acc": 0.81} and q.header.graftable == p.header.graftable
    assert len(sha256(out)) == 64


def test_roundtrip_bf16_values(tmp_path):
    t = {"w": torch.randn(30, dtype=torch.bfloat16)}
    hdr = {"base_model": "x", "base_hash": "sha256:00", "graftable": [("w", [30])], "task": "a",
           "model_type": "prompt", "method": "topk"}
    p = SkillPatch.from_masks({"w": torch.arange(30) % 3 == 0}, t, {}, hdr)
    q = SkillPatch.load(p.save(tmp_path / "b.safetensors"))
    assert q.header.values_dtype == "bfloat16" and q.values["w"].dtype == torch.bfloat16
    assert torch.equal(q.values["w"], t["w"][::3])


def test_bytes_per_grafted_param_at_most_12(tmp_path):
    torch.manual_seed(0)
    w = torch.randn(100, 100)
    mask = torch.zeros(10_000, dtype=torch.bool)
    mask[torch.randperm(10_000)[:5_000]] = True
    hdr = {"base_model": "x", "base_hash": "sha256:00", "graftable": [("w", [100, 100])], "task": "a",
           "model_type": "head", "method": "graft"}
    p = SkillPatch.from_masks({"w": mask.reshape(100, 100)}, {"w": w}, {"heads.a.weight": torch.randn(2, 100)}, hdr)
    path = p.save(tmp_path / "p.safetensors")
    size = path.stat().st_size
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
    per_param = (size - 8 - header_len) / p.region_size
    assert p.region_size == 5_000
    assert per_param <= 12, per_param
    stats = file_stats(path)
    assert stats["bytes_per_grafted_param"] == pytest.approx(8.0)  # int32 index + fp32 value
    assert stats["head_bytes"] == 2 * 100 * 4


def test_from_flat_indices_matches_masks(pair):
    base, ft = pair
    masks = random_masks(base, 0.25, 3)
    p = make_patch(base, ft, masks)
    flat = np.flatnonzero(torch.cat([masks[n].reshape(-1) for n in graftable(base)]).numpy())
    assert p.flat_indices().dtype == np.int64
    np.testing.assert_array_equal(p.flat_indices(), flat)
    fp = dict(ft.named_parameters())
    q = SkillPatch.from_flat_indices(flat[::-1].copy(), fp, p.head, header_for(base))
    np.testing.assert_array_equal(q.flat_indices(), flat)
    assert torch.equal(q.flat_values(), p.flat_values())


def test_empty_region_is_allowed(pair, tmp_path):
    base, ft = pair
    masks = {n: torch.zeros_like(m) for n, m in random_masks(base, 0.5, 0).items()}
    p = make_patch(base, ft, masks)
    assert p.region_size == 0 and p.indices == {} and p.flat_indices().size == 0
    q = SkillPatch.load(p.save(tmp_path / "e.safetensors"))
    assert q.region_size == 0 and q.header.sparsity == 0.0


# ------------------------------------------------------------------ apply


def test_apply_to_model_reproduces_graft(pair):
    base, ft = pair
    masks = random_masks(base, 0.3, 4)
    p = make_patch(base, ft, masks)
    bp = {n: t.detach().clone() for n, t in base.named_parameters()}
    fp = {n: t.detach().clone() for n, t in ft.named_parameters()}
    target = Tiny()
    target.load_state_dict(base.state_dict())
    p.apply_to_model(target)
    got = dict(target.named_parameters())
    for n in graftable(base):
        assert torch.equal(got[n], torch.where(masks[n], fp[n], bp[n])), n
    assert torch.equal(got["heads.rt.weight"], fp["heads.rt.weight"])
    assert torch.equal(got["heads.rt.bias"], fp["heads.rt.bias"])
    assert torch.equal(got["embed.weight"], bp["embed.weight"])  # not graftable: untouched


def test_apply_refuses_other_base(pair):
    base, ft = pair
    p = make_patch(base, ft, random_masks(base, 0.3, 5))
    state = {n: t.detach().clone() for n, t in base.named_parameters()}
    with pytest.raises(MtgraftError, match=r"patch was made for base model tiny \(hash sha256:.*this model's hash"):
        p.apply_to_state(state, base_hash="sha256:" + "ef01" * 16)
    # hash computed from the state itself: a perturbed base is refused, nothing is changed
    state["backbone.0.bias"][0] += 1.0
    before = {n: t.clone() for n, t in state.items()}
    with pytest.raises(MtgraftError, match="apply it to the model it was learned on"):
        p.apply_to_state(state)
    assert all(torch.equal(state[n], before[n]) for n in state)
    p.apply_to_state(state, check_hash=False)  # explicit override works
    assert not torch.equal(state["backbone.0.weight"], before["backbone.0.weight"])


def test_apply_refuses_missing_or_misshapen_tensors(pair):
    base, ft = pair
    p = make_patch(base, ft, random_masks(base, 0.5, 6))
    state = {n: t.detach().clone() for n, t in base.named_parameters()}
    del state["heads.rt.weight"]
    with pytest.raises(MtgraftError, match="no parameter 'heads.rt.weight'"):
        p.apply_to_state(state, check_hash=False)
    state = {n: t.detach().clone() for n, t in base.named_parameters()}
    state["backbone.0.weight"] = torch.zeros(3, 3)
    with pytest.raises(MtgraftError, match=r"'backbone.0.weight' has shape \(3, 3\) in the model but \(7, 6\)"):
        p.apply_to_state(state, check_hash=False)


# ------------------------------------------------------------------ bad files


def _good(tmp_path: Path, pair) -> tuple[Path, SkillPatch]:
    base, ft = pair
    p = make_patch(base, ft, random_masks(base, 0.5, 7))
    return p.save(tmp_path / "good.safetensors"), p


def _write_raw(path: Path, tensors: dict, header: dict | None) -> Path:
    save_file(tensors, str(path), metadata=None if header is None else {HEADER_KEY: json.dumps(header)})
    return path


def test_load_missing_truncated_random(tmp_path, pair):
    good, _ = _good(tmp_path, pair)
    with pytest.raises(MtgraftError, match="does not exist"):
        SkillPatch.load(tmp_path / "nope.safetensors")
    data = good.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) - 20])
    with pytest.raises(MtgraftError, match="not a readable SkillPatch"):
        SkillPatch.load(tmp_path / "trunc.safetensors")
    (tmp_path / "rand.bin").write_bytes(np.random.default_rng(0).bytes(3000))
    with pytest.raises(MtgraftError, match="not a readable SkillPatch"):
        SkillPatch.load(tmp_path / "rand.bin")
    (tmp_path / "tiny.bin").write_bytes(b"abc")
    with pytest.raises(MtgraftError, match="not a readable SkillPatch"):
        SkillPatch.load(tmp_path / "tiny.bin")


def test_load_corrupt_payload(tmp_path, pair):
    good, _ = _good(tmp_path, pair)
    raw = good.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    index = json.loads(raw[8 : 8 + n])
    for key in ("val/backbone.0.weight", "head/heads.rt.bias"):
        start, _ = index[key]["data_offsets"]
        data = bytearray(raw)
        data[8 + n + start + 1] ^= 0x01  # one bit of a stored value: safetensors cannot see it
        bad = tmp_path / "flip.bin"
        bad.write_bytes(bytes(data))
        with pytest.raises(MtgraftError, match="do not match the payload hash"):
            SkillPatch.load(bad)


def test_load_non_patch_and_bad_headers(tmp_path, pair):
    good, p = _good(tmp_path, pair)
    plain = _write_raw(tmp_path / "plain.safetensors", {"w": torch.zeros(3)}, None)
    with pytest.raises(MtgraftError, match="safetensors file but not a SkillPatch"):
        SkillPatch.load(plain)
    hdr = p.header.to_json_dict() | {"payload_hash": None}
    tensors = p.tensors()
    _write_raw(tmp_path / "v9.safetensors", tensors, hdr | {"format_version": 9})
    with pytest.raises(MtgraftError, match="format_version 9; this mtgraft reads versions 1, 2 .upgrade"):
        SkillPatch.load(tmp_path / "v9.safetensors")
    _write_raw(tmp_path / "fmt.safetensors", tensors, hdr | {"format": "other"})
    with pytest.raises(MtgraftError, match="not a SkillPatch"):
        SkillPatch.load(tmp_path / "fmt.safetensors")
    _write_raw(tmp_path / "mt.safetensors", tensors, hdr | {"model_type": "weird"})
    with pytest.raises(MtgraftError, match="model_type"):
        SkillPatch.load(tmp_path / "mt.safetensors")
    assert SkillPatch.load(_write_raw(tmp_path / "ok.safetensors", tensors, hdr)).region_size == p.region_size


def test_load_inconsistent_tensors(tmp_path, pair):
    _, p = _good(tmp_path, pair)
    hdr = p.header.to_json_dict() | {"payload_hash": None}
    name = "backbone.0.weight"
    n = math.prod(p.header.shapes()[name])
    cases = {
        "length": ({f"val/{name}": p.values[name][:-1].clone()}, "has .* entries but val/"),
        "range": ({f"idx/{name}": torch.cat([p.indices[name][:-1], torch.tensor([n], dtype=torch.int32)])},
                  "out of range"),
        "unsorted": ({f"idx/{name}": p.indices[name].flip(0).contiguous()}, "not sorted"),
        "unknown": ({"idx/nope": torch.tensor([0], dtype=torch.int32), "val/nope": torch.tensor([1.0])},
                    "not in the header's graftable set"),
    }
    for key, (change, msg) in cases.items():
        t = p.tensors() | change
        path = _write_raw(tmp_path / f"{key}.safetensors", t, hdr)
        with pytest.raises(MtgraftError, match=msg):
            SkillPatch.load(path)
    path = _write_raw(tmp_path / "size.safetensors", p.tensors(), hdr | {"region_size": p.region_size - 1})
    with pytest.raises(MtgraftError, match="region_size"):
        SkillPatch.load(path)


def test_header_validation():
    with pytest.raises(MtgraftError, match="model_type"):
        SkillPatch.from_masks({}, {}, {}, {"base_model": "x", "base_hash": "sha256:0", "graftable": [("w", [2])],
                                           "task": "a", "model_type": "bad", "method": "m"})
    h = PatchHeader(base_model="x", base_hash="sha256:0", graftable=[("a", [2, 3]), ("b", [4])], task="t",
                    model_type="head", method="m")
    assert h.graftable_size == 10 and h.offsets() == {"a": 0, "b": 6} and h.tasks == ["t"]
    assert h.format_version == FORMAT_VERSION and h.code_version["mtgraft"]


# ------------------------------------------------------------------ set algebra


def _hand(flat: list[int], task: str = "a", vals: list[float] | None = None, base_hash: str = "sha256:00",
          head: dict | None = None) -> SkillPatch:
    """Patch over graftable tensors u (2x3) and v (4,), i.e. global indices 0..9."""
    hdr = {"base_model": "b", "base_hash": base_hash, "graftable": [("u", [2, 3]), ("v", [4])], "task": task,
           "model_type": "head", "method": "hand"}
    values = torch.tensor(vals if vals is not None else [float(i) for i in flat])
    return SkillPatch.from_flat_values(np.array(flat), values, head or {}, hdr)


def test_flat_indices_split_across_tensors():
    p = _hand([1, 5, 6, 9])
    assert p.indices["u"].tolist() == [1, 5] and p.indices["v"].tolist() == [0, 3]
    m = p.masks()
    assert m["u"].tolist() == [[False, True, False], [False, False, True]]
    assert m["v"].tolist() == [True, False, False, True]
    assert p.flat_indices().tolist() == [1, 5, 6, 9]


def test_set_algebra_known_answers():
    a, b = _hand([0, 1, 2, 6, 7], "a"), _hand([2, 3, 7, 8], "b")
    assert intersection_size(a, b) == 2
    assert containment(a, b) == pytest.approx(2 / 4)  # |a∩b| / |b|
    assert containment(b, a) == pytest.approx(2 / 5)
    assert jaccard(a, b) == pytest.approx(2 / 7)
    inter = intersection(a, b)
    assert inter.flat_indices().tolist() == [2, 7] and inter.header.method == "intersection"
    assert difference(a, b).flat_indices().tolist() == [0, 1, 6]
    assert difference(b, a).flat_indices().tolist() == [3, 8]
    u = union(a, b)
    assert u.flat_indices().tolist() == [0, 1, 2, 3, 6, 7, 8] and u.header.task == ["a", "b"]
    assert u.header.sparsity == pytest.approx(7 / 10)


def test_set_algebra_empty_and_identical():
    a, e = _hand([1, 4, 8]), _hand([])
    assert intersection_size(a, e) == 0 and containment(a, e) == 0.0 and containment(e, a) == 0.0
    assert jaccard(e, e) == 0.0 and jaccard(a, e) == 0.0
    assert intersection(a, e).region_size == 0 and difference(a, e).flat_indices().tolist() == [1, 4, 8]
    assert union(a, e).flat_indices().tolist() == [1, 4, 8]
    same = _hand([1, 4, 8])
    assert containment(a, same) == 1.0 and jaccard(a, same) == 1.0
    assert difference(a, same).region_size == 0
    assert intersection(a, same).flat_indices().tolist() == [1, 4, 8]


def test_set_algebra_refuses_other_base():
    a, b = _hand([1]), _hand([1], base_hash="sha256:ff")
    for op in (intersection, difference, containment, jaccard, union):
        with pytest.raises(MtgraftError, match="different base models"):
            op(a, b)


def test_stitch_overlap_policies():
    a = _hand([0, 2, 5], "a", [1.0, 2.0, 3.0])
    b = _hand([2, 5, 9], "b", [4.0, 5.0, 6.0])
    c = _hand([5], "c", [9.0])
    p, st = stitch([a, b, c], "average")
    assert p.flat_indices().tolist() == [0, 2, 5, 9]
    assert p.flat_values().tolist() == [1.0, 3.0, pytest.approx(17 / 3), 6.0]
    assert st["overlapping_entries"] == 2 and st["max_cover"] == 3 and st["sizes"] == [3, 3, 1]
    assert st["region_size"] == 4
    p, _ = stitch([a, b, c], "first")
    assert p.flat_values().tolist() == [1.0, 2.0, 3.0, 6.0]
    with pytest.raises(MtgraftError, match="2 entries are grafted by more than one patch"):
        stitch([a, b, c], "error")
    p, st = stitch([a, _hand([1, 3], "d")], "error")  # disjoint: fine
    assert st["overlapping_entries"] == 0 and p.region_size == 5
    with pytest.raises(MtgraftError, match="needs the base"):
        stitch([a, b], "sum")
    with pytest.raises(MtgraftError, match="unknown overlap policy"):
        stitch([a, b], "max")  # type: ignore[arg-type]


def test_stitch_sum_adds_deltas():
    base = {"u": torch.full((2, 3), 0.5), "v": torch.full((4,), 0.5)}
    h = content_hash(base.items())
    a = _hand([0, 2, 5], "a", [1.0, 2.0, 3.0], base_hash=h)
    b = _hand([2, 5, 9], "b", [4.0, 5.0, 6.0], base_hash=h)
    p, st = stitch([a, b], "sum", base=base)
    # base + sum of deltas: 0.5 + (2 - 0.5) + (4 - 0.5) = 5.5 ; 0.5 + 2.5 + 4.5 = 7.5
    assert p.flat_values().tolist() == [1.0, 5.5, 7.5, 6.0]
    with pytest.raises(MtgraftError, match="not the base the patches were made for"):
        stitch([a, b], "sum", base={"u": torch.zeros(2, 3), "v": torch.zeros(4)})


def test_stitch_heads():
    ha, hb = {"heads.a.weight": torch.ones(2, 3)}, {"heads.b.weight": torch.zeros(2, 3)}
    p, st = stitch([_hand([0], "a", head=ha), _hand([1], "b", head=hb)], "error")
    assert set(p.head) == {"heads.a.weight", "heads.b.weight"} and st["heads_merged"] == []
    assert p.header.head_params == 12
    h2 = {"heads.a.weight": torch.full((2, 3), 3.0)}
    p, st = stitch([_hand([0], "a", head=ha), _hand([1], "a", head=h2)], "average")
    assert torch.equal(p.head["heads.a.weight"], torch.full((2, 3), 2.0)) and st["heads_merged"] == ["heads.a.weight"]
    assert p.header.task == "a"
    with pytest.raises(MtgraftError, match="head 'heads.a.weight' differs"):
        stitch([_hand([0], "a", head=ha), _hand([1], "a", head=h2)], "error")
    p, _ = stitch([_hand([0], "a", head=ha), _hand([1], "a", head=ha)], "error")  # identical heads: fine
    assert torch.equal(p.head["heads.a.weight"], ha["heads.a.weight"])


def test_stitched_patch_applies(pair, tmp_path):
    base, ft = pair
    a = make_patch(base, ft, random_masks(base, 0.2, 8))
    b = make_patch(base, ft, random_masks(base, 0.2, 9))
    p, st = stitch([a, b], "average")
    q = SkillPatch.load(p.save(tmp_path / "s.safetensors"))
    target = Tiny()
    target.load_state_dict(base.state_dict())
    q.apply_to_model(target)
    fp, tp = dict(ft.named_parameters()), dict(target.named_parameters())
    ma, mb = a.masks(), b.masks()
    for n in graftable(base):
        sel = ma[n] | mb[n]
        assert torch.allclose(tp[n][sel], fp[n][sel]), n  # same fine-tuned model: average is the value
    assert st["overlapping_entries"] == intersection_size(a, b) > 0


# ------------------------------------------------------------------ plain reader (docs/skillpatch-format.md)


def test_plain_safetensors_reader(pair, tmp_path):
    base, ft = pair
    p = make_patch(base, ft, random_masks(base, 0.3, 10))
    path = p.save(tmp_path / "p.safetensors")
    # the worked example of the docs, with safetensors + json only
    with safe_open(str(path), framework="pt") as f:
        header = json.loads(f.metadata()["mtgraft_header"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    state = {n: t.detach().clone() for n, t in base.named_parameters()}
    for name, _shape in header["graftable"]:
        if f"idx/{name}" in tensors:
            state[name].view(-1)[tensors[f"idx/{name}"].long()] = tensors[f"val/{name}"]
    for key, t in tensors.items():
        if key.startswith("head/"):
            state[key[len("head/"):]].copy_(t)
    expected = Tiny()
    expected.load_state_dict(base.state_dict())
    p.apply_to_model(expected)
    for n, t in expected.named_parameters():
        assert torch.equal(state[n], t), n
