"""User-facing errors: the CLI prints their message as one line and exits non-zero."""


class MtgraftError(Exception):
    """An error a user can cause and fix (bad option, unknown task, mismatched patch...)."""

    exit_code = 2


class DataUnavailableError(MtgraftError):
    """A dataset or model could not be obtained (no network, missing file...)."""
