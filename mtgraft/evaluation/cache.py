"""A disk cache of encoded test sets and of reference predictions (docs/evaluation-cache.md).

Grafting, ``mtgraft eval`` and the report's transfer matrix evaluate the same test sets with the same
reference models (pretrained, fine-tuned, a SkillPatch's region) again and again; this keeps what they
already computed. Entries are keyed by content, never by path or time:

* an encoded set by (tokenizer content hash, model type, the task's encoding fields, a sha256 of the
  examples' texts and labels, max_length);
* a set of probabilities by (the model's identity — content hashes of the tensors that decide its output,
  chosen by the caller — the task's head settings, a sha256 of the encoded inputs, batch size, device
  type, precision, torch version).

Where: ``$MTGRAFT_EVAL_CACHE`` (a folder; ``off`` turns the cache off), else ``<cache>/eval`` with
``<cache>`` = ``$MTGRAFT_CACHE`` or ``~/.cache/mtgraft``. One ``.npz`` file per entry (numpy, no pickle),
written atomically; an unreadable or mismatching entry is reported with one warning and recomputed.
A hit returns exactly the arrays the computation returned (bit for bit).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtgraft.errors import MtgraftError
from mtgraft.models import Encoded, TaskModel, encode_examples
from mtgraft.utils import atomic_file, cache_dir, content_hash

CACHE_VERSION = 1
ENV = "MTGRAFT_EVAL_CACHE"
_OFF = {"off", "0", "none", "false", "no"}


def cache_root() -> Path | None:
    """The cache folder, or None when ``$MTGRAFT_EVAL_CACHE`` turns the cache off."""
    v = os.environ.get(ENV)
    if v is not None and v.strip().lower() in _OFF:
        return None
    if v and v.strip():
        return Path(v)
    return cache_dir() / "eval"


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


_TOKENIZERS: dict[int, tuple[Any, str]] = {}


def tokenizer_hash(tok: Any) -> str:
    """A content hash of a tokenizer (its fast tokenizer's JSON, else its vocabulary) and its settings."""
    got = _TOKENIZERS.get(id(tok))
    if got is not None and got[0] is tok:
        return got[1]
    h = hashlib.sha256()
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(sorted(tok.get_vocab().items())).encode())
    h.update(json.dumps([type(tok).__name__, getattr(tok, "truncation_side", None),
                         getattr(tok, "padding_side", None), str(tok.special_tokens_map)]).encode())
    digest = "sha256:" + h.hexdigest()
    if len(_TOKENIZERS) > 16:
        _TOKENIZERS.clear()
    _TOKENIZERS[id(tok)] = (tok, digest)
    return digest


def examples_digest(examples: Iterable[Any]) -> str:
    """sha256 of the examples' (text, text_b, label), in order."""
    h = hashlib.sha256()
    for e in examples:
        h.update(json.dumps([e.text, e.text_b, int(e.label)]).encode())
        h.update(b"\n")
    return "sha256:" + h.hexdigest()


def _flat(seqs: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.asarray([len(s) for s in seqs], dtype=np.int64)
    flat = np.asarray([x for s in seqs for x in s], dtype=np.int64)
    return flat, lengths


def encoded_digest(enc: Encoded) -> str:
    """sha256 of an encoded set's content (task, token ids, token types, labels, positions)."""
    h = hashlib.sha256(enc.task.encode())
    for part in (enc.input_ids, enc.token_type_ids or []):
        flat, lengths = _flat(part)
        h.update(lengths.tobytes())
        h.update(flat.tobytes())
    h.update(np.asarray(enc.labels, dtype=np.int64).tobytes())
    h.update(np.asarray(enc.positions, dtype=np.int64).tobytes())
    return "sha256:" + h.hexdigest()


def tensors_digest(named: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]]) -> str:
    """Content hash of named tensors, in name order (a model's or a region's identity in a key)."""
    items = named.items() if isinstance(named, Mapping) else named
    return content_hash(sorted(items, key=lambda kv: kv[0]))


def model_key(model: TaskModel, task: str) -> dict[str, Any]:
    """What, besides its tensors, decides a model's output on ``task``: type, task settings, tokenizer."""
    return {"model_type": model.model_type, "task": task,
            "task_info": model.tasks[task].model_dump(exclude={"spec_file"}),
            "tokenizer": tokenizer_hash(model.tokenizer)}


def runtime_key(device: torch.device | str, precision: str = "fp32", batch_size: int = 64) -> dict[str, Any]:
    """What of the run changes the floats: device type (GPU name, or CPU threads: a CPU matrix product may
    split its sums by thread), precision, batch size, torch version."""
    device = torch.device(device)
    key: dict[str, Any] = {"device": device.type, "precision": precision, "batch_size": batch_size,
                           "torch": torch.__version__}
    if device.type == "cuda":
        key["gpu"] = torch.cuda.get_device_name(device)
    else:
        key["threads"] = torch.get_num_threads()
    return key


class EvalCache:
    """Encoded sets and probabilities on disk under ``root`` (None: a cache that computes everything)."""

    def __init__(self, root: str | os.PathLike | None) -> None:
        self.root = Path(root) if root is not None else None
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.root is not None

    def _path(self, kind: str, key: Mapping[str, Any]) -> tuple[Path, str]:
        assert self.root is not None
        digest = _sha({"version": CACHE_VERSION, "kind": kind, **key})
        return self.root / kind / digest[:2] / f"{digest}.npz", digest

    def _load(self, path: Path, digest: str) -> dict[str, np.ndarray] | None:
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            if str(arrays.pop("key", "")) != digest:
                raise ValueError("the entry's key differs from its name")
            return arrays
        except Exception as e:  # a truncated or foreign file: recompute, never fail
            from mtgraft.progress import warn

            warn(f"evaluation cache entry {path} is unreadable ({type(e).__name__}: {e}); recomputing it")
            return None

    def _store(self, path: Path, digest: str, arrays: Mapping[str, np.ndarray]) -> None:
        if self.root in _WRITE_FAILED:  # said once: a full or read-only disk stays so for this process
            return
        try:
            with atomic_file(path, "wb") as f:
                np.savez(f, key=np.asarray(digest), **arrays)
        except (OSError, MtgraftError) as e:
            from mtgraft.progress import warn

            _WRITE_FAILED.add(self.root)
            warn(f"cannot write to the evaluation cache {self.root} ({e}); going on without writing to it")

    # -- encoded sets ---------------------------------------------------------------------------
    def encoded(self, model: TaskModel, task: str, examples: list[Any], max_length: int) -> Encoded:
        """``encode_examples(model, task, examples, max_length)``, from the cache when it was done before."""
        if self.root is None:
            return encode_examples(model, task, examples, max_length)
        key = {"tokenizer": tokenizer_hash(model.tokenizer), "model_type": model.model_type, "task": task,
               "task_info": model.tasks[task].model_dump(exclude={"spec_file", "pooling"}),
               "examples": examples_digest(examples), "n": len(examples), "max_length": max_length}
        path, digest = self._path("encoded", key)
        got = self._load(path, digest)
        if got is not None:
            try:
                enc = _encoded_from(task, got, len(examples))
            except (KeyError, ValueError) as e:
                from mtgraft.progress import warn

                warn(f"evaluation cache entry {path} is inconsistent ({e}); recomputing it")
            else:
                self.hits += 1
                return enc
        self.misses += 1
        enc = encode_examples(model, task, examples, max_length)
        self._store(path, digest, _encoded_arrays(enc))
        return enc

    # -- predictions ----------------------------------------------------------------------------
    def probs(self, key: Mapping[str, Any], enc: Encoded, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """``compute()`` (probabilities [N, labels] on ``enc``), from the cache when ``key`` + ``enc`` were
        predicted before. ``key`` must name everything else the probabilities depend on (``model_key``,
        ``runtime_key`` and the model's tensors)."""
        if self.root is None:
            return compute()
        path, digest = self._path("probs", {**key, "input": encoded_digest(enc)})
        got = self._load(path, digest)
        if got is not None:
            p = got.get("probs")
            if p is not None and p.dtype == np.float32 and p.ndim == 2 and p.shape[0] == len(enc):
                self.hits += 1
                return p
            from mtgraft.progress import warn

            warn(f"evaluation cache entry {path} does not hold {len(enc)} rows of float32 probabilities; "
                 "recomputing it")
        self.misses += 1
        p = compute()
        self._store(path, digest, {"probs": np.asarray(p)})
        return p


def _encoded_arrays(enc: Encoded) -> dict[str, np.ndarray]:
    ids, lengths = _flat(enc.input_ids)
    out = {"input_ids": ids, "lengths": lengths, "labels": np.asarray(enc.labels, dtype=np.int64),
           "positions": np.asarray(enc.positions, dtype=np.int64)}
    if enc.token_type_ids is not None:
        tt, tt_lengths = _flat(enc.token_type_ids)
        out["token_type_ids"], out["tt_lengths"] = tt, tt_lengths
    return out


def _split(flat: np.ndarray, lengths: np.ndarray) -> list[list[int]]:
    if int(lengths.sum()) != len(flat) or (lengths < 0).any():
        raise ValueError("lengths do not add up")
    ends = np.cumsum(lengths)
    values = flat.tolist()
    return [values[e - n:e] for e, n in zip(ends.tolist(), lengths.tolist(), strict=True)]


def _encoded_from(task: str, a: Mapping[str, np.ndarray], n: int) -> Encoded:
    ids = _split(a["input_ids"], a["lengths"])
    labels = a["labels"].tolist()
    if len(ids) != n or len(labels) != n:
        raise ValueError(f"{len(ids)} rows for {n} examples")
    tt = _split(a["token_type_ids"], a["tt_lengths"]) if "token_type_ids" in a else None
    positions = a["positions"].tolist()
    if positions and len(positions) != n:
        raise ValueError("positions do not match the examples")
    return Encoded(task, ids, tt, labels, positions)


_WRITE_FAILED: set[Path | None] = set()  # cache folders this process could not write to


def get_cache() -> EvalCache:
    """The cache the environment asks for (``$MTGRAFT_EVAL_CACHE``; read at each call)."""
    return EvalCache(cache_root())
