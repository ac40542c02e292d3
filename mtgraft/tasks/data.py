"""Loading a task's examples (clean, de-duplicate, fixed test split, caches) and k-shot splits."""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from mtgraft.errors import MtgraftError
from mtgraft.tasks.catalog import CATALOG, OFFLINE_TASKS
from mtgraft.tasks.local import load_local_task, looks_like_path
from mtgraft.tasks.parsers import Rows
from mtgraft.tasks.sources import (
    hub_rows,
    is_fetched,
    local_rows,
    package_rows,
)
from mtgraft.tasks.spec import Example, HubSource, LocalSource, PackageSource, Splits, TaskSpec
from mtgraft.utils import atomic_file, cache_dir, sha256_file

CACHE_VERSION = 1
SPLIT_SEED = 0  # seed of the fixed test split of sources without one (never change it)
DEV_FRACTION_ALL = 0.1  # k = "all": share of the pool held out (stratified) as dev

Pool = tuple[list[Example], list[Example] | None]
_MEMORY: dict[str, Pool] = {}
_CODE_HASH: str | None = None
_DIGESTS: dict[str, list[bytes]] = {}


# ---------------------------------------------------------------------------------------------
# the catalog


def list_tasks() -> list[TaskSpec]:
    """Every built-in task (offline ones first, then the hub tasks)."""
    return list(CATALOG.values())


def get_task(name_or_yaml_path: str | Path | TaskSpec) -> TaskSpec:
    """A catalog task by name, or a local task from a YAML path; unknown names list close matches."""
    if isinstance(name_or_yaml_path, TaskSpec):
        return name_or_yaml_path
    name = str(name_or_yaml_path)
    if name in CATALOG:
        return CATALOG[name]
    norm = name.strip().lower().replace("-", "_")
    if norm in CATALOG:
        return CATALOG[norm]
    if isinstance(name_or_yaml_path, Path) or looks_like_path(name) or Path(name).is_file():
        return load_local_task(name)
    close = difflib.get_close_matches(norm, list(CATALOG), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise MtgraftError(f"unknown task '{name}'{hint} (see 'mtgraft tasks list', or give the path of a task YAML)")


def compatible(task_a: str | TaskSpec, task_b: str | TaskSpec) -> bool:
    """True when two tasks share a label space (the same ``labels`` list), e.g. for OOD evaluation."""
    return list(get_task(task_a).labels) == list(get_task(task_b).labels)


# ---------------------------------------------------------------------------------------------
# cleaning


def normalise_text(text: str) -> str:
    """Collapse runs of whitespace (newlines included) into single spaces and strip the ends."""
    return " ".join(text.split())


def _to_examples(spec: TaskSpec, rows: Rows, where: str) -> list[Example]:
    index = {label: i for i, label in enumerate(spec.labels)}
    src = spec.source
    label_map = getattr(src, "label_map", None)
    if isinstance(src, HubSource) and label_map is None:
        label_map = {str(i): label for i, label in enumerate(spec.labels)}
    strict = isinstance(src, LocalSource)
    bad: Counter[str] = Counter()
    out = []
    for text, text_b, raw in rows:
        label = label_map.get(raw) if label_map is not None else raw
        if label is None or label not in index:
            bad[raw] += 1
            continue
        t = normalise_text(text)
        b = normalise_text(text_b) if (spec.is_pair and text_b is not None) else None
        if spec.max_chars:
            t = t[: spec.max_chars].rstrip()
            b = b[: spec.max_chars].rstrip() if b is not None else None
        if not t or (spec.is_pair and not b):
            continue
        out.append(Example(t, b, index[label]))
    if strict and bad:
        shown = ", ".join(repr(v) for v in sorted(bad)[:8]) + (" ..." if len(bad) > 8 else "")
        raise MtgraftError(
            f"{where}: {sum(bad.values())} row(s) have labels outside the declared labels {spec.labels}: {shown}")
    return out


def dedupe(examples: list[Example]) -> list[Example]:
    """Keep the first of exact duplicate texts; drop every copy of a text seen with different labels."""
    labels_of: dict[tuple[str, str | None], set[int]] = defaultdict(set)
    for e in examples:
        labels_of[(e.text, e.text_b)].add(e.label)
    seen: set[tuple[str, str | None]] = set()
    out = []
    for e in examples:
        key = (e.text, e.text_b)
        if key in seen or len(labels_of[key]) > 1:
            continue
        seen.add(key)
        out.append(e)
    return out


def _digest(e: Example) -> bytes:
    h = hashlib.sha256(e.text.encode())
    if e.text_b is not None:
        h.update(b"\x1f" + e.text_b.encode())
    return h.digest()


def _order(digests: list[bytes], idx: list[int], salt: str) -> list[int]:
    """``idx`` in a pseudo-random order fixed by ``salt`` and the texts (independent of row order)."""
    s = salt.encode() + b"\x1f"
    return sorted(idx, key=lambda i: hashlib.sha256(s + digests[i]).digest())


def _by_class(examples: list[Example]) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = defaultdict(list)
    for i, e in enumerate(examples):
        groups[e.label].append(i)
    return groups


def stratified_holdout(examples: list[Example], fraction: float, salt: str) -> tuple[list[Example], list[Example]]:
    """Split off round(fraction * n_c) examples of each class c; both parts keep the input order."""
    digests = [_digest(e) for e in examples]
    held: set[int] = set()
    for idx in _by_class(examples).values():
        n = round(fraction * len(idx))
        held.update(_order(digests, idx, salt)[:n])
    keep = [e for i, e in enumerate(examples) if i not in held]
    return keep, [e for i, e in enumerate(examples) if i in held]


def _clean(spec: TaskSpec, train_rows: Rows, test_rows: Rows | None) -> Pool:
    src = spec.source
    where_train = src.train if isinstance(src, LocalSource) else f"task '{spec.name}'"
    where_test = src.test if isinstance(src, LocalSource) else f"task '{spec.name}' (test)"
    train = dedupe(_to_examples(spec, train_rows, str(where_train)))
    test = dedupe(_to_examples(spec, test_rows, str(where_test))) if test_rows is not None else None
    if test is None and spec.test_fraction > 0:
        train, test = stratified_holdout(train, spec.test_fraction, f"test-split-{SPLIT_SEED}")
    elif test is not None:
        in_test = {(e.text, e.text_b) for e in test}
        train = [e for e in train if (e.text, e.text_b) not in in_test]
    return train, test


# ---------------------------------------------------------------------------------------------
# caches


def _code_hash() -> str:
    """Hash of the parsing/cleaning code: a change to it invalidates parsed caches (not downloads)."""
    global _CODE_HASH
    if _CODE_HASH is None:
        from mtgraft.tasks import parsers

        h = hashlib.sha256()
        for mod_file in (parsers.__file__, __file__):
            h.update(Path(mod_file).read_bytes())
        _CODE_HASH = h.hexdigest()
    return _CODE_HASH


def _fingerprint(spec: TaskSpec) -> str:
    h = hashlib.sha256(f"v{CACHE_VERSION}\n{_code_hash()}\n{spec.model_dump_json()}".encode())
    src = spec.source
    if isinstance(src, LocalSource):  # local files may change under the same spec
        for f in (src.train, src.test):
            if f:
                h.update(sha256_file(f).encode() if Path(f).is_file() else b"missing")
    return h.hexdigest()


def _cache_paths(spec: TaskSpec) -> tuple[Path, Path]:
    fp = _fingerprint(spec)[:16]
    folder = cache_dir() / "data" / "parsed"
    return folder / f"{spec.name}-{fp}.json", folder / f"{spec.name}-{fp}.meta.json"


def _stats(spec: TaskSpec, train: list[Example], test: list[Example] | None) -> dict[str, Any]:
    def counts(xs: list[Example]) -> dict[str, int]:
        c = Counter(e.label for e in xs)
        return {label: c.get(i, 0) for i, label in enumerate(spec.labels)}

    return {
        "train": len(train), "test": None if test is None else len(test),
        "train_class_counts": counts(train), "test_class_counts": None if test is None else counts(test),
    }


def _write_cache(spec: TaskSpec, pool: Pool) -> None:
    data_path, meta_path = _cache_paths(spec)
    train, test = pool

    def enc(xs: list[Example] | None) -> list[list[Any]] | None:
        return None if xs is None else [[e.text, e.text_b, e.label] for e in xs]

    with atomic_file(data_path, "w") as f:
        json.dump({"version": CACHE_VERSION, "labels": spec.labels, "train": enc(train), "test": enc(test)},
                  f, ensure_ascii=False)
    with atomic_file(meta_path, "w") as f:
        json.dump(_stats(spec, train, test), f)
    for old in data_path.parent.glob(f"{spec.name}-*.json"):  # caches of earlier versions of this spec
        if old not in (data_path, meta_path) and old.name[len(spec.name) + 1:].split(".")[0].isalnum():
            with contextlib.suppress(OSError):  # fine: a stale cache file that cannot be removed only takes space
                old.unlink()


def _read_cache(spec: TaskSpec) -> Pool | None:
    data_path, _ = _cache_paths(spec)
    if not data_path.is_file():
        return None
    try:
        with open(data_path, encoding="utf-8") as f:
            data = json.load(f)
        if data.get("version") != CACHE_VERSION or data.get("labels") != spec.labels:
            return None

        def dec(xs: list[list[Any]] | None) -> list[Example] | None:
            return None if xs is None else [Example(t, b, int(y)) for t, b, y in xs]

        return dec(data["train"]) or [], dec(data["test"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        from mtgraft.progress import warn

        warn(f"the cached data of task '{spec.name}' ({data_path}) is damaged ({type(e).__name__}); "
             "rebuilding it from the source")
        return None


def cached_stats(task: str | TaskSpec) -> dict[str, Any] | None:
    """Sizes and class counts of a task whose parsed data is cached (None when not cached)."""
    spec = get_task(task)
    if isinstance(spec.source, LocalSource):
        return None
    _, meta = _cache_paths(spec)
    try:
        return json.loads(meta.read_text())
    except FileNotFoundError:  # not cached: nothing to show
        return None
    except (OSError, ValueError) as e:
        from mtgraft.progress import warn

        warn(f"cannot read the cached sizes of task '{spec.name}' ({meta}: {type(e).__name__}); "
             f"'mtgraft data fetch {spec.name}' rewrites them")
        return None


def clear_memory_cache() -> None:
    """Forget the pools parsed in this process (tests use it)."""
    _MEMORY.clear()
    _DIGESTS.clear()


# ---------------------------------------------------------------------------------------------
# public loading API


def _package_siblings() -> list[PackageSource]:
    return [t.source for t in OFFLINE_TASKS if isinstance(t.source, PackageSource)]


def load_examples(task: str | TaskSpec) -> Pool:
    """The cleaned train pool and the test split (None if the task has neither a test split nor a fixed one)."""
    spec = get_task(task)
    key = _fingerprint(spec)
    if key not in _MEMORY:
        pool = None if isinstance(spec.source, LocalSource) else _read_cache(spec)
        if pool is None:
            src = spec.source
            if isinstance(src, PackageSource):
                rows = package_rows(spec, _package_siblings())
            elif isinstance(src, HubSource):
                rows = hub_rows(spec)
            else:
                rows = local_rows(spec)
            pool = _clean(spec, *rows)
            if not isinstance(src, LocalSource):
                _write_cache(spec, pool)
        _MEMORY[key] = pool
    train, test = _MEMORY[key]
    return list(train), (None if test is None else list(test))


def fetch(task: str | TaskSpec) -> dict[str, Any]:
    """Download, verify, extract and parse a task's data into the cache; return its sizes and class counts."""
    spec = get_task(task)
    train, test = load_examples(spec)
    return {"name": spec.name, "source": spec.source_display, **_stats(spec, train, test)}


def task_stats(task: str | TaskSpec) -> dict[str, Any]:
    """Sizes and class counts (loads the data)."""
    spec = get_task(task)
    train, test = load_examples(spec)
    return _stats(spec, train, test)


def is_cached(task: str | TaskSpec) -> bool:
    """True when the task's parsed data (or, for package tasks, the extracted file) is in the cache."""
    spec = get_task(task)
    if isinstance(spec.source, LocalSource):
        return True
    if _cache_paths(spec)[0].is_file():
        return True
    return isinstance(spec.source, PackageSource) and is_fetched(spec.source)


def _pool_digests(spec: TaskSpec, train: list[Example]) -> list[bytes]:
    key = _fingerprint(spec)
    d = _DIGESTS.get(key)
    if d is None or len(d) != len(train):
        d = [_digest(e) for e in train]
        _DIGESTS[key] = d
    return d


def make_splits(task: str | TaskSpec, k: int | None, seed: int, max_test: int | None = None) -> Splits:
    """K per class for train and another K per class for dev (disjoint, from the train pool, by ``seed``).

    ``k=None`` uses the whole pool minus a seeded stratified 10% dev split. The test split is
    capped at ``max_test`` by a fixed stratified subsample (independent of ``seed``).
    Same arguments, same lists.
    """
    spec = get_task(task)
    train_pool, test = load_examples(spec)
    if not train_pool:
        raise MtgraftError(f"task '{spec.name}' has no training examples after filtering (empty or all duplicates)")
    if k is not None and (not isinstance(k, int) or k <= 0):
        raise MtgraftError(f"k must be a positive integer or None ('all'), not {k!r}")
    if max_test is not None and max_test <= 0:
        raise MtgraftError(f"max_test must be positive or None, not {max_test!r}")
    digests = _pool_digests(spec, train_pool)
    groups = _by_class(train_pool)
    train_idx: list[int] = []
    dev_idx: list[int] = []
    if k is not None:
        for i, label in enumerate(spec.labels):
            n = len(groups.get(i, []))
            if n < 2 * k:
                smallest = min(len(groups.get(j, [])) for j in range(len(spec.labels)))
                raise MtgraftError(
                    f"k={k} per class needs {2 * k} examples of class '{label}' in the train pool of "
                    f"'{spec.name}' ({k} train + {k} dev) but it has {n} (largest possible k: {smallest // 2})")
        for i in range(len(spec.labels)):
            order = _order(digests, groups[i], f"kshot-{seed}")
            train_idx += order[:k]
            dev_idx += order[k: 2 * k]
    else:
        for idx in groups.values():
            order = _order(digests, idx, f"dev-{seed}")
            n_dev = max(1, round(DEV_FRACTION_ALL * len(idx))) if len(idx) >= 2 else 0
            dev_idx += order[:n_dev]
            train_idx += order[n_dev:]
    train = [train_pool[i] for i in _order(digests, train_idx, f"shuffle-train-{seed}")]
    dev = [train_pool[i] for i in _order(digests, dev_idx, f"shuffle-dev-{seed}")]
    return Splits(train=train, dev=dev, test=_cap_test(test or [], max_test))


def _cap_test(test: list[Example], max_test: int | None) -> list[Example]:
    """A fixed stratified subsample of ``max_test`` examples (largest remainder), in the test's order."""
    if max_test is None or len(test) <= max_test:
        return test
    groups = _by_class(test)
    n = len(test)
    quotas = {c: max_test * len(idx) / n for c, idx in groups.items()}
    take = {c: math.floor(q) for c, q in quotas.items()}
    left = max_test - sum(take.values())
    for c in sorted(quotas, key=lambda c: (-(quotas[c] - take[c]), c))[:left]:
        take[c] += 1
    digests = [_digest(e) for e in test]
    chosen: set[int] = set()
    for c, idx in groups.items():
        chosen.update(_order(digests, idx, "test-cap")[: take[c]])
    return [e for i, e in enumerate(test) if i in chosen]
