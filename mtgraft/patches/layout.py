"""Where a graftable tensor sits in a transformer: its layer number and module kind, from its parameter name.

One naming rule serves every part that groups a region by layer × module kind: the overlap report's
breakdowns (``mtgraft.analysis``) and the small picture of a region written beside each SkillPatch
(``mtgraft.patches.picture``).
"""

from __future__ import annotations

import re

_LAYER_RE = re.compile(r"(?:^|\.)(?:layer|layers|h|block|blocks)\.(\d+)(?:\.|$)")

# Module-path suffixes (dotted components just before .weight/.bias) → module kind; first match wins.
_SUFFIX_KINDS: tuple[tuple[tuple[str, ...], str], ...] = (
    # BERT / RoBERTa / ELECTRA / MiniLM
    (("attention", "self", "query"), "attn_query"),
    (("attention", "self", "key"), "attn_key"),
    (("attention", "self", "value"), "attn_value"),
    (("attention", "output", "dense"), "attn_output"),
    (("intermediate", "dense"), "ffn_in"),
    (("output", "dense"), "ffn_out"),
    # Llama / Mistral / Qwen / OPT-style
    (("self_attn", "q_proj"), "attn_query"),
    (("self_attn", "k_proj"), "attn_key"),
    (("self_attn", "v_proj"), "attn_value"),
    (("self_attn", "o_proj"), "attn_output"),
    (("self_attn", "out_proj"), "attn_output"),
    (("self_attn", "qkv_proj"), "attn_qkv"),
    (("mlp", "gate_proj"), "ffn_in"),
    (("mlp", "up_proj"), "ffn_in"),
    (("mlp", "down_proj"), "ffn_out"),
    (("mlp", "gate_up_proj"), "ffn_in"),
    # GPT-2 (Conv1D; c_attn is fused q/k/v)
    (("attn", "c_attn"), "attn_qkv"),
    (("attn", "c_proj"), "attn_output"),
    (("mlp", "c_fc"), "ffn_in"),
    (("mlp", "c_proj"), "ffn_out"),
    # DistilBERT
    (("attention", "q_lin"), "attn_query"),
    (("attention", "k_lin"), "attn_key"),
    (("attention", "v_lin"), "attn_value"),
    (("attention", "out_lin"), "attn_output"),
    (("ffn", "lin1"), "ffn_in"),
    (("ffn", "lin2"), "ffn_out"),
    # GPT-NeoX / Falcon fused projections
    (("attention", "query_key_value"), "attn_qkv"),
    (("self_attention", "query_key_value"), "attn_qkv"),
)


def layer_and_module(name: str, bias_separate: bool = False) -> tuple[int | None, str]:
    """(layer number or None, module kind) of a HF parameter name, for BERT/RoBERTa, Llama and GPT-2.

    With ``bias_separate`` every ``*.bias`` is kind ``bias``; otherwise it goes with its module.
    """
    m = _LAYER_RE.search(name)
    layer = int(m.group(1)) if m else None
    parts = name.split(".")
    if bias_separate and parts[-1] == "bias":
        return layer, "bias"
    path = parts[:-1] if parts[-1] in ("weight", "bias") else parts
    if any("norm" in p.lower() or p.startswith("ln_") or p == "ln" for p in path):
        return layer, "layernorm"
    tail = tuple(path)
    for suffix, kind in _SUFFIX_KINDS:
        if tail[-len(suffix):] == suffix:
            return layer, kind
    return layer, "other"
