"""Registering several patches as one command: every version is completed at the end, or none is kept.

Each version is created tagged ``mtgraft.incomplete``; ``commit`` removes the tags once all are registered.
A failure part-way rolls back (deletes) the versions the command registered and ends with one line naming
them; versions that cannot be deleted (the server went away) stay tagged, listed by
``mtgraft masks list --incomplete`` and removed by ``mtgraft masks delete --incomplete``.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from mtgraft.errors import MtgraftError
from mtgraft.registry.mlflow_io import first_line
from mtgraft.registry.records import RegisteredMask
from mtgraft.registry.store import MaskRegistry

CLEANUP = "see 'mtgraft masks list --incomplete', remove with 'mtgraft masks delete --incomplete'"


def server_down(tracking_uri: str | None) -> MtgraftError | None:
    """The error if an http tracking server no longer answers (MLflow then makes no more minutes of retries)."""
    from mtgraft.tracking import check_reachable

    try:
        check_reachable(tracking_uri)
    except MtgraftError as e:
        os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
        return e
    return None


class RegistrationBatch:
    """The versions one command registers (connects on first use)."""

    def __init__(self, tracking_uri: str | None = None, registry: MaskRegistry | None = None) -> None:
        self.tracking_uri = tracking_uri
        self._registry = registry
        self.done: list[tuple[Path, RegisteredMask]] = []

    @property
    def registry(self) -> MaskRegistry:
        if self._registry is None:
            self._registry = MaskRegistry(self.tracking_uri)
        return self._registry

    def add(self, path: str | os.PathLike, run_id: str | None = None,
            extra_tags: dict[str, Any] | None = None) -> RegisteredMask:
        """Register one patch as an incomplete version of this command."""
        reg = self.registry
        down = server_down(reg.tracking_uri)  # gone since the last request: say so in seconds
        if down is not None:
            raise down
        m = reg.register_patch(path, run_id=run_id, extra_tags=extra_tags, complete=False)
        self.done.append((Path(path), m))
        return m

    def commit(self) -> list[RegisteredMask]:
        """Complete every version (``best`` may move now); their final aliases."""
        reg = self.registry
        for _, m in self.done:
            reg.mark_complete(m.name, m.version)
            m.tags.pop("mtgraft.incomplete", None)
        for _, m in self.done:
            m.aliases = reg.aliases(m.name, m.version)
        return [m for _, m in self.done]

    def rollback(self) -> tuple[list[str], list[str]]:
        """Delete the versions registered so far: (deleted, left incomplete)."""
        rolled: list[str] = []
        left = [m.ref for _, m in self.done]
        if self.done and server_down(self.registry.tracking_uri) is None:
            left = []
            for _, m in reversed(self.done):
                try:
                    self.registry.client.delete_model_version(m.name, m.version)
                    rolled.insert(0, m.ref)
                except Exception:
                    left.insert(0, m.ref)
            for name in sorted({m.name for _, m in self.done}):
                with contextlib.suppress(Exception):
                    self.registry.update_best(name)
        self.done = []
        return rolled, left

    def failure(self, what: str, error: BaseException, later: str) -> MtgraftError:
        """Roll back, and the one line that says what failed, what was rolled back and what to do later."""
        registered = [p for p, _ in self.done]
        rolled, left = self.rollback()
        cause = str(error) if isinstance(error, MtgraftError) else first_line(error)
        msg = f"{what} failed ({cause})"
        if rolled:
            msg += f"; rolled back {', '.join(rolled)}"
        if left:
            msg += f"; could not roll back {', '.join(left)}: they stay tagged incomplete ({CLEANUP})"
        if not registered:
            msg += "; nothing was registered"
        return MtgraftError(f"{msg}; {later}")
