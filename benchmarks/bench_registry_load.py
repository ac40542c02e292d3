"""Registry under load: P processes × N registrations each against a real ``mlflow server`` (sqlite backend).

Checks that no version is lost or duplicated, that every version is complete (none tagged incomplete) and
that ``best`` ends on the highest-Rel version; reports throughput (registrations/s) and the slowest
registration. ``tests/integration/test_registry_faults.py`` runs ``run_load`` at 4 × 3.

    .venv/bin/python benchmarks/bench_registry_load.py            # 16 × 10, JSON to benchmarks/results/
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

TASK = "load"
BASE_HASH = "sha256:" + "cd" * 32


def make_patch(path: Path, rel: float, seed: int) -> Path:
    """A tiny SkillPatch (4×4 + 4 graftable entries, one head tensor) with Rel ``rel``."""
    import torch

    from mtgraft.patches import SkillPatch

    g = torch.Generator().manual_seed(seed)
    masks = {"w": torch.rand(4, 4, generator=g) < 0.5, "b": torch.rand(4, generator=g) < 0.5}
    masks["w"][0, 0] = True
    values = {"w": torch.randn(4, 4, generator=g), "b": torch.randn(4, generator=g)}
    header = dict(base_model="minilm", base_hash=BASE_HASH, graftable=[("w", [4, 4]), ("b", [4])], task=TASK,
                  tasks_info={TASK: {"name": TASK, "labels": ["a", "b"]}}, model_type="head", method="graft",
                  method_settings={}, sparsity_requested=0.5, seed=seed, data={"k": 8, "seed": 13},
                  metrics={"test": {"accuracy": 0.5 + rel / 4, "rel": rel}}, finetuned={"path": "ft"})
    return SkillPatch.from_masks(masks, values, {f"heads.{TASK}.weight": torch.zeros(2, 2)}, header).save(path)


def _worker(uri: str, paths: list[str], barrier, out: str) -> None:
    from mtgraft.registry import MaskRegistry

    barrier.wait(timeout=300)
    reg = MaskRegistry(uri)
    done = []
    for p in paths:
        t0 = time.perf_counter()
        m = reg.register_patch(p)
        done.append({"path": p, "version": m.version, "seconds": time.perf_counter() - t0})
    Path(out).write_text(json.dumps(done))


def run_load(uri: str, procs: int, per_proc: int, workdir: Path) -> dict:
    """Register ``procs × per_proc`` distinct patches of one model from ``procs`` processes at once; check and
    time it. Raises AssertionError on a lost, duplicated or incomplete version, or a stale ``best``."""
    from mtgraft.registry import MaskRegistry, model_name
    from mtgraft.utils import sha256_file

    rels = {}
    jobs = []
    for w in range(procs):
        paths = []
        for j in range(per_proc):
            i = w * per_proc + j
            rel = round(((i * 7919) % 1000) / 1000, 3)  # distinct-looking, some ties possible
            paths.append(str(make_patch(workdir / f"p{i}.safetensors", rel, seed=i)))
            rels[paths[-1]] = rel
        jobs.append(paths)
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(procs)
    outs = [workdir / f"worker{w}.json" for w in range(procs)]
    workers = [ctx.Process(target=_worker, args=(uri, jobs[w], barrier, str(outs[w]))) for w in range(procs)]
    for p in workers:
        p.start()
    t0 = time.perf_counter()
    for p in workers:
        p.join(timeout=1800)
    wall = time.perf_counter() - t0
    assert [p.exitcode for p in workers] == [0] * procs, [p.exitcode for p in workers]
    done = [d for o in outs for d in json.loads(o.read_text())]
    n = procs * per_proc
    reg = MaskRegistry(uri)
    name = model_name(TASK, "minilm", BASE_HASH)
    rows = [r for r in reg.list_masks() if r["name"] == name]
    got = sorted(int(d["version"]) for d in done)
    assert got == list(range(1, n + 1)), "a version number was lost or handed out twice"
    assert sorted(int(r["version"]) for r in rows) == got, "the registry lists other versions than were registered"
    assert not [r for r in reg.list_masks(incomplete=True) if r["name"] == name], "a version was left incomplete"
    by_version = {d["version"]: d for d in done}
    for r in rows:  # each version holds the file its registration sent
        assert r["sha256"] == sha256_file(by_version[r["version"]]["path"])
    best = max(done, key=lambda d: (rels[d["path"]], -int(d["version"])))
    assert str(reg.get_version(f"{name}@best").version) == best["version"], "best is not the highest-Rel version"
    secs = sorted(d["seconds"] for d in done)
    return {"processes": procs, "registrations_per_process": per_proc, "registrations": n,
            "wall_seconds": round(wall, 2), "registrations_per_second": round(n / wall, 2),
            "median_seconds": round(secs[len(secs) // 2], 3), "slowest_seconds": round(secs[-1], 3),
            "lost": 0, "duplicated": 0, "incomplete": 0, "best_version": best["version"],
            "best_rel": rels[best["path"]]}


def start_server(root: Path) -> tuple[subprocess.Popen, str]:
    """``mlflow server`` with a fresh sqlite store in ``root`` on a free loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = open(root / "server.log", "wb")  # noqa: SIM115  (the server writes it until stopped)
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                             f"sqlite:///{root}/mlflow.db", "--artifacts-destination", str(root / "artifacts"),
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    for _ in range(900):
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=2).read()
            return proc, uri
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.2)
    raise SystemExit(f"mlflow server did not start:\n{(root / 'server.log').read_text()[-2000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--procs", type=int, default=16)
    ap.add_argument("--per-proc", type=int, default=10)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "registry_load.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="mtgraft-load-") as tmp:
        root = Path(tmp)
        proc, uri = start_server(root)
        try:
            load_before = os.getloadavg()
            res = run_load(uri, args.procs, args.per_proc, root)
            res["loadavg_before"] = [round(x, 2) for x in load_before]
            res["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
            res["cpus"] = os.cpu_count()
            res["backend"] = "mlflow server --workers 1, sqlite"
        finally:
            os.killpg(proc.pid, 15)
            proc.wait(timeout=30)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
