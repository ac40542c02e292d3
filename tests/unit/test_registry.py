"""The mask registry against a local sqlite MLflow store (a fresh copy per test)."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import mtgraft.cli.masks_cmds  # noqa: F401  (registers the 'masks' group)
from mtgraft.cli.app import app
from mtgraft.errors import MtgraftError
from mtgraft.patches import SkillPatch
from mtgraft.registry import MaskRegistry, file_info, resolve_patch_files
from mtgraft.utils import sha256_file

NAME = "skill.sst2.minilm-abababab"


def test_register_tags_run_and_aliases(mlflow_local_uri, make_skillpatch, tmp_path):
    reg = MaskRegistry(mlflow_local_uri)
    p1 = make_skillpatch("a.safetensors", rel=0.90, seed=1)
    m1 = reg.register_patch(p1)
    assert (m1.name, m1.version) == (NAME, "1")
    assert m1.aliases == ["latest", "best"]

    mv = reg.client.get_model_version(NAME, "1")
    hdr = SkillPatch.load(p1).header
    t = mv.tags
    assert t["mtgraft.kind"] == "skillpatch"
    assert t["mtgraft.task"] == "sst2" and t["mtgraft.base_model"] == "minilm"
    assert t["mtgraft.base_hash"] == hdr.base_hash and t["mtgraft.method"] == "graft"
    assert json.loads(t["mtgraft.method_settings"]) == {"lr": 1e7, "steps": 100}
    assert float(t["mtgraft.sparsity"]) == pytest.approx(hdr.sparsity)
    assert int(t["mtgraft.region_size"]) == hdr.region_size > 0
    assert (t["mtgraft.k"], t["mtgraft.data_seed"], t["mtgraft.seed"]) == ("64", "13", "1")
    assert t["mtgraft.finetune_run_id"] == "ft-run-0"
    assert (float(t["mtgraft.test_accuracy"]), float(t["mtgraft.rel"]), float(t["mtgraft.ece"])) == (0.8, 0.9, 0.05)
    assert t["mtgraft.patch_sha256"] == sha256_file(p1)
    assert t["mtgraft.patch_file"] == "skillpatch/a.safetensors"
    # the version links to the run that holds the file, and the file is a downloadable run artifact
    assert mv.run_id == m1.run_id
    assert mv.source.endswith(f"{m1.run_id}/artifacts/skillpatch")
    got = reg.client.download_artifacts(mv.run_id, "skillpatch/a.safetensors", str(tmp_path / "dl"))
    assert Path(got).read_bytes() == p1.read_bytes()
    assert reg.client.get_run(mv.run_id).data.metrics["test/rel"] == 0.9

    # a better Rel moves best; a worse one and one without Rel do not; latest follows the newest
    assert reg.register_patch(make_skillpatch("b.safetensors", rel=0.95, seed=2)).aliases == ["latest", "best"]
    assert reg.register_patch(make_skillpatch("c.safetensors", rel=0.50, seed=3)).aliases == ["latest"]
    assert reg.register_patch(make_skillpatch("d.safetensors", rel=None, seed=4)).aliases == ["latest"]
    assert str(reg.get_version(f"{NAME}@best").version) == "2"
    assert str(reg.get_version(f"{NAME}@latest").version) == "4"
    assert str(reg.get_version(NAME).version) == "4"  # a bare name means @latest

    rows = reg.list_masks()
    assert [(r["version"], r["aliases"]) for r in rows] == [("1", []), ("2", ["best"]), ("3", []),
                                                            ("4", ["latest"])]
    assert rows[1]["rel"] == 0.95 and rows[3]["rel"] is None


def test_list_filters_and_other_models(mlflow_local_uri, make_skillpatch):
    reg = MaskRegistry(mlflow_local_uri)
    reg.register_patch(make_skillpatch("a.safetensors"))
    reg.register_patch(make_skillpatch("t.safetensors", task="trec"))
    reg.register_patch(make_skillpatch("o.safetensors", base_model="roberta-base", base_hash="sha256:" + "cd" * 32))
    assert {r["name"] for r in reg.list_masks()} == {
        NAME, "skill.trec.minilm-abababab", "skill.sst2.roberta-base-cdcdcdcd"}
    assert [r["name"] for r in reg.list_masks(task="trec")] == ["skill.trec.minilm-abababab"]
    assert {r["name"] for r in reg.list_masks(base="minilm")} == {NAME, "skill.trec.minilm-abababab"}
    assert [r["name"] for r in reg.list_masks(base="cdcdcd")] == ["skill.sst2.roberta-base-cdcdcdcd"]
    assert reg.list_masks(task="sst2", base="roberta-base")[0]["base_model"] == "roberta-base"
    assert reg.list_masks(task="nope") == []


def test_register_into_existing_run_keeps_both_files(mlflow_local_uri, make_skillpatch, tmp_path):
    reg = MaskRegistry(mlflow_local_uri)
    run = reg.client.create_run("0")
    a = make_skillpatch("same.safetensors", seed=1, folder=tmp_path / "x")
    b = make_skillpatch("same.safetensors", seed=2, folder=tmp_path / "y")
    ma = reg.register_patch(a, run_id=run.info.run_id)
    mb = reg.register_patch(b, run_id=run.info.run_id)
    assert ma.run_id == mb.run_id == run.info.run_id
    assert ma.tags["mtgraft.patch_file"] == "skillpatch/same.safetensors"
    assert mb.tags["mtgraft.patch_file"] == f"skillpatch/{sha256_file(b)[:12]}/same.safetensors"
    for m, src in ((ma, a), (mb, b)):
        out = reg.pull(m.ref, tmp_path / f"pulled-{m.version}.safetensors")
        assert Path(out["path"]).read_bytes() == src.read_bytes()
    # the graft run logs its patch itself, then registers it: the same file is not uploaded twice
    c = make_skillpatch("graft.safetensors", seed=3)
    reg.client.log_artifact(run.info.run_id, str(c), "skillpatch")
    mc = reg.register_patch(c, run_id=run.info.run_id)
    assert mc.tags["mtgraft.patch_file"] == "skillpatch/graft.safetensors"
    listed = [a.path for a in reg.client.list_artifacts(run.info.run_id, "skillpatch")]
    # each uploaded patch has its region's picture beside it (drawn at registration when the file had none)
    assert set(listed) == {"skillpatch/graft.safetensors", "skillpatch/same.safetensors", "skillpatch/same.region.png",
                           f"skillpatch/{sha256_file(b)[:12]}"}
    inner = {a.path for a in reg.client.list_artifacts(run.info.run_id, f"skillpatch/{sha256_file(b)[:12]}")}
    assert inner == {f"skillpatch/{sha256_file(b)[:12]}/same.safetensors",
                     f"skillpatch/{sha256_file(b)[:12]}/same.region.png"}
    with pytest.raises(MtgraftError, match="run"):
        reg.register_patch(a, run_id="0" * 32)


def test_pull_refuses_sha256_mismatch(mlflow_local_uri, make_skillpatch, tmp_path):
    reg = MaskRegistry(mlflow_local_uri)
    p = make_skillpatch("a.safetensors")
    m = reg.register_patch(p)
    ok = reg.pull(f"{NAME}@latest", tmp_path / "ok.safetensors")
    assert ok["verified"] and sha256_file(ok["path"]) == sha256_file(p)

    # the file in the artifact store was replaced after registration
    stored = Path(reg.client.get_run(m.run_id).info.artifact_uri) / "skillpatch" / "a.safetensors"
    stored.write_bytes(make_skillpatch("other.safetensors", seed=9).read_bytes())
    with pytest.raises(MtgraftError, match=r"sha256 mismatch for skill\.sst2\.minilm-abababab/1.*refusing"):
        reg.pull(m.ref, tmp_path / "bad.safetensors")
    assert not (tmp_path / "bad.safetensors").exists()

    # the recorded sha256 was changed
    stored.write_bytes(p.read_bytes())
    reg.client.set_model_version_tag(NAME, "1", "mtgraft.patch_sha256", "0" * 64)
    with pytest.raises(MtgraftError, match="sha256 mismatch"):
        reg.pull(m.ref, tmp_path / "bad.safetensors")
    with pytest.raises(MtgraftError, match="sha256 mismatch"), resolve_patch_files([m.ref], mlflow_local_uri):
        pass
    assert not (tmp_path / "bad.safetensors").exists()


def test_unknown_refs_and_non_skillpatch_entries(mlflow_local_uri, make_skillpatch, tmp_path):
    reg = MaskRegistry(mlflow_local_uri)
    reg.register_patch(make_skillpatch("a.safetensors"))
    with pytest.raises(MtgraftError, match="unknown registered model 'skill.nope'"):
        reg.get_version("skill.nope@best")
    with pytest.raises(MtgraftError, match=r"has no alias 'prod' \(aliases: best, latest\)"):
        reg.get_version(f"{NAME}@prod")
    with pytest.raises(MtgraftError, match=r"has no version 7 \(versions: 1\)"):
        reg.pull(f"{NAME}/7", tmp_path / "x")

    # an entry registered by something else (no mtgraft.kind tag)
    run = reg.client.create_run("0")
    reg.client.create_registered_model("sklearn-model")
    reg.client.create_model_version("sklearn-model", run.info.artifact_uri, run_id=run.info.run_id)
    for call in (lambda: reg.show("sklearn-model/1"), lambda: reg.pull("sklearn-model@latest", tmp_path / "y"),
                 lambda: reg.set_alias("sklearn-model/1", "x"), lambda: reg.delete("sklearn-model/1")):
        with pytest.raises(MtgraftError, match="registry entry sklearn-model/1 is not a SkillPatch"):
            call()
    assert [r["name"] for r in reg.list_masks()] == [NAME]  # list shows SkillPatches only


def test_alias_and_delete(mlflow_local_uri, make_skillpatch):
    reg = MaskRegistry(mlflow_local_uri)
    for i, rel in enumerate([0.7, 0.9, 0.8]):
        reg.register_patch(make_skillpatch(f"p{i}.safetensors", rel=rel, seed=i))
    assert reg.set_alias(f"{NAME}/1", "prod") == {"name": NAME, "version": "1", "alias": "prod"}
    assert str(reg.get_version(f"{NAME}@prod").version) == "1"
    with pytest.raises(MtgraftError, match="automatic"):
        reg.set_alias(f"{NAME}/1", "latest")

    with pytest.raises(MtgraftError, match="--all"):
        reg.delete(NAME)
    # deleting the best version moves best to the best remaining one
    assert reg.delete(f"{NAME}@best") == {"deleted": f"{NAME}/2", "versions": 1}
    assert str(reg.get_version(f"{NAME}@best").version) == "3"
    assert [r["version"] for r in reg.list_masks()] == ["1", "3"]
    assert reg.delete(NAME, all_versions=True) == {"deleted": NAME, "versions": 2}
    assert reg.list_masks() == []
    with pytest.raises(MtgraftError, match="unknown registered model"):
        reg.show(NAME)


def test_show_lineage_and_file_refs(mlflow_local_uri, make_skillpatch):
    reg = MaskRegistry(mlflow_local_uri)
    p = make_skillpatch("a.safetensors")
    m = reg.register_patch(p)
    info = reg.show(f"{NAME}@best")
    assert info["ref"] == f"{NAME}/1" and info["aliases"] == ["latest", "best"]
    assert info["metrics"]["test/accuracy"] == 0.8
    assert info["lineage"]["run_id"] == m.run_id and info["lineage"]["finetune_run_id"] == "ft-run-0"
    assert info["tags"]["mtgraft.patch_sha256"] == sha256_file(p)
    # a path works wherever a REF does, without a store
    local = file_info(p)
    assert local["registered"] is False and local["tags"]["mtgraft.patch_sha256"] == sha256_file(p)
    assert local["name"] == NAME and local["rel"] == 0.9
    with resolve_patch_files([str(p)], "http://127.0.0.1:1") as files:  # no server contacted for files
        assert files[0]["path"] == p and not files[0]["registry"]
    with pytest.raises(MtgraftError, match="does not exist"), resolve_patch_files(["missing.safetensors"]):
        pass


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_is_one_clear_line_quickly():
    uri = f"http://127.0.0.1:{_closed_port()}"
    t0 = time.monotonic()
    with pytest.raises(MtgraftError, match=f"cannot reach the MLflow tracking server at {uri}"):
        MaskRegistry(uri)
    assert time.monotonic() - t0 < 5
    r = CliRunner().invoke(app, ["masks", "list", "--tracking-uri", uri])
    assert r.exit_code == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: cannot reach the MLflow tracking server"), r.stderr


def test_cli_list_show_pull_alias_delete(mlflow_local_uri, make_skillpatch, tmp_path):
    runner = CliRunner()
    u = ["--tracking-uri", mlflow_local_uri]
    a, b = make_skillpatch("a.safetensors", rel=0.9, seed=1), make_skillpatch("b.safetensors", rel=0.6, seed=2)
    r = runner.invoke(app, ["masks", "register", str(a), str(b), "--json", *u])
    assert r.exit_code == 0, r.output
    assert [d["ref"] for d in json.loads(r.stdout)["registered"]] == [f"{NAME}/1", f"{NAME}/2"]

    r = runner.invoke(app, ["masks", "list", "--json", *u])
    rows = json.loads(r.stdout)["masks"]
    assert [(x["version"], x["aliases"], x["rel"]) for x in rows] == [("1", ["best"], 0.9), ("2", ["latest"], 0.6)]
    r = runner.invoke(app, ["masks", "list", *u])
    assert r.exit_code == 0 and "skill.sst2.minilm-abababab" in r.stdout and "0.9000" in r.stdout

    r = runner.invoke(app, ["masks", "show", f"{NAME}@best", "--json", *u])
    assert json.loads(r.stdout)["tags"]["mtgraft.patch_sha256"] == sha256_file(a)
    r = runner.invoke(app, ["masks", "show", str(b), "--json"])  # a path needs no store
    assert json.loads(r.stdout)["tags"]["mtgraft.patch_sha256"] == sha256_file(b)

    out = tmp_path / "pulled"
    out.mkdir()
    r = runner.invoke(app, ["masks", "pull", f"{NAME}/2", "--out", str(out), "--json", *u])
    assert r.exit_code == 0, r.output
    assert (out / "b.safetensors").read_bytes() == b.read_bytes()

    r = runner.invoke(app, ["masks", "alias", f"{NAME}/2", "prod", *u])
    assert r.exit_code == 0 and f"{NAME}@prod → version 2" in r.stderr
    r = runner.invoke(app, ["masks", "show", f"{NAME}@nope", *u])
    assert r.exit_code == 2 and r.stderr.strip().startswith("error: registered model") and not r.stdout
    r = runner.invoke(app, ["masks", "delete", f"{NAME}/1", "--json", *u])
    assert json.loads(r.stdout) == {"deleted": f"{NAME}/1", "versions": 1}
    r = runner.invoke(app, ["masks", "list", "--json", *u])
    assert [(x["version"], x["aliases"]) for x in json.loads(r.stdout)["masks"]] == [("2", ["latest", "best", "prod"])]


def test_task_name_refs_resolve_when_they_name_one_model(mlflow_local_uri, make_skillpatch, tmp_path):
    """``trec@best`` names the one SkillPatch model of task trec; ``sst2@best`` (two base models) lists the
    candidates; a task nobody registered is the usual unknown-model line (issue 16 item 4)."""
    reg = MaskRegistry(mlflow_local_uri)
    reg.register_patch(make_skillpatch("a.safetensors"))
    reg.register_patch(make_skillpatch("t1.safetensors", task="trec", rel=0.5, seed=1))
    reg.register_patch(make_skillpatch("t2.safetensors", task="trec", rel=0.8, seed=2))
    reg.register_patch(make_skillpatch("o.safetensors", base_model="roberta-base", base_hash="sha256:" + "cd" * 32))
    shown = reg.show("trec@best")
    assert (shown["name"], shown["version"]) == ("skill.trec.minilm-abababab", "2")
    assert str(reg.get_version("trec/1").version) == "1"
    pulled = reg.pull("trec@best", tmp_path / "pulled.safetensors")
    assert Path(pulled["path"]).is_file()
    with pytest.raises(MtgraftError) as e:
        reg.show("sst2@best")
    assert str(e.value) == ("task 'sst2' has 2 registered SkillPatch models; name one: "
                            f"{NAME}@best, skill.sst2.roberta-base-cdcdcdcd@best")
    with pytest.raises(MtgraftError, match="unknown registered model 'nope'"):
        reg.show("nope@best")
