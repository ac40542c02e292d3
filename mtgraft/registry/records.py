"""What a registered SkillPatch version records (its ``mtgraft.*`` tags) and how a version reads as a row.

The tags are made from a patch header (``version_tags``); ``row`` turns a version's tags back into the fields
``list``/``show`` report; the same fields describe a local patch file (``files.file_info``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from mtgraft.registry.naming import base_short_name

KIND_TAG = "mtgraft.kind"
KIND = "skillpatch"
ARTIFACT_DIR = "skillpatch"
EXPERIMENT = "mtgraft-registry"
TAG = "mtgraft."
SHA_TAG = "mtgraft.patch_sha256"
FILE_TAG = "mtgraft.patch_file"
#: On a version from creation until its registration (the whole command's) finished; its value says who
#: registers it (``host:pid:unix-time``). Leftovers of a killed registration: ``mtgraft masks list --incomplete``.
INCOMPLETE_TAG = "mtgraft.incomplete"
#: On a version that must not take ``best``; its value says why (its Rel interval does not exceed 0, or its Rel
#: is below the top-k baseline's at the same size). ``masks list`` shows it in the ``flag`` column.
NOT_BEST_TAG = "mtgraft.not_best"


def rel_interval(metrics: dict[str, Any]) -> list[float] | None:
    """The test Rel's 95% interval a patch header records (``metrics.test.rel_ci95``), if any."""
    ci = (metrics.get("test") or {}).get("rel_ci95") if isinstance(metrics.get("test"), dict) else None
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(num(x) is not None for x in ci):
        return [float(ci[0]), float(ci[1])]
    return None


def not_best_reasons(header: Any) -> list[str]:
    """Why a patch must not take ``best``, from its header alone: its Rel interval does not exceed zero."""
    ci = rel_interval(header.metrics or {})
    if ci is not None and ci[0] <= 0:
        return [f"Rel interval [{ci[0]:.2f}, {ci[1]:.2f}] does not exceed 0"]
    return []


@dataclass
class RegisteredMask:
    """One registered version of a SkillPatch."""

    name: str
    version: str
    aliases: list[str] = field(default_factory=list)
    run_id: str | None = None
    sha256: str | None = None
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        """``name/version``."""
        return f"{self.name}/{self.version}"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form."""
        return {"name": self.name, "version": self.version, "ref": self.ref, "aliases": self.aliases,
                "run_id": self.run_id, "sha256": self.sha256, "tags": self.tags}

def num(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if f == f else None


def metric(metrics: dict[str, Any], *keys: str) -> float | None:
    """A headline metric from a patch header's metrics (``test`` section first, then top level)."""
    for section in (metrics.get("test"), metrics):
        if isinstance(section, dict):
            for k in keys:
                if k in section and num(section[k]) is not None:
                    return num(section[k])
    return None


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def version_tags(header: Any, sha256: str, patch_file: str) -> dict[str, str]:
    """The ``mtgraft.*`` tags recorded on a model version, from a patch header (None values omitted)."""
    h = header
    data = h.data or {}
    fin = h.finetuned or {}
    values: dict[str, Any] = {
        "kind": KIND,
        "task": h.task if isinstance(h.task, str) else "+".join(h.task),
        "base_model": h.base_model,
        "base_hash": h.base_hash,
        "model_type": h.model_type,
        "method": h.method,
        "method_settings": h.method_settings or {},
        "sparsity": h.sparsity,
        "sparsity_requested": h.sparsity_requested,
        "region_size": h.region_size,
        "graftable_size": h.graftable_size,
        "head_params": h.head_params,
        "k": data.get("k"),
        "data_seed": data.get("seed"),
        "max_test": data.get("max_test"),
        "seed": h.seed,
        "finetune_run_id": fin.get("mlflow_run_id"),
        "finetuned_hash": fin.get("hash"),
        "finetuned_path": fin.get("path"),  # patches before issue 13 only
        "test_accuracy": metric(h.metrics or {}, "accuracy", "acc"),
        "rel": metric(h.metrics or {}, "rel", "Rel"),
        "ece": metric(h.metrics or {}, "ece", "ECE"),
        "patch_sha256": sha256,
        "patch_file": patch_file,
        "payload_hash": h.payload_hash,
    }
    ci = rel_interval(h.metrics or {})
    if ci is not None:
        values["rel_ci_low"], values["rel_ci_high"] = ci
    reasons = not_best_reasons(h)
    if reasons:
        values["not_best"] = "; ".join(reasons)
    return {TAG + k: fmt(v) for k, v in values.items() if v is not None}

def describe(h: Any) -> str:
    acc = metric(h.metrics or {}, "accuracy", "acc")
    rel = metric(h.metrics or {}, "rel", "Rel")
    bits = [f"SkillPatch of task '{h.task if isinstance(h.task, str) else '+'.join(h.task)}'",
            f"method {h.method}", f"sparsity {h.sparsity:.3g} of the graftable body ({h.region_size} params)"]
    if acc is not None:
        bits.append(f"test accuracy {acc:.4f}")
    if rel is not None:
        bits.append(f"Rel {rel:.4f}")
    return ", ".join(bits) + "."


def row(mv: Any, aliases: list[str]) -> dict[str, Any]:
    return row_from(mv.name, str(mv.version), mv.run_id, mv.tags or {}, aliases)


def row_from(name: str, version: str | None, run_id: str | None, t: dict[str, str],
              aliases: list[str]) -> dict[str, Any]:
    region = t.get("mtgraft.region_size")
    return {
        "name": name, "version": version, "aliases": aliases,
        "task": t.get("mtgraft.task"), "base_model": t.get("mtgraft.base_model"),
        "base_hash": t.get("mtgraft.base_hash"), "method": t.get("mtgraft.method"),
        "sparsity": num(t.get("mtgraft.sparsity")),
        "region_size": int(region) if region is not None and region.isdigit() else None,
        "k": t.get("mtgraft.k"), "seed": t.get("mtgraft.seed"),
        "accuracy": num(t.get("mtgraft.test_accuracy")), "rel": num(t.get("mtgraft.rel")),
        "ece": num(t.get("mtgraft.ece")), "run_id": run_id, "sha256": t.get(SHA_TAG),
        "incomplete": INCOMPLETE_TAG in t,
        "rel_ci95": ([num(t["mtgraft.rel_ci_low"]), num(t["mtgraft.rel_ci_high"])]
                     if "mtgraft.rel_ci_low" in t and "mtgraft.rel_ci_high" in t else None),
        "flag": t.get(NOT_BEST_TAG),
    }


def base_matches(base: str, tags: dict[str, str], name: str) -> bool:
    b = base.lower()
    model = tags.get("mtgraft.base_model", "")
    h = tags.get("mtgraft.base_hash", "").lower()
    return (b in (model.lower(), base_short_name(model)) or base_short_name(base) == base_short_name(model)
            or (len(b.split(":")[-1]) >= 6 and h.split(":")[-1].startswith(b.split(":")[-1])))


def ranges(nums: list[int]) -> str:
    if not nums:
        return ""
    parts, start, prev = [], nums[0], nums[0]
    for n in [*nums[1:], None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if n is not None:
            start = prev = n
    return ", ".join(parts)

