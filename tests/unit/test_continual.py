"""Continual-learning metrics on a hand-made 3x3 accuracy matrix."""

import csv
import json

import numpy as np
import pytest

from mtgraft.errors import MtgraftError
from mtgraft.evaluation.continual import continual_metrics, mlflow_metric_keys, save_accuracy_matrix

# R[t, i]: accuracy on task i after stage t (stage t trained task t)
R = np.array([
    [0.90, 0.50, 0.40],
    [0.95, 0.80, 0.45],
    [0.60, 0.75, 0.85],
])
R0 = np.array([0.5, 0.4, 0.3])
TASKS = ["qnli", "sst2", "rotten tomatoes"]


def test_continual_metrics_hand_computed():
    m = continual_metrics(R, R0)
    assert m["acc"] == pytest.approx((0.60 + 0.75 + 0.85) / 3)
    # BWT = mean(0.60 - 0.90, 0.75 - 0.80)
    assert m["bwt"] == pytest.approx((-0.30 - 0.05) / 2)
    assert m["forgetting_final"] == pytest.approx((0.30 + 0.05) / 2)
    # max over stages 1..2: task 1 -> 0.95 (not its own stage's 0.90), task 2 -> 0.80
    assert m["forgetting_max"] == pytest.approx(((0.95 - 0.60) + (0.80 - 0.75)) / 2)
    # FWT = mean(R[1,2] - r0[2], R[2,3] - r0[3]) (1-based) = mean(0.10, 0.15)
    assert m["fwt"] == pytest.approx(0.125)
    assert m["n_tasks"] == 3


def test_continual_metrics_edge_cases():
    assert continual_metrics(R)["fwt"] is None
    one = continual_metrics([[0.7]], [0.5])
    assert one["acc"] == pytest.approx(0.7)
    assert one["bwt"] is None and one["forgetting_final"] is None and one["forgetting_max"] is None
    assert one["fwt"] is None
    # entries above the diagonal may be missing; FWT then comes out None
    Rn = R.copy()
    Rn[0, 1] = np.nan
    m = continual_metrics(Rn, R0)
    assert m["fwt"] is None and m["forgetting_max"] == pytest.approx(0.2)
    with pytest.raises(MtgraftError):
        continual_metrics(np.ones((2, 3)))
    with pytest.raises(MtgraftError):
        continual_metrics([[np.nan, 0.5], [0.5, 0.5]])
    with pytest.raises(MtgraftError):
        continual_metrics(R, [0.1, 0.2])


def test_mlflow_metric_keys():
    keys = mlflow_metric_keys(R, TASKS)
    assert keys["acc/stage_2/task_sst2"] == pytest.approx(0.80)
    assert keys["acc/stage_3/task_rotten tomatoes"] == pytest.approx(0.85)
    assert keys["continual/bwt"] == pytest.approx(-0.175)
    assert keys["continual/forgetting_max"] == pytest.approx(0.2)
    assert "continual/fwt" not in keys  # undefined without r0
    assert mlflow_metric_keys(R, TASKS, R0)["continual/fwt"] == pytest.approx(0.125)
    assert len([k for k in keys if k.startswith("acc/")]) == 9


def test_save_accuracy_matrix(tmp_path):
    paths = save_accuracy_matrix(R, TASKS, tmp_path / "cl", r0=R0)
    rows = list(csv.reader(paths["csv"].open()))
    assert rows[0] == ["stage", "trained_task", *TASKS]
    assert rows[2][:2] == ["2", "sst2"] and float(rows[2][2]) == pytest.approx(0.95)
    doc = json.loads(paths["json"].read_text())
    assert doc["matrix"][2][0] == pytest.approx(0.60)
    assert doc["metrics"]["fwt"] == pytest.approx(0.125)
    assert set(doc["forgetting_variants"]) == {"forgetting_final", "forgetting_max"}
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(MtgraftError):
        save_accuracy_matrix(R, TASKS[:2], tmp_path / "bad")
