"""Small shared helpers: cache folder, atomic writes, names, numbers, content hashes, seeding, devices, provenance.

Layer 1 (see docs/architecture.md): imports nothing of mtgraft but ``errors``. torch and numpy are imported
inside the functions that need them, so that importing this module (and the CLI) stays fast.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import random
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mtgraft.errors import MtgraftError

if TYPE_CHECKING:
    import torch


_MALLOC_TRIM: Any = None


def release_freed_memory() -> None:
    """Hand the pages of freed heap memory back to the operating system (glibc's ``malloc_trim``; elsewhere
    nothing). glibc keeps freed tensors of a few megabytes in its heap, so after a model or a full-size vector
    is dropped the process's resident memory stays where it was and the next large allocation adds to it: the
    graft's peak on SmolLM2 at 1e-4 fell from 3.64 to 3.29 GB with these calls (docs/benchmarks.md, "Scale")."""
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        _MALLOC_TRIM = False
        if sys.platform.startswith("linux"):
            import ctypes
            import ctypes.util

            with contextlib.suppress(OSError, AttributeError):
                _MALLOC_TRIM = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


def safe_name(s: str) -> str:
    """A file-name-safe version of ``s`` (runs of other characters become ``_``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s)


def finite_or_none(x: Any) -> float | None:
    """``float(x)`` when it is a finite number, else None (for JSON, tables and MLflow)."""
    if x is None or isinstance(x, bool):
        return None
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def default_out(kind: str, name: str) -> str:
    """Default output folder ``runs/<kind>/<name>-<timestamp>``."""
    return str(Path("runs") / kind / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")


def cache_dir() -> Path:
    """The user cache folder for fetched data (``$MTGRAFT_CACHE`` or ``~/.cache/mtgraft``)."""
    root = os.environ.get("MTGRAFT_CACHE")
    if root:
        path = Path(root)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        path = Path(base) / "mtgraft"
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 hex digest of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def content_hash(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """A stable sha256 over (name, dtype, shape, bytes) of tensors, in the given order.

    Used to identify a base model by the content of its graftable tensors.
    """
    import torch

    h = hashlib.sha256()
    for name, t in named_tensors:
        t = t.detach().to("cpu").contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return "sha256:" + h.hexdigest()


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` (and parents) or fail with one clear line if it cannot be written."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / f".mtgraft-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise MtgraftError(f"cannot write to output folder '{p}': {e.strerror or e}") from None
    return p


class NoSpaceError(MtgraftError):
    """The disk (or quota) filled up while an output was written; names the output, not its temp file."""

    def __init__(self, final: str | os.PathLike, reason: str) -> None:
        super().__init__(f"cannot write '{final}': {reason}")
        self.reason = reason


_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def _no_space(final: Path, e: BaseException) -> NoSpaceError | None:
    """A :class:`NoSpaceError` naming ``final`` when ``e`` is a full disk/quota (raw or already wrapped)."""
    if isinstance(e, NoSpaceError):
        return NoSpaceError(final, e.reason)
    if isinstance(e, OSError) and e.errno in _NO_SPACE:
        return NoSpaceError(final, e.strerror or "no space left on device")
    return None


def _umask() -> int:
    """The process umask (read without changing it for longer than one call)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(root: str | os.PathLike) -> None:
    """Give every file and folder under ``root`` the permissions the umask gives a new one (0644/0755 with a
    umask of 022): some writers (safetensors' ``save_file``, hence ``save_pretrained``) create files 0600.
    Executable files stay executable; links are left alone."""
    mask = _umask()
    for d, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(d, name)
            st = os.lstat(p)
            if stat.S_ISDIR(st.st_mode) or (stat.S_ISREG(st.st_mode) and st.st_mode & 0o111):
                os.chmod(p, 0o777 & ~mask)
            elif stat.S_ISREG(st.st_mode):
                os.chmod(p, 0o666 & ~mask)


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``final``; on error it is removed.

    A full disk while writing raises :class:`NoSpaceError` naming ``final`` (not the temporary folder).
    """
    final = Path(final)
    parent = final.parent if str(final.parent) else Path(".")
    ensure_writable_dir(parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; the result is an ordinary folder
    try:
        yield tmp
        follow_umask(tmp)
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=parent))
            old.rmdir()
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        full = _no_space(final, e)
        if full is not None:
            raise full from None
        raise


@contextlib.contextmanager
def atomic_file(final: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """Open a temp file next to ``final``; rename over it on success, delete it on error (full disk:
    :class:`NoSpaceError` naming ``final``)."""
    final = Path(final)
    parent = final.parent if str(final.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.tmp-", dir=parent)
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; the result is an ordinary file
    except OSError as e:
        raise MtgraftError(f"cannot write '{final}': {e.strerror or e}") from None
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        full = _no_space(final, e)
        if full is not None:
            raise full from None
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically (indent 2, sorted keys off)."""
    with atomic_file(path, "w") as f:
        json.dump(obj, f, indent=2, default=_json_default)
        f.write("\n")


def _json_default(o: Any) -> Any:
    # numpy and torch objects can only exist when their modules were imported: look them up, never import
    np = sys.modules.get("numpy")
    torch = sys.modules.get("torch")
    if np is not None:
        if isinstance(o, np.integer):
            return int(o)
        if isinstance(o, np.floating):
            return float(o)
        if isinstance(o, np.ndarray):
            return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if torch is not None and isinstance(o, torch.Tensor):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")


def set_seed(seed: int) -> None:
    """Seed python, numpy and torch."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise MtgraftError("--device cuda was asked for but no CUDA GPU is available (use --device auto or cpu)")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise MtgraftError(f"unknown device '{device}' (use auto, cpu or cuda)")
    return torch.device(device)


def git_revision() -> str | None:
    """The code's git revision (with '-dirty' when the tree has changes), or None outside a checkout."""
    here = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here, capture_output=True, text=True, timeout=5,
        )
        return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):  # fine: no git here (an installed package): recorded as null
        return None


def library_versions() -> dict[str, str]:
    """Versions of the libraries a result depends on."""
    import importlib.metadata as md

    out = {}
    for name in ["mtgraft", "torch", "transformers", "datasets", "mlflow", "numpy", "scikit-learn"]:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:  # fine: an optional library not installed is left out of the record
            pass
    return out


def provenance() -> dict[str, Any]:
    """What to record with every run: code revision and library versions."""
    return {"git_revision": git_revision(), "versions": library_versions()}


def lazy_face(package: str, where: dict[str, str]) -> tuple[Any, Any]:
    """``__getattr__`` and ``__dir__`` for a package face that imports a name's module on first use.

    ``where`` maps each public name to the submodule (relative to ``package``) that defines it, so that
    ``from mtgraft.grafting import RECIPES`` does not load torch through the package's other modules.
    """
    import importlib

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module '{package}' has no attribute '{name}'")
        value = getattr(importlib.import_module(f"{package}.{where[name]}"), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(where) | set(vars(sys.modules[package])))

    return __getattr__, __dir__
