"""The task model: a backbone and the three prediction types (docs/method.md §1), graftable sets.

A :class:`TaskModel` wraps a Hugging Face backbone and maps a batch to logits over a task's labels:

- ``head``: an encoder plus one new linear head per task on a pooled representation of the input: the
  first token, the mean over the real (non-padding) tokens, or the pretrained pooler (``TaskInfo.pooling``,
  docs/method.md §1; recorded with every checkpoint and patch, absent = first token);
- ``prompt``: a masked LM; logits of the label words at the template's mask position;
- ``causal``: a causal LM; logits of the label words' first token after the template.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from mtgraft.errors import MtgraftError
from mtgraft.models.loading import load_backbone, load_tokenizer, resolve_model_path, shipped_pooling
from mtgraft.utils import content_hash

Pooling = Literal["first", "mean", "pooler"]
POOLINGS = ("first", "mean", "pooler")


class TaskInfo(BaseModel):
    """What a model needs to know about a task: its labels, label words and template."""

    model_config = ConfigDict(extra="ignore")
    name: str
    labels: list[str]
    label_words: list[str] | None = None
    template: str | None = None
    pair: bool = False
    spec_file: str | None = None  # local tasks: the task YAML, so later stages can find the data by itself
    # ``head`` type: what the task's head reads (None = the first token: checkpoints and patches from before
    # the option had no such key and were trained on the first token)
    pooling: Pooling | None = None

    @property
    def head_input(self) -> str:
        """The pooling this task's head reads (``first`` when none is recorded)."""
        return self.pooling or "first"

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

    def context_names(self) -> list[str]:
        """Backbone tensors outside the graftable set that the forward pass uses: the embeddings, and for
        ``prompt``/``causal`` the LM head (a ``head`` model's pooler only when a task's head reads it,
        ``pooling='pooler'``). A patch's effect depends on them as much as on the graftable body."""
        skip = set(self.graftable_names())
        if self.model_type == "head":
            uses_pooler = any(t.head_input == "pooler" for t in self.tasks.values())
            skip |= {n for n in self.lm_head_param_names() if not (uses_pooler and n.startswith("backbone.pooler."))}
        return [n for n, _ in self.named_parameters() if n.startswith("backbone.") and n not in skip]

    def context_hash(self) -> str:
        """Content hash of :meth:`context_names` (recorded in a patch next to the base hash, which it leaves
        unchanged: registry names depend on the base hash)."""
        params = dict(self.named_parameters())
        return content_hash((n, params[n]) for n in self.context_names())

    # -- forward ------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, task: str,
                token_type_ids: torch.Tensor | None = None, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Logits over the task's labels, shape [batch, n_labels]."""
        kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        if self.model_type == "head":
            out = self.backbone(**kwargs)
            hidden = pool(out, attention_mask, self.tasks[task].head_input)
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


def pool(out: Any, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """What a ``head`` reads from an encoder output: the first token, the mean of the real tokens (padding
    excluded by ``attention_mask``), or the pretrained pooler's output (docs/method.md §1)."""
    hidden = out.last_hidden_state
    if pooling == "first":
        return hidden[:, 0]
    if pooling == "mean":
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)
    if pooling == "pooler":
        pooled = getattr(out, "pooler_output", None)
        if pooled is None:
            raise MtgraftError("pooling 'pooler' needs a backbone with a pooler layer; this one has none")
        return pooled
    raise MtgraftError(f"unknown pooling '{pooling}' (use first, mean or pooler)")


def resolve_pooling(pooling: str | None, path: str, model_type: str) -> str | None:
    """The concrete pooling of a ``head`` model: ``auto`` is the pooling the model ships in its
    sentence-transformers config (mean for all-MiniLM-L6-v2) when it ships one, else the first token.
    None for ``prompt``/``causal`` (no new head)."""
    if model_type != "head":
        return None
    if pooling in (None, "auto"):
        return shipped_pooling(path) or "first"
    if pooling not in POOLINGS:
        raise MtgraftError(f"unknown pooling '{pooling}' (use auto, first, mean or pooler)")
    return pooling


def warn_type_mismatch(model: str, model_type: str) -> None:
    """A warning when an embedded causal LM is given a ``head`` or ``prompt`` type (a head on the first token of a
    causal model reads a token that has seen nothing else)."""
    from mtgraft.models.embedded import embedded_model

    em = embedded_model(model)
    if em is not None and em.kind == "causal" and model_type != "causal":
        from mtgraft.progress import warn

        warn(f"'{model}' is a causal language model: --type {model_type} reads a token through a new head or an MLM "
             "mask, and with causal attention an early token has seen little of the text; the paper's regime for it "
             "is --type causal (docs/models.md)")


def build_task_model(model: str, model_type: str, tasks: list[TaskInfo] | list[Any],
                     pooling: str | None = None) -> TaskModel:
    """A pretrained backbone (by name or folder, 'minilm' = embedded default) with new task heads.

    ``pooling`` (``auto``, ``first``, ``mean``, ``pooler``) sets what every new head reads; None keeps what
    each ``TaskInfo`` records (rebuilding the pretrained model of a checkpoint or patch)."""
    infos = [t if isinstance(t, TaskInfo) else TaskInfo.from_spec(t) for t in tasks]
    if pooling is not None:  # a new model (training): say when the type does not suit an embedded model
        warn_type_mismatch(model, model_type)
    path = resolve_model_path(model)
    if pooling is not None:
        chosen = resolve_pooling(pooling, path, model_type)
        infos = [t.model_copy(update={"pooling": chosen}) for t in infos]
    tok = load_tokenizer(path)
    if model_type == "prompt" and tok.mask_token_id is None:
        raise MtgraftError(f"type 'prompt' needs a tokenizer with a mask token; '{model}' has none")
    backbone = load_backbone(path, model_type, pooler=any(t.pooling == "pooler" for t in infos))
    return TaskModel(backbone, model_type, infos, tok, pretrained_name=model)
