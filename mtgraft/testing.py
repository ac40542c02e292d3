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
