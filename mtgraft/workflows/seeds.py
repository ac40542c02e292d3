"""Seeds as an axis: run ``train``, ``train-multitask`` and ``graft`` once per seed, then aggregate.

With one seed nothing changes (the checkpoint or graft output lies directly in ``--out``). With several,
seed ``s`` writes ``OUT/seed-<s>/`` and the aggregate goes to ``OUT/seeds.json``: the shape of
``evaluation.uncertainty.aggregate_seeds`` — ``seeds``, ``per_seed`` (seed → record), ``n``, ``mean``,
``sd`` and ``ci95`` (95% t-interval of the mean over seeds), fields flattened with dots (``test.accuracy``,
``ood.<task>.rel``). ``graft`` over a folder of per-seed checkpoints pairs the seed-``s`` checkpoint with
selection seed ``s``; over one checkpoint, the selection seed alone varies. Definitions: docs/method.md §5.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mtgraft.errors import MtgraftError
from mtgraft.evaluation.uncertainty import aggregate_seeds, compare_over_seeds
from mtgraft.utils import default_out, write_json

SEEDS_FILE = "seeds.json"
SEED_DIR = re.compile(r"^seed-(-?\d+)$")
COMPARED = ("accuracy", "rel", "ece")
"""The metrics on which ``graft`` is compared with every other method at equal size, paired over seeds."""


def seed_dir(root: str | Path, seed: int) -> Path:
    """``root/seed-<seed>``: where seed ``seed`` of a several-seed run writes."""
    return Path(root) / f"seed-{seed}"


def parse_seeds(value: Any, seed_given: bool = False, option: str = "--seeds") -> list[int] | None:
    """``--seeds`` (a comma list or a list of ints) as distinct ints; None when not given. ``seed_given``:
    ``--seed`` was given too, which is an error (``--seeds 13`` is one seed)."""
    if value is None:
        return None
    from pydantic import TypeAdapter, ValidationError

    from mtgraft.config import Seeds

    try:
        seeds = TypeAdapter(Seeds).validate_python(value)
    except ValidationError as e:
        msg = e.errors()[0]["msg"].removeprefix("Value error, ")
        if e.errors()[0]["type"].startswith("int_"):
            msg = "seeds must be integers"
        raise MtgraftError(f"{option} '{value if isinstance(value, str) else ','.join(map(str, value))}': {msg} "
                           "(e.g. --seeds 13,21,42)") from None
    if seed_given:
        raise MtgraftError("give either --seed or --seeds, not both (--seeds 13 is the same as --seed 13)")
    return seeds


def seeds_in(folder: str | Path) -> list[int]:
    """The seeds of the ``seed-<s>`` subfolders of ``folder`` (sorted; none when it is no such folder)."""
    p = Path(folder)
    if not p.is_dir():
        return []
    found = [int(m.group(1)) for c in p.iterdir() if c.is_dir() and (m := SEED_DIR.match(c.name))]
    return sorted(found)


def seed_checkpoints(finetuned: str, seeds: Sequence[int]) -> dict[int, str]:
    """Seed → the checkpoint to graft with it: ``finetuned/seed-<s>`` for a folder of per-seed checkpoints
    (each seed asked for must be there), else ``finetuned`` itself for every seed."""
    present = seeds_in(finetuned)
    if not present or (Path(finetuned) / "mtgraft.json").is_file():
        return {s: finetuned for s in seeds}
    missing = [s for s in seeds if s not in present]
    if missing:
        raise MtgraftError(f"'{finetuned}' holds checkpoints for seeds {', '.join(map(str, present))}, none for "
                           f"{', '.join(map(str, missing))} (train them with 'mtgraft train --seeds ...')")
    return {s: str(seed_dir(finetuned, s)) for s in seeds}


def _summary(kind: str, root: Path, records: Mapping[int, Mapping[str, Any]], **extra: Any) -> dict[str, Any]:
    out = {"kind": kind, "out": str(root), **extra, **aggregate_seeds(records)}
    write_json(root / SEEDS_FILE, out)
    return out


# ------------------------------------------------------------------------------------------ training


def train_record(j: Mapping[str, Any]) -> dict[str, Any]:
    """What one seed's training contributes to the aggregate (from ``TrainResult``/``MultitaskResult.to_json``)."""
    keep = ("checkpoint", "mlflow_run_id", "test", "dev", "best_step", "steps", "continual")
    rec = {k: j[k] for k in keep if k in j and j[k] is not None}
    if j.get("graft_cl"):
        rec["graft_cl"] = {"approaches": j["graft_cl"].get("approaches")}
    return rec


def train_seeds(cfg: Any, seeds: Sequence[int], show_progress: bool = True) -> Any:
    """``mtgraft train`` once per seed (data and training seed): one seed → its ``TrainResult`` (checkpoint
    in ``cfg.out``); several → the aggregate (``OUT/seed-<s>/`` per seed, ``OUT/seeds.json``)."""
    from mtgraft.tasks import get_task
    from mtgraft.training import train

    if len(seeds) == 1:
        return train(cfg.model_copy(update={"seed": seeds[0]}), show_progress)
    root = Path(cfg.out or default_out("train", get_task(cfg.task).name))
    records = {}
    for s in seeds:
        r = train(cfg.model_copy(update={"seed": s, "out": str(seed_dir(root, s))}), show_progress)
        records[s] = train_record(r.to_json())
    return _summary("train", root, records, task=get_task(cfg.task).name)


def train_multitask_seeds(cfg: Any, seeds: Sequence[int], show_progress: bool = True) -> Any:
    """``mtgraft train-multitask`` once per seed, like ``train_seeds``."""
    from mtgraft.workflows.continual import train_multitask_with_grafts

    if len(seeds) == 1:
        return train_multitask_with_grafts(cfg.model_copy(update={"seed": seeds[0]}), show_progress)
    root = Path(cfg.out or default_out("multitask", f"{cfg.mode}-{len(cfg.tasks)}tasks"))
    records = {}
    tasks: list[str] = []
    for s in seeds:
        r = train_multitask_with_grafts(cfg.model_copy(update={"seed": s, "out": str(seed_dir(root, s))}),
                                        show_progress)
        tasks = r.tasks
        records[s] = train_record(r.to_json())
    return _summary("train-multitask", root, records, tasks=tasks, mode=cfg.mode)


# ------------------------------------------------------------------------------------------- grafting


def graft_record(entry: Mapping[str, Any]) -> dict[str, Any]:
    """One method at one sparsity on one seed: region size and every test metric (OOD ones under ``ood``)."""
    return {"region_size": entry.get("region_size"), "region_fraction": entry.get("region_fraction"),
            "patch": entry.get("patch"), **dict(entry.get("test") or {})}


def aggregate_grafts(per_seed: Mapping[int, Sequence[Mapping[str, Any]]]) -> dict[str, Any]:
    """Aggregate per-seed graft results (seed → ``GraftResult.to_json()`` of each task) per task, method and
    sparsity; compare ``graft`` with every other method at the same sparsity, paired over seeds."""
    rows: dict[tuple[str, str, float], dict[int, dict[str, Any]]] = {}
    refs: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
    for s, results in per_seed.items():
        for res in results:
            for name, m in (res.get("reference") or {}).items():
                refs.setdefault((res["task"], name), {})[s] = dict(m)
            for e in res["results"]:
                rows.setdefault((res["task"], e["method"], float(e["sparsity"])), {})[s] = graft_record(e)
    results = [{"task": t, "method": m, "sparsity": sp, **aggregate_seeds(by_seed)}
               for (t, m, sp), by_seed in rows.items()]
    comparisons = []
    for (t, m, sp), a in rows.items():
        if m != "graft":
            continue
        for (t2, m2, sp2), b in rows.items():
            if (t2, sp2) != (t, sp) or m2 == m:
                continue
            for metric in COMPARED:
                c = compare_over_seeds({s: r.get(metric) for s, r in a.items()},
                                       {s: r.get(metric) for s, r in b.items()})
                comparisons.append({"task": t, "sparsity": sp, "a": m, "b": m2, "metric": metric, **c})
    reference = [{"task": t, "model": name, **aggregate_seeds(by_seed)} for (t, name), by_seed in refs.items()]
    return {"reference": reference, "results": results, "comparisons_over_seeds": comparisons}


def graft_seeds(cfg: Any, seeds: Sequence[int] | None, show_progress: bool = True) -> Any:
    """``mtgraft graft`` per seed (each through ``graft_and_register``): no seeds or one → its list of
    ``GraftResult`` (output in ``cfg.out``); several → the aggregate (``OUT/seed-<s>/``, ``OUT/seeds.json``)."""
    from mtgraft.workflows.graft import graft_and_register

    if seeds is None:
        present = seeds_in(cfg.finetuned)
        if present and not (Path(cfg.finetuned) / "mtgraft.json").is_file():
            raise MtgraftError(f"'{cfg.finetuned}' holds one checkpoint per seed "
                               f"({', '.join(map(str, present))}): give --seeds (e.g. --seeds "
                               f"{','.join(map(str, present))}), or one seed's folder as --finetuned")
        return graft_and_register(cfg, show_progress)
    checkpoints = seed_checkpoints(cfg.finetuned, seeds)
    if len(seeds) == 1:
        s = seeds[0]
        return graft_and_register(cfg.model_copy(update={"seed": s, "finetuned": checkpoints[s]}), show_progress)
    root = Path(cfg.out or default_out("graft", Path(cfg.task).stem if cfg.task else "all-tasks"))
    per_seed: dict[int, list[dict[str, Any]]] = {}
    for s in seeds:
        res = graft_and_register(cfg.model_copy(update={"seed": s, "finetuned": checkpoints[s],
                                                        "out": str(seed_dir(root, s))}), show_progress)
        per_seed[s] = [r.to_json() for r in res]
    tasks = [r["task"] for r in per_seed[seeds[0]]]
    first = per_seed[seeds[0]][0]
    out = {"kind": "graft", "out": str(root), "seeds": list(seeds), "tasks": tasks,
           "finetuned": {str(s): checkpoints[s] for s in seeds},
           "per_seed_out": {str(s): [r["out"] for r in per_seed[s]] for s in seeds},
           "graftable_size": first["graftable_size"], "head_params": first["head_params"], "ece_bins": 10,
           "interval": "95% Student-t interval of the mean over seeds; comparisons: paired over seeds, "
                       "two-sided Wilcoxon signed-rank p (it cannot go below min_possible_p)",
           **aggregate_grafts(per_seed)}
    write_json(root / SEEDS_FILE, out)
    return out
