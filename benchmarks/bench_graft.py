"""Grafting benchmark: the default graft recipe against the paper recipe, and grafting against fine-tuning.

Usage: python benchmarks/bench_graft.py [--task rotten_tomatoes] [--k 64] [--sparsity 1e-3 1e-4]
       [--variants fast paper ...] [--max-test 500] [--threads 1] [--work DIR] [--out benchmarks/results/graft.json]

Every measured thing runs as its own ``mtgraft`` command in a child process, so that its wall time and peak
memory (``ru_maxrss`` of that child, from ``os.wait4``) are its own:
1. ``mtgraft train`` once (MiniLM, SGD lr 5e-2, batch 8, 300 steps, max length 64, K per class);
2. ``mtgraft graft --method graft`` of that checkpoint, one child per (variant, sparsity): ``--recipe paper``
   (the reference's behaviour), ``--recipe fast`` (the default) and candidate variants of the fast recipe
   (``fast`` plus explicit options).
Reported, all from the one run: (a) each variant's time, peak memory, region size and Rel beside the paper
recipe's (goal for the default: Rel within 1 point, i.e. 0.01, of the paper recipe's in at most a fifth of
its time); (b) graft time and peak memory against fine-tuning's (goal: no slower, peak at most 1.2x);
(c) SkillPatch bytes per grafted parameter, header and task head aside (goal: at most 12). The fast variant
that meets goal (a) at every sparsity with the best mean Rel is reported as ``choice``. Writes JSON and prints
markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

#: Fine-tuning settings of the benchmark (and of docs/results-graft.md).
TRAIN_ARGS = ["--lr", "5e-2", "--batch-size", "8", "--max-steps", "300", "--eval-every", "50", "--max-length", "64"]

#: Variants of the learned graft: a recipe plus explicit ``mtgraft graft`` options on top of it. The CLI cannot
#: unset a recipe value, so a variant with every entry as a candidate (``candidates`` None) starts from ``paper``.
VARIANTS: dict[str, dict[str, Any]] = {
    "paper": {"recipe": "paper", "options": {}},
    "fast": {"recipe": "fast", "options": {}},
    "thorough": {"recipe": "thorough", "options": {}},
    # the base patch alone: no mask learning, so its child's cost is the fixed cost of every graft command
    # (loading, test evaluation); its Rel is what the learned graft adds to
    "topk": {"recipe": "fast", "method": "topk", "options": {}},
    # the fast recipe before this benchmark: the reference's step (gd, lr 1e7), 20 updates, patience 5
    "gd-lr1e7-u20-p5": {"recipe": "fast", "options": {"step_rule": "gd", "lr": 1e7, "updates": 20, "patience": 5}},
    "gd-lr1e8-u10-p2": {"recipe": "fast", "options": {"step_rule": "gd", "lr": 1e8, "updates": 10, "patience": 2}},
    "gd-lr1e9-u10-p2": {"recipe": "fast", "options": {"step_rule": "gd", "lr": 1e9, "updates": 10, "patience": 2}},
    "gd-lr1e8-u30-p5": {"recipe": "fast", "options": {"step_rule": "gd", "lr": 1e8, "updates": 30, "patience": 5}},
    "gd-lr1e8-u50-p10": {"recipe": "fast", "options": {"step_rule": "gd", "lr": 1e8, "updates": 50, "patience": 10}},
    "gd-lr1e7-u50-p10": {"recipe": "fast", "options": {"step_rule": "gd", "lr": 1e7, "updates": 50, "patience": 10}},
    # strict budget over every entry, no early stop: the paper's drift in a fifth of its updates
    "gd-lr5e7-u20-call": {"recipe": "paper", "options": {"budget": "strict", "step_rule": "gd", "lr": 5e7,
                                                         "updates": 20}},
    "gd-lr1e8-u10-call": {"recipe": "paper", "options": {"budget": "strict", "step_rule": "gd", "lr": 1e8,
                                                         "updates": 10}},
    # the same with mask parameters for the top 100·k entries by |delta| only (memory)
    "gd-lr1e8-u10-c100": {"recipe": "paper", "options": {"budget": "strict", "step_rule": "gd", "lr": 1e8,
                                                         "updates": 10, "candidates": 100}},
    "gd-lr5e7-u20-c100": {"recipe": "paper", "options": {"budget": "strict", "step_rule": "gd", "lr": 5e7,
                                                         "updates": 20, "candidates": 100}},
    "norm-lr1e3-u10-p3": {"recipe": "fast", "options": {"step_rule": "normalized", "lr": 1e3, "updates": 10,
                                                        "patience": 3}},
    "gd-lr1e8-u10-p2-call": {"recipe": "paper", "options": {"budget": "strict", "step_rule": "gd", "lr": 1e8,
                                                            "updates": 10, "patience": 2}},
}
INFO_CODE = ("import json, mlflow; from mtgraft.grafting import RECIPES; from mtgraft.utils import provenance; "
             "mlflow.MlflowClient().search_experiments(); "
             "print(json.dumps({'recipes': RECIPES, 'provenance': provenance()}, default=str))")
REL_TOLERANCE = 0.01  # "within 1 point of the paper recipe's Rel"
TIME_FRACTION = 0.2  # "in at most a fifth of its time"
PEAK_FACTOR = 1.2  # graft peak memory at most 1.2x fine-tuning's
BYTES_GOAL = 12.0  # SkillPatch bytes per grafted parameter, header aside


def run_measured(cmd: list[str], env: dict[str, str] | None = None, cwd: str | Path | None = None,
                 timeout: float | None = None) -> dict[str, Any]:
    """Run ``cmd`` as a child; its wall time, peak RSS (MiB), CPU seconds, exit code, stdout, stderr tail.

    Linux carries the parent's peak RSS at fork into the child's ``ru_maxrss``, so the parent must stay
    small: this module imports neither torch nor mtgraft at module level, and ``main`` asks a child for them.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=cwd)
        deadline = None if timeout is None else t0 + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if deadline is not None and time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    return {"cmd": cmd, "rc": proc.returncode, "wall_s": wall, "peak_rss_mib": usage.ru_maxrss / 1024,
            "cpu_s": usage.ru_utime + usage.ru_stime, "stdout": stdout, "stderr_tail": stderr[-2000:]}


def cli_options(options: dict[str, Any]) -> list[str]:
    """``mtgraft graft`` flags for explicit learned-graft options."""
    flags: list[str] = []
    for key, v in options.items():
        flags += [f"--{key.replace('_', '-')}", f"{v:g}" if isinstance(v, float) else str(v)]
    return flags


def variant_settings(variant: dict[str, Any], recipes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The learned-graft settings a variant resolves to (recipe values with its options on top)."""
    s = dict(recipes[variant["recipe"]])
    s.update(variant["options"])
    return s


def patch_file_stats(path: str | Path, region_size: int) -> dict[str, Any]:
    """Sizes of a SkillPatch file read from its safetensors header (without torch): total, header, task head,
    region data, and region bytes per grafted parameter (header and head aside)."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    head = sum(v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items() if k.startswith("head/"))
    region = size - 8 - n - head
    return {"file_bytes": size, "header_bytes": 8 + n, "head_bytes": head, "region_bytes": region,
            "region_size": region_size, "bytes_per_grafted_param": region / region_size if region_size else None,
            "file_bytes_per_grafted_param": size / region_size if region_size else None}


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` through a temporary sibling and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, default=str)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json(stdout: str) -> dict[str, Any]:
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError("the command printed no JSON")
    return json.loads(lines[-1])


def child_env(threads: int, tracking_uri: str) -> dict[str, str]:
    """Environment of the children: thread count pinned, MLflow store outside the repository."""
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    env["MLFLOW_TRACKING_URI"] = tracking_uri
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def finetune(args: argparse.Namespace, work: Path, env: dict[str, str]) -> dict[str, Any]:
    """Measure ``mtgraft train`` in a child; returns its measurements and the checkpoint folder."""
    ck = work / "finetuned"
    cmd = [sys.executable, "-m", "mtgraft.cli", "train", "--task", args.task, "--k", str(args.k), *TRAIN_ARGS,
           "--max-test", str(args.max_test), "--seed", str(args.seed), "--out", str(ck), "--json"]
    r = run_measured(cmd, env, ROOT)
    if r["rc"] != 0:
        raise RuntimeError(f"fine-tuning failed ({r['rc']}): {r['stderr_tail']}")
    res = _json(r["stdout"])
    return {"command": " ".join(cmd[2:]), "checkpoint": str(ck), "wall_s": r["wall_s"],
            "peak_rss_mib": r["peak_rss_mib"], "cpu_s": r["cpu_s"], "train_seconds": res["train_seconds"],
            "steps": res["steps"], "best_step": res["best_step"], "test_accuracy": res["test"]["accuracy"],
            "examples_per_second": res["examples_per_second"]}


def graft_variant(args: argparse.Namespace, name: str, variant: dict[str, Any], sparsity: float, ck: str,
                  work: Path, env: dict[str, str]) -> dict[str, Any]:
    """Measure one ``mtgraft graft --method graft`` (or the variant's method) child at one sparsity."""
    out = work / f"graft-{name}-s{sparsity:g}"
    cmd = [sys.executable, "-m", "mtgraft.cli", "graft", "--task", args.task, "--finetuned", ck, "--sparsity",
           f"{sparsity:g}", "--method", variant.get("method", "graft"), "--recipe", variant["recipe"], *cli_options(variant["options"]),
           "--seed", str(args.seed), "--no-register", "--json", "--out", str(out)]
    r = run_measured(cmd, env, ROOT)
    if r["rc"] != 0:
        raise RuntimeError(f"graft {name} s={sparsity:g} failed ({r['rc']}): {r['stderr_tail']}")
    res = _json(r["stdout"])
    e = res["results"][0]
    settings = json.loads((out / "results.json").read_text())["learn_settings"]
    row = {
        "variant": name, "method": variant.get("method", "graft"), "recipe": variant["recipe"],
        "options": variant["options"], "learn_settings": settings,
        "sparsity": sparsity, "k": e["k"], "region_size": e["region_size"], "graftable_size": res["graftable_size"],
        "rel": e["test"]["rel"], "accuracy": e["test"]["accuracy"], "ece": e["test"]["ece"],
        "agreement": e["test"].get("agreement"), "seconds": e["seconds"], "updates_run": e.get("updates_run"),
        "best_update": e.get("best_update"), "candidates": e.get("candidates"), "wall_s": r["wall_s"],
        "peak_rss_mib": r["peak_rss_mib"], "cpu_s": r["cpu_s"], "command": " ".join(cmd[2:]),
        "reference": {k: res["reference"][k]["accuracy"] for k in ("pretrained", "finetuned")},
    }
    if e.get("patch"):
        row["patch"] = patch_file_stats(e["patch"], e["region_size"])
    return row


def add_core_cpu(rows: list[dict[str, Any]]) -> None:
    """``core_cpu_s``: a child's CPU seconds minus those of the top-k child at the same sparsity (the fixed
    cost of loading and test evaluation), a load-insensitive estimate of the mask learning's own cost."""
    base = {r["sparsity"]: r["cpu_s"] for r in rows if r["variant"] == "topk"}
    for r in rows:
        if r["sparsity"] in base and r["variant"] != "topk":
            r["core_cpu_s"] = max(r["cpu_s"] - base[r["sparsity"]], 0.0)


def goals(rows: list[dict[str, Any]], ft: dict[str, Any], default: str = "fast") -> dict[str, Any]:
    """Goal checks (a), (b), (c) and the choice among fast variants, from measured rows."""
    by = {(r["variant"], r["sparsity"]): r for r in rows}
    sparsities = sorted({r["sparsity"] for r in rows}, reverse=True)
    out: dict[str, Any] = {"a": {}, "b": {}, "c": {}}
    verdict: dict[str, dict[str, Any]] = {}
    for r in rows:
        p = by.get(("paper", r["sparsity"]))
        if p is None or r["variant"] in ("paper", "topk"):
            continue
        rel_ok = r["rel"] >= p["rel"] - REL_TOLERANCE
        time_ok = r["seconds"] <= TIME_FRACTION * p["seconds"]
        v = verdict.setdefault(r["variant"], {"meets": True, "rels": [], "seconds": []})
        v["meets"] = v["meets"] and rel_ok and time_ok and r["learn_settings"].get("budget") == "strict"
        v["rels"].append(r["rel"])
        v["seconds"].append(r["seconds"])
        out["a"][f"{r['variant']}@{r['sparsity']:g}"] = {
            "rel": r["rel"], "paper_rel": p["rel"], "rel_diff": r["rel"] - p["rel"], "time_fraction":
            r["seconds"] / p["seconds"] if p["seconds"] else None, "peak_ratio": r["peak_rss_mib"] / p["peak_rss_mib"],
            "region_size": r["region_size"], "paper_region_size": p["region_size"], "rel_ok": rel_ok,
            "time_ok": time_ok}
        if "core_cpu_s" in r and p.get("core_cpu_s"):
            out["a"][f"{r['variant']}@{r['sparsity']:g}"]["cpu_fraction"] = r["core_cpu_s"] / p["core_cpu_s"]
    ranked = sorted(verdict.items(), key=lambda kv: (not kv[1]["meets"], -statistics.mean(kv[1]["rels"]),
                                                     statistics.mean(kv[1]["seconds"])))
    if ranked:
        name, v = ranked[0]
        out["choice"] = {"variant": name, "meets_goal_a": v["meets"], "mean_rel": statistics.mean(v["rels"]),
                         "settings": next(r["learn_settings"] for r in rows if r["variant"] == name)}
    for s in sparsities:
        d = by.get((default, s))
        if d is None:
            continue
        if ft:
            out["b"][f"{s:g}"] = {
                "graft_wall_s": d["wall_s"], "finetune_wall_s": ft["wall_s"], "wall_ratio": d["wall_s"] / ft["wall_s"],
                "graft_core_s": d["seconds"], "finetune_core_s": ft["train_seconds"],
                "core_ratio": d["seconds"] / ft["train_seconds"],
                "graft_peak_mib": d["peak_rss_mib"], "finetune_peak_mib": ft["peak_rss_mib"],
                "peak_ratio": d["peak_rss_mib"] / ft["peak_rss_mib"],
                "time_ok": d["wall_s"] <= ft["wall_s"], "peak_ok": d["peak_rss_mib"] <= PEAK_FACTOR * ft["peak_rss_mib"]}
        if d.get("patch"):
            bpp = d["patch"]["bytes_per_grafted_param"]
            out["c"][f"{s:g}"] = {**d["patch"], "ok": bpp is not None and bpp <= BYTES_GOAL}
    return out


def markdown(result: dict[str, Any]) -> str:
    """Markdown tables of a result: variants, then the goals."""
    ft = result.get("finetune") or {}
    paper = {r["sparsity"]: r for r in result["rows"] if r["variant"] == "paper"}
    lines = ["| variant | settings | sparsity | k | region | Rel | acc | updates run (best) | graft s "
             "| time / paper | graft CPU s* | command wall s | command CPU s | peak RSS MiB |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        st = r["learn_settings"]
        desc = "data-free" if r.get("method", "graft") != "graft" else (
            f"{st['budget']}, {st['step_rule']} lr {st['lr']:g}, {st['updates']} upd, cand "
            f"{st['candidates'] if st['candidates'] is not None else 'all'}, patience {st['patience']}")
        p = paper.get(r["sparsity"])
        frac = f"{r['seconds'] / p['seconds']:.2f}" if p and p["seconds"] and r["variant"] != "topk" else "—"
        upd = f"{r['updates_run']} ({r['best_update']})" if r.get("updates_run") is not None else "—"
        core = f"{r['core_cpu_s']:.0f}" if "core_cpu_s" in r else "—"
        lines.append(f"| {r['variant']} | {desc} | {r['sparsity']:g} | {r['k']:,} | {r['region_size']:,} | "
                     f"{r['rel']:.3f} | {r['accuracy']:.3f} | {upd} | {r['seconds']:.1f} | {frac} | {core} | "
                     f"{r['wall_s']:.1f} | {r['cpu_s']:.0f} | {r['peak_rss_mib']:.0f} |")
    lines.append("\n\\* command CPU seconds minus the top-k command's at the same sparsity (loading and test "
                 "evaluation), when top-k was measured.")
    if ft:
        lines += ["", f"Fine-tuning (`mtgraft {ft['command']}`): command {ft['wall_s']:.1f} s wall, "
                      f"training loop {ft['train_seconds']:.1f} s, peak RSS {ft['peak_rss_mib']:.0f} MiB, "
                      f"test accuracy {ft['test_accuracy']:.3f}."]
    g = result["goals"]
    if g.get("b"):
        lines += ["", "| sparsity | graft wall s | fine-tune wall s | ratio | graft core s | fine-tune loop s "
                      "| graft peak MiB | fine-tune peak MiB | peak ratio |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for s, b in g["b"].items():
            lines.append(f"| {s} | {b['graft_wall_s']:.1f} | {b['finetune_wall_s']:.1f} | {b['wall_ratio']:.2f} | "
                         f"{b['graft_core_s']:.1f} | {b['finetune_core_s']:.1f} | {b['graft_peak_mib']:.0f} | "
                         f"{b['finetune_peak_mib']:.0f} | {b['peak_ratio']:.2f} |")
    if g.get("c"):
        lines += ["", "| sparsity | file bytes | safetensors header | task head | region bytes | bytes / grafted param |",
                  "|---:|---:|---:|---:|---:|---:|"]
        for s, c in g["c"].items():
            lines.append(f"| {s} | {c['file_bytes']:,} | {c['header_bytes']:,} | {c['head_bytes']:,} | "
                         f"{c['region_bytes']:,} | {c['bytes_per_grafted_param']:.2f} |")
    if g.get("choice"):
        c = g["choice"]
        lines += ["", f"Choice among fast variants: **{c['variant']}** (meets goal (a) at every sparsity: "
                      f"{c['meets_goal_a']}; mean Rel {c['mean_rel']:.3f})."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Parse options, fine-tune, graft every variant at every sparsity, write JSON, print tables."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="rotten_tomatoes")
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--sparsity", type=float, nargs="+", default=[1e-3, 1e-4])
    p.add_argument("--variants", nargs="+", default=["topk", "thorough", "fast", "paper"], choices=list(VARIANTS))
    p.add_argument("--max-test", type=int, default=500)
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the children (0 = unset)")
    p.add_argument("--finetuned", default=None, help="skip fine-tuning (no goal (b)): graft this checkpoint")
    p.add_argument("--work", default=None, help="working folder, kept (default: a temporary one, removed)")
    p.add_argument("--out", default="benchmarks/results/graft.json")
    args = p.parse_args(argv)
    load_start = os.getloadavg()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="mtgraft-bench-graft-"))
    work.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{(work / 'mlflow.db').resolve()}"
    env = child_env(args.threads, uri)
    # recipes and provenance from a child (the parent stays small), and the MLflow store created before
    # anything is timed (its first use runs database migrations)
    info = run_measured([sys.executable, "-c", INFO_CODE], env, ROOT)
    if info["rc"] != 0:
        raise RuntimeError(f"cannot import mtgraft: {info['stderr_tail']}")
    info = _json(info["stdout"])
    try:
        ft: dict[str, Any] = {}
        if args.finetuned:
            ck = args.finetuned
        else:
            ft = finetune(args, work, env)
            ck = ft["checkpoint"]
            print(f"fine-tuned: {ft['wall_s']:.1f} s, peak {ft['peak_rss_mib']:.0f} MiB, "
                  f"acc {ft['test_accuracy']:.3f}", file=sys.stderr)
        rows: list[dict[str, Any]] = []
        for s in args.sparsity:
            for name in args.variants:
                row = graft_variant(args, name, VARIANTS[name], s, ck, work, env)
                rows.append(row)
                write_json_atomic(work / "partial.json", {"finetune": ft, "rows": rows})  # survives a crash
                print(f"{name} s={s:g}: Rel {row['rel']:.3f}, region {row['region_size']:,}, {row['seconds']:.1f} s, "
                      f"command {row['wall_s']:.0f} s wall / {row['cpu_s']:.0f} s CPU, peak {row['peak_rss_mib']:.0f} MiB",
                      file=sys.stderr)
        add_core_cpu(rows)
        result = {
            "benchmark": "graft", "task": args.task, "k": args.k, "seed": args.seed, "max_test": args.max_test,
            "model": "minilm (all-MiniLM-L6-v2)", "train_args": TRAIN_ARGS, "threads": args.threads,
            "recipes": info["recipes"], "variants": {n: VARIANTS[n] for n in args.variants}, "finetune": ft, "rows": rows,
            "goals": goals(rows, ft, default="thorough"),
            "goal_text": {"a": "default recipe: Rel >= paper Rel - 0.01 in <= 1/5 of the paper recipe's graft time",
                          "b": "graft command no slower than the fine-tuning command; peak RSS <= 1.2x",
                          "c": "SkillPatch bytes per grafted parameter <= 12 (safetensors header and task head aside)"},
            "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                        "python": platform.python_version(), "loadavg_start": load_start,
                        "loadavg_end": os.getloadavg(), "shared": True},
            "provenance": info["provenance"],
        }
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    write_json_atomic(args.out, result)
    print(markdown(result))
    print(f"\nwritten {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
