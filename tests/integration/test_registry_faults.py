"""Faults survived (issue 13) with a real ``mlflow server``: the server killed in the middle of ``mtgraft
graft``, two grafts writing one ``--out`` at once, SIGKILL during ``masks register``, and the registry under
load (4 processes × 3 registrations; the full 16 × 10 is benchmarks/bench_registry_load.py)."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mtgraft.patches.picture import picture_path
from mtgraft.registry import MaskRegistry, model_name
from mtgraft.testing import example_task_yaml, make_tiny_checkpoint, make_tiny_model
from mtgraft.utils import sha256_file

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "mtgraft.cli"]


@pytest.fixture(scope="module")
def ck(tmp_path_factory):
    d = tmp_path_factory.mktemp("faults")
    pre = make_tiny_model("head", d / "pre", seed=5)
    return make_tiny_checkpoint(d / "ft", pre, example_task_yaml(), seed=6)


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **extra}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _graft(ck: str, out: Path, *extra: str, updates: int = 20) -> list[str]:
    return [*CLI, "graft", "--task", example_task_yaml(), "--finetuned", ck, "--sparsity", "0.01,0.02",
            "--method", "graft", "--updates", str(updates), "--out", str(out), "--json", *extra]


def _wait_for(cond, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize("when", ["mid-selection", "at hand-off"])
def test_server_killed_during_graft_keeps_outputs_and_registers_later(ck, own_mlflow_server, tmp_path, when):
    server_root = tmp_path / "server"
    proc, uri = own_mlflow_server(server_root)
    out = tmp_path / "g"
    g = subprocess.Popen(_graft(ck, out, "--tracking-uri", uri, updates=400 if when == "mid-selection" else 20),
                         env=_env(MLFLOW_HTTP_REQUEST_MAX_RETRIES="1"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    if when == "mid-selection":  # the temporary output folder exists: the regions are being learnt
        _wait_for(lambda: any(tmp_path.glob(".g.tmp-*")) or g.poll() is not None)
        assert not out.exists() and g.poll() is None, "the graft got past its selection before the kill"
    else:  # the outputs are renamed into place and are being handed to the registry
        _wait_for(lambda: out.is_dir() or g.poll() is not None)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    _, stderr = g.communicate(timeout=300)
    assert g.returncode == 2, stderr
    [err] = _errors(stderr)  # one clear line
    assert "the output files are complete" in err and f"mtgraft masks register {out}" in err, err
    if when == "mid-selection":
        assert "stopped answering" in stderr and "its files are kept" in stderr, stderr
    entries = [e for e in json.loads((out / "results.json").read_text())["results"] if e.get("patch")]
    assert len(entries) == 2 and not any(e.get("registered") for e in entries)
    assert all((out / Path(e["patch"]).name).is_file() for e in entries)

    _, uri = own_mlflow_server(server_root)  # the server is back (same store)
    r = subprocess.run([*CLI, "masks", "register", str(out), "--json", "--tracking-uri", uri], env=_env(),
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)["registered"]) == 2
    reg = MaskRegistry(uri)
    assert reg.list_masks(incomplete=True) == []
    rows = reg.list_masks()
    shas = {sha256_file(out / Path(e["patch"]).name) for e in entries}
    assert {r["sha256"] for r in rows} == shas and len(rows) == 2
    recorded = json.loads((out / "results.json").read_text())["results"]
    assert {(e["registered"]["name"], e["registered"]["version"]) for e in recorded if e.get("patch")} == \
        {(r["name"], r["version"]) for r in rows}


def test_two_grafts_on_one_out_one_refuses_and_a_killed_one_never_blocks(ck, tmp_path):
    env = _env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/mlflow.db")
    out, lock = tmp_path / "same", tmp_path / "same.lock"
    a = subprocess.Popen(_graft(ck, out, "--no-register"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, cwd=tmp_path)
    _wait_for(lambda: lock.exists() or a.poll() is not None)
    b = subprocess.run(_graft(ck, out, "--no-register"), env=env, capture_output=True, text=True, cwd=tmp_path,
                       timeout=300)
    a_out, a_err = a.communicate(timeout=300)
    assert a.returncode == 0, a_err
    assert b.returncode == 2, b.stderr
    [err] = _errors(b.stderr)
    assert f"another mtgraft command (pid {a.pid}) is writing '{out}'" in err
    # nothing mixed: the folder is A's, whole; no temporary folder or lock left
    res = json.loads(a_out.strip().splitlines()[-1])
    on_disk = json.loads((out / "results.json").read_text())
    assert [e["patch"] for e in on_disk["results"]] == [e["patch"] for e in res["results"]]
    patches = [Path(e["patch"]) for e in res["results"]]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [p.name for p in patches] + [picture_path(p).name for p in patches]
        + ["results.json", Path(res["reliability_diagram"]).name])
    assert not lock.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".same")] == []

    # a graft SIGKILLed while holding the lock leaves the lock file; the next graft is not blocked by it
    c = subprocess.Popen(_graft(ck, out, "--no-register"), env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, cwd=tmp_path, start_new_session=True)
    _wait_for(lambda: lock.exists() or c.poll() is not None)
    os.killpg(c.pid, signal.SIGKILL)
    c.wait(timeout=60)
    assert lock.exists()
    d = subprocess.run(_graft(ck, out, "--no-register"), env=env, capture_output=True, text=True, cwd=tmp_path,
                       timeout=300)
    assert d.returncode == 0, d.stderr


def test_sigkill_during_masks_register_leaves_no_version_without_its_file(mlflow_server, make_skillpatch,
                                                                          tmp_path):
    task = "killed_register"
    paths = [make_skillpatch(f"k{i}.safetensors", task=task, rel=0.1 * i, seed=200 + i) for i in range(8)]
    name = model_name(task, "minilm", "sha256:" + "ab" * 32)
    reg = MaskRegistry(mlflow_server)

    def versions() -> list:
        return reg.client.search_model_versions(f"name = '{name}'")

    cmd = [*CLI, "masks", "register", *map(str, paths), "--tracking-uri", mlflow_server]
    p = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path,
                         start_new_session=True)
    _wait_for(lambda: bool(versions()) or p.poll() is not None)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait(timeout=60)
    left = versions()
    assert left, "the command ended before it could be killed"
    for mv in left:  # every version that exists holds its file (sha256-verified), tagged incomplete
        got = reg.pull(f"{name}/{mv.version}", tmp_path / f"pulled{mv.version}.safetensors")
        assert got["verified"]
    assert [r for r in reg.list_masks(task=task)] == []
    assert sorted(r["version"] for r in reg.list_masks(task=task, incomplete=True)) == \
        sorted(str(mv.version) for mv in left)
    # registering the same files again removes the leftovers and registers every file once, complete
    r = subprocess.run([*cmd, "--json"], env=_env(), capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert len(res["cleaned"]) == len(left) and len(res["registered"]) == 8
    assert reg.list_masks(task=task, incomplete=True) == []
    assert sorted(r["sha256"] for r in reg.list_masks(task=task)) == sorted(sha256_file(x) for x in paths)


def test_registry_load_4x3(mlflow_server, tmp_path):
    spec = importlib.util.spec_from_file_location("bench_registry_load", ROOT / "benchmarks" / "bench_registry_load.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    res = bench.run_load(mlflow_server, 4, 3, tmp_path)
    assert res["registrations"] == 12 and res["lost"] == res["duplicated"] == res["incomplete"] == 0
