"""The evaluation cache on the real MiniLM: grafting's reference step and the report's transfer step, cold
(an empty cache) against warm (the same cache again), at the default test sizes (max_test auto).

    python benchmarks/bench_eval_cache.py --checkpoint runs/study/train --grafts runs/study/graft

``--checkpoint`` is the main job's joint checkpoint (``mtgraft run experiments/study.yaml``), ``--grafts``
its graft folder (one SkillPatch per task). Writes ``benchmarks/results/eval_cache.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

TASKS = ["rotten_tomatoes", "movie_polarity", "hedge", "debate_party"]


def _reference_step(ck: str, task: str, out: Path) -> dict[str, Any]:
    from mtgraft.grafting import GraftConfig
    from mtgraft.grafting.run import load_inputs, reference_metrics
    from mtgraft.models import read_checkpoint_meta

    cfg = GraftConfig(task=task, finetuned=ck, max_test="auto", track=False, do_register=False, device="cpu",
                      out=str(out))
    meta = read_checkpoint_meta(ck)
    t0 = time.perf_counter()
    inputs = load_inputs(cfg, task, meta)
    t1 = time.perf_counter()
    ref = reference_metrics(inputs, cfg.seed)
    t2 = time.perf_counter()
    return {"task": task, "n_test": len(inputs.test), "load_inputs_s": round(t1 - t0, 2),
            "reference_s": round(t2 - t1, 2), "accuracy": {"finetuned": ref.finetuned.metrics["accuracy"],
                                                           "pretrained": ref.pretrained.metrics["accuracy"]}}


def _transfer_step(grafts: str, sizes: str) -> dict[str, Any]:
    from mtgraft.analysis.transfer import transfer_analysis
    from mtgraft.patches import SkillPatch

    patches = [SkillPatch.load(next((Path(grafts) / t).glob("*-graft-*.skillpatch.safetensors"))) for t in TASKS]
    for p in patches:  # as a study run with the default would record them
        p.header.data["max_test"] = 2000 if sizes == "auto" else p.header.data.get("max_test")
    t0 = time.perf_counter()
    tr = transfer_analysis(patches, TASKS, [["rotten_tomatoes", "movie_polarity"]], None, "cpu")
    return {"seconds": round(time.perf_counter() - t0, 2), "n": {t: tr["reference"][t]["n"] for t in TASKS},
            "p0_source": {t: tr["reference"][t]["pretrained_source"] for t in TASKS},
            "rel": tr["rel"], "unions": [u["results"] for u in tr["unions"]]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--grafts", required=True)
    ap.add_argument("--sizes", choices=["auto", "recorded"], default="auto",
                    help="transfer test sizes: auto (2000 cap, as a re-run study records) or as the patches recorded")
    ap.add_argument("--out", default="benchmarks/results/eval_cache.json")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    res: dict[str, Any] = {"checkpoint": a.checkpoint, "threads": torch.get_num_threads(), "load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="bench-eval-cache-") as tmp:
        os.environ["MTGRAFT_EVAL_CACHE"] = str(Path(tmp) / "cache")
        for phase in ("cold", "warm"):
            res[f"reference_{phase}"] = [_reference_step(a.checkpoint, t, Path(tmp) / f"g-{phase}-{t}") for t in TASKS]
            res[f"transfer_{phase}"] = _transfer_step(a.grafts, a.sizes)
            print(phase, json.dumps({"reference": [(r["task"], r["reference_s"]) for r in res[f"reference_{phase}"]],
                                     "transfer_s": res[f"transfer_{phase}"]["seconds"]}), flush=True)
        res["cache_bytes"] = sum(f.stat().st_size for f in (Path(tmp) / "cache").rglob("*") if f.is_file())
    res["same_results"] = (res["reference_cold"] == [{**r, "reference_s": c["reference_s"], "load_inputs_s":
                                                      c["load_inputs_s"]} for r, c in zip(res["reference_warm"],
                                                                                         res["reference_cold"],
                                                                                         strict=True)]
                           and res["transfer_cold"]["rel"] == res["transfer_warm"]["rel"]
                           and res["transfer_cold"]["unions"] == res["transfer_warm"]["unions"])
    res["load_after"] = os.getloadavg()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    print("| step | cold s | warm s |\n|---|---|---|")
    for r, w in zip(res["reference_cold"], res["reference_warm"], strict=True):
        print(f"| reference {r['task']} (n={r['n_test']}) | {r['reference_s']} | {w['reference_s']} |")
    print(f"| transfer (n={res['transfer_cold']['n']}) | {res['transfer_cold']['seconds']} | "
          f"{res['transfer_warm']['seconds']} |")
    print("same results:", res["same_results"], "load:", res["load_before"], res["load_after"])


if __name__ == "__main__":
    main()
