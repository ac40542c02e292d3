"""Talking to MLflow: quietly (no progress bars, no run links on stdout), and telling its failures apart."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator


def quiet_mlflow() -> None:
    for name in ("mlflow", "alembic", "urllib3.connectionpool"):
        logging.getLogger(name).setLevel(logging.ERROR)


QUIET_ENV = {
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # patches are kB; the bars only clutter stderr
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",  # stdout is for --json
}


@contextlib.contextmanager
def quiet_env() -> Iterator[None]:
    """Keep MLflow from printing progress bars and run links (unless the user set these variables)."""
    added = [k for k in QUIET_ENV if k not in os.environ]
    for k in added:
        os.environ[k] = QUIET_ENV[k]
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def first_line(e: BaseException) -> str:
    text = str(getattr(e, "message", None) or e).strip()
    return text.splitlines()[0] if text else type(e).__name__


TRANSIENT = ("database is locked", "integrityerror", "unique constraint failed", "duplicate key value",
              "duplicate entry", "deadlock")


def is_transient(e: Exception) -> bool:
    """Failures that a retry can fix: a locked sqlite store, or a concurrent writer winning an
    insert race (e.g. two registrations setting the same alias at once)."""
    code = getattr(e, "error_code", "")
    text = str(e).lower()
    return code == "TEMPORARILY_UNAVAILABLE" or any(s in text for s in TRANSIENT)


def is_connection_error(e: Exception) -> bool:
    text = str(e)
    return any(s in text for s in ("Max retries exceeded", "Connection refused", "Failed to establish",
                                   "ConnectionError", "Name or service not known", "Read timed out"))

