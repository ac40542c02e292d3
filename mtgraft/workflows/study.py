"""``mtgraft run STUDY.yaml``: a whole pipeline from one file (train → graft → register → report),
resumable stage by stage; every stage is an MLflow run of its own (tagged with the study name)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from mtgraft.config import BaseConfig, CommaList, ModelType, Seeds, load_yaml
from mtgraft.errors import MtgraftError
from mtgraft.utils import ensure_writable_dir, provenance, write_json

STATE_FILE = "study_state.json"


class StudyConfig(BaseConfig):
    """One study: which tasks, how to fine-tune, graft and report. Sections hold the commands' options."""

    name: str
    description: str = ""
    kind: Literal["single", "joint", "sequential"]
    tasks: CommaList
    model: str = "minilm"
    type: ModelType = "head"
    train: dict[str, Any] = Field(default_factory=dict)
    graft: dict[str, Any] = Field(default_factory=dict)
    report: dict[str, Any] | None = None
    continual: dict[str, Any] | None = None
    ood: bool = True
    seeds: Seeds | None = Field(None, description="seeds to run the whole study with, one sub-study each in "
                                "OUT/seed-<s>/, then aggregated (default: the one train.seed)")
    out: str | None = None
    tracking_uri: str | None = None


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``key=value`` / ``section.key=value`` strings (values parsed as YAML) into a nested dict."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise MtgraftError(f"--set expects key=value, got '{item}'")
        key, val = item.split("=", 1)
        try:
            value = yaml.safe_load(val)
        except yaml.YAMLError:
            value = val
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            base[k] = _merge(dict(base[k]), v)
        else:
            base[k] = v
    return base


def load_study(path: str | Path, overrides: dict[str, Any] | None = None) -> StudyConfig:
    """Read and validate a study YAML (every section validated before any work starts)."""
    from pydantic import ValidationError

    from mtgraft.config import format_validation_error

    raw = _merge(load_yaml(path), overrides or {})
    try:
        study = StudyConfig(**raw)
    except ValidationError as e:
        raise MtgraftError(format_validation_error(e, f"study ({path})")) from None
    _validate_sections(study, str(path))
    return study


def _validate_sections(s: StudyConfig, path: str) -> None:
    from pydantic import ValidationError

    from mtgraft.config import TrainConfig, format_validation_error
    from mtgraft.grafting import GraftConfig
    from mtgraft.tasks import get_task

    for t in s.tasks:
        get_task(t)
    try:
        if s.kind == "single":
            TrainConfig(task=s.tasks[0], model=s.model, type=s.type, **s.train)
        else:
            from mtgraft.training.multitask import MultitaskConfig

            MultitaskConfig(tasks=s.tasks, mode=s.kind, model=s.model, type=s.type, **s.train)
        GraftConfig(task=s.tasks[0], finetuned="x", **s.graft)
        if s.continual is not None and "strategies" in s.continual:
            from mtgraft.workflows.stream import StreamConfig

            if s.kind != "sequential":
                raise MtgraftError(f"study ({path}): comparing continual strategies needs kind 'sequential'")
            StreamConfig(**s.continual)
        elif s.continual is not None:
            from mtgraft.workflows.continual import ContinualGraftConfig

            ContinualGraftConfig(run="x", **s.continual)
    except ValidationError as e:
        raise MtgraftError(format_validation_error(e, f"study ({path})")) from None
    if s.kind == "sequential" and s.report is not None:
        pass  # a report over per-stage grafts is allowed


class Study:
    """Runs the stages of a study, skipping those already done (state in ``OUT/study_state.json``)."""

    def __init__(self, cfg: StudyConfig, out: str | None = None, restart: bool = False,
                 show_progress: bool = True, log: Any = None) -> None:
        self.cfg = cfg
        self.out = Path(out or cfg.out or f"runs/{cfg.name}")
        ensure_writable_dir(self.out)
        self.state_path = self.out / STATE_FILE
        self.state: dict[str, Any] = {}
        if self.state_path.is_file() and not restart:
            try:
                self.state = json.loads(self.state_path.read_text())
            except ValueError:
                from mtgraft.progress import warn

                warn(f"the study's state file {self.state_path} is damaged: every stage runs again")
                self.state = {}
        self.show = show_progress
        self.restart = restart
        self.log = log or (lambda msg: None)
        self.common = {"tracking_uri": cfg.tracking_uri}

    # -- bookkeeping ---------------------------------------------------------------------------
    def _done(self, stage: str) -> dict[str, Any] | None:
        st = self.state.get("stages", {}).get(stage)
        if st and all(Path(p).exists() for p in st.get("outputs", [])):
            return st
        return None

    def _record(self, stage: str, result: dict[str, Any], outputs: list[str], seconds: float) -> None:
        self.state.setdefault("stages", {})[stage] = {"result": result, "outputs": outputs,
                                                      "seconds": round(seconds, 2), "finished": time.time()}
        self.state["config"] = self.cfg.model_dump()
        self.state["provenance"] = provenance()
        write_json(self.state_path, self.state)

    def stage(self, name: str, fn: Any) -> dict[str, Any]:
        """Run ``fn`` (returning (result, outputs)) unless the stage is done already."""
        done = self._done(name)
        if done:
            self.log(f"[dim]stage {name}: done already (resume) — skipped[/]")
            return done["result"]
        self.log(f"[bold]stage {name}[/]")
        t0 = time.perf_counter()
        result, outputs = fn()
        self._record(name, result, outputs, time.perf_counter() - t0)
        return result

    # -- the pipeline -----------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        c = self.cfg
        t0 = time.perf_counter()
        if c.seeds and len(c.seeds) > 1:
            return self._over_seeds(c.seeds, t0)
        if c.seeds:  # one seed: the plain layout, with that seed
            from mtgraft.workflows.seeds import with_seed

            self.cfg = c = with_seed(c, c.seeds[0])
        if c.kind == "single":
            summary = self._single()
        elif c.kind == "joint":
            summary = self._joint()
        else:
            summary = self._sequential()
        summary["gains"] = task_gains(summary)
        summary.update({"study": c.name, "kind": c.kind, "out": str(self.out),
                        "seconds": round(time.perf_counter() - t0, 1)})
        write_json(self.out / "summary.json", summary)
        (self.out / "summary.md").write_text(render_summary(summary))
        return summary

    def _over_seeds(self, seeds: list[int], t0: float) -> dict[str, Any]:
        """The whole study once per seed (``OUT/seed-<s>/``, each resumable on its own), then aggregated."""
        from mtgraft.workflows.seeds import aggregate_study, render_seeds_summary, seed_dir, with_seed

        per_seed = {}
        for s in seeds:
            self.log(f"[bold]seed {s}[/] ({seed_dir(self.out, s)})")
            sub = Study(with_seed(self.cfg, s), out=str(seed_dir(self.out, s)), restart=self.restart,
                        show_progress=self.show, log=self.log)
            per_seed[s] = sub.run()
        summary = aggregate_study(self.cfg.kind, per_seed)
        summary.update({"study": self.cfg.name, "kind": self.cfg.kind, "out": str(self.out),
                        "seconds": round(time.perf_counter() - t0, 1)})
        write_json(self.out / "summary.json", summary)
        (self.out / "summary.md").write_text(render_seeds_summary(summary))
        return summary

    def _train_cfg(self, **kw: Any) -> dict[str, Any]:
        c = self.cfg
        return {"model": c.model, "type": c.type, **c.train, **self.common, **kw}

    def _graft(self, stage: str, finetuned: str, task: str | None, all_tasks: bool, out: Path,
               eval_tasks: list[str] | None = None) -> list[dict[str, Any]]:
        from mtgraft.grafting import GraftConfig
        from mtgraft.workflows.graft import graft_and_register

        def go() -> tuple[dict[str, Any], list[str]]:
            g = {**self.cfg.graft}
            if eval_tasks:
                g.setdefault("eval_tasks", eval_tasks)
            cfg = GraftConfig(task=task, all_tasks=all_tasks, finetuned=finetuned, out=str(out), **g, **self.common)
            res = graft_and_register(cfg, show_progress=self.show)
            return {"tasks": [r.to_json() for r in res]}, [str(out)]

        return self.stage(stage, go)["tasks"]

    def _report(self, patches: list[str]) -> dict[str, Any] | None:
        if self.cfg.report is None or len(patches) < 2:
            return None
        from mtgraft.analysis.report import build_report

        def go() -> tuple[dict[str, Any], list[str]]:
            opts = dict(self.cfg.report)
            unions = [u.split(",") if isinstance(u, str) else list(u) for u in opts.pop("unions", [])]
            res = build_report(patches, self.out / "report", unions=unions, title=f"{self.cfg.name}: overlap report",
                               tracking_uri=self.cfg.tracking_uri, **opts)
            return res.to_json(), [str(res.out_dir)]

        return self.stage("report", go)

    def _single(self) -> dict[str, Any]:
        from mtgraft.config import TrainConfig
        from mtgraft.tasks import compatible, get_task
        from mtgraft.training import train

        specs = {t: get_task(t) for t in self.cfg.tasks}
        rows, patches = [], []
        for t, spec in specs.items():
            ck = self.out / "train" / spec.name

            def go_train(t: str = t, ck: Path = ck) -> tuple[dict[str, Any], list[str]]:
                r = train(TrainConfig(task=t, out=str(ck), **self._train_cfg()), show_progress=self.show)
                return r.to_json(), [str(ck)]

            tr = self.stage(f"train:{spec.name}", go_train)
            ood = [o for o, os_ in specs.items() if o != t and compatible(spec, os_)] if self.cfg.ood else []
            g = self._graft(f"graft:{spec.name}", tr["checkpoint"], t, False, self.out / "graft" / spec.name, ood)
            rows.append({"task": spec.name, "train": _brief_train(tr), "graft": g[0]})
            patches += [r["patch"] for r in g[0]["results"] if r.get("patch") and r["method"] == "graft"]
        report = None
        if self.cfg.report is not None:
            report = self._middle_report(x for row in rows for x in row["graft"]["results"])
        return {"tasks": rows, "report": report}

    def _middle_report(self, results: Iterable[dict[str, Any]]) -> Any:
        """The overlap report of the learned grafts at the middle sparsity (None when there are none)."""
        by_sparsity: dict[float, list[str]] = {}
        for r in results:
            if r.get("patch") and r["method"] == "graft":
                by_sparsity.setdefault(r["sparsity"], []).append(r["patch"])
        if not by_sparsity:
            return None
        return self._report(by_sparsity[sorted(by_sparsity)[len(by_sparsity) // 2]])

    def _train_all(self, mode: str) -> dict[str, Any]:
        """The stage that fine-tunes one model on all the study's tasks, jointly or in sequence."""
        from mtgraft.training.multitask import MultitaskConfig
        from mtgraft.workflows.continual import train_multitask_with_grafts

        ck = self.out / "train"

        def go_train() -> tuple[dict[str, Any], list[str]]:
            cfg = MultitaskConfig(tasks=self.cfg.tasks, mode=mode, out=str(ck), **self._train_cfg())
            return train_multitask_with_grafts(cfg, show_progress=self.show).to_json(), [str(ck)]

        return self.stage(f"train:{mode}", go_train)

    def _joint(self) -> dict[str, Any]:
        tr = self._train_all("joint")
        g = self._graft("graft:all-tasks", tr["checkpoint"], None, True, self.out / "graft")
        patches = [r["patch"] for t in g for r in t["results"] if r.get("patch") and r["method"] == "graft"]
        report = self._middle_report(r for t in g for r in t["results"])
        return {"train": _brief_train(tr), "per_task_test": tr.get("test"), "grafts": g, "patches": patches,
                "report": report}

    def _sequential(self) -> dict[str, Any]:
        if self.cfg.continual is not None and "strategies" in self.cfg.continual:
            from mtgraft.workflows.stream import run_stream

            return {"stream": run_stream(self)}  # strategies × orders × seeds (docs/continual.md)
        tr = self._train_all("sequential")
        cl = None
        if self.cfg.continual is not None:
            from mtgraft.workflows.continual import ContinualGraftConfig, continual_graft

            def go_cl() -> tuple[dict[str, Any], list[str]]:
                cfg = ContinualGraftConfig(run=tr["checkpoint"], out=str(self.out / "continual_graft"),
                                           **self.cfg.continual, **self.common)
                r = continual_graft(cfg, show_progress=self.show)
                return r.to_json(), [str(self.out / "continual_graft")]

            cl = self.stage("continual-graft", go_cl)
        return {"train": _brief_train(tr), "accuracy_matrix": tr.get("accuracy_matrix"),
                "continual": tr.get("continual"), "graft_cl": cl}


def task_gains(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Each grafted task's fine-tuning gain over P_0 with its paired-bootstrap interval, and whether it counts
    as learnt (``analysis.stats.learnt_status``: interval above 0 and gain ≥ ``MIN_GAIN``)."""
    from mtgraft.analysis.stats import finetuning_gain, learnt_status

    grafts = summary.get("grafts") or [row["graft"] for row in summary.get("tasks") or [] if row.get("graft")]
    out = []
    for g in grafts:
        ft = (g.get("reference") or {}).get("finetuned") or {}
        pre = (g.get("reference") or {}).get("pretrained") or {}
        gain, gain_ci = finetuning_gain(g.get("reference"))
        learnt, why = learnt_status(gain, gain_ci)
        out.append({"task": g["task"], "pretrained": pre.get("accuracy"), "finetuned": ft.get("accuracy"),
                    "gain": gain, "gain_ci95": ft.get("gain_ci95"), "gain_p": ft.get("gain_p"),
                    "learnt": learnt, "reason": why})
    return out


def _brief_train(tr: dict[str, Any]) -> dict[str, Any]:
    keep = ("task", "tasks", "mode", "checkpoint", "test", "steps", "best_step", "train_seconds",
            "examples_per_second", "mlflow_run_id", "accuracy_matrix", "continual")
    return {k: tr[k] for k in keep if k in tr}


def _f(v: Any, nd: int = 3) -> str:
    return "—" if v is None else (f"{v:.{nd}f}" if isinstance(v, float) else str(v))


def render_summary(s: dict[str, Any]) -> str:
    """A Markdown summary of a study's results."""
    lines = [f"# Study `{s['study']}` ({s['kind']})", "",
             f"Output folder: `{s['out']}` · wall time {s['seconds']} s · ECE with 10 equal-width bins · "
             "sparsity counted over the graftable body (task head always grafted).", ""]

    def graft_rows(g: dict[str, Any]) -> list[str]:
        out = []
        ref = g["reference"]
        for name, key in (("pretrained (+head)", "pretrained"), ("fine-tuned", "finetuned")):
            m = ref[key]
            ood = ", ".join(f"{k} {_f(v['accuracy'])}" for k, v in m.get("ood", {}).items())
            out.append(f"| {g['task']} | {name} | | | {_f(m['accuracy'])} | {_f(m['ece'])} | {_f(m.get('rel'))} | {ood} |")
        for r in g["results"]:
            m = r["test"]
            ood = ", ".join(f"{k} {_f(v['accuracy'])} (Rel {_f(v.get('rel'), 2)})" for k, v in m.get("ood", {}).items())
            out.append(f"| {g['task']} | {r['method']} | {r['sparsity']:g} | {r['region_size']:,} | "
                       f"{_f(m['accuracy'])} | {_f(m['ece'])} | {_f(m.get('rel'))} | {ood} |")
        return out

    head = ["| task | model | sparsity | region | acc | ECE | Rel | OOD acc |", "|---|---|---|---|---|---|---|---|"]
    if s["kind"] == "single":
        lines += ["## Grafts per task", ""] + head
        for row in s["tasks"]:
            lines += graft_rows(row["graft"])
    elif s["kind"] == "joint":
        lines += ["## Multi-task model, per task (test)", "", "| task | accuracy | macro-F1 | ECE |", "|---|---|---|---|"]
        for t, m in (s.get("per_task_test") or {}).items():
            lines.append(f"| {t} | {_f(m.get('accuracy'))} | {_f(m.get('macro_f1'))} | {_f(m.get('ece'))} |")
        lines += ["", "## Per-task grafts on the multi-task model", ""] + head
        for g in s["grafts"]:
            lines += graft_rows(g)
    elif s.get("stream"):
        from mtgraft.workflows.stream import render_stream

        st = s["stream"]
        lines += ["## Continual-learning strategies (95% t-intervals over orders × seeds)", "",
                  f"Orders: {st['orders']} · seeds: {st['seeds']} · figures: {st.get('figures')}", "",
                  render_stream(st)]
    else:
        R = s.get("accuracy_matrix") or []
        tasks = ((s.get("train") or {}).get("tasks") or (s.get("graft_cl") or {}).get("tasks")
                 or [f"task {i + 1}" for i in range(len(R[0]) if R else 0)])
        lines += ["## Sequential fine-tuning: accuracy matrix R[stage, task]", "",
                  "| after stage | " + " | ".join(tasks) + " |", "|---|" + "---:|" * len(tasks)]
        for i, row in enumerate(R):
            lines.append(f"| {i + 1} ({tasks[i] if i < len(tasks) else ''}) | " + " | ".join(_f(x) for x in row) + " |")
        cont = {k: v for k, v in (s.get("continual") or {}).items() if not isinstance(v, (dict, list))}
        if cont:
            lines += ["", "| " + " | ".join(cont) + " |", "|" + "---:|" * len(cont),
                      "| " + " | ".join(_f(v) for v in cont.values()) + " |"]
        cl = s.get("graft_cl")
        if cl:
            per = cl.get("per_task") or {}
            lines += ["", "## Graft-based continual learning (test accuracy per task)", "",
                      "| task | stage | just after its stage | final sequential model | own graft on pretrained | "
                      "union of all grafts | region |", "|---|---:|---:|---:|---:|---:|---:|"]
            for t, r in per.items():
                lines.append(f"| {t} | {r.get('stage')} | {_f(r.get('just_trained'))} | {_f(r.get('sequential'))} | "
                             f"{_f(r.get('own_graft'))} | {_f(r.get('union'))} | {r.get('region_size', 0):,} |")
            appr = cl.get("approaches") or {}
            if appr:
                keys = [k for k in ("acc", "bwt", "forgetting_final", "forgetting_max", "drop_mean_all_tasks")
                        if any(k in a for a in appr.values())]
                lines += ["", "| approach | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
                notes = cl.get("approach_notes") or {}
                for name, a in appr.items():
                    label = f"{name} ({notes[name]})" if name in notes else name
                    lines.append(f"| {label} | " + " | ".join(_f(a.get(k)) for k in keys) + " |")
            st = cl.get("storage") or {}
            if st.get("patches_bytes"):
                lines += ["", f"Storage: {len(per)} SkillPatches {st['patches_bytes']:,} bytes against {len(per)} stage "
                          f"checkpoints {st.get('checkpoints_bytes', 0):,} bytes ({_f(st.get('ratio'), 0)}× smaller)."]
    if s.get("gains"):
        from mtgraft.analysis.stats import MIN_GAIN

        lines += ["", "## Fine-tuning gains (was each task learnt?)", "",
                  f"Gain = fine-tuned − pretrained (+ task head) test accuracy on the same examples, 95% paired "
                  f"bootstrap interval; a task is learnt when the interval lies above 0 and the gain is at least "
                  f"{MIN_GAIN:.2f}. Tasks not learnt are left out of the overlap report's conclusions.", "",
                  "| task | pretrained | fine-tuned | gain [95% CI] | learnt |", "|---|---:|---:|---:|---|"]
        for gr in s["gains"]:
            ci = gr.get("gain_ci95")
            iv = f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else ""
            gain = "—" if gr["gain"] is None else f"{gr['gain']:+.3f}{iv}"
            verdict = {True: "yes", False: f"no — {gr['reason']}", None: "unknown"}[gr["learnt"]]
            lines.append(f"| {gr['task']} | {_f(gr['pretrained'])} | {_f(gr['finetuned'])} | {gain} | {verdict} |")
    rep = s.get("report")
    if rep:
        lines += ["", "## Overlap report", "", f"Report: `{rep.get('files', {}).get('html', rep.get('out'))}`"]
        sents = rep.get("sentences") or (rep.get("summary") or {}).get("sentences") or []
        for sent in sents[:12]:
            lines.append(f"- {sent}")
    return "\n".join(lines) + "\n"
