"""Resolving and loading backbones and tokenizers (the embedded default 'minilm' and Hugging Face models)."""

from __future__ import annotations

import os

from torch import nn

from mtgraft.errors import MtgraftError
from mtgraft.models.embedded import EMBEDDED, embedded_model, embedded_path

MODEL_ALIASES = {name: m.alias for m in EMBEDDED.values() for name in m.names}
"""Every spelling of an embedded model (``mtgraft.models.embedded.EMBEDDED``) -> its alias."""


def resolve_model_path(name: str) -> str:
    """Map an embedded model's alias ('minilm', 'smollm2') to a folder on disk; other names pass through."""
    m = embedded_model(name)
    return embedded_path(m) if m is not None else name


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    try:
        hf_logging.disable_progress_bar()
    except AttributeError:  # pragma: no cover  (fine: an older transformers without it shows no bars anyway)
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


def shipped_pooling(path: str) -> str | None:
    """The pooling a model folder ships in its sentence-transformers config (``modules.json`` naming a
    ``Pooling`` module, whose ``config.json`` sets the mode): ``mean`` or ``first`` (CLS), else None."""
    import json
    from pathlib import Path

    root = Path(path)
    try:
        modules = json.loads((root / "modules.json").read_text())
        sub = next(m.get("path", "") for m in modules if str(m.get("type", "")).endswith(".Pooling"))
        conf = json.loads((root / sub / "config.json").read_text())
    except (OSError, ValueError, StopIteration, AttributeError, TypeError):
        return None
    if not isinstance(conf, dict):
        return None
    if conf.get("pooling_mode_mean_tokens"):
        return "mean"
    if conf.get("pooling_mode_cls_token"):
        return "first"
    return None  # max / sqrt-length / weighted poolings are not offered: the caller falls back to first token


def load_backbone(path: str, model_type: str, pooler: bool = False) -> nn.Module:
    """Load the backbone that serves ``model_type`` from a name or folder (``pooler``: keep an encoder's
    pretrained pooler layer, for heads that read it; otherwise it is dropped)."""
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

            no_pooler = MtgraftError(f"pooling 'pooler' needs an encoder with a pretrained pooler layer; '{path}' "
                                     f"({config.model_type}) has none: use --pooling mean or first")
            try:
                model, info = AutoModel.from_pretrained(path, add_pooling_layer=pooler, output_loading_info=True)
            except TypeError:
                if pooler:
                    raise no_pooler from None
                return AutoModel.from_pretrained(path)
            if pooler and any(k.startswith("pooler.") for k in info.get("missing_keys", [])):
                raise no_pooler  # it would be newly initialised, not the pretrained one
            return model
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
