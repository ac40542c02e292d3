"""Scale: the embedded MiniLM (22.7M, head) and SmolLM2 (134.5M, causal) side by side.

Usage: python benchmarks/bench_scale.py [--models minilm smollm2] [--task rotten_tomatoes] [--steps N]
       [--sparsity 1e-5 1e-4 1e-3 1e-2] [--max-test 200] [--examples-per-update 64] [--recipe thorough]
       [--threads 1]
       [--work DIR] [--out benchmarks/results/scale.json]

Every measured thing is its own ``mtgraft`` command in a child process (``bench_graft.run_measured``: wall
time, CPU seconds and the child's own peak RSS), per model:
1. ``mtgraft train`` with the model's preset (its steps unless ``--steps``; K = 64, the same batch size and
   max length for both models so that s/step compares the models, not the settings);
2. ``mtgraft graft --method graft`` of that checkpoint at each sparsity (``--recipe``, default ``thorough``, with
   ``--examples-per-update``, the same for both), without registering;
3. the overlap metrics of two regions of 1e-3 of the body (``analysis.overlap.pair_overlap``, in a child).
Reported: parameters and graftable body; fine-tune s/step and peak RSS; graft time (the graft command's own
``seconds``, and wall) and peak RSS per sparsity with the goals graft peak ≤ 1.2× fine-tune peak and graft
time ≤ fine-tune time; SkillPatch bytes per grafted entry (header and head aside); overlap metrics time.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

from bench_graft import PEAK_FACTOR, _json, child_env, patch_file_stats, run_measured, write_json_atomic  # noqa: E402

TYPES = {"minilm": "head", "smollm2": "causal"}
#: the same optimisation and data for both models (s/step compares the models)
COMMON = ["--k", "64", "--batch-size", "8", "--max-length", "64", "--optimizer", "sgd"]

OVERLAP_CODE = """
import json, sys, time, torch
from mtgraft.analysis.overlap import pair_overlap
from mtgraft.models import build_task_model
from mtgraft.tasks import get_task
m = build_task_model(sys.argv[1], sys.argv[2], [get_task(sys.argv[3])])
sizes = {n: m.get_parameter(n).numel() for n in m.graftable_names()}
n = sum(sizes.values()); k = max(1, round(1e-3 * n))
g = torch.Generator().manual_seed(0)
a = torch.randperm(n, generator=g)[:k].sort().values; b = torch.randperm(n, generator=g)[:k].sort().values
t = time.perf_counter(); r = pair_overlap(a, b, n); dt = time.perf_counter() - t
print(json.dumps({"body": n, "k": k, "seconds": dt}))
"""


def measure_model(model: str, args: argparse.Namespace, work: Path, env: dict[str, str]) -> dict[str, Any]:
    """Fine-tune, graft at each sparsity and time the overlap metrics for one model."""
    ck = work / f"{model}-ft"
    cmd = [sys.executable, "-m", "mtgraft.cli", "train", "--model", model, "--type", TYPES[model], "--task",
           args.task, *COMMON, "--lr", str(args.lr[model]),
           *(["--max-steps", str(args.steps), "--eval-every", str(args.steps)] if args.steps else []), "--max-test", str(args.max_test), "--seed", "13", "--out", str(ck), "--json"]
    r = run_measured(cmd, env, ROOT)
    if r["rc"] != 0:
        raise RuntimeError(f"{model} fine-tuning failed: {r['stderr_tail']}")
    res = _json(r["stdout"])
    ft = {"command": " ".join(cmd[2:]), "wall_s": r["wall_s"], "cpu_s": r["cpu_s"], "peak_rss_mib": r["peak_rss_mib"],
          "train_seconds": res["train_seconds"], "steps": res["steps"],
          "s_per_step": res["train_seconds"] / res["steps"], "test_accuracy": res["test"]["accuracy"]}
    grafts = []
    for s in args.sparsity:
        out = work / f"{model}-graft-{s:g}"
        gcmd = [sys.executable, "-m", "mtgraft.cli", "graft", "--finetuned", str(ck), "--task", args.task,
                "--sparsity", f"{s:g}", "--method", "graft", "--recipe", args.recipe,
                "--examples-per-update", str(args.examples_per_update),
                "--no-register", "--json", "--out", str(out)]
        g = run_measured(gcmd, env, ROOT)
        if g["rc"] != 0:
            raise RuntimeError(f"{model} graft {s:g} failed: {g['stderr_tail']}")
        gres = _json(g["stdout"])
        e = gres["results"][0]
        row = {"sparsity": s, "region_size": e["region_size"], "graftable_size": gres["graftable_size"],
               "graft_seconds": e["seconds"], "wall_s": g["wall_s"], "cpu_s": g["cpu_s"],
               "peak_rss_mib": g["peak_rss_mib"], "rel": e["test"]["rel"],
               "peak_ratio": g["peak_rss_mib"] / ft["peak_rss_mib"], "time_ratio": g["wall_s"] / ft["wall_s"],
               "command": " ".join(gcmd[2:])}
        row["peak_ok"] = row["peak_ratio"] <= PEAK_FACTOR
        row["time_ok"] = row["time_ratio"] <= 1.0
        if e.get("patch"):
            row["patch"] = patch_file_stats(e["patch"], e["region_size"])
        grafts.append(row)
    o = run_measured([sys.executable, "-c", OVERLAP_CODE, model, TYPES[model], args.task], env, ROOT)
    if o["rc"] != 0:
        raise RuntimeError(f"{model} overlap timing failed: {o['stderr_tail']}")
    ov = _json(o["stdout"])
    return {"model": model, "type": TYPES[model], "parameters": None, "graftable_size": grafts[0]["graftable_size"]
            if grafts else None, "finetune": ft, "grafts": grafts, "overlap": ov}


def markdown(result: dict[str, Any]) -> str:
    """The side-by-side table."""
    lines = ["| model | body (graftable) | fine-tune s/step | fine-tune peak MiB | sparsity | region | graft s (own) "
             "| graft wall s / fine-tune wall s | graft peak MiB (× fine-tune) | bytes / grafted entry | Rel |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for m in result["models"]:
        ft = m["finetune"]
        for g in m["grafts"]:
            bpe = g.get("patch", {}).get("bytes_per_grafted_param")
            lines.append(f"| {m['model']} | {m['graftable_size']:,} | {ft['s_per_step']:.2f} | {ft['peak_rss_mib']:.0f} "
                         f"| {g['sparsity']:g} | {g['region_size']:,} | {g['graft_seconds']:.1f} | "
                         f"{g['wall_s']:.0f} / {ft['wall_s']:.0f} = {g['time_ratio']:.2f} | {g['peak_rss_mib']:.0f} "
                         f"({g['peak_ratio']:.2f}×) | {bpe:.2f} | "
                         f"{'—' if g['rel'] is None else format(g['rel'], '.2f')} |")
    lines.append("")
    for m in result["models"]:
        o = m["overlap"]
        lines.append(f"- {m['model']}: overlap metrics of two random regions of {o['k']:,} entries in a body of "
                     f"{o['body']:,}: {o['seconds'] * 1000:.1f} ms.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Measure every model, write JSON, print the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["minilm", "smollm2"], choices=list(TYPES))
    p.add_argument("--task", default="rotten_tomatoes")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: each model's preset)")
    p.add_argument("--sparsity", type=float, nargs="+", default=[1e-5, 1e-4, 1e-3, 1e-2])
    p.add_argument("--max-test", type=int, default=200)
    p.add_argument("--examples-per-update", type=int, default=64)
    p.add_argument("--recipe", default="thorough", choices=["fast", "thorough", "paper"],
                   help="the learned graft's recipe (thorough, the default, has no early stop; the studies use fast)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", default=None)
    p.add_argument("--out", default="benchmarks/results/scale.json")
    args = p.parse_args(argv)
    args.lr = {"minilm": 5e-2, "smollm2": 1e-2}
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    env = child_env(args.threads, f"sqlite:///{work}/mlflow.db")
    load0 = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else None
    t0 = time.time()
    models: list[dict[str, Any]] = []
    for m in args.models:  # the JSON is rewritten after each model: an interrupted run keeps what it measured
        models.append(measure_model(m, args, work, env))
        result = {"settings": {k: v for k, v in vars(args).items() if k not in ("work",)}, "models": models,
                  "load_before": load0, "load_after": Path("/proc/loadavg").read_text().split()[:3],
                  "wall_s": time.time() - t0, "machine": platform.platform(), "python": sys.version.split()[0],
                  "complete": len(models) == len(args.models)}
        write_json_atomic(ROOT / args.out, result)
    print(markdown(result))
    print(json.dumps({"out": args.out, "wall_s": round(result["wall_s"], 1)}))


if __name__ == "__main__":
    main()
