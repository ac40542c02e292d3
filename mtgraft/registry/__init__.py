"""The mask registry: SkillPatches as versions of MLflow registered models (docs/registry.md).

The package's face: ``store`` (:class:`MaskRegistry`: registers, lists, shows, pulls, aliases and deletes
patches), ``records`` (the tags a version records, rows for listing), ``files`` (REFs that are local patch
files), ``batch`` (one command's registrations: all completed, or rolled back), ``naming`` (registered-model names and REFs), ``mlflow_io`` (quiet MLflow calls). Composing patches
onto a model is no registry matter: ``mtgraft.patches.apply_patches``.
"""

from mtgraft.registry.batch import RegistrationBatch
from mtgraft.registry.files import file_info, local_patch, resolve_patch_files
from mtgraft.registry.naming import (
    BEST,
    LATEST,
    Ref,
    base_short_name,
    check_alias_name,
    model_name,
    parse_ref,
)
from mtgraft.registry.records import (
    ARTIFACT_DIR,
    EXPERIMENT,
    INCOMPLETE_TAG,
    KIND,
    KIND_TAG,
    NOT_BEST_TAG,
    RegisteredMask,
    version_tags,
)
from mtgraft.registry.store import MaskRegistry, list_masks, pull, register_patch

__all__ = [
    "ARTIFACT_DIR",
    "BEST",
    "EXPERIMENT",
    "INCOMPLETE_TAG",
    "KIND",
    "KIND_TAG",
    "LATEST",
    "NOT_BEST_TAG",
    "MaskRegistry",
    "Ref",
    "RegisteredMask",
    "RegistrationBatch",
    "base_short_name",
    "check_alias_name",
    "file_info",
    "local_patch",
    "list_masks",
    "model_name",
    "parse_ref",
    "pull",
    "register_patch",
    "resolve_patch_files",
    "version_tags",
]
