"""Graft then register: ``mtgraft graft`` as one step of a workflow, and ``mtgraft masks register DIR``.

Grafting and the mask registry are independent parts; this workflow joins them: each SkillPatch a graft
writes is registered once every output file is in its final place, as a version linked to the graft's MLflow
run. The registrations of one command complete together at its end: a failure part-way rolls back what the
command registered (``registry.batch``), keeps the output files, leaves ``results.json`` saying they are not
registered, and ends with one line saying so and how to register them later (``register_outputs``).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from mtgraft.errors import MtgraftError
from mtgraft.grafting import GraftConfig, GraftResult, OnWritten, run_graft
from mtgraft.grafting.run import HandOffError, out_lock
from mtgraft.registry import NOT_BEST_TAG, RegisteredMask, RegistrationBatch
from mtgraft.utils import sha256_file, write_json

RESULTS = "results.json"


def graft_and_register(cfg: GraftConfig, show_progress: bool = True) -> list[GraftResult]:
    """Graft every task asked for, then register each written SkillPatch in the mask registry
    (unless ``cfg.do_register`` or ``cfg.track`` is off)."""
    if not (cfg.do_register and cfg.track):
        return run_graft(cfg, show_progress)
    batch = RegistrationBatch(cfg.tracking_uri)
    try:
        results = run_graft(cfg, show_progress, on_written=registrar(batch))
    except HandOffError as e:  # the outputs are complete, recording or registering them failed
        folders = sorted({str(p.parent) for p, _ in batch.done} | {str(e.out)})
        err = batch.failure("registering the SkillPatches", e.cause,
                            f"the output files are complete; register them later with "
                            f"'mtgraft masks register {' '.join(folders)}'")
        for folder in folders:
            record_registered(Path(folder), {}, clear=True)
        raise err from None
    except BaseException:  # a later task failed: the finished tasks' outputs and registrations stand
        if batch.done:
            with contextlib.suppress(Exception):
                _finish(batch)
        raise
    _finish(batch, results)
    return results


def registrar(batch: RegistrationBatch) -> OnWritten:
    """A ``run_graft`` hook that registers a patch file (as an incomplete version, until ``batch.commit``)
    as a version of the run that wrote it."""

    def register(path: Path, run_id: str | None) -> dict[str, Any]:
        return _entry(batch.add(path, run_id=run_id, extra_tags=baseline_flag(path)))

    return register


BASELINE = "topk"
"""The baseline a region must not fall below (Rel at the same size) to take the registry's ``best``."""


def baseline_flag(path: Path) -> dict[str, str]:
    """``{NOT_BEST_TAG: reason}`` when the graft output folder's ``results.json`` shows this patch's Rel below
    the top-k baseline's at the same sparsity (same test examples); else {}. The Rel-interval rule needs only
    the patch header and is applied by the registry itself."""
    try:
        data = json.loads((path.parent / RESULTS).read_text())
        [entry] = [e for e in data.get("results", []) if e.get("patch") and Path(e["patch"]).name == path.name]
    except (OSError, ValueError, TypeError):
        return {}
    rel = (entry.get("test") or {}).get("rel")
    base = [e for e in data["results"] if e.get("method") == BASELINE and e.get("sparsity") == entry.get("sparsity")]
    base_rel = (base[0].get("test") or {}).get("rel") if base else None
    if entry.get("method") == BASELINE or rel is None or base_rel is None or rel >= base_rel:
        return {}
    return {NOT_BEST_TAG: f"Rel {rel:.2f} below top-k's {base_rel:.2f} at the same size"}


def _entry(m: RegisteredMask) -> dict[str, Any]:
    return {"name": m.name, "version": m.version, "aliases": list(m.aliases)}


def _finish(batch: RegistrationBatch, results: list[GraftResult] | None = None) -> None:
    """Complete the batch; record the final entries (aliases may have moved) in results and results.json."""
    done = {str(p): m for p, m in batch.done}
    masks = batch.commit()
    by_sha = {m.sha256: _entry(m) for m in masks}
    for r in results or []:
        for e in r.results:
            if e.get("patch") in done:
                e["registered"] = _entry(done[e["patch"]])
    for folder in sorted({p.parent for p, _ in batch.done}):
        with contextlib.suppress(MtgraftError):  # another command took the folder over: it is that one's now
            record_registered(folder, by_sha)


def record_registered(folder: Path, by_sha: dict[str | None, dict[str, Any]], clear: bool = False,
                      lock: bool = True) -> None:
    """Set the ``registered`` entries of ``folder/results.json`` (atomically): patches whose sha256 is in
    ``by_sha`` get that entry; with ``clear`` every other patch gets None (not registered)."""
    path = folder / RESULTS
    if not path.is_file():
        return
    with out_lock(folder) if lock else contextlib.nullcontext():
        data = json.loads(path.read_text())
        changed = False
        for e in data.get("results", []):
            p = folder / Path(e["patch"]).name if e.get("patch") else None
            if p is None or not p.is_file():
                continue
            sha = sha256_file(p) if by_sha else None
            if sha in by_sha:
                e["registered"], changed = by_sha[sha], True
            elif clear:
                e["registered"], changed = None, True
        if changed:
            write_json(path, data)


# ---------------------------------------------------------------------- mtgraft masks register


def register_outputs(paths: list[str | os.PathLike], tracking_uri: str | None = None,
                     run_id: str | None = None) -> dict[str, Any]:
    """Register patch files and graft output folders (their ``results.json`` names the patches; those it
    records as registered are skipped) as one command; leftovers of an earlier, killed registration of the
    same files (incomplete versions) are removed first. Updates each folder's ``results.json``."""
    files, folders, skipped = _expand([Path(p) for p in paths])
    batch = RegistrationBatch(tracking_uri)
    with contextlib.ExitStack() as stack:
        for folder in folders:  # no graft may rewrite a folder while its files are registered
            stack.enter_context(out_lock(folder))
        cleaned: list[str] = []
        current = files[0] if files else None
        try:
            if files:
                shas = {sha256_file(p) for p in files}
                cleaned = batch.registry.delete_incomplete(shas)["deleted"]
            for current in files:
                batch.add(current, run_id=run_id, extra_tags=baseline_flag(current))
            masks = batch.commit()
        except Exception as e:
            targets = " ".join(str(p) for p in paths)
            raise batch.failure(f"registering {current}", e, f"run 'mtgraft masks register {targets}' again "
                                "once that is fixed") from None
        by_sha = {m.sha256: _entry(m) for m in masks}
        for folder in folders:
            record_registered(folder, by_sha, lock=False)
    return {"registered": [m.to_dict() for m in masks], "skipped": skipped, "cleaned": cleaned}


def _expand(paths: list[Path]) -> tuple[list[Path], list[Path], list[dict[str, Any]]]:
    """(patch files to register, graft output folders to update, patches already registered)."""
    files: list[Path] = []
    folders: list[Path] = []
    skipped: list[dict[str, Any]] = []
    for p in paths:
        if not p.is_dir():
            files.append(p)
            if (p.parent / RESULTS).is_file() and p.parent not in folders:
                folders.append(p.parent)
            continue
        try:
            data = json.loads((p / RESULTS).read_text())
            entries = [e for e in data["results"] if e.get("patch")]
        except (OSError, ValueError, KeyError, TypeError):
            raise MtgraftError(f"'{p}' is not a graft output folder (no readable {RESULTS} listing its "
                               "SkillPatches)") from None
        folders.append(p)
        for e in entries:
            f = p / Path(e["patch"]).name
            if not f.is_file():
                raise MtgraftError(f"{p / RESULTS} lists {f.name}, which is not in '{p}'")
            if e.get("registered"):
                skipped.append({"patch": str(f), "registered": e["registered"]})
            elif f not in files:
                files.append(f)
    return files, folders, skipped
