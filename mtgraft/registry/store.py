"""The mask registry: SkillPatches as versions of MLflow registered models (tags and aliases).

Each registered patch is a model version of ``skill.<task>.<base>-<hash8>`` (see ``naming.py``).
The patch file is an artifact of an MLflow run (the graft run that made it, or a small
``mtgraft-register`` run), the version's ``source`` is that artifact folder and its ``run_id``
links it to the run. Tags (``mtgraft.*``, see ``records.py``) carry what the patch is; the alias ``best``
points at the version with the highest Rel, and MLflow's reserved alias ``latest`` at the newest one.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from mtgraft.errors import MtgraftError
from mtgraft.patches.picture import picture_path, region_picture
from mtgraft.registry.mlflow_io import first_line, is_connection_error, is_transient, quiet_env, quiet_mlflow
from mtgraft.registry.naming import BEST, LATEST, Ref, check_alias_name, model_name, parse_ref
from mtgraft.registry.records import (
    ARTIFACT_DIR,
    EXPERIMENT,
    FILE_TAG,
    INCOMPLETE_TAG,
    KIND,
    KIND_TAG,
    NOT_BEST_TAG,
    SHA_TAG,
    RegisteredMask,
    base_matches,
    describe,
    fmt,
    num,
    ranges,
    row,
    version_tags,
)
from mtgraft.utils import atomic_file, sha256_file

T = TypeVar("T")


class MaskRegistry:
    """SkillPatches in an MLflow model registry (``tracking_uri`` None: ``MLFLOW_TRACKING_URI`` or MLflow's default)."""

    def __init__(self, tracking_uri: str | None = None) -> None:
        """Connect (and, for an http server, check within seconds that it answers)."""
        import mlflow
        from mlflow import MlflowClient

        from mtgraft.tracking import check_reachable

        quiet_mlflow()
        from mlflow.exceptions import MlflowException

        # None: what MLflow itself would use (a URI set in-process, else $MLFLOW_TRACKING_URI, else its default)
        self.tracking_uri = tracking_uri or mlflow.get_tracking_uri()
        check_reachable(self.tracking_uri)

        try:
            self.client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        except MlflowException as e:  # unsupported scheme, retired file store, unreadable database...
            raise MtgraftError(f"cannot open the MLflow store at {self.tracking_uri}: {first_line(e)[:300]}") from None

    # ------------------------------------------------------------------ plumbing

    def _call(self, fn: Callable[..., T], *args: Any, what: str = "MLflow request", retry: bool = True,
              raw: tuple[str, ...] = (), **kwargs: Any) -> T:
        """Call the MLflow client; retry transient failures (sqlite locks); MLflow errors -> MtgraftError
        (except those whose error code is in ``raw``, which are re-raised as they are)."""
        from mlflow.exceptions import MlflowException

        delay = 0.05
        attempts = 12 if retry else 1
        for attempt in range(attempts):
            try:
                return fn(*args, **kwargs)
            except MlflowException as e:
                if self._code(e) in raw:
                    raise
                if attempt + 1 < attempts and is_transient(e):
                    time.sleep(delay * (1 + random.random()))
                    delay = min(delay * 2, 2.0)
                    continue
                raise self._error(e, what) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _error(self, e: Exception, what: str) -> MtgraftError:
        if is_connection_error(e):
            return MtgraftError(f"cannot reach the MLflow tracking server at {self.tracking_uri}: "
                                f"{first_line(e)[:200]}")
        if "error code 404 != 200" in str(e) or "error code 405 != 200" in str(e):
            return MtgraftError(f"{self.tracking_uri} does not answer MLflow API requests (HTTP 404/405): "
                                "is it an MLflow tracking server, and the right URL?")
        return MtgraftError(f"{what} failed at {self.tracking_uri}: {first_line(e)[:300]}")

    @staticmethod
    def _code(e: Exception) -> str:
        return str(getattr(e, "error_code", ""))

    def _experiment_id(self) -> str:
        from mlflow.exceptions import MlflowException

        from mtgraft.tracking import EXPERIMENT_TAGS

        exp = self._call(self.client.get_experiment_by_name, EXPERIMENT, what="finding the registry experiment")
        if exp is not None:
            return exp.experiment_id
        try:
            return self._call(self.client.create_experiment, EXPERIMENT, what="creating the registry experiment",
                              raw=("RESOURCE_ALREADY_EXISTS",), tags=EXPERIMENT_TAGS)
        except MlflowException:  # created by a concurrent registration
            pass
        exp = self._call(self.client.get_experiment_by_name, EXPERIMENT, what="finding the registry experiment")
        if exp is None:  # pragma: no cover
            raise MtgraftError(f"cannot create MLflow experiment '{EXPERIMENT}' at {self.tracking_uri}")
        return exp.experiment_id

    def _ensure_registered_model(self, name: str, header: Any) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self._call(self.client.get_registered_model, name, what=f"reading registered model {name}",
                       raw=("RESOURCE_DOES_NOT_EXIST",))
            return
        except MlflowException:
            pass
        task = header.task if isinstance(header.task, str) else "+".join(header.task)
        tags = {KIND_TAG: KIND, "mtgraft.task": task, "mtgraft.base_model": header.base_model,
                "mtgraft.base_hash": header.base_hash, "mtgraft.model_type": header.model_type}
        desc = (f"SkillPatches (graft regions) of task '{task}' on base model {header.base_model} "
                f"({header.base_hash}). Made by mtgraft.")
        try:  # a concurrent registration may create it first
            self._call(self.client.create_registered_model, name, tags=tags, description=desc,
                       what=f"creating registered model {name}", raw=("RESOURCE_ALREADY_EXISTS",))
        except MlflowException:
            pass

    def _versions(self, filter_string: str) -> list[Any]:
        out: list[Any] = []
        token = None
        while True:
            page = self._call(self.client.search_model_versions, filter_string, max_results=1000,
                              page_token=token, what="searching the model registry")
            out.extend(page)
            token = getattr(page, "token", None)
            if not token:
                return out

    def _registered_model(self, name: str) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            return self._call(self.client.get_registered_model, name, what=f"reading registered model {name}",
                              raw=("RESOURCE_DOES_NOT_EXIST",))
        except MlflowException:
            raise MtgraftError(f"unknown registered model '{name}' in the registry at {self.tracking_uri} "
                               "(see 'mtgraft masks list')") from None

    @staticmethod
    def _aliases_of(rm: Any, version: str, newest: str | None) -> list[str]:
        aliases = sorted(a for a, v in (rm.aliases or {}).items() if str(v) == str(version))
        if newest is not None and str(version) == str(newest):
            aliases = [LATEST, *aliases]
        return aliases

    def _newest(self, name: str) -> str | None:
        versions = self._versions(f"name = '{name}'")
        return str(max(int(v.version) for v in versions)) if versions else None

    # ------------------------------------------------------------------ register

    def register_patch(self, patch_path: str | os.PathLike, run_id: str | None = None,
                       extra_tags: dict[str, Any] | None = None, complete: bool = True) -> RegisteredMask:
        """Register a patch file as a new version (artifact logged to ``run_id``, or to a new run).

        The file is logged first; the version is created with it, tagged ``mtgraft.incomplete`` in the same
        request, and the tag is removed (``complete``) once everything is recorded: a registration killed
        half-way leaves either no version or one that ``list --incomplete`` shows. ``complete=False`` leaves
        the tag on (a command registering several patches completes them all at the end: ``batch.py``)."""
        from mtgraft.patches.patch import SkillPatch

        path = Path(patch_path)
        patch = SkillPatch.load(path)
        h = patch.header
        sha = sha256_file(path)
        name = model_name(h.task, h.base_model, h.base_hash)
        own_run = run_id is None
        if own_run:
            run_id = self._start_register_run(h, name, sha)
        else:
            self._call(self.client.get_run, run_id, what=f"looking up MLflow run {run_id}")
        status = "FAILED"
        try:
            artifact_file = self._log_patch(run_id, path, sha, fresh=own_run)
            run = self._call(self.client.get_run, run_id, what=f"reading MLflow run {run_id}")
            source = f"{run.info.artifact_uri.rstrip('/')}/{artifact_file.rsplit('/', 1)[0]}"
            tags = version_tags(h, sha, artifact_file)
            extra = {str(k): fmt(v) for k, v in (extra_tags or {}).items() if v is not None}
            if NOT_BEST_TAG in extra and NOT_BEST_TAG in tags:  # both the header's and the caller's reasons
                extra[NOT_BEST_TAG] = f"{tags[NOT_BEST_TAG]}; {extra[NOT_BEST_TAG]}"
            tags.update(extra)
            tags[INCOMPLETE_TAG] = registrant()
            self._ensure_registered_model(name, h)
            desc = describe(h)
            mv = self._call(self.client.create_model_version, name, source, run_id=run_id, tags=tags,
                            description=desc, await_creation_for=0, what=f"registering a version of {name}")
            status = "FINISHED"
        finally:
            if own_run:
                with contextlib.suppress(Exception), quiet_env():
                    self.client.set_terminated(run_id, status=status)
        if complete:
            self.mark_complete(name, str(mv.version))
            tags.pop(INCOMPLETE_TAG)
        rm = self._registered_model(name)
        newest = self._newest(name)
        return RegisteredMask(name=name, version=str(mv.version), aliases=self._aliases_of(rm, mv.version, newest),
                              run_id=run_id, sha256=sha, tags=tags)

    def mark_complete(self, name: str, version: str) -> None:
        """The registration of ``name/version`` finished: drop its incomplete tag; ``best`` may move to it."""
        self._call(self.client.delete_model_version_tag, name, version, INCOMPLETE_TAG,
                   what=f"completing {name}/{version}")
        self.update_best(name)

    def incomplete(self) -> list[Any]:
        """Versions whose registration never finished (killed, or still running), by name and version."""
        left = [mv for mv in self._versions(f"tags.`{KIND_TAG}` = '{KIND}'") if INCOMPLETE_TAG in (mv.tags or {})]
        return sorted(left, key=lambda mv: (mv.name, int(mv.version)))

    def delete_incomplete(self, sha256s: set[str] | None = None) -> dict[str, list[str]]:
        """Delete versions left incomplete (only those of patches with these sha256s, if given); versions whose
        registering process still runs on this host are skipped."""
        deleted, skipped = [], []
        for mv in self.incomplete():
            if sha256s is not None and (mv.tags or {}).get(SHA_TAG) not in sha256s:
                continue
            ref = f"{mv.name}/{mv.version}"
            if registrant_alive(mv.tags[INCOMPLETE_TAG]):
                skipped.append(ref)
                continue
            self._call(self.client.delete_model_version, mv.name, str(mv.version), what=f"deleting {ref}")
            deleted.append(ref)
        for name in sorted({d.split("/")[0] for d in deleted}):
            self.update_best(name)
        return {"deleted": deleted, "in_progress": skipped}

    def _start_register_run(self, h: Any, name: str, sha: str) -> str:
        from mtgraft.tracking import flatten, numeric_metrics

        exp_id = self._experiment_id()
        task = h.task if isinstance(h.task, str) else "+".join(h.task)
        tags = {"mlflow.runName": f"register {name}", "mtgraft.kind": "skillpatch-registration",
                "mtgraft.task": task, "mtgraft.method": h.method, "mtgraft.patch_sha256": sha}
        fin = (h.finetuned or {}).get("mlflow_run_id")
        if fin:
            tags["mtgraft.finetune_run_id"] = str(fin)
        run = self._call(self.client.create_run, exp_id, tags=tags, run_name=f"register {name}",
                         what="creating the registration run")
        run_id = run.info.run_id
        from mlflow.entities import Metric, Param

        params = {"task": task, "base_model": h.base_model, "base_hash": h.base_hash, "method": h.method,
                  "model_type": h.model_type, "sparsity": h.sparsity, "region_size": h.region_size,
                  "seed": h.seed, **{f"method.{k}": v for k, v in flatten(h.method_settings or {}).items()},
                  **{f"data.{k}": v for k, v in flatten(h.data or {}).items()}}
        now = int(time.time() * 1000)
        metrics = numeric_metrics(h.metrics or {})
        self._call(self.client.log_batch, run_id,
                   metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
                   params=[Param(k, str(v)[:500]) for k, v in params.items() if v is not None],
                   what="logging the registration run")
        return run_id

    def _log_patch(self, run_id: str, path: Path, sha: str, fresh: bool) -> str:
        """Log the patch file under ``skillpatch/`` of the run; returns its artifact path."""
        sub = ARTIFACT_DIR
        if not fresh:  # the run may hold this file already (the graft run logs it), or another one of that name
            existing = {a.path for a in self._call(self.client.list_artifacts, run_id, ARTIFACT_DIR,
                                                   what="listing run artifacts")}
            if f"{ARTIFACT_DIR}/{path.name}" in existing:
                if self._artifact_sha(run_id, f"{ARTIFACT_DIR}/{path.name}") == sha:
                    return f"{ARTIFACT_DIR}/{path.name}"  # the same file: no second upload
                sub = f"{ARTIFACT_DIR}/{sha[:12]}"  # never overwrite a different patch
        with quiet_env():
            self._call(self.client.log_artifact, run_id, str(path), sub, what="uploading the patch file")
            # the region's picture beside the patch in the version's source folder (drawn here if the graft
            # did not leave one beside the file)
            pic = picture_path(path)
            with tempfile.TemporaryDirectory(prefix="mtgraft-pic-") as tmp:
                if not pic.is_file():
                    from mtgraft.patches import SkillPatch

                    pic = region_picture(SkillPatch.load(path), Path(tmp) / pic.name)
                self._call(self.client.log_artifact, run_id, str(pic), sub, what="uploading the region picture")
        return f"{sub}/{path.name}"

    def _artifact_sha(self, run_id: str, artifact: str) -> str:
        with tempfile.TemporaryDirectory(prefix="mtgraft-sha-") as tmp, quiet_env():
            local = self._call(self.client.download_artifacts, run_id, artifact, tmp,
                               what=f"reading {artifact} of run {run_id}")
            return sha256_file(local)

    def update_best(self, name: str) -> None:
        """Point ``best`` at the highest-Rel version (ties: the older one) if it beats the current best."""
        for _ in range(3):
            rm = self._registered_model(name)
            versions = self._versions(f"name = '{name}'")
            rels = {str(v.version): num(v.tags.get("mtgraft.rel")) for v in versions  # an unfinished or flagged
                    if INCOMPLETE_TAG not in (v.tags or {}) and NOT_BEST_TAG not in (v.tags or {})}  # one: never best
            scored = [(r, -int(ver), ver) for ver, r in rels.items() if r is not None]
            if not scored:
                return
            cand_rel, _, cand = max(scored)
            cur = (rm.aliases or {}).get(BEST)
            cur_rel = rels.get(str(cur)) if cur is not None else None
            if cur is not None and str(cur) == cand:
                return
            if cur_rel is not None and not cand_rel > cur_rel:
                return
            self._call(self.client.set_registered_model_alias, name, BEST, cand, what=f"setting {name}@best")
            time.sleep(0.02 * random.random())

    def aliases(self, name: str, version: str) -> list[str]:
        """The aliases of ``name/version`` now (``latest`` included)."""
        return self._aliases_of(self._registered_model(name), version, self._newest(name))

    # ------------------------------------------------------------------ look-up

    def resolve_ref(self, ref: str | Ref) -> Ref:
        """A REF whose name is a task name (``hedge@best``) instead of a registered model name, resolved to
        the one registered SkillPatch model of that task; when several models hold that task (other base
        models, multi-task patches), one line lists them. A registered model name is returned unchanged."""
        from mlflow.exceptions import MlflowException

        r = parse_ref(ref) if isinstance(ref, str) else ref
        try:
            self._call(self.client.get_registered_model, r.name, what=f"reading registered model {r.name}",
                       raw=("RESOURCE_DOES_NOT_EXIST",))
            return r
        except MlflowException:
            pass
        models = self._call(self.client.search_registered_models,
                            f"tags.`{KIND_TAG}` = '{KIND}' and tags.`mtgraft.task` = '{r.name}'",
                            what="searching the model registry")
        names = sorted(m.name for m in models)
        if len(names) == 1:
            return Ref(names[0], version=r.version, alias=r.alias)
        if len(names) > 1:
            suffix = f"@{r.alias}" if r.alias else f"/{r.version}" if r.version else ""
            raise MtgraftError(f"task '{r.name}' has {len(names)} registered SkillPatch models; name one: "
                               + ", ".join(f"{n}{suffix}" for n in names))
        self._registered_model(r.name)  # unknown: the usual line
        return r

    def get_version(self, ref: str | Ref) -> Any:
        """The MLflow ``ModelVersion`` a REF names (bare name: the newest; a task name resolves to its one
        registered model, see ``resolve_ref``); one clear line if unknown."""
        r = self.resolve_ref(ref)
        from mlflow.exceptions import MlflowException

        if r.version is not None:
            self._registered_model(r.name)  # unknown model: one clear line
            try:
                return self._call(self.client.get_model_version, r.name, r.version, what=f"reading {r}",
                                  raw=("RESOURCE_DOES_NOT_EXIST",))
            except MlflowException:
                have = sorted(int(v.version) for v in self._versions(f"name = '{r.name}'"))
                raise MtgraftError(f"registered model '{r.name}' has no version {r.version} "
                                   f"(versions: {ranges(have) or 'none'})") from None
        alias = r.alias or LATEST
        rm = self._registered_model(r.name)
        if alias.lower() != LATEST and alias not in (rm.aliases or {}):
            known = ", ".join(sorted([LATEST, *(rm.aliases or {})]))
            why = ""
            if alias == BEST:  # say why no version earned it
                flags = [f"v{v.version}: {v.tags[NOT_BEST_TAG]}" for v in self._versions(f"name = '{r.name}'")
                         if NOT_BEST_TAG in (v.tags or {})]
                why = f"; no version earned it ({'; '.join(flags)})" if flags else ""
            raise MtgraftError(f"registered model '{r.name}' has no alias '{alias}' (aliases: {known}){why}")
        try:
            return self._call(self.client.get_model_version_by_alias, r.name, alias, what=f"reading {r}",
                              raw=("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"))
        except MlflowException:
            raise MtgraftError(f"registered model '{r.name}' has no version for alias '{alias}'") from None

    @staticmethod
    def check_skillpatch(mv: Any) -> None:
        """Refuse a registry entry that was not registered as a SkillPatch."""
        if (mv.tags or {}).get(KIND_TAG) != KIND or SHA_TAG not in (mv.tags or {}) \
                or FILE_TAG not in (mv.tags or {}):
            raise MtgraftError(f"registry entry {mv.name}/{mv.version} is not a SkillPatch "
                               f"(no {KIND_TAG}={KIND} tag with a recorded patch file and sha256)")

    def fetch(self, ref: str | Ref, dst_dir: str | os.PathLike) -> tuple[Path, Any]:
        """Download a registered patch into ``dst_dir`` and verify its sha256; returns (path, version)."""
        mv = self.get_version(ref)
        self.check_skillpatch(mv)
        if not mv.run_id:
            raise MtgraftError(f"registry entry {mv.name}/{mv.version} has no MLflow run to download from")
        artifact = mv.tags[FILE_TAG]
        with quiet_env():
            local = Path(self._call(self.client.download_artifacts, mv.run_id, artifact, str(dst_dir),
                                    what=f"downloading {mv.name}/{mv.version}"))
        expected = mv.tags[SHA_TAG]
        got = sha256_file(local)
        if got != expected:
            local.unlink(missing_ok=True)
            raise MtgraftError(f"sha256 mismatch for {mv.name}/{mv.version}: the registry recorded "
                               f"{expected[:16]}…, the downloaded file has {got[:16]}… — refusing it")
        return local, mv

    def pull(self, ref: str | Ref, out: str | os.PathLike) -> dict[str, Any]:
        """Download a registered patch to ``out`` (a file, or a folder to put it in), sha256-verified."""
        from mtgraft.patches.patch import SkillPatch

        with tempfile.TemporaryDirectory(prefix="mtgraft-pull-") as tmp:
            local, mv = self.fetch(ref, tmp)
            patch = SkillPatch.load(local)
            if patch.header.base_hash != mv.tags.get("mtgraft.base_hash", patch.header.base_hash):
                raise MtgraftError(f"registry entry {mv.name}/{mv.version}: the file's base hash differs "
                                   "from the registered one — refusing it")
            dest = Path(out)
            if dest.is_dir():
                dest = dest / local.name
            with atomic_file(dest, "wb") as f, open(local, "rb") as src:
                shutil.copyfileobj(src, f)
        return {"ref": f"{mv.name}/{mv.version}", "name": mv.name, "version": str(mv.version),
                "path": str(dest), "sha256": mv.tags[SHA_TAG], "verified": True}

    # ------------------------------------------------------------------ browse

    def list_masks(self, task: str | None = None, base: str | None = None,
                   incomplete: bool = False) -> list[dict[str, Any]]:
        """Registered SkillPatch versions (optionally of one task / base model), sorted by name and version;
        versions whose registration never finished are left out (``incomplete``: only those are listed)."""
        versions = self._versions(f"tags.`{KIND_TAG}` = '{KIND}'")
        rows = []
        models: dict[str, Any] = {}
        newest: dict[str, int] = {}
        for mv in versions:
            newest[mv.name] = max(newest.get(mv.name, 0), int(mv.version))
        for mv in versions:
            t = mv.tags or {}
            if task is not None and task not in t.get("mtgraft.task", "").split("+"):
                continue
            if base is not None and not base_matches(base, t, mv.name):
                continue
            if (INCOMPLETE_TAG in t) != incomplete:
                continue
            if mv.name not in models:
                models[mv.name] = self._registered_model(mv.name)
            rows.append(row(mv, self._aliases_of(models[mv.name], mv.version, str(newest[mv.name]))))
        rows.sort(key=lambda r: (r["name"], int(r["version"])))
        return rows

    def show(self, ref: str | Ref) -> dict[str, Any]:
        """Everything about one registered patch: tags, aliases, run metrics and lineage."""
        mv = self.get_version(ref)
        self.check_skillpatch(mv)
        rm = self._registered_model(mv.name)
        tags = dict(mv.tags or {})
        out = row(mv, self._aliases_of(rm, mv.version, self._newest(mv.name)))
        out["ref"] = f"{mv.name}/{mv.version}"
        out["registered"] = True
        out["tracking_uri"] = self.tracking_uri
        out["tags"] = tags
        out["description"] = mv.description
        out["source"] = mv.source
        out["created"] = mv.creation_timestamp
        lineage: dict[str, Any] = {"run_id": mv.run_id, "finetune_run_id": tags.get("mtgraft.finetune_run_id"),
                                   "finetuned_path": tags.get("mtgraft.finetuned_path"),
                                   "base_model": tags.get("mtgraft.base_model"),
                                   "base_hash": tags.get("mtgraft.base_hash")}
        metrics: dict[str, float] = {}
        if mv.run_id:
            from mlflow.exceptions import MlflowException

            try:
                run = self.client.get_run(mv.run_id)
                metrics = dict(run.data.metrics)
                lineage.update(run_name=run.info.run_name, experiment_id=run.info.experiment_id,
                               run_status=run.info.status, artifact_uri=run.info.artifact_uri)
                if self.tracking_uri.startswith(("http://", "https://")):
                    lineage["run_url"] = (f"{self.tracking_uri.rstrip('/')}/#/experiments/"
                                          f"{run.info.experiment_id}/runs/{mv.run_id}")
            except MlflowException as e:
                if is_connection_error(e):
                    raise self._error(e, "reading the producing run") from None
                lineage["run_status"] = "deleted or unreadable"
        out["metrics"] = metrics
        out["lineage"] = lineage
        return out

    # ------------------------------------------------------------------ edit

    def set_alias(self, ref: str | Ref, alias: str) -> dict[str, Any]:
        """Point ``alias`` of the REF's registered model at the REF's version."""
        check_alias_name(alias)
        mv = self.get_version(ref)
        self.check_skillpatch(mv)
        self._call(self.client.set_registered_model_alias, mv.name, alias, str(mv.version),
                   what=f"setting {mv.name}@{alias}")
        return {"name": mv.name, "version": str(mv.version), "alias": alias}

    def delete(self, ref: str | Ref, all_versions: bool = False) -> dict[str, Any]:
        """Delete one version (``name/N`` or ``name@alias``), or with ``all_versions`` a whole registered model."""
        r = self.resolve_ref(ref)
        if r.bare:
            if not all_versions:
                raise MtgraftError(f"'{r.name}' names a whole registered model: give name/version or name@alias "
                                   "to delete one version, or --all to delete the model and all its versions")
            rm = self._registered_model(r.name)
            if (rm.tags or {}).get(KIND_TAG) != KIND:
                raise MtgraftError(f"registered model '{r.name}' is not a SkillPatch model; not deleting it")
            n = len(self._versions(f"name = '{r.name}'"))
            self._call(self.client.delete_registered_model, r.name, what=f"deleting {r.name}")
            return {"deleted": r.name, "versions": n}
        mv = self.get_version(r)
        self.check_skillpatch(mv)
        self._call(self.client.delete_model_version, mv.name, str(mv.version),
                   what=f"deleting {mv.name}/{mv.version}")
        self.update_best(mv.name)
        return {"deleted": f"{mv.name}/{mv.version}", "versions": 1}


def registrant() -> str:
    """Who registers: ``host:pid:unix-time`` (the value of the incomplete tag)."""
    return f"{socket.gethostname()}:{os.getpid()}:{int(time.time())}"


def registrant_alive(value: str) -> bool:
    """Whether the process an incomplete tag names still runs (known only on this host)."""
    host, _, rest = value.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------------------- one call, one registry


def register_patch(patch_path: str | os.PathLike, run_id: str | None = None, tracking_uri: str | None = None,
                   extra_tags: dict[str, Any] | None = None) -> RegisteredMask:
    """Register one patch file (what ``mtgraft graft`` calls unless ``--no-register``)."""
    return MaskRegistry(tracking_uri).register_patch(patch_path, run_id=run_id, extra_tags=extra_tags)


def list_masks(task: str | None = None, base: str | None = None, tracking_uri: str | None = None) -> list[dict[str, Any]]:
    """Registered SkillPatch versions, optionally of one task and/or base model."""
    return MaskRegistry(tracking_uri).list_masks(task=task, base=base)


def pull(ref: str, out: str | os.PathLike, tracking_uri: str | None = None) -> dict[str, Any]:
    """Download a registered patch to ``out`` after checking its sha256."""
    return MaskRegistry(tracking_uri).pull(ref, out)
