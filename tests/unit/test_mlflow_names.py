"""What a graft run shows in MLflow (issue 16 item 6): a region's total time under its own name, the learned
graft's per-update time as a curve under another, the task's total once."""

from __future__ import annotations

import pytest

from mtgraft.grafting import GraftConfig, run_graft
from mtgraft.testing import example_task_yaml, make_tiny_checkpoint, make_tiny_model


@pytest.fixture(scope="module")
def ck(tmp_path_factory):
    d = tmp_path_factory.mktemp("names")
    pre = make_tiny_model("head", d / "pre", seed=3)
    return make_tiny_checkpoint(d / "ft", pre, example_task_yaml(), seed=4)


def test_total_and_elapsed_times_have_their_own_keys(ck, mlflow_local_uri, tmp_path):
    from mlflow import MlflowClient

    cfg = GraftConfig(task=example_task_yaml(), finetuned=ck, sparsity=[0.01], method=["graft", "topk"], updates=4,
                      out=str(tmp_path / "g"), tracking_uri=mlflow_local_uri, do_register=False)
    [res] = run_graft(cfg, show_progress=False)
    client = MlflowClient(mlflow_local_uri)
    metrics = client.get_run(res.mlflow_run_id).data.metrics
    assert "graft_s0.01/total_seconds" in metrics and "topk_s0.01/total_seconds" in metrics
    assert "graft_s0.01/seconds" not in metrics and "total_seconds" in metrics
    curve = client.get_metric_history(res.mlflow_run_id, "graft_s0.01/elapsed_seconds")
    assert len(curve) >= 2 and [m.step for m in curve] == sorted(m.step for m in curve)
    total = client.get_metric_history(res.mlflow_run_id, "graft_s0.01/total_seconds")
    assert len(total) == 1 and total[0].value >= max(m.value for m in curve)
    by_task = client.get_metric_history(res.mlflow_run_id, "total_seconds")
    assert len(by_task) == 1 and by_task[0].value >= total[0].value


def test_region_picture_beside_each_patch_and_in_the_run(ck, mlflow_local_uri, tmp_path):
    """Each written SkillPatch has its region's picture beside it and under the run's skillpatch/ folder
    (the registered version's source), and the experiment opens in MLflow's model-training view."""
    from mlflow import MlflowClient
    from PIL import Image

    from mtgraft.patches import SkillPatch
    from mtgraft.patches.picture import picture_path, region_grid
    from mtgraft.tracking import EXPERIMENT_TAGS

    out = tmp_path / "g"
    cfg = GraftConfig(task=example_task_yaml(), finetuned=ck, sparsity=[0.01], method=["graft"], updates=3,
                      out=str(out), tracking_uri=mlflow_local_uri, do_register=False)
    [res] = run_graft(cfg, show_progress=False)
    [entry] = [e for e in res.results if e.get("patch")]
    patch_file = out / entry["patch"].split("/")[-1]
    pic = picture_path(patch_file)
    assert pic.is_file() and Image.open(pic).format == "PNG"
    grid = region_grid(SkillPatch.load(patch_file))
    assert int(grid["grafted"].sum()) == entry["region_size"]  # every grafted entry lands in one cell
    assert int(grid["total"].sum()) == res.graftable_size
    client = MlflowClient(mlflow_local_uri)
    names = {a.path for a in client.list_artifacts(res.mlflow_run_id, "skillpatch")}
    assert {f"skillpatch/{patch_file.name}", f"skillpatch/{pic.name}"} <= names
    exp = client.get_experiment(client.get_run(res.mlflow_run_id).info.experiment_id)
    assert all(exp.tags.get(k) == v for k, v in EXPERIMENT_TAGS.items())
