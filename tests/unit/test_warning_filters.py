"""The CLI hides only the known noisy third-party warnings (issue 13, item 10): mtgraft's own DeprecationWarnings
reach the user. Run in a fresh interpreter, as the ``mtgraft`` command runs, away from pytest's own filters."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import warnings
    import mtgraft.cli.app  # installs the CLI's filters, as the command does

    def emit(module, category, message):  # a warning raised from code of ``module``
        exec("import warnings\\nwarnings.warn(%r, %s)" % (message, category), {"__name__": module})

    emit("mtgraft.patches.patch", "DeprecationWarning", "mtgraft-own-deprecation")
    emit("mtgraft.cli.app", "FutureWarning", "mtgraft-own-future")
    emit("mlflow.store.tracking.sqlalchemy_store", "DeprecationWarning", "mlflow-noise")
    emit("transformers.tokenization_utils_base", "FutureWarning", "transformers-noise")
    emit("somelib.core", "DeprecationWarning", "unlisted-library")  # Python's default: hidden outside __main__
""")


def test_cli_filters_keep_mtgraft_deprecations_and_hide_known_noise() -> None:
    res = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "DeprecationWarning: mtgraft-own-deprecation" in res.stderr
    assert "FutureWarning: mtgraft-own-future" in res.stderr
    assert "mlflow-noise" not in res.stderr and "transformers-noise" not in res.stderr


def test_app_module_has_no_wholesale_filters() -> None:
    """No filter on a whole warning category without a module: the regression this item fixed."""
    import warnings

    import mtgraft.cli.app as appmod

    with warnings.catch_warnings():
        warnings.resetwarnings()
        appmod.install_warning_filters()
        for action, _msg, category, module, _line in warnings.filters:
            if action == "ignore" and issubclass(category, (DeprecationWarning, FutureWarning)):
                assert module is not None and module.pattern.startswith("("), (category, module)
