"""Transfer in the overlap report on a tiny random BERT: Rel of each graft on each compatible task, unions,
P_0/P_1 sources, Spearman — checked against grafting the patches into a fresh model by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mtgraft.analysis.report import build_report
from mtgraft.analysis.transfer import overlap_transfer_correlation, transfer_analysis
from mtgraft.errors import MtgraftError
from mtgraft.evaluation.predict import accuracy, predict_probs
from mtgraft.models import TaskInfo, build_task_model, encode_examples
from mtgraft.patches import SkillPatch, stitch
from mtgraft.tasks.spec import Example
from mtgraft.testing import make_tiny_model

LABELS = {"t1": ["neg", "pos"], "t2": ["neg", "pos"], "t3": ["a", "b", "c"]}
N_TEST = 24
WORDS = "good bad film plot actor boring great awful fun dull story scene music".split()


def _examples(task: str, seed: int) -> list[Example]:
    rng = np.random.default_rng(seed)
    n_lab = len(LABELS[task])
    return [Example(" ".join(rng.choice(WORDS, 6)), None, int(i % n_lab)) for i in range(N_TEST)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    path = make_tiny_model("head", tmp_path_factory.mktemp("tiny") / "m")
    infos = [TaskInfo(name=t, labels=lab) for t, lab in LABELS.items()]
    model = build_task_model(path, "head", infos)
    names = model.graftable_names()
    params = dict(model.named_parameters())
    pre = torch.cat([params[n].detach().reshape(-1) for n in names])
    header = {"base_model": path, "base_hash": model.base_hash(), "graftable": [(n, list(params[n].shape)) for n in names],
              "model_type": "head", "method": "graft"}
    gen = torch.Generator().manual_seed(0)
    delta = torch.randn(pre.numel(), generator=gen) * 0.5
    patches = []
    # t1 and t2 share half their region; t3 is elsewhere
    regions = {"t1": np.arange(0, 400), "t2": np.arange(200, 600), "t3": np.arange(3000, 3400)}
    for k, (t, reg) in enumerate(regions.items()):
        head = {f"heads.{t}.weight": torch.randn(len(LABELS[t]), 32, generator=gen),
                f"heads.{t}.bias": torch.randn(len(LABELS[t]), generator=gen)}
        h = {**header, "task": t, "tasks_info": {t: {"labels": LABELS[t]}},
             "data": {"k": 2, "seed": 13, "max_test": N_TEST, "max_length": 16},
             "metrics": {"test": {"n": N_TEST, "accuracy": 0.6},
                         "reference": {"pretrained": {"accuracy": 0.25 + 0.05 * k}, "finetuned": {"accuracy": 0.9}}}}
        idx = torch.from_numpy(reg)
        patches.append(SkillPatch.from_flat_values(reg, pre[idx] + delta[idx], head, h))
    tests = {t: _examples(t, s) for s, t in enumerate(LABELS)}
    return {"path": path, "infos": infos, "patches": patches, "tests": tests}


def _acc_by_hand(setup, body: SkillPatch, task: str, n: int | None = None) -> float:
    """Accuracy of ``body``'s region with task ``task``'s head, grafted into a fresh model in place."""
    model = build_task_model(setup["path"], "head", setup["infos"])
    body.apply_to_model(model)
    src = next(p for p in setup["patches"] if p.header.task == task)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, t in src.head.items():
            params[name].copy_(t)
    enc = encode_examples(model, task, setup["tests"][task][:n], 16)
    return accuracy(predict_probs(model, enc, 8, "cpu"), enc.labels)


@pytest.fixture(scope="module")
def tr(setup):
    return transfer_analysis(setup["patches"], ["t1", "t2", "t3"], unions=[["t1", "t2"]], max_test=None,
                             device="cpu", test_examples=setup["tests"])


def test_matrix_shape_and_compatibility(tr):
    assert tr["eval_tasks"] == ["t1", "t2", "t3"]
    rel = tr["rel"]
    assert rel[0][2] is None and rel[2][0] is None and rel[2][1] is None  # t3 has other labels
    assert all(x is not None for x in (rel[0][0], rel[0][1], rel[1][0], rel[1][1], rel[2][2]))
    own = {(r["graft"], r["eval_task"]) for r in tr["results"] if r["own"]}
    assert own == {("t1", "t1"), ("t2", "t2"), ("t3", "t3")}


def test_accuracy_and_rel_match_grafting_by_hand(setup, tr):
    p1 = setup["patches"][0]
    for r in tr["results"]:
        if r["graft"] != "t1":
            continue
        assert r["accuracy"] == pytest.approx(_acc_by_hand(setup, p1, r["eval_task"]))
        ref = tr["reference"][r["eval_task"]]
        assert ref["pretrained_source"].startswith("recorded")
        assert r["rel"] == pytest.approx((r["accuracy"] - ref["pretrained"]) / (0.9 - ref["pretrained"]))
        a = r["accuracy"]
        assert r["rel_se"] == pytest.approx(np.sqrt(a * (1 - a) / N_TEST) / (0.9 - ref["pretrained"]))
        assert ref["gain"] == pytest.approx(0.9 - ref["pretrained"])
    assert tr["reference"]["t2"]["pretrained"] == pytest.approx(0.30)


def test_union_graft(setup, tr):
    (u,) = tr["unions"]
    assert u["name"] == "t1+t2" and u["region_size"] == 600 and u["overlapping_entries"] == 200
    up, _ = stitch(setup["patches"][:2], "average")
    for t in ("t1", "t2"):
        assert u["results"][t]["accuracy"] == pytest.approx(_acc_by_hand(setup, up, t))
    assert u["mean_rel"] == pytest.approx(np.mean([u["results"][t]["rel"] for t in ("t1", "t2")]))


def test_smaller_test_cap_measures_p0_here(setup):
    out = transfer_analysis(setup["patches"][:2], ["t1", "t2"], max_test=10, device="cpu",
                            test_examples=setup["tests"])
    ref = out["reference"]["t1"]
    assert ref["n"] == 10 and ref["pretrained_source"] == "measured here"
    model = build_task_model(setup["path"], "head", setup["infos"])
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, t in setup["patches"][0].head.items():
            params[name].copy_(t)
    enc = encode_examples(model, "t1", setup["tests"]["t1"][:10], 16)
    assert ref["pretrained"] == pytest.approx(accuracy(predict_probs(model, enc, 8, "cpu"), enc.labels))
    assert ref["finetuned"] == 0.9 and "fine-tuned checkpoint not found" in ref["finetuned_source"]


def test_bad_union_and_base(setup):
    with pytest.raises(MtgraftError, match="not a task in the report"):
        transfer_analysis(setup["patches"], ["t1", "t2", "t3"], unions=[["t1", "zz"]], test_examples=setup["tests"])
    p = setup["patches"][0]
    bad = SkillPatch(p.header.model_copy(update={"base_hash": "sha256:1234abcd"}), p.indices, p.values, p.head)
    with pytest.raises(MtgraftError, match="the patches were made for"):
        transfer_analysis([bad], ["t1"], device="cpu", test_examples=setup["tests"])


def test_spearman_over_directed_pairs():
    results = [
        {"graft": "a", "graft_tasks": ["a"], "eval_task": "b", "own": False, "rel": 0.9},
        {"graft": "b", "graft_tasks": ["b"], "eval_task": "a", "own": False, "rel": 0.8},
        {"graft": "a", "graft_tasks": ["a"], "eval_task": "c", "own": False, "rel": 0.1},
        {"graft": "c", "graft_tasks": ["c"], "eval_task": "a", "own": False, "rel": 0.2},
        {"graft": "a", "graft_tasks": ["a"], "eval_task": "a", "own": True, "rel": 1.0},
    ]
    m = np.array([[0, 5.0, 1.0], [5.0, 0, 0], [1.0, 0, 0]])
    c = overlap_transfer_correlation(m, ["a", "b", "c"], {"results": results})
    assert c["n"] == 4 and c["rho"] == pytest.approx(0.8944271909999159)  # ties in x: x = 5,5,1,1
    assert "too few" in c["note"]
    c2 = overlap_transfer_correlation(m, ["a", "b", "c"], {"results": results[:2]})
    assert c2["rho"] is None and "too few pairs" in c2["note"]


def test_report_with_transfer_files(setup, tmp_path):
    res = build_report(setup["patches"], tmp_path / "r", with_transfer=True, unions=[["t1", "t2"]], max_test=None,
                       device="cpu", track=False, test_examples=setup["tests"])
    out = res.out_dir
    for name in ("csv/transfer.csv", "csv/transfer_rel.csv", "figures/transfer_rel.png"):
        assert (out / name).is_file(), name
    # the scatter only where a correlation is computed (its documented minimum n); a sentence otherwise
    rho = json.loads((out / "overlap.json").read_text())["transfer"]["spearman_enrichment"]["rho"]
    assert (out / "figures/overlap_vs_transfer.png").is_file() == (rho is not None)
    oj = json.loads((out / "overlap.json").read_text())
    assert oj["transfer"]["rel"][0][2] is None
    assert oj["transfer"]["spearman_enrichment"]["n"] == 2  # t1→t2 and t2→t1
    page = (out / "report.html").read_text()
    assert "Transfer" in page and "∪ t1+t2" in page
    assert any("union graft t1+t2" in s for s in res.summary["summary"]["sentences"])
