"""Full test sets by default (max_test auto) and the evaluation cache (encoded test sets, reference predictions)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mtgraft.config import DEFAULT_MAX_TEST, DataConfig, TrainConfig, parse_max_test
from mtgraft.evaluation.cache import EvalCache, encoded_digest, get_cache
from mtgraft.grafting import GraftConfig, run_graft
from mtgraft.grafting.space import GraftSpace
from mtgraft.models import build_task_model, encode_examples
from mtgraft.patches import SkillPatch
from mtgraft.tasks import get_task, make_splits
from mtgraft.testing import example_task_yaml, make_tiny_checkpoint, make_tiny_model

WORDS = ["good", "fine", "bad", "poor", "calm", "loud", "fast", "slow", "warm", "cold", "kind", "rude"]


def _big_task(folder: Path, n_test: int) -> str:
    """A local task with ``n_test`` test examples (distinct texts, 2 classes at about 3:1)."""
    folder.mkdir(parents=True, exist_ok=True)

    def rows(prefix: str, n: int) -> str:
        lines = ["text,label"]
        for i in range(n):
            a, b = WORDS[i % len(WORDS)], WORDS[(i // len(WORDS)) % len(WORDS)]
            lines.append(f"{prefix} {i} was {a} and {b},{'pos' if i % 4 else 'neg'}")
        return "\n".join(lines) + "\n"

    (folder / "train.csv").write_text(rows("train review", 40))
    (folder / "test.csv").write_text(rows("test review", n_test))
    (folder / "big.yaml").write_text(f"name: big_{n_test}\ntrain: train.csv\ntest: test.csv\ntext_column: text\n"
                                     "label_column: label\nlabels: [neg, pos]\n")
    return str(folder / "big.yaml")


def test_default_max_test_is_auto_2000():
    assert DEFAULT_MAX_TEST == 2000
    assert parse_max_test("auto") == 2000 and parse_max_test("all") is None and parse_max_test(300) == 300
    assert DataConfig().max_test == 2000
    assert TrainConfig(task="x").max_test == 2000
    assert TrainConfig(task="x", max_test="all").max_test is None
    assert GraftConfig(finetuned="x").max_test is None  # as the checkpoint recorded
    assert GraftConfig(finetuned="x", max_test="auto").max_test == 2000
    with pytest.raises(ValueError):
        parse_max_test("some")


def test_auto_takes_small_test_splits_whole_and_big_ones_as_a_fixed_2000(tmp_path):
    small = get_task(_big_task(tmp_path / "small", 1500))
    big = get_task(_big_task(tmp_path / "big", 2600))
    auto = DataConfig().max_test
    s = make_splits(small, 2, 13, auto)
    assert len(s.test) == 1500  # all of it
    b13 = make_splits(big, 2, 13, auto).test
    b21 = make_splits(big, 2, 21, auto).test  # another data seed: the same test subsample
    assert len(b13) == 2000
    assert b13 == b21 == make_splits(big, 2, 13, auto).test
    share = sum(e.label == 0 for e in b13) / 2000  # stratified: the class shares of the whole split
    assert share == pytest.approx(650 / 2600, abs=1e-3)


def _ood_task(folder: Path) -> str:
    """A second small sentiment task (labels as the example task's), for OOD evaluation."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("train", "test"):
        lines = ["text,label"] + [f"{name}: the {a} meal and the {b} staff,{'positive' if i % 2 else 'negative'}"
                                  for i, (a, b) in enumerate(zip(WORDS, reversed(WORDS), strict=True))]
        (folder / f"{name}.csv").write_text("\n".join(lines) + "\n")
    (folder / "ood.yaml").write_text("name: tiny_ood\ntrain: train.csv\ntest: test.csv\ntext_column: text\n"
                                     "label_column: label\nlabels: [negative, positive]\n")
    return str(folder / "ood.yaml")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("evalcache")
    pre = make_tiny_model("head", d / "pre", seed=1)
    ck = make_tiny_checkpoint(d / "ft", pre, example_task_yaml(), seed=2)
    ck2 = make_tiny_checkpoint(d / "ft2", pre, example_task_yaml(), seed=3)
    return {"pre": pre, "ft": ck, "ft2": ck2, "dir": d, "ood": _ood_task(d / "ood")}


def test_cache_hit_returns_identical_arrays(tiny, tmp_path):
    spec = get_task(example_task_yaml())
    model = build_task_model(tiny["pre"], "head", [spec])
    exs = make_splits(spec, 2, 13, None).test
    cache = EvalCache(tmp_path / "c")
    first = cache.encoded(model, spec.name, exs, 32)
    again = cache.encoded(model, spec.name, exs, 32)
    direct = encode_examples(model, spec.name, exs, 32)
    assert (cache.misses, cache.hits) == (1, 1)
    for enc in (first, again):
        assert (enc.task, enc.input_ids, enc.token_type_ids, enc.labels, enc.positions) == \
            (direct.task, direct.input_ids, direct.token_type_ids, direct.labels, direct.positions)
    assert cache.encoded(model, spec.name, exs, 8).input_ids != direct.input_ids  # max_length is in the key
    calls = []

    def compute():
        calls.append(1)
        return np.random.default_rng(len(calls)).random((len(direct), 2)).astype(np.float32)

    p1 = cache.probs({"m": "a"}, direct, compute)
    p2 = cache.probs({"m": "a"}, direct, compute)
    p3 = cache.probs({"m": "b"}, direct, compute)
    assert len(calls) == 2  # "a" computed once, "b" is another key
    assert p1.dtype == p2.dtype == np.float32 and np.array_equal(p1.view(np.int32), p2.view(np.int32))
    assert not np.array_equal(p1, p3)
    assert len(encoded_digest(direct)) == len("sha256:") + 64


def test_cache_off_by_environment(monkeypatch):
    monkeypatch.setenv("MTGRAFT_EVAL_CACHE", "off")
    assert not get_cache().enabled


class Counter:
    """Counts GraftSpace.predict calls (the grafting run's only way to predict)."""

    def __init__(self, monkeypatch):
        self.n = 0
        orig = GraftSpace.predict

        def counted(space, theta, enc, batch_size=64):
            self.n += 1
            return orig(space, theta, enc, batch_size)

        monkeypatch.setattr(GraftSpace, "predict", counted)


def _graft(ck, out, **kw):
    cfg = GraftConfig(task=example_task_yaml(), finetuned=ck, sparsity=[0.01], out=str(out), track=False,
                      do_register=False, **{"method": ["topk"], **kw})
    return run_graft(cfg, show_progress=False)[0]


def test_second_graft_reads_its_references_from_the_cache(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("MTGRAFT_EVAL_CACHE", str(tmp_path / "cache"))
    count = Counter(monkeypatch)
    sets = 2  # the task's test set and one OOD set (--eval-tasks)
    ood = [tiny["ood"]]
    a = _graft(tiny["ft"], tmp_path / "a", eval_tasks=ood)
    assert count.n == 2 * sets + 1 * sets  # references (fine-tuned, pretrained) + the top-k region
    count.n = 0
    b = _graft(tiny["ft"], tmp_path / "b", eval_tasks=ood)
    assert count.n == 1 * sets  # the region only: both references came from the cache
    assert a.reference == b.reference and a.results[0]["test"] == b.results[0]["test"]
    count.n = 0
    _graft(tiny["ft2"], tmp_path / "c", eval_tasks=ood)  # another checkpoint (other content hash): a miss
    assert count.n == 2 * sets + 1 * sets


def test_corrupt_entry_warns_and_is_recomputed(tiny, tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("MTGRAFT_EVAL_CACHE", str(root))
    a = _graft(tiny["ft"], tmp_path / "a")
    files = sorted((root / "probs").rglob("*.npz")) + sorted((root / "encoded").rglob("*.npz"))
    assert len(files) == 3  # fine-tuned and pretrained probabilities, the encoded test set
    files[0].write_bytes(files[0].read_bytes()[:40])  # truncated
    files[1].write_bytes(b"not a numpy file")
    files[2].write_bytes(files[2].read_bytes()[:-30])
    warned: list[str] = []
    monkeypatch.setattr("mtgraft.progress.warn", warned.append)
    count = Counter(monkeypatch)
    b = _graft(tiny["ft"], tmp_path / "b")
    assert count.n == 3  # both references recomputed, and the region
    assert len(warned) == 3 and all("unreadable" in w for w in warned)
    assert a.reference == b.reference and a.results[0]["test"] == b.results[0]["test"]
    warned.clear()
    count.n = 0
    _graft(tiny["ft"], tmp_path / "c")  # the entries were written again
    assert count.n == 1 and not warned


def test_results_with_and_without_cache_are_identical(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("MTGRAFT_EVAL_CACHE", "off")
    off = _graft(tiny["ft"], tmp_path / "off", method=["graft"], updates=2)
    monkeypatch.setenv("MTGRAFT_EVAL_CACHE", str(tmp_path / "cache"))
    cold = _graft(tiny["ft"], tmp_path / "cold", method=["graft"], updates=2)
    warm = _graft(tiny["ft"], tmp_path / "warm", method=["graft"], updates=2)
    for r in (cold, warm):
        assert r.reference == off.reference
        assert r.results[0]["test"] == off.results[0]["test"]
        p, q = SkillPatch.load(r.results[0]["patch"]), SkillPatch.load(off.results[0]["patch"])
        assert p.header.payload_hash == q.header.payload_hash
        for n in p.values:
            assert torch.equal(p.values[n].view(torch.int32), q.values[n].view(torch.int32))


def test_eval_and_transfer_same_with_and_without_cache(tiny, tmp_path, monkeypatch):
    from mtgraft.analysis.transfer import transfer_analysis
    from mtgraft.evaluation.predict import predict_probs
    from mtgraft.evaluation.runner import EvalConfig, evaluate

    monkeypatch.setenv("MTGRAFT_EVAL_CACHE", str(tmp_path / "cache"))
    g = _graft(tiny["ft"], tmp_path / "g", save_baselines=True)
    patch = SkillPatch.load(g.results[0]["patch"])
    tests = make_splits(get_task(example_task_yaml()), 2, 13, None).test
    calls = []
    orig = predict_probs

    def counted(*a, **kw):
        calls.append(1)
        return orig(*a, **kw)

    monkeypatch.setattr("mtgraft.evaluation.predict.predict_probs", counted)

    def both(tag):
        ev = evaluate(EvalConfig(model=tiny["ft"], out=str(tmp_path / f"eval-{tag}"), track=False), False)
        tr = transfer_analysis([patch], ["a"], max_test=3, device="cpu",  # 3 < recorded n: measured here
                               test_examples={patch.header.task: tests})
        return ev, tr

    monkeypatch.setenv("MTGRAFT_EVAL_CACHE", "off")
    ev0, tr0 = both("off")
    n_off = len(calls)
    monkeypatch.setenv("MTGRAFT_EVAL_CACHE", str(tmp_path / "cache"))
    both("cold")
    calls.clear()
    ev2, tr2 = both("warm")
    assert n_off > 0 and len(calls) == 0  # warm: nothing predicted again
    for k in ("accuracy", "macro_f1", "ece", "brier", "agreement", "rel", "pretrained_accuracy"):
        assert ev2["test"][k] == ev0["test"][k]
    assert tr2["accuracy"] == tr0["accuracy"] and tr2["reference"] == tr0["reference"]


def test_unwritable_cache_warns_once_and_changes_nothing(tiny, tmp_path, monkeypatch):
    import errno

    monkeypatch.setenv("MTGRAFT_EVAL_CACHE", "off")
    off = _graft(tiny["ft"], tmp_path / "off", eval_tasks=[tiny["ood"]])

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setenv("MTGRAFT_EVAL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("mtgraft.evaluation.cache.atomic_file", full)
    warned: list[str] = []
    monkeypatch.setattr("mtgraft.progress.warn", warned.append)
    got = _graft(tiny["ft"], tmp_path / "full", eval_tasks=[tiny["ood"]])  # 2 encoded sets + 4 references
    assert len(warned) == 1 and "No space left" in warned[0]
    assert got.reference == off.reference and got.results[0]["test"] == off.results[0]["test"]


@pytest.mark.parametrize(("word", "expected"), [(None, None), ("recorded", None), ("all", None), ("auto", 2000),
                                                ("300", 300)])
def test_report_max_test_words(word, expected, monkeypatch, tmp_path):
    from typer.testing import CliRunner

    import mtgraft.cli.app as cli_app
    from mtgraft.errors import MtgraftError

    seen: dict = {}

    def fake_build_report(inputs, out, **kw):
        seen.update(kw)
        raise MtgraftError("stopped after the options")

    monkeypatch.setattr("mtgraft.analysis.report.build_report", fake_build_report)
    cli_app._register()
    args = ["overlap-report", "--patches", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"),
            "--no-track", "--out", str(tmp_path / "r")]
    r = CliRunner().invoke(cli_app.app, args + (["--max-test", word] if word else []))
    assert r.exit_code != 0 and "max_test" in seen
    assert seen["max_test"] == expected  # default: the recorded test sets, the grafts' own
