"""Encoding examples for a task model's prediction type, and dynamic-padding batches."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch

from mtgraft.models.task_model import TaskModel

_PLACEHOLDER = re.compile(r"(\{x\}|\{x1\}|\{x2\}|\{mask\})")


@dataclass
class Encoded:
    """Tokenised examples of one task, ready for dynamic padding."""

    task: str
    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    labels: list[int]
    positions: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)


def _special_wrap(tok: Any) -> tuple[list[int], list[int]]:
    """Special tokens the tokenizer puts before/after a single sequence."""
    probe = tok.encode("a", add_special_tokens=False)
    full = tok("a")["input_ids"]
    for i in range(len(full) - len(probe) + 1):
        if full[i:i + len(probe)] == probe:
            return full[:i], full[i + len(probe):]
    return [], []


def causal_prompt(template: str) -> str:
    """The prompt a causal LM continues with a label word: the template up to its ``{mask}`` when the text comes
    before it (``{x} It was {mask} .`` -> ``{x} It was``); a template that puts the label first
    (``{mask} : {x}``) has nothing to continue from, so its text is followed by `` Answer:`` instead
    (``{x} Answer:``) — docs/method.md §1."""
    before = template.split("{mask}")[0].rstrip()
    if _PLACEHOLDER.search(before):
        return before
    rest = template.replace("{mask}", "").strip(" :-\t\n")
    return f"{rest} Answer:"


def encode_examples(model: TaskModel, task: str, examples: list[Any], max_length: int) -> Encoded:
    """Tokenise ``examples`` (``Example`` objects) for ``task`` with the model's prediction type."""
    tok = model.tokenizer
    info = model.tasks[task]
    labels = [int(e.label) for e in examples]
    if model.model_type == "head":
        texts = [e.text for e in examples]
        pairs = [e.text_b for e in examples] if info.pair else None
        enc = tok(texts, pairs, truncation=True, max_length=max_length)
        tt = enc.get("token_type_ids")
        return Encoded(task, enc["input_ids"], tt, labels)
    template = info.template or ""
    if model.model_type == "causal":
        template = causal_prompt(template)
    parts = [p for p in _PLACEHOLDER.split(template) if p != ""]
    pre, post = _special_wrap(tok)
    if model.model_type == "causal":
        post = []  # the label word is predicted right after the template
    lit_cache: dict[str, list[int]] = {}
    ids_all, positions = [], []
    for e in examples:
        texts = {"{x}": e.text, "{x1}": e.text, "{x2}": e.text_b or ""}
        pieces: list[tuple[str, list[int]]] = []
        for p in parts:
            if p in texts:
                pieces.append(("text", tok.encode(texts[p], add_special_tokens=False)))
            elif p == "{mask}":
                pieces.append(("mask", [tok.mask_token_id]))
            else:
                if p not in lit_cache:
                    lit_cache[p] = tok.encode(p, add_special_tokens=False)
                pieces.append(("lit", lit_cache[p]))
        fixed = len(pre) + len(post) + sum(len(t) for k, t in pieces if k != "text")
        budget = max(1, max_length - fixed)
        text_lens = [len(t) for k, t in pieces if k == "text"]
        # truncate the longest text piece first until everything fits
        while sum(text_lens) > budget:
            i = max(range(len(text_lens)), key=lambda j: text_lens[j])
            text_lens[i] -= 1
        out = list(pre)
        ti = 0
        for k, t in pieces:
            if k == "text":
                out.extend(t[: text_lens[ti]])
                ti += 1
            else:
                out.extend(t)
        out.extend(post)
        if model.model_type == "prompt":
            positions.append(out.index(tok.mask_token_id))
        else:
            positions.append(len(out) - 1)
        ids_all.append(out)
    return Encoded(task, ids_all, None, labels, positions)


def collate(enc: Encoded, idx: list[int] | range, pad_id: int, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Pad the examples ``idx`` of ``enc`` to their longest (dynamic padding) as tensors on ``device``."""
    seqs = [enc.input_ids[i] for i in idx]
    n, L = len(seqs), max(len(s) for s in seqs)
    ids = torch.full((n, L), pad_id, dtype=torch.long)
    mask = torch.zeros((n, L), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[r, : len(s)] = 1
    batch: dict[str, Any] = {"input_ids": ids.to(device), "attention_mask": mask.to(device), "task": enc.task}
    if enc.token_type_ids is not None:
        tt = torch.zeros((n, L), dtype=torch.long)
        for r, i in enumerate(idx):
            s = enc.token_type_ids[i]
            tt[r, : len(s)] = torch.tensor(s, dtype=torch.long)
        batch["token_type_ids"] = tt.to(device)
    if enc.positions:
        batch["positions"] = torch.tensor([enc.positions[i] for i in idx], dtype=torch.long).to(device)
    batch["labels"] = torch.tensor([enc.labels[i] for i in idx], dtype=torch.long).to(device)
    return batch


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of :meth:`TaskModel.forward` from a collated batch."""
    return {k: v for k, v in batch.items() if k != "labels"}
