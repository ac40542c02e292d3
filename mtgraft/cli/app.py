"""Entry point of the ``mtgraft`` command. Sub-commands live in sibling modules."""

from __future__ import annotations

import os
import warnings

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
#: Third-party libraries whose own Deprecation/FutureWarnings are noise to a user of the command (about their
#: internals, e.g. mlflow's use of SQLAlchemy's ``noload``): hidden by module, nothing else.
NOISY_MODULES = ("mlflow", "sqlalchemy", "alembic", "transformers", "huggingface_hub", "datasets", "torch")


def install_warning_filters() -> None:
    """Hide the known noisy third-party warnings only; mtgraft's own DeprecationWarnings are always shown
    (Python hides DeprecationWarning outside ``__main__`` by default)."""
    noisy = r"(" + "|".join(NOISY_MODULES) + r")(\.|$)"
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=noisy)
    warnings.filterwarnings("default", category=DeprecationWarning, module=r"mtgraft(\.|$)")


install_warning_filters()

import typer  # noqa: E402

app = typer.Typer(
    name="mtgraft",
    help="Find where a fine-tuned language model keeps each task's skill (grafting, ICML 2023).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """Find where a fine-tuned language model keeps each task's skill (grafting, ICML 2023)."""


def _register() -> None:
    # Each module adds its commands/sub-apps to ``app``; import order = order in --help.
    for optional in ("data_cmds", "train_cmds", "graft_cmds", "patch_cmds", "masks_cmds", "multitask_cmds", "report_cmds", "run_cmds"):
        try:
            __import__(f"mtgraft.cli.{optional}")
        except ModuleNotFoundError as e:  # a part not built yet
            if e.name != f"mtgraft.cli.{optional}":
                raise


def main() -> None:
    """Console-script entry point."""
    import mtgraft.cli.app as mod  # the same module object even when run as ``python -m mtgraft.cli``

    mod._register()
    mod.app()


if __name__ == "__main__":
    main()
