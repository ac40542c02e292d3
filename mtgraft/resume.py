"""Crash safety: periodic run state (model/optimiser/mask state, RNG states, step) and ``--resume``.

A run writes its state atomically to ``<out>.resume/<name>.pt`` every evaluation; a killed run rerun with
``--resume`` continues from the last state and ends with the same result, bit for bit on the CPU, as an
uninterrupted run. The state folder is removed when the run finishes.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtgraft.errors import MtgraftError
from mtgraft.utils import atomic_file


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch RNG states."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(s: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])


class ResumeState:
    """Periodic state files of one run, next to its output folder."""

    def __init__(self, out: str | Path) -> None:
        out = Path(out)
        self.dir = out.parent / f"{out.name}.resume"

    def path(self, name: str) -> Path:
        return self.dir / f"{name}.pt"

    def save(self, name: str, state: dict[str, Any], config: dict[str, Any] | None = None) -> None:
        """Write ``state`` atomically (a kill mid-write leaves the previous state intact)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with atomic_file(self.path(name)) as f:
            torch.save({"state": state, "config": config}, f)

    def load(self, name: str, config: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """The saved state, or None; refuses a state written by a run with other settings."""
        p = self.path(name)
        if not p.is_file():
            return None
        try:
            blob = torch.load(p, map_location="cpu", weights_only=False)
        except Exception as e:  # a corrupt state file is a user-facing condition
            raise MtgraftError(f"cannot resume: state file {p} is corrupt ({type(e).__name__}); "
                               f"delete {self.dir} to start over") from None
        if config is not None and blob.get("config") is not None and blob["config"] != config:
            diff = sorted(k for k in set(config) | set(blob["config"]) if config.get(k) != blob["config"].get(k))
            raise MtgraftError(f"cannot resume: {self.dir} was written with other settings ({', '.join(diff[:5])}); "
                               f"rerun with the same options or delete it")
        return blob["state"]

    def exists(self) -> bool:
        return self.dir.is_dir() and any(self.dir.iterdir())

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
