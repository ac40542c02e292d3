"""The registry and the disk agree (issue 13): a failed registration rolls back what the command registered,
``masks register DIR`` registers a graft output folder later, unfinished versions are tagged incomplete
(``masks list/delete --incomplete``), and ``<out>.lock`` keeps two commands from writing one folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import mtgraft.cli.graft_cmds  # noqa: F401  (registers 'graft')
import mtgraft.cli.masks_cmds  # noqa: F401  (registers the 'masks' group)
from mtgraft.cli.app import app
from mtgraft.errors import MtgraftError
from mtgraft.grafting import GraftConfig
from mtgraft.grafting.run import out_lock
from mtgraft.registry import INCOMPLETE_TAG, MaskRegistry
from mtgraft.testing import example_task_yaml, make_tiny_checkpoint, make_tiny_model
from mtgraft.utils import sha256_file
from mtgraft.workflows.graft import graft_and_register, register_outputs


@pytest.fixture(scope="module")
def ck(tmp_path_factory):
    d = tmp_path_factory.mktemp("reliab")
    pre = make_tiny_model("head", d / "pre", seed=3)
    return make_tiny_checkpoint(d / "ft", pre, example_task_yaml(), seed=4)


def _cfg(ck: str, out: Path, uri: str) -> GraftConfig:
    return GraftConfig(task=example_task_yaml(), finetuned=ck, sparsity=[0.01, 0.02], method=["graft"], updates=3,
                       out=str(out), tracking_uri=uri)


def _results(out: Path) -> list[dict]:
    return [e for e in json.loads((out / "results.json").read_text())["results"] if e.get("patch")]


def test_failure_at_second_registration_rolls_back_and_register_dir_later(ck, mlflow_local_uri, tmp_path,
                                                                          monkeypatch):
    out = tmp_path / "g"
    real = MaskRegistry.register_patch
    calls = []

    def flaky(self, *a, **kw):
        calls.append(a)
        if len(calls) == 2:
            raise MtgraftError("registering a version failed at the server: injected")
        return real(self, *a, **kw)

    monkeypatch.setattr(MaskRegistry, "register_patch", flaky)
    with pytest.raises(MtgraftError) as e:
        graft_and_register(_cfg(ck, out, mlflow_local_uri), show_progress=False)
    msg = str(e.value)
    assert "\n" not in msg and "injected" in msg
    assert "rolled back skill." in msg and f"mtgraft masks register {out}" in msg
    reg = MaskRegistry(mlflow_local_uri)
    # registry: nothing kept, nothing half-done; disk: every output complete, none recorded as registered
    assert reg.list_masks() == [] and reg.list_masks(incomplete=True) == []
    entries = _results(out)
    assert len(entries) == 2 and all(e["registered"] is None for e in entries)
    assert all(Path(e["patch"]).is_file() for e in entries) and (out / "results.json").is_file()
    assert not Path(f"{out}.lock").exists()

    monkeypatch.setattr(MaskRegistry, "register_patch", real)
    res = register_outputs([out], mlflow_local_uri)
    rows = reg.list_masks()
    assert len(res["registered"]) == len(rows) == 2
    by_sha = {r["sha256"]: r for r in rows}
    for e in _results(out):  # results.json names exactly the versions that hold its files
        r = by_sha[sha256_file(out / Path(e["patch"]).name)]
        assert (e["registered"]["name"], e["registered"]["version"]) == (r["name"], r["version"])
    eligible = [r for r in rows if r["flag"] is None]  # flagged versions (Rel interval ≤ 0, below top-k) never
    if eligible:                                        # take best (a tiny random model's Rel is noisy)
        best = max(eligible, key=lambda r: (r["rel"], -int(r["version"])))
        assert "best" in best["aliases"]
    assert not any("best" in r["aliases"] for r in rows if r["flag"] is not None)
    again = register_outputs([out], mlflow_local_uri)  # already registered: skipped, nothing new
    assert again["registered"] == [] and len(again["skipped"]) == 2 and len(reg.list_masks()) == 2


def test_graft_registers_and_records_versions(ck, mlflow_local_uri, tmp_path):
    out = tmp_path / "ok"
    [res] = graft_and_register(_cfg(ck, out, mlflow_local_uri), show_progress=False)
    rows = MaskRegistry(mlflow_local_uri).list_masks()
    assert len(rows) == 2 and not any(r["incomplete"] for r in rows)
    on_disk = {e["registered"]["version"] for e in _results(out)}
    assert on_disk == {e["registered"]["version"] for e in res.results} == {"1", "2"}
    flagged = {r["version"]: r["flag"] for r in rows}
    assert any("best" in e["registered"]["aliases"] for e in _results(out)) == \
        any(f is None for f in flagged.values())


def test_killed_registration_is_incomplete_until_cleaned(make_skillpatch, mlflow_local_uri):
    runner = CliRunner()
    u = ["--tracking-uri", mlflow_local_uri]
    reg = MaskRegistry(mlflow_local_uri)
    p = make_skillpatch("k.safetensors", rel=0.99)
    good = reg.register_patch(make_skillpatch("g.safetensors", rel=0.5, seed=1))
    left = reg.register_patch(p, complete=False)  # what a registration killed before its end leaves
    assert left.tags[INCOMPLETE_TAG]
    assert [r["version"] for r in reg.list_masks()] == [good.version]  # hidden from the normal list...
    r = runner.invoke(app, ["masks", "list", "--incomplete", "--json", *u])
    assert [x["version"] for x in json.loads(r.stdout)["masks"]] == [left.version]  # ...listed here
    assert str(reg.get_version(f"{good.name}@best").version) == good.version  # never best while unfinished
    r = runner.invoke(app, ["masks", "delete", "--incomplete", "--json", *u])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["deleted"] == [left.ref]
    assert reg.list_masks(incomplete=True) == []
    # a leftover of the same file is removed when the file is registered again
    left = reg.register_patch(p, complete=False)
    r = runner.invoke(app, ["masks", "register", str(p), "--json", *u])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["cleaned"] == [left.ref] and len(out["registered"]) == 1
    assert reg.list_masks(incomplete=True) == [] and len(reg.list_masks()) == 2
    assert str(reg.get_version(f"{good.name}@best").version) == out["registered"][0]["version"]


def test_out_lock_refuses_a_second_writer_and_never_goes_stale(ck, tmp_path):
    out = tmp_path / "locked"
    Path(f"{out}.lock").write_text("99999999\n")  # a lock file left by a killed command: no holder, no block
    with out_lock(out):
        r = CliRunner().invoke(app, ["graft", "--task", example_task_yaml(), "--finetuned", ck, "--sparsity", "0.01",
                                     "--method", "graft", "--updates", "3", "--no-register", "--out", str(out)])
        assert r.exit_code == 2
        assert "another mtgraft command" in r.stderr and f"is writing '{out}'" in r.stderr
        assert not out.exists()
        with pytest.raises(MtgraftError, match="another mtgraft command"), out_lock(out):
            pass
    assert not Path(f"{out}.lock").exists()
    with out_lock(out):  # free again
        pass
