"""A local task is known by its name wherever the checkpoint knows it (issue 13, item 9).

After ``mtgraft train --task path/to/mytask.yaml``, ``mtgraft graft --task mytask`` and ``mtgraft eval --task
mytask`` find the task through the YAML the checkpoint recorded (``CheckpointMeta.tasks[i].spec_file``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mtgraft.errors import MtgraftError
from mtgraft.models import read_checkpoint_meta, resolve_task
from mtgraft.testing import example_task_yaml, make_tiny_checkpoint, make_tiny_model


@pytest.fixture(scope="module")
def ck(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint of the local task 'mytask', made from a YAML outside the catalog and the working folder."""
    root = tmp_path_factory.mktemp("by-name")
    src = Path(example_task_yaml())
    tasks = root / "elsewhere" / "tasks"
    tasks.mkdir(parents=True)
    shutil.copy(src.with_suffix(".csv"), tasks / "example_local.csv")
    (tasks / "mytask.yaml").write_text(src.read_text().replace("name: example_local", "name: mytask"))
    model = make_tiny_model("head", root / "tiny", seed=2)
    return Path(make_tiny_checkpoint(root / "ck", model, str(tasks / "mytask.yaml")))


@pytest.fixture()
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    import mtgraft.cli.app as appmod

    appmod._register()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MTGRAFT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")

    def run(*args: str) -> dict:
        res = CliRunner().invoke(appmod.app, [*args, "--json"])
        assert res.exit_code == 0, res.output
        return json.loads(res.stdout)

    return run


def test_resolve_task_through_the_checkpoint(ck: Path) -> None:
    meta = read_checkpoint_meta(ck)
    spec = resolve_task("mytask", meta)
    assert spec.name == "mytask" and spec.spec_file == meta.tasks[0].spec_file
    assert resolve_task("sst2", meta).name == "sst2"  # catalog names are the catalog's
    with pytest.raises(MtgraftError, match="unknown task 'mytask'"):
        resolve_task("mytask")  # without the checkpoint the name means nothing


def test_recorded_yaml_gone_is_one_clear_error(ck: Path) -> None:
    meta = read_checkpoint_meta(ck)
    gone = meta.model_copy(update={"tasks": [meta.tasks[0].model_copy(update={"spec_file": "/nowhere/mytask.yaml"})]})
    with pytest.raises(MtgraftError, match="is for the local task 'mytask', whose task YAML is not recorded or no "
                                           "longer exists: give --task PATH.yaml"):
        resolve_task("mytask", gone, "checkpoint ck")


def test_graft_and_eval_take_the_task_name(ck: Path, cli, tmp_path: Path) -> None:  # noqa: ANN001
    graft = cli("graft", "--task", "mytask", "--finetuned", str(ck), "--method", "graft", "--updates", "1", "--sparsity", "0.01",
                "--max-test", "8", "--no-register", "--out", str(tmp_path / "g"))
    assert graft["task"] == "mytask"
    patch = graft["results"][0]["patch"]
    ev = cli("eval", "--model", str(ck), "--task", "mytask", "--max-test", "8", "--out", str(tmp_path / "e"))
    assert ev["task"] == "mytask" and ev["test"]["n"] > 0
    evp = cli("eval", "--patch", patch, "--task", str(ck.parent / "elsewhere" / "tasks" / "mytask.yaml"),
              "--max-test", "8", "--out", str(tmp_path / "ep"))
    assert evp["task"] == "mytask"
