"""Shared pytest fixtures (others may append theirs below).

MLflow: ``mlflow_db_template`` builds an empty, migrated sqlite store once per session (creating
MLflow's tables takes seconds); ``mlflow_local_uri`` gives each test its own copy of it, and
``mlflow_server`` runs a real ``mlflow server`` (sqlite backend, local artifact folder) on a free
loopback port for the whole session and yields its URI.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def mlflow_db_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty sqlite MLflow store with all tables created (copy it; don't write to it)."""
    import logging

    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.ERROR)
    root = tmp_path_factory.mktemp("mlflow-template")
    db = root / "mlflow.db"
    SqlAlchemyStore(f"sqlite:///{db}", str(root / "artifacts"))
    return db


@pytest.fixture()
def mlflow_local_uri(mlflow_db_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh local sqlite store for one test; the cwd is ``tmp_path`` so ``./mlruns`` artifacts land there."""
    db = tmp_path / "mlflow.db"
    shutil.copy(mlflow_db_template, db)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return f"sqlite:///{db}"


def start_mlflow_server(root: Path, template: Path, port: int | None = None) -> tuple[subprocess.Popen, str]:
    """Start ``mlflow server`` (sqlite backend ``root/mlflow.db``, made from ``template`` unless it exists;
    artifacts in ``root/artifacts``) in its own session on 127.0.0.1; returns it and its URI once it answers."""
    db = root / "mlflow.db"
    if not db.exists():
        shutil.copy(template, db)  # skips the server's own (slow) table creation
        with sqlite3.connect(db) as con:  # as a fresh server would set it: Default's artifacts go through the server
            con.execute("UPDATE experiments SET artifact_location = 'mlflow-artifacts:/0' WHERE experiment_id = 0")
    port = port or _free_port()
    uri = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{db}",
           "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]
    log_path = root / "server.log"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no background job runner (GenAI jobs): faster, lighter
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=root, env=env,
                                start_new_session=True)
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                if r.status == 200:
                    return proc, uri
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            _stop(proc)
            pytest.fail(f"mlflow server did not answer on {uri} within 120 s:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.2)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory, mlflow_db_template: Path) -> Iterator[str]:
    """A real ``mlflow server`` (sqlite backend, local artifact folder) on 127.0.0.1:<free port>; yields its URI."""
    proc, uri = start_mlflow_server(tmp_path_factory.mktemp("mlflow-server"), mlflow_db_template)
    try:
        yield uri
    finally:
        _stop(proc)


@pytest.fixture()
def own_mlflow_server(tmp_path: Path, mlflow_db_template: Path) -> Iterator[Any]:
    """Factory for servers a test may kill and restart: ``start(root) -> (proc, uri)``; all stopped at the end."""
    procs: list[subprocess.Popen] = []

    def start(root: Path, port: int | None = None) -> tuple[subprocess.Popen, str]:
        root.mkdir(parents=True, exist_ok=True)
        proc, uri = start_mlflow_server(root, mlflow_db_template, port)
        procs.append(proc)
        return proc, uri

    try:
        yield start
    finally:
        for proc in procs:
            _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """Stop a process started in its own session, and its children (uvicorn workers)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        except ProcessLookupError:
            pass
    # workers left behind in the group (if the parent died first)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


@pytest.fixture()
def make_skillpatch(tmp_path: Path):
    """Factory: ``make_skillpatch(name, task=..., rel=..., seed=...) -> Path`` of a tiny SkillPatch file
    (graftable set ``w`` [4, 4] + ``b`` [4], one head tensor) with a full header."""
    import torch

    from mtgraft.patches import SkillPatch

    def make(name: str = "p.safetensors", task: str = "sst2", rel: float | None = 0.9, seed: int = 0,
             base_model: str = "minilm", base_hash: str = "sha256:" + "ab" * 32, accuracy: float = 0.8,
             finetune_run_id: str | None = "ft-run-0", folder: Path | None = None,
             rel_ci95: list[float] | None = None) -> Path:
        g = torch.Generator().manual_seed(seed)
        ft = {"w": torch.randn(4, 4, generator=g), "b": torch.randn(4, generator=g)}
        masks = {"w": torch.rand(4, 4, generator=g) < 0.4, "b": torch.rand(4, generator=g) < 0.5}
        masks["w"][0, 0] = True  # never empty
        test = {"accuracy": accuracy, "ece": 0.05}
        if rel is not None:
            test["rel"] = rel
        if rel_ci95 is not None:
            test["rel_ci95"] = rel_ci95
        hdr = {"base_model": base_model, "base_hash": base_hash, "graftable": [("w", [4, 4]), ("b", [4])],
               "task": task, "tasks_info": {task: {"name": task, "labels": ["neg", "pos"]}}, "model_type": "head",
               "method": "graft", "method_settings": {"lr": 1e7, "steps": 100}, "sparsity_requested": 0.3,
               "seed": seed, "data": {"k": 64, "seed": 13, "max_test": 100, "max_length": 64},
               "metrics": {"test": test}, "finetuned": {"path": "runs/ft", "mlflow_run_id": finetune_run_id}}
        head = {f"heads.{task}.weight": torch.full((2, 3), float(seed))}
        return SkillPatch.from_masks(masks, ft, head, hdr).save((folder or tmp_path) / name)

    return make


@pytest.fixture(autouse=True)
def _own_eval_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test gets its own evaluation cache (mtgraft/evaluation/cache.py): no test reads entries another
    test (or an earlier run of the suite) wrote; a test may still set ``MTGRAFT_EVAL_CACHE`` itself."""
    monkeypatch.setenv("MTGRAFT_EVAL_CACHE", str(tmp_path_factory.mktemp("eval-cache")))


@pytest.fixture
def isolated_mlflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the test in its tmp_path with its own sqlite tracking store and artifact folder."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("MLFLOW_ARTIFACT_ROOT", str(tmp_path / "mlruns"))
    monkeypatch.chdir(tmp_path)
