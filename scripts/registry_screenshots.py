"""Screenshots of the MLflow UI for docs/registry.md: a real ``mlflow server`` on loopback over a tracking
store (the main job's ``mlflow.db`` + ``mlruns``), pages captured with headless Chromium.

    python scripts/registry_screenshots.py --db runs/../mlflow.db --artifacts mlruns --out docs/img

Needs ``chromium`` (``apt-get install chromium``). Writes mlflow-graft-runs.png (the graft experiment in the
model-training view), mlflow-models.png (registered SkillPatch models), mlflow-model-version.png (one version: aliases,
tags) and mlflow-region-picture.png (the region picture beside its patch in the version's source run).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

TRAINING_VIEW = "workflowType=machine_learning"  # MLflow 3's model-training view (not the GenAI overview)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"mlflow server at {url} did not answer in {timeout:.0f} s")


def shoot(chromium: str, url: str, out: Path, size: str = "1500,950", wait_ms: int = 20000) -> None:
    subprocess.run([chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--window-size={size}", f"--virtual-time-budget={wait_ms}", f"--screenshot={out}", url],
                   check=True, capture_output=True, timeout=180)
    print(f"wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", required=True, help="the sqlite tracking store (mlflow.db)")
    ap.add_argument("--artifacts", required=True, help="the artifact folder (mlruns)")
    ap.add_argument("--out", default="docs/img")
    ap.add_argument("--model", help="registered model for the version page (default: the first SkillPatch model)")
    ap.add_argument("--version", default="1")
    a = ap.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("chromium not found (apt-get install chromium)")
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    db = Path(a.db).resolve()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                               "--workers", "1", "--backend-store-uri", f"sqlite:///{db}",
                               "--default-artifact-root", str(Path(a.artifacts).resolve()),
                               "--serve-artifacts"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        _wait(uri)
        from mlflow import MlflowClient

        client = MlflowClient(uri)
        exp = client.get_experiment_by_name("mtgraft-graft")
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        if exp is not None:
            shoot(chromium, f"{uri}/#/experiments/{exp.experiment_id}?{TRAINING_VIEW}", out / "mlflow-graft-runs.png")
        shoot(chromium, f"{uri}/#/models", out / "mlflow-models.png")
        model = a.model or sorted(m.name for m in client.search_registered_models())[0]
        shoot(chromium, f"{uri}/#/models/{model}/versions/{a.version}", out / "mlflow-model-version.png")
        mv = client.get_model_version(model, a.version)
        from mtgraft.patches.picture import picture_path

        pic = picture_path(mv.tags.get("mtgraft.patch_file", "skillpatch/x.safetensors")).as_posix()
        shoot(chromium, f"{uri}/#/experiments/{client.get_run(mv.run_id).info.experiment_id}/runs/{mv.run_id}"
                        f"/artifacts/{pic}?{TRAINING_VIEW}", out / "mlflow-region-picture.png")
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
