"""Transfer between task regions: Rel of each task's graft on every task with the same label space.

Rel of graft i on task j = (acc(theta_i, head j) − P_0(j)) / (P_1(j) − P_0(j)) on task j's test split,
where theta_i = theta_pre + the patch's fine-tuned values on region i (docs/method.md §3), head j is
task j's (from task j's patch), P_0(j) is the pretrained body with head j and P_1(j) the fine-tuned
body with head j. One pretrained model with every task's head is built once; each graft is evaluated
by overriding only the tensors it touches via ``torch.func.functional_call`` (no model copies).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtgraft.analysis.formatting import finite_interval
from mtgraft.errors import MtgraftError
from mtgraft.utils import finite_or_none

#: None: each task's test split as its patch recorded it (``max_test: auto`` by default), so the matrix is
#: measured on the grafts' own test sets and P_0/P_1 come from the patches
DEFAULT_MAX_TEST: int | None = None


class GraftEvaluator:
    """One pretrained TaskModel carrying every task's head; evaluates any graft region on any task."""

    def __init__(self, base_model: str, model_type: str, tasks_info: Mapping[str, Mapping[str, Any]],
                 base_hash: str, graftable: Sequence[tuple[str, Sequence[int]]], device: str = "auto") -> None:
        """Build the model (``base_model`` must hash to ``base_hash``) with heads for ``tasks_info``."""
        from mtgraft.models import TaskInfo, build_task_model
        from mtgraft.utils import resolve_device

        self.device = resolve_device(device)
        infos = [TaskInfo(**{**dict(v), "name": n}) for n, v in tasks_info.items()]
        self.model = build_task_model(base_model, model_type, infos)
        names = self.model.graftable_names()
        params = dict(self.model.named_parameters())
        mine = [(n, list(params[n].shape)) for n in names]
        if mine != [(n, list(s)) for n, s in graftable]:
            raise MtgraftError(f"base model '{base_model}' does not have the graftable tensors the patches list "
                               "(different architecture?)")
        got = self.model.base_hash()
        if got != base_hash:
            from mtgraft.patches import short_hash

            raise MtgraftError(f"base model '{base_model}' here has hash {short_hash(got)}, the patches were made "
                               f"for {short_hash(base_hash)}; cannot evaluate transfer")
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.model.eval().to(self.device)
        self.pre = {n: params[n].detach() for n in names}
        self._encoded: dict[tuple[str, int], Any] = {}
        from mtgraft.evaluation.cache import get_cache, runtime_key

        self.cache = get_cache()  # encoded test sets and predictions of earlier runs (docs/evaluation-cache.md)
        self._ident = {"what": "transfer", "base": base_hash, **runtime_key(self.device),
                       "context": self.model.context_hash() if self.cache.enabled else None}

    def set_head(self, head: Mapping[str, torch.Tensor]) -> None:
        """Copy head tensors (``heads.<task>.*``) into the model."""
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for n, t in head.items():
                if n not in params:
                    raise MtgraftError(f"the model has no head parameter '{n}'")
                params[n].copy_(t.to(params[n].device, params[n].dtype))

    def region_params(self, indices: Mapping[str, torch.Tensor], values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Graftable tensors touched by a region, set to theta_pre + the region's fine-tuned values."""
        out = {}
        for n, idx in indices.items():
            t = self.pre[n].clone()
            t.view(-1)[idx.to(self.device, torch.long)] = values[n].to(self.device, t.dtype)
            out[n] = t
        return out

    def encode(self, task: str, examples: list[Any], max_length: int) -> Any:
        """Tokenised test examples of ``task`` (cached by task and length)."""
        key = (task, max_length)
        if key not in self._encoded:
            self._encoded[key] = self.cache.encoded(self.model, task, examples, max_length)
        return self._encoded[key]

    @torch.no_grad()
    def accuracy(self, params: Mapping[str, torch.Tensor], enc: Any, batch_size: int = 64,
                 region: str | None = None) -> float:
        """Accuracy of the model with ``params`` overriding its graftable tensors. ``region`` (a content hash
        that identifies ``params``) lets the predictions come from the evaluation cache."""
        from torch.func import functional_call

        from mtgraft.evaluation.cache import model_key, tensors_digest
        from mtgraft.evaluation.predict import accuracy, predict_probs

        p = dict(params)

        def compute() -> Any:
            return predict_probs(self.model, enc, batch_size, self.device,
                                 forward=lambda **kw: functional_call(self.model, p, args=(), kwargs=kw))

        if region is None or not self.cache.enabled:
            return accuracy(compute(), enc.labels)
        head = tensors_digest((n, t) for n, t in self.model.named_parameters() if n.startswith(f"heads.{enc.task}."))
        key = {**self._ident, "region": region, "head": head, **model_key(self.model, enc.task),
               "batch_size": batch_size}
        return accuracy(self.cache.probs(key, enc, compute), enc.labels)


def _test_split(task: str, data: Mapping[str, Any], max_test: int | None) -> tuple[list[Any], int | None]:
    """(test examples, effective max_test): the recorded split, capped at ``max_test``."""
    from mtgraft.config import DEFAULT_MAX_TEST as RECORDED_DEFAULT
    from mtgraft.tasks import get_task, make_splits

    rec = data.get("max_test", RECORDED_DEFAULT)
    cap = rec if max_test is None else (max_test if rec is None else min(int(rec), int(max_test)))
    spec = get_task(task)
    return make_splits(spec, data.get("k", 64), data.get("seed", 13), cap).test, cap


def transfer_analysis(
    patches: Sequence[Any],
    labels: Sequence[str],
    unions: Sequence[Sequence[str]] = (),
    max_test: int | None = DEFAULT_MAX_TEST,
    device: str = "auto",
    progress: Callable[[int, int, str], None] | None = None,
    test_examples: Mapping[str, list[Any]] | None = None,
) -> dict[str, Any]:
    """Rel of every graft on every task with the same label space (its own included) and of union grafts.

    ``patches`` are SkillPatches of one base, ``labels`` their names in the report; ``unions`` lists
    groups of labels whose regions are stitched (overlaps averaged) and evaluated on each member's task.
    Returns ``eval_tasks``, ``reference`` (P_0, P_1, n and where they come from, per task),
    ``results`` (one record per graft × compatible task), ``rel``/``accuracy`` matrices
    [grafts × eval_tasks] (None = incompatible labels) and ``unions``. ``test_examples`` replaces the
    test split of the tasks it names (``Example`` lists, capped at ``max_test``), e.g. for tasks not in the catalog.
    """
    from mtgraft.evaluation.metrics import relative_gain
    from mtgraft.models import load_checkpoint
    from mtgraft.patches import stitch

    if not patches:
        raise MtgraftError("no patches to evaluate")
    if max_test is not None and max_test <= 0:
        raise MtgraftError(f"--max-test must be positive, got {max_test}")
    h0 = patches[0].header
    types = {p.header.model_type for p in patches}
    if len(types) > 1:
        raise MtgraftError(f"transfer needs patches of one model type, got {', '.join(sorted(types))}")
    label_of = dict(zip(labels, patches, strict=True))
    # every task with its source patch (the first single-task patch of that task, else any patch carrying it)
    info: dict[str, dict[str, Any]] = {}
    source: dict[str, Any] = {}
    for p in sorted(patches, key=lambda q: len(q.header.tasks)):
        for t in p.header.tasks:
            info.setdefault(t, dict(p.header.tasks_info.get(t, {})))
            source.setdefault(t, p)
    order = [t for p in patches for t in p.header.tasks]
    eval_tasks = list(dict.fromkeys(order))
    for t in eval_tasks:
        if not info[t].get("labels"):
            raise MtgraftError(f"patch of task '{t}' records no label list (tasks_info); cannot evaluate transfer")
    unions = [list(u) for u in unions]
    for u in unions:
        bad = [x for x in u if x not in label_of]
        if bad:
            raise MtgraftError(f"--union names '{bad[0]}', which is not a task in the report (have: {', '.join(labels)})")
        if len(set(u)) < 2:
            raise MtgraftError(f"--union needs at least two different tasks, got {','.join(u)}")

    def compatible(a: str, b: str) -> bool:
        return list(info[a]["labels"]) == list(info[b]["labels"])

    ev = GraftEvaluator(h0.base_model, h0.model_type, info, h0.base_hash, h0.graftable, device)
    # the test split of each task, from its source patch's recorded data settings
    tests: dict[str, Any] = {}
    reference: dict[str, dict[str, Any]] = {}
    for t in eval_tasks:
        p = source[t]
        data = dict(p.header.data or {})
        if test_examples is not None and t in test_examples:
            exs, cap = list(test_examples[t])[: max_test or None], max_test
        else:
            exs, cap = _test_split(t, data, max_test)
        tests[t] = ev.encode(t, exs, int(data.get("max_length", 128)))
        test_m = (p.header.metrics or {}).get("test", {})
        ref = (p.header.metrics or {}).get("reference", {})
        reference[t] = {"n": len(exs), "max_test": cap, "data": data, "patch": labels[list(patches).index(p)],
                        "recorded": {"n": test_m.get("n"),
                                     "pretrained": finite_or_none(ref.get("pretrained", {}).get("accuracy")),
                                     "finetuned": finite_or_none(ref.get("finetuned", {}).get("accuracy")),
                                     "graft": finite_or_none(test_m.get("accuracy")),
                                     "rel_ci95": finite_interval(test_m.get("rel_ci95"))}}

    pairs = [(li, t) for li in labels for t in eval_tasks
             if any(compatible(t, own) for own in label_of[li].header.tasks)]
    n_steps = len(eval_tasks) * 2 + len(pairs) + sum(len(u) for u in unions)
    step = 0

    def tick(what: str) -> None:
        nonlocal step
        step += 1
        if progress:
            progress(step, n_steps, what)

    ft_cache: dict[str, dict[str, torch.Tensor] | None] = {}

    def finetuned_params(p: Any) -> dict[str, torch.Tensor] | None:
        path = (p.header.finetuned or {}).get("path")
        if not path or not Path(path).is_dir():
            return None
        if path not in ft_cache:
            try:
                m, _ = load_checkpoint(path)
            except MtgraftError as e:
                from mtgraft.progress import warn

                warn(f"fine-tuned checkpoint {path} cannot be loaded ({e}): transfer rows of its patches have no "
                     "fine-tuned reference")
                ft_cache[path] = None
            else:
                fp = dict(m.named_parameters())
                ok = all(n in fp and fp[n].shape == ev.pre[n].shape for n in ev.pre)
                ft_cache[path] = {n: fp[n].detach().to(ev.device) for n in ev.pre} if ok else None
                del m
        return ft_cache[path]

    # P_0 and P_1 on exactly the examples evaluated here
    for t in eval_tasks:
        r = reference[t]
        p = source[t]
        ev.set_head(_head_for(p, t))
        rec = r["recorded"]
        same = rec["n"] is not None and int(rec["n"]) == r["n"]
        if same and rec["pretrained"] is not None:
            r["pretrained"], r["pretrained_source"] = rec["pretrained"], "recorded in the patch (same test examples)"
        else:
            r["pretrained"], r["pretrained_source"] = ev.accuracy({}, tests[t], region="pretrained"), "measured here"
        tick(f"P_0 {t}")
        if same and rec["finetuned"] is not None:
            r["finetuned"], r["finetuned_source"] = rec["finetuned"], "recorded in the patch (same test examples)"
        else:
            fp = finetuned_params(p)
            if fp is not None:
                a = ev.accuracy(fp, tests[t], region=_region_id(fp) if ev.cache.enabled else None)
                r["finetuned"], r["finetuned_source"] = a, "measured here (fine-tuned checkpoint)"
            elif rec["finetuned"] is not None:
                r["finetuned"] = rec["finetuned"]
                r["finetuned_source"] = (f"recorded in the patch on {rec['n']} test examples "
                                         f"(fine-tuned checkpoint not found; this run uses {r['n']})")
            else:
                r["finetuned"], r["finetuned_source"] = None, "unknown (no checkpoint, nothing recorded)"
        tick(f"P_1 {t}")

    def rel(acc: float, t: str) -> float | None:
        p0, p1 = reference[t]["pretrained"], reference[t]["finetuned"]
        return relative_gain(acc, p0, p1) if p0 is not None and p1 is not None else None

    def rel_se(acc: float, t: str) -> float | None:
        """Binomial standard error of Rel from the test sample alone: sqrt(a(1-a)/n) / |P_1 - P_0|."""
        p0, p1, n = reference[t]["pretrained"], reference[t]["finetuned"], reference[t]["n"]
        if p0 is None or p1 is None or abs(p1 - p0) < 1e-9 or not n:
            return None
        return math.sqrt(acc * (1 - acc) / n) / abs(p1 - p0)

    for t in eval_tasks:
        r = reference[t]
        r["gain"] = (r["finetuned"] - r["pretrained"]) if r["finetuned"] is not None and r["pretrained"] is not None \
            else None

    results: list[dict[str, Any]] = []
    acc_m: list[list[float | None]] = []
    rel_m: list[list[float | None]] = []
    for li in labels:
        p = label_of[li]
        params = ev.region_params(p.indices, p.values)
        region = _region_id(p.values, p.indices) if ev.cache.enabled else None
        row_a: list[float | None] = []
        row_r: list[float | None] = []
        for t in eval_tasks:
            if (li, t) not in pairs:
                row_a.append(None)
                row_r.append(None)
                continue
            ev.set_head(_head_for(source[t], t))
            a = ev.accuracy(params, tests[t], region=region)
            r = rel(a, t)
            own = t in p.header.tasks
            results.append({"graft": li, "graft_tasks": p.header.tasks, "eval_task": t, "own": own,
                            "accuracy": a, "rel": r, "rel_se": rel_se(a, t), "n": reference[t]["n"],
                            "rel_ci95": _recorded_interval(reference[t], a, own and p is source[t])})
            row_a.append(a)
            row_r.append(r)
            tick(f"{li} → {t}")
        acc_m.append(row_a)
        rel_m.append(row_r)

    union_out = []
    for u in unions:
        members = [label_of[x] for x in u]
        up, st = stitch(members, "average")
        params = ev.region_params(up.indices, up.values)
        region = _region_id(up.values, up.indices) if ev.cache.enabled else None
        per: dict[str, Any] = {}
        for x in u:
            for t in label_of[x].header.tasks:
                if t in per:
                    continue
                ev.set_head(_head_for(source[t], t))
                a = ev.accuracy(params, tests[t], region=region)
                own_r = next((r["rel"] for r in results if r["graft"] == x and r["eval_task"] == t), None)
                per[t] = {"accuracy": a, "rel": rel(a, t), "rel_se": rel_se(a, t), "own_graft_rel": own_r,
                          "n": reference[t]["n"]}
                tick(f"union {'+'.join(u)} → {t}")
        rels = [v["rel"] for v in per.values() if v["rel"] is not None]
        union_out.append({"name": "+".join(u), "members": u, "region_size": up.region_size,
                          "member_sizes": st["sizes"], "overlapping_entries": st["overlapping_entries"],
                          "overlap_policy": "average", "results": per,
                          "mean_rel": float(np.mean(rels)) if rels else None})
    ev.set_head({})
    return {"max_test": max_test, "device": str(ev.device), "eval_tasks": eval_tasks, "grafts": list(labels),
            "compatible": [[compatible(a, b) for b in eval_tasks] for a in eval_tasks],
            "reference": reference, "results": results, "accuracy": acc_m, "rel": rel_m, "unions": union_out}


def _region_id(values: Mapping[str, torch.Tensor], indices: Mapping[str, torch.Tensor] | None = None) -> str:
    """Content hash of what a graft overrides (whole tensors, or flat indices and their values)."""
    from mtgraft.evaluation.cache import tensors_digest

    named = {f"values/{n}": t for n, t in values.items()}
    named.update({f"indices/{n}": t for n, t in (indices or {}).items()})
    return tensors_digest(named)


def _recorded_interval(ref: Mapping[str, Any], acc: float, own_source: bool) -> list[float] | None:
    """Rel's 95% interval (paired bootstrap over the test examples, docs/method.md §3) as the graft run recorded
    it in the patch: only for a graft on its own task evaluated here on the very examples it was recorded on
    (same n, same accuracy) and with P_0, P_1 taken from the same patch; else None (a plain number)."""
    rec = ref["recorded"]
    same = (rec["n"] is not None and int(rec["n"]) == ref["n"] and rec["graft"] is not None
            and abs(rec["graft"] - acc) < 1e-9 and ref.get("pretrained_source", "").startswith("recorded")
            and ref.get("finetuned_source", "").startswith("recorded in the patch (same"))
    return rec.get("rel_ci95") if own_source and same else None


def _head_for(p: Any, task: str) -> dict[str, torch.Tensor]:
    """Task ``task``'s head tensors from patch ``p`` (empty for prompt/causal models)."""
    pre = f"heads.{task}."
    return {n: t for n, t in p.head.items() if n.startswith(pre)}


def overlap_transfer_correlation(matrix: Any, labels: Sequence[str], transfer: Mapping[str, Any],
                                 what: str = "enrichment") -> dict[str, Any]:
    """Spearman correlation over directed pairs (graft i on task j, i ≠ j, same labels) of ``matrix[i, j]`` vs Rel.

    ``matrix`` is an overlap matrix over ``labels`` (e.g. enrichment, or containment |g_i∩g_j|/|g_j|);
    only single-task grafts count. Returns rho, p, n, the points and a plain ``note`` when n is too small.
    """
    from scipy.stats import spearmanr

    m = np.asarray(matrix, dtype=np.float64)
    pos = {lab: k for k, lab in enumerate(labels)}
    task_of = {}
    for r in transfer["results"]:
        if len(r["graft_tasks"]) == 1:
            task_of[r["graft"]] = r["graft_tasks"][0]
    by_task = {t: lab for lab, t in task_of.items()}
    pts = []
    for r in transfer["results"]:
        if r["own"] or r["rel"] is None or r["graft"] not in task_of or r["eval_task"] not in by_task:
            continue
        i, j = pos[r["graft"]], pos[by_task[r["eval_task"]]]
        x = m[i, j]
        if math.isfinite(x):
            pts.append({"graft": r["graft"], "eval_task": r["eval_task"], "x": float(x), "rel": float(r["rel"])})
    n = len(pts)
    out: dict[str, Any] = {"x": what, "n": n, "rho": None, "p_value": None, "points": pts}
    if n < 3:
        out["note"] = f"too few pairs to correlate (n = {n}; need tasks with the same label space)"
        return out
    xs = [q["x"] for q in pts]
    ys = [q["rel"] for q in pts]
    if len(set(xs)) < 2 or len(set(ys)) < 2:
        out["note"] = f"no variation to correlate (n = {n})"
        return out
    res = spearmanr(xs, ys)
    out["rho"], out["p_value"] = float(res.statistic), float(res.pvalue)
    if n < 8:
        out["note"] = f"n = {n} pairs is too few for a firm conclusion"
    return out
