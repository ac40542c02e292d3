"""Running a graft (docs/method.md §2), one task at a time, as the steps of the method: load the inputs →
reference metrics (pretrained, fine-tuned) → select a region per method and sparsity (resumable) → evaluate
it → write its SkillPatch. Registering is no step of grafting (grafting and the registry are independent
parts): ``run_graft`` hands each written patch to ``on_written``; ``mtgraft.workflows.graft`` registers there.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtgraft.errors import MtgraftError
from mtgraft.evaluation.cache import get_cache, model_key, runtime_key, tensors_digest
from mtgraft.evaluation.metrics import relative_gain, reliability_diagram
from mtgraft.evaluation.predict import evaluate_probs
from mtgraft.grafting.config import GraftConfig, data_settings
from mtgraft.grafting.intervals import Bootstrap, comparisons, default_pairs
from mtgraft.grafting.methods import Method, SelectContext, Selection, get_method
from mtgraft.grafting.space import GraftSpace, budget_k
from mtgraft.models import (
    CheckpointMeta,
    Encoded,
    TaskInfo,
    build_task_model,
    encode_examples,
    load_checkpoint,
    read_checkpoint_meta,
    resolve_task,
)
from mtgraft.patches import SkillPatch
from mtgraft.patches.picture import picture_path, region_picture
from mtgraft.progress import progress_bar
from mtgraft.resume import ResumeState
from mtgraft.tasks import TaskSpec, compatible, make_splits
from mtgraft.tracking import Run, check_reachable, mlflow_run
from mtgraft.utils import (
    atomic_dir,
    default_out,
    ensure_writable_dir,
    provenance,
    release_freed_memory,
    resolve_device,
    safe_name,
    set_seed,
    write_json,
)

#: Called once per written SkillPatch, in its final place, with the graft's MLflow run id (None when tracking
#: is off); what it returns is the result's ``registered`` entry.
OnWritten = Callable[[Path, str | None], dict[str, Any]]


@dataclass
class GraftResult:
    """Everything ``mtgraft graft`` produced for one task."""

    task: str
    out: str
    results: list[dict[str, Any]]
    reference: dict[str, dict[str, Any]]
    graftable_size: int
    head_params: int
    mlflow_run_id: str | None
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"task": self.task, "out": self.out, "graftable_size": self.graftable_size,
                "head_params": self.head_params, "sparsity_note": "sparsity and region_size count the "
                "graftable body only; the task head is always grafted", "ece_bins": 10,
                "reference": self.reference, "results": self.results, "mlflow_run_id": self.mlflow_run_id,
                "seconds": round(self.seconds, 2), **self.extra}


# ---------------------------------------------------------------------------------------------- the run


def run_graft(cfg: GraftConfig, show_progress: bool = True, on_written: OnWritten | None = None) -> list[GraftResult]:
    """Graft every task asked for (``--task`` or ``--all-tasks``) of a fine-tuned checkpoint."""
    meta = read_checkpoint_meta(cfg.finetuned)
    if cfg.all_tasks:  # local tasks are found again through the task YAML the checkpoint recorded
        tasks = [t.spec_file if t.spec_file and Path(t.spec_file).is_file() else t.name for t in meta.tasks]
    elif cfg.task:
        tasks = [cfg.task]
    else:
        raise MtgraftError("give --task T (or --all-tasks for a multi-task checkpoint)")
    if len(tasks) > 1:
        base = Path(cfg.out or default_out("graft", "all-tasks"))
        return [graft_task(cfg.model_copy(update={"out": str(base / safe_name(info.name))}), t, meta, show_progress,
                           on_written) for t, info in zip(tasks, meta.tasks, strict=True)]
    return [graft_task(cfg, t, meta, show_progress, on_written) for t in tasks]


class HandOffError(MtgraftError):
    """The outputs are complete in ``out``, but logging them to the MLflow run or ``on_written`` failed."""

    def __init__(self, out: Path, cause: BaseException) -> None:
        self.out, self.cause = out, cause
        why = str(cause) if isinstance(cause, MtgraftError) else (str(cause).strip().splitlines() or [""])[0]
        super().__init__(f"the outputs are complete in {out}, but recording them in MLflow failed: "
                         f"{why or type(cause).__name__}")


@contextlib.contextmanager
def out_lock(out: str | os.PathLike) -> Iterator[None]:
    """Hold ``<out>.lock`` (an exclusive flock) while one command writes or registers ``out``; a second one
    refuses at once. The kernel releases the lock when the holder exits, even by SIGKILL: a stale lock file
    never blocks."""
    out = Path(out)
    lock = out.parent / f"{out.name}.lock"
    ensure_writable_dir(lock.parent)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise MtgraftError(f"another mtgraft command (pid {holder}) is writing '{out}' (lock file {lock}); "
                               "wait for it to finish, or choose another --out") from None
        try:  # the previous holder may have removed the file between our open and flock: lock the new one
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)


def graft_task(cfg: GraftConfig, task_name: str, meta: CheckpointMeta, show_progress: bool = True,
               on_written: OnWritten | None = None) -> GraftResult:
    """Run every method at every sparsity for one task; write SkillPatches and results (holding ``<out>.lock``)."""
    out = Path(cfg.out or default_out("graft", resolve_task(task_name, meta).name))
    with out_lock(out):
        return _graft_task(cfg.model_copy(update={"out": str(out)}), task_name, meta, show_progress, on_written)


def _graft_task(cfg: GraftConfig, task_name: str, meta: CheckpointMeta, show_progress: bool,
                on_written: OnWritten | None) -> GraftResult:
    t_start = time.perf_counter()
    inputs = load_inputs(cfg, task_name, meta)
    ref = reference_metrics(inputs, cfg.seed)
    spec, out = inputs.spec, inputs.out
    resume = Resume(ResumeState(out), cfg.resume, {  # a killed run continues with --resume
        "task": spec.name, "finetuned": str(Path(cfg.finetuned).resolve()), "seed": cfg.seed,
        "settings": inputs.settings, "data": inputs.data, "sparsity": cfg.sparsity, "method": cfg.method,
        **({"method_options": cfg.method_options} if cfg.method_options else {})})
    handed: list[BaseException] = []  # a failure after the outputs were in place
    try:
        with mlflow_run("graft", f"graft-{spec.name}", cfg.tracking_uri, enabled=cfg.track,
                        tags=_run_tags(cfg, spec, meta)) as run:
            regions = _graft_in_run(cfg, meta, inputs, ref, resume, run, show_progress, on_written, handed)
    except Exception as e:
        if not handed:
            raise
        resume.state.clear()  # the outputs are complete: nothing to resume
        raise HandOffError(out, handed[0]) from e
    resume.state.clear()
    diag = out / f"{safe_name(spec.name)}-reliability.png"
    return GraftResult(spec.name, str(out), regions.results, ref.to_json(), inputs.space.numel, inputs.head_params,
                       run.run_id, time.perf_counter() - t_start,
                       {"comparisons": regions.comparisons, "uncertainty": ref.uncertainty(),
                        "reliability_diagram": str(diag)})


def _graft_in_run(cfg: GraftConfig, meta: CheckpointMeta, inputs: GraftInputs, ref: Reference, resume: Resume,
                  run: Run, show_progress: bool, on_written: OnWritten | None,
                  handed: list[BaseException]) -> Regions:
    """Select, evaluate and write every region into the output folder (atomically), then hand the outputs off:
    log them to the run and give each SkillPatch to ``on_written``. A failure there goes into ``handed``."""
    spec, out = inputs.spec, inputs.out
    t0 = time.perf_counter()
    conf = cfg.model_dump()
    conf.update({"task": spec.name, "learn_settings": inputs.settings, "data": inputs.data,
                 "method_settings": {m: cfg.method_settings(m, inputs.settings) for m in cfg.method}})
    run.log_params(conf)
    run.log_config(conf)
    run.log_metrics(ref.to_json(), prefix="test/")
    diag_name = f"{safe_name(spec.name)}-reliability.png"
    with atomic_dir(out) as tmp:  # files go to a temporary sibling: nothing is left if a step fails
        regions = graft_regions(cfg, meta, inputs, ref, resume, run, tmp, show_progress)
        reliability_diagram(regions.curves, tmp / diag_name, title=f"{spec.name}: reliability (10 equal-width bins)")
        summary = {"task": spec.name, "reference": ref.to_json(), "results": regions.results,
                   "comparisons": regions.comparisons, "uncertainty": ref.uncertainty(),
                   "graftable_size": inputs.space.numel, "head_params": inputs.head_params, "data": inputs.data,
                   "learn_settings": inputs.settings, "finetuned": str(Path(cfg.finetuned).resolve()),
                   "provenance": provenance()}
        write_json(tmp / "results.json", summary)
    run.log_metrics({"total_seconds": time.perf_counter() - t0})  # every method and sparsity of this task
    # log (and register) only once every file is in its final place: a failed write leaves no registry entry
    try:
        for entry in regions.written:
            run.log_artifact(entry["patch"], "skillpatch")
            run.log_artifact(picture_path(entry["patch"]), "skillpatch")
            if on_written is not None:
                entry["registered"] = on_written(Path(entry["patch"]), run.run_id)
        run.log_artifact(out / diag_name)
        if on_written is not None and regions.written:
            write_json(out / "results.json", summary)  # now with the registered entries
        run.log_artifact(out / "results.json")
    except Exception as e:
        handed.append(e)
        if cfg.track and _server_gone(cfg.tracking_uri):  # then MLflow ends the run without minutes of retries
            os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
        raise
    return regions


def _server_gone(uri: str | None) -> bool:
    try:
        check_reachable(uri)
    except MtgraftError:
        return True
    return False


def _run_tags(cfg: GraftConfig, spec: TaskSpec, meta: CheckpointMeta) -> dict[str, str]:
    tags = {"mtgraft.command": "graft", "mtgraft.task": spec.name,
            "mtgraft.finetuned": str(Path(cfg.finetuned).resolve())}
    if meta.mlflow_run_id:
        tags["mtgraft.parent_run_id"] = meta.mlflow_run_id
        tags["mlflow.parentRunId"] = meta.mlflow_run_id
    return tags


# MLflow names of a learned graft's per-update curves: the time since its start is `elapsed_seconds`, never the
# per-region `total_seconds` (one key holding both made the UI show a partial time as the total)
CURVE_NAMES = {"seconds": "elapsed_seconds"}

# ---------------------------------------------------------------------------------------------- 1. load


@dataclass
class GraftInputs:
    """What the later steps need: the task, the graft space, the encoded data and the settings."""

    spec: TaskSpec
    info: TaskInfo
    out: Path
    data: dict[str, Any]  # k, seed, max_test, max_length
    settings: dict[str, Any]  # the learned graft's: recipe + explicit options, init resolved
    pre_name: str | None  # checked when the graft space is built
    space: GraftSpace
    budgets: dict[float, int]  # sparsity -> region size k
    train: Encoded
    dev: Encoded
    test: Encoded
    ood: dict[str, Encoded]  # other tasks' test sets, by task name
    head: dict[str, torch.Tensor]  # the fine-tuned task head (always grafted)

    @property
    def head_params(self) -> int:
        return sum(v.numel() for v in self.head.values())


def load_inputs(cfg: GraftConfig, task_name: str, meta: CheckpointMeta) -> GraftInputs:
    """Check what needs no model first (a mistake costs no model loading), then build the graft space and
    encode the task's splits and the OOD test sets."""
    what = f"checkpoint {cfg.finetuned}"
    spec = resolve_task(task_name, meta, what)  # a local task by its name: the YAML the checkpoint recorded
    info = meta.task(spec.name)
    ospecs = [resolve_task(other, meta, what) for other in cfg.eval_tasks]
    for ospec in ospecs:
        if not compatible(spec, ospec):
            raise MtgraftError(f"cannot evaluate '{spec.name}' on '{ospec.name}': label spaces differ "
                               f"({spec.labels} vs {ospec.labels})")
    out = Path(cfg.out or default_out("graft", spec.name))
    ensure_writable_dir(out.parent if str(out.parent) else Path("."))
    if out.exists() and not out.is_dir():
        raise MtgraftError(f"--out '{out}' exists and is not a folder")
    if cfg.track:
        check_reachable(cfg.tracking_uri)
    device = resolve_device(cfg.device)
    data = data_settings(cfg, meta)
    settings = cfg.learn_settings()
    if settings.get("init") == "auto":  # one base patch per task where |delta| cannot tell tasks apart
        settings["init"] = "saliency" if len(meta.tasks) > 1 else "movement"
    pre_name = cfg.pretrained or meta.pretrained.get("name")
    set_seed(cfg.seed)
    space = _graft_space(cfg, meta, pre_name, device)
    budgets = {s: budget_k(s, space.numel) for s in cfg.sparsity}  # k = 0 is an error
    splits = make_splits(spec, data["k"], data["seed"], data["max_test"])
    cache = get_cache()  # test sets encoded before are read back (mtgraft/evaluation/cache.py)
    enc = {name: encode_examples(space.model, spec.name, getattr(splits, name), data["max_length"])
           for name in ("train", "dev")}
    enc["test"] = cache.encoded(space.model, spec.name, splits.test, data["max_length"])
    ood = {}
    for ospec in ospecs:
        osplits = make_splits(ospec, data["k"], data["seed"], data["max_test"])
        ood[ospec.name] = cache.encoded(space.model, spec.name, osplits.test, data["max_length"])
    params = dict(space.model.named_parameters())
    head = {n: params[n].detach().cpu().clone() for n in space.model.head_param_names(spec.name)}
    return GraftInputs(spec, info, out, data, settings, pre_name, space, budgets, enc["train"], enc["dev"],
                       enc["test"], ood, head)


def _graft_space(cfg: GraftConfig, meta: CheckpointMeta, pre_name: str | None, device: torch.device) -> GraftSpace:
    ft_model, _ = load_checkpoint(cfg.finetuned)
    if not pre_name:
        raise MtgraftError("the checkpoint does not record its pretrained model; pass --pretrained")
    pre_model = build_task_model(pre_name, meta.model_type, meta.tasks)
    rec_hash = meta.pretrained.get("hash")
    if rec_hash and pre_model.base_hash() != rec_hash:
        raise MtgraftError(f"pretrained model '{pre_name}' is not the one checkpoint {cfg.finetuned} was fine-tuned "
                           f"from (content hash differs)")
    space = GraftSpace.build(ft_model, pre_model, device)
    del ft_model, pre_model  # the space keeps the working model; the pretrained copy goes
    release_freed_memory()
    return space


# ---------------------------------------------------------------------------------------------- 2. reference


@dataclass
class Measured:
    """A parameter vector's test metrics (``ood``: on each other task's test set) and its predictions."""

    metrics: dict[str, Any]
    probs: np.ndarray  # test-set probabilities
    preds: dict[str, np.ndarray]  # argmax predictions: "test" and each OOD task


def measure(inputs: GraftInputs, theta: torch.Tensor, reference: dict[str, np.ndarray] | None = None,
            cache_key: dict[str, Any] | None = None) -> Measured:
    """Metrics of the model at ``theta``; with ``reference`` predictions, also its agreement with them. With
    ``cache_key`` (what identifies ``theta``), predictions come from the evaluation cache when they are there."""
    cache = get_cache() if cache_key is not None else None

    def predict(enc: Encoded) -> np.ndarray:
        if cache is None:
            return inputs.space.predict(theta, enc)
        return cache.probs(cache_key, enc, lambda: inputs.space.predict(theta, enc))

    probs = predict(inputs.test)
    m = evaluate_probs(probs, inputs.test.labels, reference["test"] if reference else None)
    m["ood"] = {}
    preds = {"test": probs.argmax(1)}
    for oname, oenc in inputs.ood.items():
        op = predict(oenc)
        m["ood"][oname] = evaluate_probs(op, oenc.labels, reference.get(oname) if reference else None)
        preds[oname] = op.argmax(1)
    return Measured(m, probs, preds)


@dataclass
class Reference:
    """The two ends Rel is measured between: the pretrained body (with the task head) and the fine-tuned model."""

    pretrained: Measured
    finetuned: Measured
    boot: Bootstrap | None = None  # the shared test resamples (docs/method.md §3, "Uncertainty of one run")

    def add_rel(self, m: dict[str, Any]) -> None:
        """Add Rel to metrics ``m`` (and to each of its OOD metrics)."""
        pre, ft = self.pretrained.metrics, self.finetuned.metrics
        m["rel"] = relative_gain(m["accuracy"], pre["accuracy"], ft["accuracy"])
        for oname, om in m.get("ood", {}).items():
            om["rel"] = relative_gain(om["accuracy"], pre["ood"][oname]["accuracy"], ft["ood"][oname]["accuracy"])

    def to_json(self) -> dict[str, dict[str, Any]]:
        return {"pretrained": self.pretrained.metrics, "finetuned": self.finetuned.metrics}

    def uncertainty(self) -> dict[str, Any] | None:
        """How the intervals were computed (None without a bootstrap)."""
        return self.boot.info() if self.boot is not None else None


def reference_metrics(inputs: GraftInputs, seed: int = 0) -> Reference:
    """Measure the fine-tuned model, then the pretrained one against its predictions; draw the paired
    bootstrap's resamples (seeded by ``seed``) and add the intervals, the fine-tuning gain P_1 − P_0 included
    (``finetuned.gain``, ``gain_ci95``, ``gain_p``)."""
    space = inputs.space  # both ends are known by content: their predictions are cached
    key = {"what": "graft-reference", "base": space.base_hash, "context": space.context_hash,
           "finetuned": space.finetuned_hash, "head": tensors_digest(inputs.head),
           **model_key(space.model, inputs.spec.name), **runtime_key(space.device)}
    ft = measure(inputs, space.pre + space.delta, cache_key={**key, "end": "finetuned"})  # freed after
    pre = measure(inputs, inputs.space.pre.clone(), ft.preds, cache_key={**key, "end": "pretrained"})
    ft.metrics["agreement"] = 1.0
    ref = Reference(pre, ft)
    ref.add_rel(pre.metrics)
    ref.add_rel(ft.metrics)
    labels = {"test": inputs.test.labels, **{o: e.labels for o, e in inputs.ood.items()}}
    ref.boot = Bootstrap.build(labels, pre.preds, ft.preds, seed)
    ref.boot.annotate_reference(pre.metrics, ft.metrics)
    return ref


# ---------------------------------------------------------------------------------------------- 3-5. regions


@dataclass
class Resume:
    """Periodic state of one task's graft, next to its output folder; reused only with ``--resume``."""

    state: ResumeState
    enabled: bool
    config: dict[str, Any]  # a state written with other settings is refused

    def load(self, name: str) -> dict[str, Any] | None:
        return self.state.load(name, self.config) if self.enabled else None

    def save(self, name: str, state: dict[str, Any]) -> None:
        self.state.save(name, state, self.config)


@dataclass
class Regions:
    """What the methods produced: one result entry each, the entries with a patch, reliability curves."""

    results: list[dict[str, Any]] = field(default_factory=list)
    written: list[dict[str, Any]] = field(default_factory=list)
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    comparisons: list[dict[str, Any]] = field(default_factory=list)  # paired, at equal size (intervals.py)


def graft_regions(cfg: GraftConfig, meta: CheckpointMeta, inputs: GraftInputs, ref: Reference, resume: Resume,
                  run: Run, folder: Path, show_progress: bool) -> Regions:
    """Every method at every sparsity: select, evaluate and (learned methods, or with --save-baselines)
    write the region's SkillPatch into ``folder``."""
    labels = np.asarray(inputs.test.labels)
    regions = Regions(curves={"fine-tuned": (ref.finetuned.probs, labels),
                              "pretrained (+head)": (ref.pretrained.probs, labels)})
    for s in cfg.sparsity:
        for mname in cfg.method:
            method = get_method(mname)
            settings = cfg.method_settings(mname, inputs.settings)
            t0 = time.perf_counter()
            sel = select(inputs, mname, method, s, cfg.seed, resume, run, show_progress, settings)
            seconds = time.perf_counter() - t0
            region = evaluate_region(inputs, ref, sel.indices, (mname, s), sel.scale)
            entry = _entry(inputs, mname, method, s, sel, region.metrics, seconds)
            if method.learned:
                regions.curves[f"{mname} s={s:g}"] = (region.probs, labels)
            if method.learned or cfg.save_baselines:
                path = write_patch(cfg, meta, inputs, ref, mname, method, s, sel.indices, region.metrics, folder,
                                   settings, sel.scale)
                entry["patch"] = str(inputs.out / path.name)
                entry["patch_bytes"] = path.stat().st_size
                regions.written.append(entry)
            run.log_metrics(region.metrics, prefix=f"test/{mname}_s{s:g}/")
            run.log_metrics({"region_size": entry["region_size"], "total_seconds": seconds}, prefix=f"{mname}_s{s:g}/")
            regions.results.append(entry)
    if ref.boot is not None:  # each learned method against every other at the same size, paired
        points = {(r["method"], r["sparsity"]): r["test"] for r in regions.results}
        regions.comparisons = comparisons(ref.boot, points, default_pairs(
            list(points), {m: get_method(m).learned for m, _ in points}))
        for c in regions.comparisons:
            run.log_metrics({f"{c['metric']}_diff": c["diff"], f"{c['metric']}_diff_ci95": c["ci95"],
                             f"{c['metric']}_p": c["p"]}, prefix=f"compare/{c['a']}_vs_{c['b']}_s{c['sparsity']:g}/")
    return regions


def select(inputs: GraftInputs, mname: str, method: Method, sparsity: float, seed: int, resume: Resume, run: Run,
           show_progress: bool, settings: dict[str, Any] | None = None) -> Selection:
    """One method's region at one sparsity, with the method's ``settings`` (default: the run's shared ones);
    with --resume a saved selection (or learning state) is reused."""
    settings = inputs.settings if settings is None else settings
    total = int(settings.get("updates", 1)) if method.learned else 1
    key = f"{safe_name(mname)}-s{sparsity:g}"
    with progress_bar(total, f"graft {inputs.spec.name} · {mname} s={sparsity:g}", show_progress) as upd:
        def progress(step: int, _total: int, h: dict[str, Any]) -> None:
            upd(step, f"train {h.get('train', float('nan')):.3f} dev {h.get('dev', float('nan')):.3f} "
                      f"size {h['size']:,}")
            prefix = "graft" if mname == "graft" else mname  # the paper graft's curves keep their MLflow names
            run.log_metrics({f"{prefix}_s{sparsity:g}/{CURVE_NAMES.get(k_, k_)}": v for k_, v in h.items()
                             if k_ != "update"}, step=step)

        done = resume.load(f"selection-{key}")
        if done is not None:
            sel = Selection(done["indices"], done["info"], float(done.get("scale", 1.0)))
        else:
            ctx = SelectContext(inputs.space, inputs.budgets[sparsity], inputs.train, inputs.dev, settings, seed,
                                progress=progress if method.learned else None, state=resume.load(f"learn-{key}"),
                                checkpoint=(lambda st: resume.save(f"learn-{key}", st)) if method.learned else None)
            sel = method.select(ctx)
            resume.save(f"selection-{key}", {"indices": sel.indices, "info": sel.info, "scale": sel.scale})
        upd(total)
    return sel


def evaluate_region(inputs: GraftInputs, ref: Reference, idx: torch.Tensor,
                    key: tuple[str, float] | None = None, scale: float = 1.0) -> Measured:
    """The pretrained model with the fine-tuned values at ``idx`` grafted in (``scale`` alpha: theta_pre +
    alpha·delta there), measured (Rel included, with intervals; ``key`` = (method, sparsity) keeps its resamples
    for the paired comparisons)."""
    region = measure(inputs, inputs.space.theta_from_indices(idx, scale), ref.finetuned.preds)
    ref.add_rel(region.metrics)
    if ref.boot is not None:
        ref.boot.annotate(region.metrics, region.preds, key)
    return region


def _entry(inputs: GraftInputs, mname: str, method: Method, sparsity: float, sel: Selection, metrics: dict[str, Any],
           seconds: float) -> dict[str, Any]:
    idx = sel.indices
    entry: dict[str, Any] = {
        "method": mname, "sparsity": sparsity, "k": inputs.budgets[sparsity], "region_size": int(idx.numel()),
        "region_fraction": idx.numel() / inputs.space.numel, "seconds": round(seconds, 3), "patch": None,
        "test": metrics,
    }
    if method.learned:
        for key in ("updates_run", "best_update", "candidates"):
            entry[key] = sel.info.get(key)
    if sel.scale != 1.0:
        entry["scale"] = sel.scale
    return entry


def write_patch(cfg: GraftConfig, meta: CheckpointMeta, inputs: GraftInputs, ref: Reference, mname: str,
                method: Method, sparsity: float, idx: torch.Tensor, metrics: dict[str, Any], folder: Path,
                settings: dict[str, Any] | None = None, scale: float = 1.0) -> Path:
    """Save the region's SkillPatch (fine-tuned values at ``idx`` + the task head) in ``folder``; a rescaled
    region (``scale`` alpha ≠ 1) records alpha in the header, and applying the patch writes theta_pre +
    alpha·(value − theta_pre)."""
    if settings is None:
        settings = inputs.settings if method.learned else {}
    space, spec = inputs.space, inputs.spec
    header = {
        "base_model": inputs.pre_name, "base_hash": space.base_hash, "context_hash": space.context_hash,
        "graftable": space.graftable_list(),
        "task": spec.name, "tasks_info": {spec.name: inputs.info.model_dump(exclude={"spec_file"})},
        "model_type": meta.model_type, "method": mname,
        "method_settings": settings, "sparsity_requested": sparsity,
        **({"scale": scale} if scale != 1.0 else {}),
        "seed": cfg.seed, "data": inputs.data,
        "metrics": {"test": metrics, "reference": ref.to_json()},
        # no host path or time in the file (docs/skillpatch-format.md, "Reproducibility"): the checkpoint's
        # folder is in results.json and the run's tag mtgraft.finetuned
        "finetuned": {"hash": space.finetuned_hash, "mlflow_run_id": meta.mlflow_run_id, "mode": meta.mode},
    }
    patch = SkillPatch.from_flat_values(idx.numpy(), space.finetuned_values(idx).cpu(), inputs.head, header)
    path = folder / f"{safe_name(spec.name)}-{mname}-s{sparsity:g}.skillpatch.safetensors"
    patch.save(path)
    region_picture(patch, picture_path(path))  # where the region sits, shown beside the patch in MLflow
    return path
