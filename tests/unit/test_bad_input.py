"""Bad input, caught early: every user mistake in ``docs/errors.md`` is one row of ``CASES`` and one test.

Each row runs the real CLI on tiny inputs and asserts: a non-zero exit, exactly one non-empty line on
stderr starting with ``error:``, no traceback, the expected message, no output left behind (the ``--out``
path and its ``.tmp`` siblings) and no new registered SkillPatch version. ``scripts/gen_error_table.py``
runs the same rows and writes the table in ``docs/errors.md`` from what a user really sees.
"""

from __future__ import annotations

import errno
import json
import math
import os
import random
import re
import shutil
import socket
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

DISK_FULL = "No space left on device"


# ---------------------------------------------------------------------------------------------- the workspace


@dataclass
class Env:
    """Inputs shared by every row: tiny models, checkpoints, a patch, bad files, an MLflow store."""

    root: Path
    task: str  # the small local example task (negative/positive)
    topic: str  # a second local task with other labels (food/sport)
    model: str  # tiny random 'head' model
    other_model: str  # another tiny model (different weights): "another base model"
    ck: str  # single-task checkpoint of ``task``
    joint: str  # joint checkpoint of ``task`` + ``topic``
    patch: str  # a real SkillPatch of ``ck``
    db_uri: str  # sqlite MLflow store
    closed_port: int
    files: dict[str, str] = field(default_factory=dict)  # bad inputs, by name

    def out(self, case_id: str) -> Path:
        """The output path of a row (must not exist after it)."""
        return self.root / "outs" / case_id


def free_port() -> int:
    """A loopback port with nothing listening on it (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _local_task(folder: Path, name: str, rows: str, labels: str = "[negative, positive]", ext: str = "csv",
                extra: str = "") -> str:
    folder.mkdir(parents=True, exist_ok=True)
    if rows:
        (folder / f"{name}.{ext}").write_text(rows)
    y = folder / f"{name}.yaml"
    y.write_text(f"name: {name}\ntrain: {name}.{ext}\ntext_column: text\nlabel_column: label\nlabels: {labels}\n"
                 + extra)
    return str(y)


def hostile_patch(src: str, dst: Path, edit: Callable[[dict[str, Any], dict[str, Any]], None]) -> str:
    """A copy of the SkillPatch ``src`` with ``edit(tensors, header)`` applied and a matching payload hash: what
    a hostile (or badly written) file looks like past the checks a corrupt file fails."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from mtgraft.patches.header import HEADER_KEY
    from mtgraft.utils import content_hash

    with safe_open(src, framework="pt") as f:
        header = json.loads(f.metadata()[HEADER_KEY])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    edit(tensors, header)
    header["payload_hash"] = content_hash(sorted(tensors.items()))
    save_file(tensors, str(dst), metadata={HEADER_KEY: json.dumps(header)})
    return str(dst)


def _largest_idx(tensors: dict[str, Any]) -> str:
    """The ``idx/`` key with the most entries (a tensor of the region with at least two)."""
    return max((k for k in tensors if k.startswith("idx/")), key=lambda k: tensors[k].numel())


def _idx_edit(how: str) -> Callable[[dict[str, Any], dict[str, Any]], None]:
    def edit(tensors: dict[str, Any], header: dict[str, Any]) -> None:
        key = _largest_idx(tensors)
        idx = tensors[key]
        if how == "out_of_range":
            idx[-1] = math.prod(dict(header["graftable"])[key[4:]]) + 7
        elif how == "negative":
            idx[0] = -1
        elif how == "repeated":
            idx[1] = idx[0]
        elif how == "unsorted":
            idx[0], idx[1] = int(idx[1]), int(idx[0])
        elif how == "nan":
            tensors["val/" + key[4:]][0] = float("nan")
        elif how == "huge_header":
            header["padding"] = "x" * (6 * 2**20)
    return edit


def _emb_changed_model(model: str, out: Path) -> str:
    """A copy of the tiny model whose word embeddings differ while the body (graftable tensors) is the same."""
    import torch
    from transformers import AutoModelForMaskedLM

    shutil.copytree(model, out)
    m = AutoModelForMaskedLM.from_pretrained(model)
    with torch.no_grad():
        m.get_input_embeddings().weight.add_(0.01)
    m.save_pretrained(out)
    return str(out)


def build_env(root: Path, mlflow_db: Path | None = None) -> Env:
    """Build every input of the rows under ``root`` (a few seconds: tiny models, one 1-update graft).

    ``mlflow_db``: an empty migrated MLflow sqlite store to copy (created here when not given).
    """
    from mtgraft.grafting import GraftConfig, run_graft
    from mtgraft.models import CheckpointMeta, build_task_model, save_checkpoint
    from mtgraft.tasks import get_task
    from mtgraft.testing import example_task_yaml, make_tiny_checkpoint, make_tiny_model

    root.mkdir(parents=True, exist_ok=True)
    task = example_task_yaml()
    tasks_dir = root / "tasks"
    topic_rows = "text,label\n" + "".join(
        f'"{t}",{y}\n' for t, y in [
            ("The striker scored twice in the second half.", "sport"), ("She won the match in three sets.", "sport"),
            ("The team trained hard before the final.", "sport"), ("A late goal gave them the cup.", "sport"),
            ("Simmer the onions until golden.", "food"), ("Add salt to the boiling pasta water.", "food"),
            ("The dough must rise for two hours.", "food"), ("Whisk the eggs with sugar.", "food")])
    topic = _local_task(tasks_dir, "tiny_topic", topic_rows, labels="[food, sport]")
    model = make_tiny_model("head", root / "tiny", seed=3)
    other = make_tiny_model("head", root / "tiny_other", seed=4)
    ck = make_tiny_checkpoint(root / "ck", model, task, data={"k": 2, "seed": 13, "max_test": None,
                                                                 "max_length": 32})
    specs = [get_task(task), get_task(topic)]
    jm = build_task_model(model, "head", specs)
    joint = str(root / "joint")
    save_checkpoint(jm, CheckpointMeta(model_type="head", tasks=list(jm.tasks.values()),
                                       pretrained={"name": model, "hash": jm.base_hash()},
                                       data={"k": 2, "seed": 13, "max_test": None, "max_length": 32},
                                       mode="joint", order=[s.name for s in specs]), joint)
    res = run_graft(GraftConfig(task=task, finetuned=ck, sparsity=[0.01], method=["graft"], updates=1,
                                out=str(root / "graft"), track=False, do_register=False), show_progress=False)
    patch = res[0].results[0]["patch"]

    files: dict[str, str] = {}
    good_rows = Path(task).with_suffix(".csv").read_text().replace("review,sentiment", "text,label", 1)
    files["missing_csv"] = _local_task(tasks_dir, "missing_csv", "")
    files["bad_csv"] = _local_task(tasks_dir, "bad_csv", good_rows + '"an extra field",positive,5\n')
    files["bad_jsonl"] = _local_task(tasks_dir, "bad_jsonl", '{"text": "fine", "label": "positive"}\n{"text": "oops\n',
                                     ext="jsonl")
    files["outside_labels"] = _local_task(tasks_dir, "outside_labels", good_rows + '"It was fine.",neutral\n')
    files["empty_labels"] = _local_task(tasks_dir, "empty_labels", good_rows + '"A row without label.",\n'
                                        '"Another one.",  \n')
    files["empty_task"] = _local_task(tasks_dir, "empty_task", "text,label\n" + '"   ",positive\n' * 4
                                      + '" ",negative\n' * 4)
    # a truncated checkpoint (its weights file cut in half) and a truncated patch
    bad_ck = root / "ck_truncated"
    shutil.copytree(ck, bad_ck)
    weights = bad_ck / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    files["truncated_ck"] = str(bad_ck)
    bad_meta = root / "ck_bad_meta"
    shutil.copytree(ck, bad_meta, ignore=shutil.ignore_patterns("*.safetensors"))
    (bad_meta / "mtgraft.json").write_text('{"format": "mtgraft.checkpoint", "model_type": ')
    files["bad_meta_ck"] = str(bad_meta)
    cut = root / "truncated.skillpatch.safetensors"
    data = Path(patch).read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    files["truncated_patch"] = str(cut)
    junk = root / "random.safetensors"
    junk.write_bytes(random.Random(0).randbytes(4096))  # seeded: the same message every run
    files["random_bytes"] = str(junk)
    for how in ("out_of_range", "negative", "repeated", "unsorted", "nan", "huge_header"):
        files[f"patch_{how}"] = hostile_patch(patch, root / f"hostile_{how}.skillpatch.safetensors", _idx_edit(how))
    files["wide_model"] = make_tiny_model("head", root / "tiny_wide", seed=3, hidden=48)
    files["emb_model"] = _emb_changed_model(model, root / "tiny_emb")
    gone = root / "ck_yaml_gone"  # a checkpoint whose recorded task YAML no longer exists
    shutil.copytree(ck, gone)
    meta = json.loads((gone / "mtgraft.json").read_text())
    meta["tasks"][0]["spec_file"] = str(root / "moved" / "example_local.yaml")
    (gone / "mtgraft.json").write_text(json.dumps(meta))
    files["ck_yaml_gone"] = str(gone)
    blocker = root / "a_file.txt"
    blocker.write_text("not a folder\n")
    files["blocker"] = str(blocker)
    cfg = root / "configs"
    cfg.mkdir()
    (cfg / "unknown_key.yaml").write_text(f"task: {task}\nmodel: {model}\nmax_step: 10\n")
    (cfg / "wrong_type.yaml").write_text(f"task: {task}\nmodel: {model}\nmax_steps: many\n")
    (cfg / "study_unknown_key.yaml").write_text(f"name: s\nkind: single\ntasks: [{task}]\nmodel: {model}\n"
                                                f"trian: {{max_steps: 1}}\n")
    files.update({k: str(cfg / f"{k}.yaml") for k in ("unknown_key", "wrong_type", "study_unknown_key")})

    db = root / "mlflow.db"
    if mlflow_db is not None:
        shutil.copy(mlflow_db, db)
    else:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        SqlAlchemyStore(f"sqlite:///{db}", str(root / "mlartifacts"))
    return Env(root=root, task=task, topic=topic, model=model, other_model=other, ck=ck, joint=joint, patch=patch,
               db_uri=f"sqlite:///{db}", closed_port=free_port(), files=files)


# ---------------------------------------------------------------------------------------------- failure injection


def disk_full(mp: pytest.MonkeyPatch, target: str) -> None:
    """Make the safetensors ``save_file`` at ``target`` (``module.attr``) write half its bytes, then fail
    with ENOSPC, as a full disk does mid-write."""
    import safetensors.torch as st

    def full(tensors: dict[str, Any], filename: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
        data = st.save(tensors, metadata=metadata)
        with open(filename, "wb") as f:
            f.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, DISK_FULL)

    mp.setattr(target, full)


def disk_full_bytes(mp: pytest.MonkeyPatch) -> None:
    """Make ``atomic_file`` writers (SkillPatch.save, JSON) fail with ENOSPC when the written bytes are
    flushed to disk (``os.fsync``), as a full disk does."""
    import mtgraft.utils as u

    def fsync(fd: int) -> None:
        raise OSError(errno.ENOSPC, DISK_FULL)

    mp.setattr(u.os, "fsync", fsync)


def hub_offline(mp: pytest.MonkeyPatch) -> None:
    """No network to the Hugging Face hub (fast: the probe is skipped)."""
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("HF_DATASETS_OFFLINE", "1")


# ---------------------------------------------------------------------------------------------- the rows


@dataclass
class Case:
    """One user mistake: the command line, what is wrong, the message pattern the user must see."""

    id: str
    command: str
    mistake: str
    args: Callable[[Env], list[str]]
    expect: str  # regex searched in the error line
    setup: Callable[[Env, pytest.MonkeyPatch], None] | None = None
    needs_model: bool = False  # may load a model first (else: found before any model is loaded)
    late: bool = False  # can only happen while results are written (else: before any training/grafting)


def _train(e: Env, cid: str, *extra: str) -> list[str]:
    return ["train", "--task", e.task, "--model", e.model, "--k", "2", "--max-steps", "1", "--eval-every", "1",
            "--max-length", "32", "--out", str(e.out(cid)), *extra]


def _graft(e: Env, cid: str, *extra: str) -> list[str]:
    return ["graft", "--task", e.task, "--finetuned", e.ck, "--method", "graft", "--sparsity", "0.01",
            "--updates", "1", "--max-test", "8", "--no-register", "--out", str(e.out(cid)), *extra]


CASES: list[Case] = [
    # --- train -------------------------------------------------------------------------------------------
    Case("train-unknown-task", "train", "a task name that is not in the catalog (and not a YAML path)",
         lambda e: _train(e, "train-unknown-task", "--task", "rotten_tomatos"),
         r"unknown task 'rotten_tomatos'; did you mean 'rotten_tomatoes'"),
    Case("train-prompt-no-mlm", "train", "`--type prompt` on a model without a masked-LM head (the embedded minilm)",
         lambda e: _train(e, "train-prompt-no-mlm", "--type", "prompt", "--model", "minilm"),
         r"type 'prompt' needs a masked LM head, but .* has none", needs_model=True),
    Case("train-k-too-large", "train", "K larger than half the smallest class (K train + K dev per class)",
         lambda e: _train(e, "train-k-too-large", "--k", "500"),
         r"k=500 per class needs 1000 examples of class 'negative' .* but it has 6 \(largest possible k: 3\)"),
    Case("train-bad-k", "train", "K that is not a positive integer or 'all'",
         lambda e: _train(e, "train-bad-k", "--k", "0"),
         r"invalid options: k: k must be a positive integer or 'all'"),
    Case("train-negative-lr", "train", "a negative learning rate",
         lambda e: _train(e, "train-negative-lr", "--lr", "-1"), r"invalid options: lr: .*greater than 0"),
    Case("train-missing-csv", "train", "a task YAML whose data file does not exist",
         lambda e: _train(e, "train-missing-csv", "--task", e.files["missing_csv"]),
         r"task file .*missing_csv\.yaml: train file not found: .*missing_csv\.csv"),
    Case("train-malformed-csv", "train", "a malformed csv (a row with more fields than the header)",
         lambda e: _train(e, "train-malformed-csv", "--task", e.files["bad_csv"]),
         r"bad_csv\.csv: line 18 has 3 fields, the header has 2"),
    Case("train-malformed-jsonl", "train", "a malformed jsonl (a line that is not valid JSON)",
         lambda e: _train(e, "train-malformed-jsonl", "--task", e.files["bad_jsonl"]),
         r"bad_jsonl\.jsonl: line 2 is not valid JSON"),
    Case("train-labels-outside", "train", "data rows with labels outside the task's declared `labels`",
         lambda e: _train(e, "train-labels-outside", "--task", e.files["outside_labels"]),
         r"1 row\(s\) have labels outside the declared labels \['negative', 'positive'\]: 'neutral'"),
    Case("train-empty-labels", "train", "a local task whose label column has empty cells (`empty_labels: error`, "
         "the default)",
         lambda e: _train(e, "train-empty-labels", "--task", e.files["empty_labels"]),
         r"empty_labels\.csv: 2 of \d+ row\(s\) have an empty label in column 'label' \(first: data row \d+\); "
         r"fill them in, or set 'empty_labels: drop' in the task YAML"),
    Case("train-empty-task", "train", "a task with no examples left after filtering (empty texts)",
         lambda e: _train(e, "train-empty-task", "--task", e.files["empty_task"]),
         r"task 'empty_task' has no training examples after filtering"),
    Case("train-hub-offline", "train", "a hub task (sst2) with no network",
         lambda e: _train(e, "train-hub-offline", "--task", "sst2"),
         r"task 'sst2' needs the Hugging Face hub \(nyu-mll/glue/sst2\), which cannot be reached",
         setup=lambda e, mp: hub_offline(mp)),
    Case("train-out-unwritable", "train", "an `--out` that cannot be created (below a regular file)",
         lambda e: _train(e, "train-out-unwritable")[:-1] + [e.files["blocker"] + "/sub/ck"],
         r"cannot write to output folder '.*a_file\.txt/sub': Not a directory"),
    Case("train-config-unknown-key", "train", "a `--config` YAML with an unknown key (a typo)",
         lambda e: ["train", "--config", e.files["unknown_key"], "--out", str(e.out("train-config-unknown-key"))],
         r"invalid config \(.*unknown_key\.yaml\): max_step: unknown key"),
    Case("train-config-wrong-type", "train", "a `--config` YAML with a value of the wrong type",
         lambda e: ["train", "--config", e.files["wrong_type"], "--out", str(e.out("train-config-wrong-type"))],
         r"invalid config \(.*wrong_type\.yaml\): max_steps: Input should be a valid integer"),
    Case("train-config-missing", "train", "a `--config` file that does not exist",
         lambda e: ["train", "--config", str(e.root / "nope.yaml"), "--out", str(e.out("train-config-missing"))],
         r"config file not found: .*nope\.yaml"),
    Case("train-unknown-device", "train", "an unknown `--device`",
         lambda e: _train(e, "train-unknown-device", "--device", "tpu"), r"unknown device 'tpu' \(use auto, cpu or cuda\)"),
    Case("train-tracking-unreachable", "train", "an unreachable MLflow tracking server",
         lambda e: _train(e, "train-tracking-unreachable", "--tracking-uri", f"http://127.0.0.1:{e.closed_port}"),
         r"cannot reach the MLflow tracking server at http://127\.0\.0\.1:\d+: .*[Cc]onnection refused",
         needs_model=True),
    Case("train-disk-full", "train", "the disk fills up while the checkpoint is written (simulated)",
         lambda e: _train(e, "train-disk-full", "--json"),
         r"cannot write '.*train-disk-full': No space left on device",
         setup=lambda e, mp: disk_full(mp, "mtgraft.models.checkpoint.save_file"), late=True),
    Case("train-seed-and-seeds", "train", "`--seed` and `--seeds` together (one seed or a list of them)",
         lambda e: _train(e, "train-seed-and-seeds", "--seed", "13", "--seeds", "13,21"),
         r"give either --seed or --seeds, not both \(--seeds 13 is the same as --seed 13\)"),
    Case("graft-duplicate-seeds", "graft", "a seed given twice in `--seeds`",
         lambda e: _graft(e, "graft-duplicate-seeds", "--seeds", "13,21,13"),
         r"--seeds '13,21,13': seeds must be distinct, 13 given twice \(e\.g\. --seeds 13,21,42\)"),
    # --- graft -------------------------------------------------------------------------------------------
    Case("graft-sparsity-zero", "graft", "sparsity ≤ 0",
         lambda e: _graft(e, "graft-sparsity-zero", "--sparsity", "0"), r"invalid options: sparsity: sparsity must be in \(0, 1\], got 0"),
    Case("graft-sparsity-above-one", "graft", "sparsity > 1",
         lambda e: _graft(e, "graft-sparsity-above-one", "--sparsity", "1.5"),
         r"sparsity must be in \(0, 1\], got 1\.5"),
    Case("graft-sparsity-empty-region", "graft", "a sparsity so small that the region is empty (k = 0)",
         lambda e: _graft(e, "graft-sparsity-empty-region", "--sparsity", "1e-9"),
         r"sparsity 1e-09 of [\d,]+ graftable parameters is an empty region \(k = 0\); use at least",
         needs_model=True),
    Case("graft-wrong-task", "graft", "a checkpoint fine-tuned on another task than `--task`",
         lambda e: _graft(e, "graft-wrong-task", "--task", e.topic),
         r"the checkpoint was trained on \[example_local\], not on task 'tiny_topic'"),
    Case("graft-multitask-unseen", "graft", "a multi-task checkpoint grafted for a task it never saw",
         lambda e: _graft(e, "graft-multitask-unseen", "--finetuned", e.joint, "--task", "rotten_tomatoes"),
         r"the checkpoint was trained on \[example_local, tiny_topic\], not on task 'rotten_tomatoes'"),
    Case("graft-truncated-checkpoint", "graft", "a truncated checkpoint (weights file cut short)",
         lambda e: _graft(e, "graft-truncated-checkpoint", "--finetuned", e.files["truncated_ck"]),
         r"corrupt or incomplete checkpoint .*ck_truncated: .*incomplete metadata", needs_model=True),
    Case("graft-corrupt-checkpoint-meta", "graft", "a checkpoint whose metadata file (mtgraft.json) is cut short",
         lambda e: _graft(e, "graft-corrupt-checkpoint-meta", "--finetuned", e.files["bad_meta_ck"]),
         r"corrupt checkpoint metadata .*ck_bad_meta/mtgraft\.json: Invalid JSON: EOF while parsing"),
    Case("graft-not-a-checkpoint", "graft", "`--finetuned` is a plain model folder, not an mtgraft checkpoint",
         lambda e: _graft(e, "graft-not-a-checkpoint", "--finetuned", e.model),
         r"'.*tiny' is not an mtgraft checkpoint \(no mtgraft\.json\)"),
    Case("graft-other-pretrained", "graft", "`--pretrained` is not the model the checkpoint was fine-tuned from",
         lambda e: _graft(e, "graft-other-pretrained", "--pretrained", e.other_model),
         r"pretrained model '.*tiny_other' is not the one checkpoint .* was fine-tuned from",
         needs_model=True),
    Case("graft-unknown-method", "graft", "an unknown `--method`",
         lambda e: _graft(e, "graft-unknown-method", "--method", "graft,magic"),
         r"unknown method 'magic' \(available: .*graft"),
    Case("graft-incompatible-eval-tasks", "graft", "`--eval-tasks` with a different label space (transfer)",
         lambda e: _graft(e, "graft-incompatible-eval-tasks", "--eval-tasks", e.topic),
         r"cannot evaluate 'example_local' on 'tiny_topic': label spaces differ"),
    Case("graft-tracking-unreachable", "graft", "an unreachable MLflow tracking server (patches to register)",
         lambda e: [*_graft(e, "graft-tracking-unreachable", "--tracking-uri",
                            f"http://127.0.0.1:{e.closed_port}"), "--register"],
         r"cannot reach the MLflow tracking server at http://127\.0\.0\.1:\d+"),
    Case("graft-disk-full", "graft", "the disk fills up while a SkillPatch is written (simulated)",
         lambda e: [*_graft(e, "graft-disk-full"), "--register", "--json"],
         r"cannot write '.*graft-disk-full': No space left on device",
         # the disk fills up at the patch, not before: the evaluation cache (written earlier) is off here
         setup=lambda e, mp: (disk_full_bytes(mp), mp.setenv("MTGRAFT_EVAL_CACHE", "off")), late=True),
    # --- eval --------------------------------------------------------------------------------------------
    Case("eval-model-and-patch", "eval", "both `--model` and `--patch`",
         lambda e: ["eval", "--model", e.ck, "--patch", e.patch, "--out", str(e.out("eval-model-and-patch"))],
         r"give exactly one of --model DIR or --patch PATCH"),
    Case("eval-neither", "eval", "neither `--model` nor `--patch`",
         lambda e: ["eval", "--out", str(e.out("eval-neither"))], r"give exactly one of --model DIR or --patch PATCH"),
    Case("eval-wrong-task", "eval", "a checkpoint evaluated on a task it was not trained on",
         lambda e: ["eval", "--model", e.ck, "--task", e.topic, "--out", str(e.out("eval-wrong-task"))],
         r"the checkpoint was trained on \[example_local\], not on task 'tiny_topic'"),
    Case("eval-incompatible-eval-tasks", "eval", "`--eval-tasks` with a different label space (transfer)",
         lambda e: ["eval", "--model", e.ck, "--task", e.task, "--eval-tasks", e.topic, "--out",
                    str(e.out("eval-incompatible-eval-tasks"))],
         r"cannot evaluate 'example_local' on 'tiny_topic': label spaces differ"),
    Case("eval-patch-wrong-task", "eval", "a patch evaluated on a task it was not grafted for",
         lambda e: ["eval", "--patch", e.patch, "--task", e.topic, "--out", str(e.out("eval-patch-wrong-task"))],
         r"is for task\(s\) \['example_local'\], not 'tiny_topic'"),
    Case("eval-local-task-unrecorded", "eval", "a checkpoint of a local task whose recorded task YAML no longer "
         "exists, without `--task`",
         lambda e: ["eval", "--model", e.files["ck_yaml_gone"], "--out", str(e.out("eval-local-task-unrecorded"))],
         r"checkpoint .*ck_yaml_gone is for the local task 'example_local', whose task YAML is not recorded or no longer "
         r"exists: give --task PATH\.yaml"),
    # --- patch -------------------------------------------------------------------------------------------
    Case("patch-apply-other-base", "patch apply", "a patch applied to another base model",
         lambda e: ["patch", "apply", e.patch, "--to", e.other_model, "--out", str(e.out("patch-apply-other-base"))],
         r"base model '.*tiny_other' has content hash sha256:\w+…, but the patches were made for .*tiny "
         r"\(sha256:\w+…\) — refusing to apply", needs_model=True),
    Case("patch-info-random-bytes", "patch info", "a file that is not a SkillPatch (random bytes)",
         lambda e: ["patch", "info", e.files["random_bytes"]], r"is not a readable SkillPatch"),
    Case("patch-apply-truncated", "patch apply", "a truncated SkillPatch file",
         lambda e: ["patch", "apply", e.files["truncated_patch"], "--out", str(e.out("patch-apply-truncated"))],
         r"is not a readable SkillPatch \(not a safetensors file, truncated or corrupt"),
    Case("patch-apply-disk-full", "patch apply", "the disk fills up while the grafted model is written (simulated)",
         lambda e: ["patch", "apply", e.patch, "--out", str(e.out("patch-apply-disk-full"))],
         r"cannot write '.*patch-apply-disk-full': No space left on device",
         setup=lambda e, mp: disk_full(mp, "mtgraft.models.checkpoint.save_file"), late=True),
    Case("patch-apply-index-out-of-range", "patch apply", "a SkillPatch with an index past the end of its tensor",
         lambda e: ["patch", "apply", e.files["patch_out_of_range"], "--out", str(e.out("patch-apply-index-out-of-range"))],
         r"index \d+ is out of range for '[\w.]+' of shape \(\d+(, \d+)*\) \(\d+ entries\)"),
    Case("patch-apply-negative-index", "patch apply", "a SkillPatch with a negative index",
         lambda e: ["patch", "apply", e.files["patch_negative"], "--out", str(e.out("patch-apply-negative-index"))],
         r"SkillPatch: '[\w.]+' has a negative index \(-1\)"),
    Case("patch-apply-repeated-index", "patch apply", "a SkillPatch that lists an entry twice",
         lambda e: ["patch", "apply", e.files["patch_repeated"], "--out", str(e.out("patch-apply-repeated-index"))],
         r"SkillPatch: indices of '[\w.]+' repeat entry \d+"),
    Case("patch-apply-unsorted-index", "patch apply", "a SkillPatch whose indices are not in increasing order",
         lambda e: ["patch", "apply", e.files["patch_unsorted"], "--out", str(e.out("patch-apply-unsorted-index"))],
         r"SkillPatch: indices of '[\w.]+' are not sorted \(position 1: \d+ after \d+\)"),
    Case("patch-apply-nan-values", "patch apply", "a SkillPatch whose values hold NaN",
         lambda e: ["patch", "apply", e.files["patch_nan"], "--out", str(e.out("patch-apply-nan-values"))],
         r"val/[\w.]+ holds 1 non-finite value\(s\) \(NaN or inf\)"),
    Case("patch-apply-huge-header", "patch apply", "a SkillPatch whose header is several MB",
         lambda e: ["patch", "apply", e.files["patch_huge_header"], "--out", str(e.out("patch-apply-huge-header"))],
         r"declares a 6\.\d MiB header, more than a SkillPatch header may have \(4 MiB\) — refusing to read it"),
    Case("patch-apply-other-layout", "patch apply", "a SkillPatch applied to a base of another graftable layout "
         "(same tensor names, other shapes)",
         lambda e: ["patch", "apply", e.patch, "--to", e.files["wide_model"], "--out",
                    str(e.out("patch-apply-other-layout"))],
         r"base model '.*tiny_wide' has another graftable layout than the patch's base .*tiny: '[\w.]+' has shape "
         r"\(\d+(, \d+)*\) in the patch but \(\d+(, \d+)*\) in the model", needs_model=True),
    Case("patch-apply-other-embeddings", "patch apply", "a SkillPatch applied to a base with the same body but "
         "other embeddings",
         lambda e: ["patch", "apply", e.patch, "--to", e.files["emb_model"], "--out",
                    str(e.out("patch-apply-other-embeddings"))],
         r"base model '.*tiny_emb' has the patches' body but other embeddings \(context hash sha256:\w+…, the "
         r"patches need sha256:\w+…\) — refusing to apply", needs_model=True),
    Case("patch-stitch-one", "patch stitch", "stitching a single patch",
         lambda e: ["patch", "stitch", e.patch, "--out", str(e.out("patch-stitch-one"))],
         r"stitch needs at least two patches"),
    # --- masks -------------------------------------------------------------------------------------------
    Case("masks-show-unknown", "masks show", "a registry reference that does not exist",
         lambda e: ["masks", "show", "no_such_mask@best", "--tracking-uri", e.db_uri],
         r"unknown registered model 'no_such_mask'"),
    Case("masks-list-unreachable", "masks list", "an unreachable MLflow tracking server",
         lambda e: ["masks", "list", "--tracking-uri", f"http://127.0.0.1:{e.closed_port}"],
         r"cannot reach the MLflow tracking server at http://127\.0\.0\.1:\d+"),
    # --- train-multitask / continual-graft ---------------------------------------------------------------
    Case("multitask-task-twice", "train-multitask", "a task listed twice",
         lambda e: ["train-multitask", "--tasks", f"{e.task},{e.task}", "--model", e.model, "--out",
                    str(e.out("multitask-task-twice"))], r"a task is listed twice"),
    Case("multitask-one-task", "train-multitask", "a single task",
         lambda e: ["train-multitask", "--tasks", e.task, "--model", e.model, "--out",
                    str(e.out("multitask-one-task"))], r"give at least two tasks"),
    Case("continual-graft-joint", "continual-graft", "a joint run where a sequential run is needed",
         lambda e: ["continual-graft", "--run", e.joint, "--out", str(e.out("continual-graft-joint"))],
         r"is a joint checkpoint, not a sequential multi-task run"),
    # --- run / overlap-report / tasks / data -------------------------------------------------------------
    Case("run-study-unknown-key", "run", "a study YAML with an unknown key (a typo)",
         lambda e: ["run", e.files["study_unknown_key"], "--out", str(e.out("run-study-unknown-key"))],
         r"invalid study \(.*study_unknown_key\.yaml\): trian: unknown key"),
    Case("overlap-report-one-patch", "overlap-report", "a single patch (an overlap needs two)",
         lambda e: ["overlap-report", e.patch, "--no-track", "--out", str(e.out("overlap-report-one-patch"))],
         r"an overlap report needs at least two tasks' patches, got 1"),
    Case("tasks-show-unknown", "tasks show", "an unknown task name",
         lambda e: ["tasks", "show", "imbd", "--no-fetch"], r"unknown task 'imbd'; did you mean 'imdb'"),
    Case("data-fetch-hub-offline", "data fetch", "fetching a hub task with no network",
         lambda e: ["data", "fetch", "sst2"], r"task 'sst2' needs the Hugging Face hub",
         setup=lambda e, mp: hub_offline(mp)),
]


# ---------------------------------------------------------------------------------------------- running a row


@dataclass
class Outcome:
    """What a user saw and what the row left behind."""

    exit_code: int
    stdout: str
    stderr: str
    leftovers: list[str]
    new_versions: int
    exception: BaseException | None


def registered_versions(db_uri: str) -> int:
    """Number of registered model versions in a sqlite MLflow store (0 when it has none)."""
    path = db_uri.removeprefix("sqlite:///")
    try:
        with sqlite3.connect(path) as con:
            return int(con.execute("SELECT count(*) FROM model_versions").fetchone()[0])
    except sqlite3.Error:
        return 0


def leftovers(out: Path) -> list[str]:
    """The output path itself and any temporary/partial siblings of it."""
    found = [str(out)] if out.exists() else []
    if out.parent.is_dir():
        found += [str(p) for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]
    return found


def isolate(root: Path, mp: pytest.MonkeyPatch, cwd: Path) -> None:
    """Point caches, MLflow (``root/mlflow.db``) and the working folder into ``root`` (nothing leaks into the repo)."""
    mp.setenv("MTGRAFT_CACHE", str(root / "cache"))
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    mp.delenv("MTGRAFT_DEBUG", raising=False)
    cwd.mkdir(parents=True, exist_ok=True)
    mp.chdir(cwd)
    try:  # another test may have set a process-wide tracking URI
        import mlflow.tracking._tracking_service.utils as mu

        mp.setattr(mu, "_tracking_uri", None)
    except ImportError:  # pragma: no cover
        pass


class WorkStarted(Exception):
    """Raised by the guards: the command started work that a mistake should have prevented."""


def guard(mp: pytest.MonkeyPatch, case: Case) -> None:
    """Fail the row if training, graft data encoding or (unless ``needs_model``) model loading starts."""
    if case.late:
        return

    def stop(what: str) -> Callable[..., Any]:
        def blocked(*a: Any, **k: Any) -> Any:
            raise WorkStarted(f"{what} started before the mistake was reported")
        return blocked

    for target in ("mtgraft.training.single.train_loop", "mtgraft.training.multitask.train_loop"):
        mp.setattr(target, stop("training"))
    for target in ("mtgraft.grafting.run.encode_examples", "mtgraft.evaluation.cache.encode_examples"):
        mp.setattr(target, stop("data encoding"))
    if not case.needs_model:
        for target in ("mtgraft.models.task_model.load_backbone", "mtgraft.models.checkpoint.load_backbone"):
            mp.setattr(target, stop("model loading"))


def run_case(env: Env, case: Case) -> Outcome:
    """Run one row through the real CLI (in-process) and collect what the user saw."""
    from typer.testing import CliRunner

    import mtgraft.cli.app as appmod

    appmod._register()
    out = env.out(case.id)
    with pytest.MonkeyPatch.context() as mp:
        isolate(env.root, mp, env.root / "cwd" / case.id)
        before = registered_versions(env.db_uri)
        guard(mp, case)
        if case.setup:
            case.setup(env, mp)
        res = CliRunner().invoke(appmod.app, case.args(env))
    exc = res.exception if res.exception and not isinstance(res.exception, SystemExit) else None
    return Outcome(res.exit_code, res.stdout, res.stderr, leftovers(out),
                   registered_versions(env.db_uri) - before, exc)


def error_lines(text: str) -> list[str]:
    """The non-empty lines of a stream."""
    return [ln for ln in text.splitlines() if ln.strip()]


# ---------------------------------------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, mlflow_db_template: Path) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("bad-input")
    with pytest.MonkeyPatch.context() as mp:
        isolate(root, mp, root / "cwd" / "build")
        yield build_env(root, mlflow_db_template)


def test_registry_check_sees_a_registration(env: Env) -> None:
    """Positive control: the same graft with valid input registers a version the count sees, and writes its
    folder in place (so the rows' 'nothing left behind' and 'no new version' checks are not vacuous)."""
    from typer.testing import CliRunner

    import mtgraft.cli.app as appmod

    appmod._register()
    out = env.out("control-graft")
    with pytest.MonkeyPatch.context() as mp:
        isolate(env.root, mp, env.root / "cwd" / "control")
        before = registered_versions(env.db_uri)
        res = CliRunner().invoke(appmod.app, [*_graft(env, "control-graft"), "--register", "--json"])
    assert res.exit_code == 0, res.output
    assert registered_versions(env.db_uri) == before + 1
    patch = Path(json.loads(res.stdout)["results"][0]["patch"])
    assert patch.parent == out and patch.is_file() and (out / "results.json").is_file()
    assert leftovers(out) == [str(out)]  # the folder itself, no temporary sibling


def test_eval_finds_the_recorded_task_and_still_runs(env: Env) -> None:
    """Positive control of the early checks in eval: valid input evaluates (checkpoint whose meta records
    its task YAML, without --task; a patch with --task)."""
    from typer.testing import CliRunner

    import mtgraft.cli.app as appmod

    appmod._register()
    ck = env.root / "ck_recorded"
    if not ck.exists():
        shutil.copytree(env.ck, ck)
        meta = json.loads((ck / "mtgraft.json").read_text())
        meta["train_config"] = {"task": env.task}
        (ck / "mtgraft.json").write_text(json.dumps(meta))
    runs = {"model": ["eval", "--model", str(ck)], "patch": ["eval", "--patch", env.patch, "--task", env.task]}
    with pytest.MonkeyPatch.context() as mp:
        isolate(env.root, mp, env.root / "cwd" / "eval-ok")
        for name, args in runs.items():
            res = CliRunner().invoke(appmod.app, [*args, "--out", str(env.out(f"eval-ok-{name}")), "--json"])
            assert res.exit_code == 0, res.output
            rep = json.loads(res.stdout)
            assert rep["task"] == "example_local" and 0.0 <= rep["test"]["accuracy"] <= 1.0
            assert rep["test"]["n"] > 0 and Path(rep["out"], "eval.json").is_file()


def test_at_least_twenty_distinct_mistakes() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) and len(CASES) >= 20
    commands = {c.command.split()[0] for c in CASES}
    assert {"train", "graft", "eval", "patch", "masks", "train-multitask", "run"} <= commands


def test_docs_table_lists_every_row() -> None:
    """docs/errors.md is generated from these rows: regenerate it (scripts/gen_error_table.py) when they change."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "errors.md").read_text()
    listed = re.findall(r"\| `([a-z0-9-]+)` \|$", doc, flags=re.M)
    assert listed == [c.id for c in CASES]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_clear_line(env: Env, case: Case) -> None:
    o = run_case(env, case)
    assert o.exception is None, f"{case.id}: uncaught {o.exception!r}"
    assert o.exit_code != 0, f"{case.id}: exit code 0\n{o.stderr}"
    lines = error_lines(o.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), f"{case.id}: stderr is not one error line:\n{o.stderr}"
    assert "Traceback" not in o.stdout + o.stderr
    assert re.search(case.expect, lines[0]), f"{case.id}: {lines[0]!r} does not match {case.expect!r}"
    assert not o.stdout.strip(), f"{case.id}: stdout not empty: {o.stdout!r}"
    assert not o.leftovers, f"{case.id}: left behind {o.leftovers}"
    assert o.new_versions == 0, f"{case.id}: {o.new_versions} new registry version(s)"
