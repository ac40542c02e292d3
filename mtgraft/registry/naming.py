"""Registry naming scheme and REF parsing.

One registered model per (task, base model): ``skill.<task>.<base>-<hash8>``, where ``<task>`` is the
patch's task (several tasks of a union patch joined by ``--``, sorted), ``<base>`` the last path
component of the base model's name, and ``<hash8>`` the first 8 hex digits of the base model's
content hash, which keeps patches of differently initialised bases with the same name apart.
Every component is lower-cased and reduced to ``[a-z0-9_-]``.

A REF is ``name@alias``, ``name/version`` (``models:/`` prefixes are accepted) or a bare ``name``
(meaning ``name@latest``); a path to a patch file works wherever a REF does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from mtgraft.errors import MtgraftError

PREFIX = "skill"
LATEST = "latest"  # MLflow's reserved alias: always the highest version of a registered model
BEST = "best"
_SLUG_BAD = re.compile(r"[^a-z0-9_-]+")
_ALIAS_OK = re.compile(r"^[A-Za-z0-9_-]+$")
_VERSION_ALIAS = re.compile(r"^[vV]\d+$")
PATCH_SUFFIXES = (".safetensors", ".patch", ".skillpatch")


def slug(text: str, max_len: int = 48) -> str:
    """Lower-case ``text`` reduced to ``[a-z0-9_-]`` (other runs of characters become one '-')."""
    s = _SLUG_BAD.sub("-", text.lower()).strip("-")
    s = re.sub(r"-{2,}", "-", s)
    return s[:max_len].strip("-") or "unnamed"


def base_short_name(base_model: str) -> str:
    """Short name of a base model: the last component of its name or path (``org/name`` -> ``name``)."""
    last = Path(base_model.rstrip("/\\")).name or base_model
    return slug(last, 40)


def hash8(base_hash: str) -> str:
    """First 8 hex digits of a content hash like ``sha256:0123…``."""
    return base_hash.split(":", 1)[-1][:8].lower()


def model_name(task: str | list[str], base_model: str, base_hash: str) -> str:
    """Registered model name of a patch: ``skill.<task>.<base>-<hash8>``."""
    tasks = [task] if isinstance(task, str) else sorted(task)
    task_part = "--".join(slug(t, 40) for t in tasks)
    return f"{PREFIX}.{task_part}.{base_short_name(base_model)}-{hash8(base_hash)}"


def check_alias_name(alias: str) -> str:
    """Validate an alias a user wants to set; ``latest`` and ``v<N>`` are reserved by MLflow."""
    if alias.lower() == LATEST:
        raise MtgraftError("alias 'latest' is automatic (it always names the newest version) and cannot be set")
    if _VERSION_ALIAS.match(alias):
        raise MtgraftError(f"alias '{alias}' looks like a version number; MLflow reserves 'v<N>' names")
    if not _ALIAS_OK.match(alias):
        raise MtgraftError(f"invalid alias '{alias}': use letters, digits, '_' and '-'")
    return alias


@dataclass(frozen=True)
class Ref:
    """A parsed registry reference: a registered model name plus a version or an alias (or neither)."""

    name: str
    version: str | None = None
    alias: str | None = None

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}/{self.version}"
        if self.alias is not None:
            return f"{self.name}@{self.alias}"
        return self.name

    @property
    def bare(self) -> bool:
        """True when neither a version nor an alias was given."""
        return self.version is None and self.alias is None


def looks_like_path(ref: str) -> bool:
    """Whether a REF string is meant as a file path rather than a registry reference."""
    return (ref.lower().endswith(PATCH_SUFFIXES) or ref.startswith((".", "~", "/", "\\"))
            or Path(ref).exists())


def parse_ref(ref: str) -> Ref:
    """Parse ``name@alias``, ``name/version``, ``models:/...`` or a bare ``name``; MtgraftError if malformed."""
    s = ref.strip()
    s = s[len("models:/"):] if s.startswith("models:/") else s
    if not s:
        raise MtgraftError("empty registry reference (use name@alias, name/version or a patch file)")
    if "@" in s:
        name, _, alias = s.rpartition("@")
        if not name or not alias or "/" in name:
            raise MtgraftError(f"malformed registry reference '{ref}' (use name@alias or name/version)")
        return Ref(name, alias=alias)
    if "/" in s:
        name, _, ver = s.rpartition("/")
        if not name or "/" in name or not ver.isdigit() or int(ver) < 1:
            raise MtgraftError(f"'{ref}' is neither an existing patch file nor a registry reference "
                               "(name@alias or name/version)")
        return Ref(name, version=str(int(ver)))
    if ":" in s:
        raise MtgraftError(f"malformed registry reference '{ref}' (use name@alias or name/version)")
    return Ref(s)
