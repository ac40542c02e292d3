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
    keep = ("checkpoint", "mlflow_run_id", "test", "dev", "best_step", "continual")
    rec = {k: j[k] for k in keep if k in j and j[k] is not None}
    if j.get("graft_cl"):
        rec["graft_cl"] = {"approaches": j["graft_cl"].get("approaches")}
    return rec


def _skip_note(seed: int, folder: Path, show_progress: bool) -> None:
    if show_progress:
        from mtgraft.progress import console

        console.print(f"[dim]seed {seed}: finished already in {folder} (--resume) — skipped[/]")


def finished_training(folder: Path) -> dict[str, Any] | None:
    """A finished seed's training record, read back from its checkpoint (``--resume`` of several seeds):
    None unless ``folder`` is a complete checkpoint with no resume state beside it."""
    if not (folder / "mtgraft.json").is_file() or (folder.parent / f"{folder.name}.resume").exists():
        return None
    from mtgraft.models.checkpoint import read_checkpoint_meta

    meta = read_checkpoint_meta(folder)
    return train_record({"checkpoint": str(folder), "mlflow_run_id": meta.mlflow_run_id,
                         **{k: v for k, v in (meta.metrics or {}).items() if k in ("test", "dev", "best_step",
                                                                                    "continual")}})


def finished_graft(folder: Path) -> list[dict[str, Any]] | None:
    """A finished seed's graft results, read back from its ``results.json`` (one, or one per task of an
    ``--all-tasks`` graft); None when there is none."""
    import json

    files = [folder / "results.json"] if (folder / "results.json").is_file() else sorted(folder.glob("*/results.json"))
    if not files:
        return None
    return [{"out": str(f.parent), **json.loads(f.read_text())} for f in files]


def train_seeds(cfg: Any, seeds: Sequence[int], show_progress: bool = True) -> Any:
    """``mtgraft train`` once per seed (data and training seed): one seed → its ``TrainResult`` (checkpoint
    in ``cfg.out``); several → the aggregate (``OUT/seed-<s>/`` per seed, ``OUT/seeds.json``). With
    ``--resume``, seeds whose checkpoint is complete are read back, not trained again."""
    from mtgraft.tasks import get_task
    from mtgraft.training import train

    if len(seeds) == 1:
        return train(cfg.model_copy(update={"seed": seeds[0]}), show_progress)
    root = Path(cfg.out or default_out("train", get_task(cfg.task).name))
    records = _train_each_seed(cfg, root, seeds, train, show_progress)
    return _summary("train", root, records, task=get_task(cfg.task).name)


def _train_each_seed(cfg: Any, root: Path, seeds: Sequence[int], fit: Any, show_progress: bool) -> dict[int, Any]:
    """Run ``fit(cfg with seed s and out root/seed-<s>)`` per seed; with ``--resume``, a seed whose checkpoint
    is complete is read back instead. {seed: training record}."""
    records = {}
    for s in seeds:
        if cfg.resume and (done := finished_training(seed_dir(root, s))) is not None:
            _skip_note(s, seed_dir(root, s), show_progress)
            records[s] = done
            continue
        r = fit(cfg.model_copy(update={"seed": s, "out": str(seed_dir(root, s))}), show_progress)
        records[s] = train_record(r.to_json())
    return records


def train_multitask_seeds(cfg: Any, seeds: Sequence[int], show_progress: bool = True) -> Any:
    """``mtgraft train-multitask`` once per seed, like ``train_seeds``."""
    from mtgraft.models.checkpoint import read_checkpoint_meta
    from mtgraft.workflows.continual import train_multitask_with_grafts

    if len(seeds) == 1:
        return train_multitask_with_grafts(cfg.model_copy(update={"seed": seeds[0]}), show_progress)
    root = Path(cfg.out or default_out("multitask", f"{cfg.mode}-{len(cfg.tasks)}tasks"))
    records = _train_each_seed(cfg, root, seeds, train_multitask_with_grafts, show_progress)
    tasks = [t.name for t in read_checkpoint_meta(seed_dir(root, seeds[0])).tasks]
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
    ``GraftResult`` (output in ``cfg.out``); several → the aggregate (``OUT/seed-<s>/``, ``OUT/seeds.json``).
    With ``--resume``, seeds whose output is complete (``results.json``) are read back, not grafted again."""
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
        if cfg.resume and (done := finished_graft(seed_dir(root, s))) is not None:
            _skip_note(s, seed_dir(root, s), show_progress)
            per_seed[s] = done
            continue
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


# ------------------------------------------------------------------------------------ overlap report


def seed_patches(inputs: Sequence[str], seeds: Sequence[int], method: str | None = "graft") -> dict[int, list[str]]:
    """Seed → its SkillPatch files, from graft output folders with ``seed-<s>/`` subfolders (the patches their
    ``results.json`` files list, made by ``method``; every task of an ``--all-tasks`` graft) and from patch
    files (by the seed their header records)."""
    import json

    from mtgraft.patches import SkillPatch

    out: dict[int, list[str]] = {s: [] for s in seeds}
    for item in inputs:
        p = Path(item)
        if not p.is_dir():
            s = SkillPatch.load(p).header.seed
            if s in out:
                out[s].append(str(p))
            continue
        if not seeds_in(p):
            raise MtgraftError(f"'{p}' has no seed-<s> subfolders: give the --out folder of 'mtgraft graft "
                               "--seeds ...' (or patch files)")
        for s in seeds:
            folder = seed_dir(p, s)
            if not folder.is_dir():
                raise MtgraftError(f"'{p}' holds no graft of seed {s} (no {folder.name}/)")
            for res in sorted(folder.rglob("results.json")):
                for e in json.loads(res.read_text()).get("results", []):
                    if e.get("patch") and (method is None or e["method"] == method):
                        out[s].append(str(res.parent / Path(e["patch"]).name))
    for s, files in out.items():
        if len(files) < 2:
            raise MtgraftError(f"seed {s}: found {len(files)} SkillPatch(es) "
                               f"{'made by ' + repr(method) + ' ' if method else ''}among the inputs; an overlap "
                               "report needs at least two tasks' patches per seed")
    return out


def report_seeds(inputs: Sequence[str], out_dir: str | Path, *, seeds: Sequence[int], method: str | None = "graft",
                 **options: Any) -> Any:
    """The overlap report over seeds: each seed's regions analysed on their own (pair metrics), aggregated
    per task pair (``analysis.seeds.aggregate_pairs``); the full report (figures, transfer) is drawn for the
    first seed, with the table over seeds added. ``options``: ``build_report``'s."""
    from mtgraft.analysis.report import analyse, build_report
    from mtgraft.analysis.seeds import aggregate_pairs

    files = seed_patches(inputs, seeds, method)
    keep = ("min_enrichment", "max_p", "duplicates")
    pairs = {s: analyse(files[s], **{k: v for k, v in options.items() if k in keep}).pairs for s in seeds}
    agg = aggregate_pairs(pairs)
    agg["patches"] = {str(s): files[s] for s in seeds}
    return build_report(files[seeds[0]], out_dir, seeds=agg, **options)


# ------------------------------------------------------------------------------------------- studies


def with_seed(study_cfg: Any, seed: int) -> Any:
    """A study's config for one seed: the training (data) seed, the graft and continual-graft seeds."""
    up: dict[str, Any] = {"seeds": [seed], "train": {**study_cfg.train, "seed": seed},
                          "graft": {**study_cfg.graft, "seed": seed}}
    if study_cfg.continual is not None:
        up["continual"] = {**study_cfg.continual, "seed": seed}
    return study_cfg.model_copy(update=up)


def aggregate_study(kind: str, per_seed: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """Aggregate the summaries of one study run once per seed (``Study.run`` of each seed's sub-study)."""
    from mtgraft.analysis.seeds import aggregate_pairs

    out: dict[str, Any] = {"seeds": list(per_seed), "per_seed": {str(s): {"out": v.get("out")}
                                                                 for s, v in per_seed.items()}}
    if kind == "single":
        out["grafts"] = aggregate_grafts({s: [row["graft"] for row in v["tasks"]] for s, v in per_seed.items()})
        tasks = [row["task"] for row in next(iter(per_seed.values()))["tasks"]]
        out["train"] = {t: aggregate_seeds({s: train_record(next(r["train"] for r in v["tasks"] if r["task"] == t))
                                            for s, v in per_seed.items()}) for t in tasks}
    elif kind == "joint":
        out["grafts"] = aggregate_grafts({s: v["grafts"] for s, v in per_seed.items()})
        out["train"] = aggregate_seeds({s: {"test": v.get("per_task_test") or {}} for s, v in per_seed.items()})
    else:
        out["train"] = aggregate_seeds({s: {"continual": v.get("continual") or {},
                                            "graft_cl": {"approaches": (v.get("graft_cl") or {}).get("approaches")}}
                                        for s, v in per_seed.items()})
    reports = {s: v["report"]["pairs"] for s, v in per_seed.items() if (v.get("report") or {}).get("pairs")}
    out["report_over_seeds"] = aggregate_pairs(reports) if len(reports) == len(per_seed) else None
    return out


def _ci(r: Mapping[str, Any], key: str, nd: int = 3) -> str:
    from mtgraft.evaluation.uncertainty import format_ci

    return format_ci({"mean": r["mean"].get(key), "ci95": r["ci95"].get(key)}, nd)


def render_seeds_summary(s: Mapping[str, Any]) -> str:
    """The Markdown summary of a study over several seeds (``summary.md``)."""
    from mtgraft.analysis.seeds import seeds_markdown

    seeds = s["seeds"]
    lines = [f"# Study `{s['study']}` ({s['kind']}) over {len(seeds)} seeds ({', '.join(map(str, seeds))})", "",
             f"Output folder: `{s['out']}` (one sub-study per seed in `seed-<s>/`, each with its own summary and "
             f"resumable state) · wall time {s['seconds']} s · mean ± half-width of the 95% t-interval over "
             "seeds · ECE with 10 equal-width bins.", ""]
    g = s.get("grafts")
    if g:
        oods = sorted({k.split(".")[1] for r in g["results"] for k in r["mean"]
                       if k.startswith("ood.") and k.endswith(".rel")})
        lines += ["## Grafts", "", "| task | model | sparsity | region | acc | ECE | Rel |"
                  + "".join(f" Rel {o} |" for o in oods), "|---|---|---|---|---|---|---|" + "---|" * len(oods)]
        for r in g["reference"]:
            lines.append(f"| {r['task']} | {r['model']} | | | {_ci(r, 'accuracy')} | {_ci(r, 'ece')} | |"
                         + " |" * len(oods))
        for r in g["results"]:
            lines.append(f"| {r['task']} | {r['method']} | {r['sparsity']:g} | {r['mean'].get('region_size') or 0:,.0f} "
                         f"| {_ci(r, 'accuracy')} | {_ci(r, 'ece')} | {_ci(r, 'rel')} |"
                         + "".join(f" {_ci(r, f'ood.{o}.rel')} |" for o in oods))
        comp = [c for c in g["comparisons_over_seeds"] if c["metric"] in ("accuracy", "rel") and c["diffs"]]
        if comp:
            lines += ["", "Paired over seeds, graft − each other method at equal size:", "",
                      "| task | sparsity | graft − | metric | mean difference | Wilcoxon p | smallest possible p |",
                      "|---|---|---|---|---:|---:|---:|"]
            for c in comp:
                diff = _ci({"mean": {"d": c["mean_diff"]}, "ci95": {"d": c["ci95"]}}, "d")
                p = "—" if c["wilcoxon_p"] is None else f"{c['wilcoxon_p']:.3g}"
                lines.append(f"| {c['task']} | {c['sparsity']:g} | {c['b']} | {c['metric']} | {diff} | {p} | "
                             f"{c['min_possible_p']:.3g} |")
    tr = s.get("train")
    if tr:
        lines += ["", "## Fine-tuning (test)", "", "| quantity | mean ± 95% CI |", "|---|---:|"]
        aggs = tr.items() if s["kind"] == "single" else [("", tr)]
        for task, a in aggs:
            for key in a["mean"]:
                if key.endswith(("accuracy", "ece", ".acc", ".bwt", "forgetting_final")):
                    lines.append(f"| {(task + ' ') if task else ''}{key} | {_ci(a, key)} |")
    rep = s.get("report_over_seeds")
    if rep:
        lines += ["", "## Overlap of the task regions over seeds", "", seeds_markdown(rep)]
    lines += ["", "Per seed: " + ", ".join(f"`{v['out']}`" for v in s["per_seed"].values())]
    return "\n".join(lines) + "\n"
