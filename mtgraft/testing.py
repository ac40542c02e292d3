"""Tiny randomly initialised models for fast tests (built from a config, saved as HF folders)."""

from __future__ import annotations

from pathlib import Path

import torch

from mtgraft.models import load_tokenizer, resolve_model_path


def make_tiny_model(model_type: str, out: str | Path, seed: int = 0, hidden: int = 32, layers: int = 2) -> str:
    """Save a tiny random model serving ``model_type`` (with the MiniLM tokenizer) to ``out``.

    ``head`` and ``prompt`` use a BERT masked LM, ``causal`` a Llama causal LM.
    """
    from transformers import BertConfig, BertForMaskedLM, LlamaConfig, LlamaForCausalLM

    out = Path(out)
    tok = load_tokenizer(resolve_model_path("minilm"))
    torch.manual_seed(seed)
    if model_type in ("head", "prompt"):
        cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=2, intermediate_size=hidden * 2, max_position_embeddings=256)
        model = BertForMaskedLM(cfg)
    elif model_type == "causal":
        cfg = LlamaConfig(vocab_size=tok.vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                          num_attention_heads=2, num_key_value_heads=2, intermediate_size=hidden * 2,
                          max_position_embeddings=256, pad_token_id=tok.pad_token_id,
                          bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id)
        model = LlamaForCausalLM(cfg)
    else:
        raise ValueError(model_type)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def example_task_yaml() -> str:
    """Path of the small local example task shipped in experiments/tasks (for tests)."""
    here = Path(__file__).resolve().parent.parent / "experiments" / "tasks" / "example_local.yaml"
    return str(here)


def make_tiny_checkpoint(out: str | Path, pretrained: str, task: str, model_type: str = "head",
                         seed: int = 0, scale: float = 0.05, data: dict | None = None) -> str:
    """A 'fine-tuned' checkpoint: the tiny pretrained model with seeded random moves of its trainable body.

    Stands in for fine-tuning in fast unit tests of grafting (the moves are real tensors, not mocks).
    """
    from mtgraft.models import CheckpointMeta, build_task_model, save_checkpoint
    from mtgraft.tasks import get_task

    spec = get_task(task)
    model = build_task_model(pretrained, model_type, [spec])
    pre_hash = model.base_hash()
    gen = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n in model.graftable_names():
            p = params[n]
            # heavy-tailed moves so that a few entries matter most, as in real fine-tuning
            p.add_(scale * torch.randn(p.shape, generator=gen) ** 3)
        for n in model.head_param_names():
            params[n].add_(0.5 * torch.randn(params[n].shape, generator=gen))
    info = model.tasks[spec.name]
    meta = CheckpointMeta(model_type=model_type, tasks=[info], pretrained={"name": pretrained, "hash": pre_hash},
                          data=data or {"k": 2, "seed": 13, "max_test": None, "max_length": 32}, mode="single",
                          order=[spec.name])
    save_checkpoint(model, meta, out)
    return str(out)


TOPIC_ROWS = [
    ("The striker scored twice in the second half.", "sport"),
    ("Our goalkeeper saved a penalty in the final minute.", "sport"),
    ("The marathon runners crossed the bridge at dawn.", "sport"),
    ("She won the tennis match in three sets.", "sport"),
    ("The team trained hard before the championship game.", "sport"),
    ("A late goal gave the visitors the cup.", "sport"),
    ("Simmer the onions slowly until they turn golden.", "food"),
    ("Add a pinch of salt to the boiling pasta water.", "food"),
    ("The bread dough must rise for two hours.", "food"),
    ("Roast the peppers and peel off the skins.", "food"),
    ("Whisk the eggs with sugar until pale and fluffy.", "food"),
    ("Serve the soup with fresh herbs and cream.", "food"),
]


def write_topic_task(folder: Path) -> str:
    """A second tiny local task (sport vs food sentences written for this test)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["text,topic"] + [f'"{t}",{y}' for t, y in TOPIC_ROWS]
    (folder / "topic.csv").write_text("\n".join(lines) + "\n")
    (folder / "topic.yaml").write_text(
        "name: tiny_topic\ntrain: topic.csv\ntext_column: text\nlabel_column: topic\nlabels: [food, sport]\n"
        "label_words: [food, sport]\ntemplate: \"{x} This is about {mask} .\"\ndomain: topic\n")
    return str(folder / "topic.yaml")


def run_cli_json(cmd: list[str], env: dict[str, str], cwd: str | Path, timeout: float = 600) -> dict:
    """Run a ``--json`` command to the end; its JSON object (the last stdout line). Fails with its stderr."""
    import json
    import subprocess

    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def kill_when_state_reaches(cmd: list[str], state: Path, min_step: int, env: dict[str, str], cwd: str | Path,
                            timeout: float = 300) -> tuple[int | None, int | None]:
    """Start ``cmd`` in its own session; SIGKILL it (and its children) once its periodic resume state file
    ``state`` records a step ≥ ``min_step``. Returns that step (None if the run ended first) and the exit
    code of the command."""
    import os
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd,
                            start_new_session=True)
    killed_at = None
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if state.is_file():
            try:
                step = torch.load(state, weights_only=False)["state"]["step"]
            except Exception:  # caught mid-rename: try again
                step = 0
            if step >= min_step:
                os.killpg(proc.pid, signal.SIGKILL)
                killed_at = step
                break
        time.sleep(0.01)
    proc.wait(timeout=60)
    return killed_at, proc.returncode
