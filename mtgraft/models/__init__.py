"""Backbones and the three prediction types (docs/method.md §1), checkpoints, graftable sets.

The package's face: ``loading`` (backbones, tokenizers), ``task_model`` (:class:`TaskModel`, :class:`TaskInfo`),
``checkpoint`` (save/read/load) and ``encoding`` (examples to padded batches).
"""

from mtgraft.models.checkpoint import (
    CHECKPOINT_META,
    HEADS_FILE,
    CheckpointMeta,
    json_dump,
    load_checkpoint,
    load_pretrained_like,
    read_checkpoint_meta,
    resolve_task,
    save_checkpoint,
)
from mtgraft.models.encoding import Encoded, collate, encode_examples, model_inputs
from mtgraft.models.loading import MODEL_ALIASES, load_backbone, load_tokenizer, resolve_model_path
from mtgraft.models.task_model import TaskInfo, TaskModel, build_task_model

__all__ = [
    "CHECKPOINT_META",
    "HEADS_FILE",
    "MODEL_ALIASES",
    "CheckpointMeta",
    "Encoded",
    "TaskInfo",
    "TaskModel",
    "build_task_model",
    "collate",
    "encode_examples",
    "json_dump",
    "load_backbone",
    "load_checkpoint",
    "load_pretrained_like",
    "load_tokenizer",
    "model_inputs",
    "read_checkpoint_meta",
    "resolve_model_path",
    "resolve_task",
    "save_checkpoint",
]
