"""MLflow run tracking shared by every command (respects ``--tracking-uri`` / ``MLFLOW_TRACKING_URI``)."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from mtgraft.errors import MtgraftError
from mtgraft.progress import warn

EXPERIMENTS = {
    "train": "mtgraft-train",
    "multitask": "mtgraft-train",
    "graft": "mtgraft-graft",
    "eval": "mtgraft-eval",
    "report": "mtgraft-overlap",
    "run": "mtgraft-studies",
}
# MLflow 3's UI opens an experiment in its model-training view (runs, metrics) rather than its GenAI overview
# (traces, token usage) when the experiment says so
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


def check_reachable(uri: str | None, timeout: float = 4.0) -> None:
    """Fail fast with one line when an http(s) tracking server cannot be reached."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri or not uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).read()
    except urllib.error.HTTPError as e:
        if e.code in (404, 405):
            try:  # an older server may lack /health: ask the API itself
                urllib.request.urlopen(uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1",
                                       timeout=timeout).read()
                return
            except (urllib.error.URLError, OSError):
                raise MtgraftError(f"{uri} does not answer MLflow API requests (HTTP {e.code}): is it an MLflow "
                                   f"tracking server?") from None
        return
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        reason = getattr(e, "reason", e)
        raise MtgraftError(f"cannot reach the MLflow tracking server at {uri}: {reason}") from None


def mlflow_key(s: object) -> str:
    """``s`` as part of an MLflow metric key: alphanumerics, '_', '-', '.' and ' ' kept, anything else '_'."""
    return re.sub(r"[^A-Za-z0-9_\-. ]", "_", str(s))


def flatten(d: dict[str, Any], prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """Flatten nested dicts into 'a.b' keys (for MLflow params; ``sep`` joins the levels)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + sep, sep))
        else:
            out[key] = v
    return out


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v


def numeric_metrics(d: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The numeric leaves of a nested dict, keyed 'prefix/a/b' (MLflow metric keys); NaN and bools left out.
    An interval ``x_ci95`` = [lo, hi] becomes two metrics ``x_ci_low`` and ``x_ci_high`` (``rel_ci_low``…)."""
    out: dict[str, float] = {}
    for k, v in flatten(d, prefix, "/").items():
        if k.endswith("_ci95") and isinstance(v, (list, tuple)) and len(v) == 2 and all(map(_is_number, v)):
            out[f"{k[:-5]}_ci_low"], out[f"{k[:-5]}_ci_high"] = float(v[0]), float(v[1])
        elif _is_number(v):
            out[k] = float(v)
    return out


class Run:
    """A thin handle on an active MLflow run (no-op when tracking is disabled).

    Parameters, metrics and tags logged *during* the work are best effort: if the tracking server stops
    answering, one ``warning:`` line says so, later calls are skipped and ``lost`` keeps the error, so the work
    (and its files on disk) still completes; the caller decides what a lost run means at hand-off.
    Artifacts are logged strictly (``log_artifact`` raises), since they are the hand-off itself."""

    def __init__(self, client: Any, run_id: str | None) -> None:
        self.client = client
        self.run_id = run_id
        self.lost: BaseException | None = None

    def _best_effort(self, call: Callable[[], Any]) -> None:
        if not self.run_id or self.lost is not None:
            return
        try:
            call()
        except Exception as e:  # noqa: BLE001 - any store failure: the work goes on, the run is marked lost
            import mlflow

            self.lost = e
            warn(f"the MLflow run {self.run_id} at {mlflow.get_tracking_uri()} stopped answering "
                 f"({str(e).splitlines()[0][:200]}); the work goes on and its files are kept, "
                 "but nothing more is logged to that run")

    def log_params(self, params: dict[str, Any]) -> None:
        import mlflow

        flat = {k: (str(v)[:500] if v is not None else "None") for k, v in flatten(params).items()}
        items = list(flat.items())
        for i in range(0, len(items), 100):
            self._best_effort(lambda chunk=dict(items[i:i + 100]): mlflow.log_params(chunk))

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None, prefix: str = "") -> None:
        import mlflow

        m = numeric_metrics(metrics, prefix)
        if m:
            self._best_effort(lambda: mlflow.log_metrics(m, step=step))

    def set_tags(self, tags: dict[str, Any]) -> None:
        import mlflow

        self._best_effort(lambda: mlflow.set_tags({k: str(v) for k, v in tags.items()}))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if not self.run_id:
            return
        if self.lost is not None:
            raise self.lost
        import mlflow

        p = Path(path)
        if p.is_dir():
            mlflow.log_artifacts(str(p), artifact_path)
        else:
            mlflow.log_artifact(str(p), artifact_path)

    def log_config(self, config: dict[str, Any], name: str = "config.yaml") -> None:
        if not self.run_id:
            return
        with tempfile.TemporaryDirectory() as d:
            f = Path(d) / name
            f.write_text(yaml.safe_dump(config, sort_keys=False))
            self.log_artifact(f)


@contextlib.contextmanager
def mlflow_run(kind: str, run_name: str, tracking_uri: str | None = None, enabled: bool = True,
               tags: dict[str, Any] | None = None, nested: bool = False) -> Iterator[Run]:
    """Start an MLflow run in the experiment for ``kind``; yields a :class:`Run`."""
    if not enabled:
        yield Run(None, None)
        return
    import logging

    import mlflow

    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # keep --json stdout clean
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    logging.getLogger("alembic").setLevel(logging.ERROR)
    check_reachable(tracking_uri)
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    try:
        exp = mlflow.set_experiment(EXPERIMENTS.get(kind, f"mtgraft-{kind}"))
        for k, v in EXPERIMENT_TAGS.items():
            if (exp.tags or {}).get(k) != v:
                mlflow.set_experiment_tag(k, v)
        active = mlflow.start_run(run_name=run_name, nested=nested, tags={k: str(v) for k, v in (tags or {}).items()})
    except Exception as e:  # a broken store is a user-facing condition
        raise MtgraftError(f"cannot start an MLflow run at {mlflow.get_tracking_uri()}: {str(e).splitlines()[0]}") from None
    status = "FAILED"
    run = Run(mlflow.MlflowClient(), active.info.run_id)
    try:
        yield run
        status = "FINISHED"
    finally:
        if run.lost is None:
            mlflow.end_run(status=status)
        else:  # the server is gone: end the run here (mlflow pops it first) without minutes of retries
            saved = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
            os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
            with contextlib.suppress(Exception):
                mlflow.end_run(status="FAILED")
            if saved is None:
                os.environ.pop("MLFLOW_HTTP_REQUEST_MAX_RETRIES", None)
            else:
                os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = saved
