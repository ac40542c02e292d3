"""Aggregation over seeds: mean, sd and the 95% t-interval computed independently here (by hand and with
the textbook t quantiles), never by the code under test."""

from __future__ import annotations

import math

import pytest

from mtgraft.evaluation.uncertainty import aggregate, aggregate_seeds, format_ci

T975 = {1: 12.706204736174698, 2: 4.302652729911275, 4: 2.7764451051977987}  # Student t, 0.975 quantile


def _by_hand(xs: list[float]) -> tuple[float, float, float, float]:
    n = len(xs)
    mean = sum(xs) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = T975[n - 1] * sd / math.sqrt(n)
    return mean, sd, mean - half, mean + half


@pytest.mark.parametrize("xs", [[0.6, 0.7, 0.8], [0.5, 0.52], [0.71, 0.69, 0.74, 0.66, 0.73]])
def test_known_values(xs):
    a = aggregate(xs)
    mean, sd, lo, hi = _by_hand(xs)
    assert a["n"] == len(xs)
    assert a["mean"] == pytest.approx(mean, abs=1e-12) and a["sd"] == pytest.approx(sd, abs=1e-12)
    assert a["ci95"] == pytest.approx([lo, hi], abs=1e-9)


def test_one_three_point_case_written_out():
    a = aggregate([0.6, 0.7, 0.8])  # sd 0.1; half-width 4.302653 * 0.1 / sqrt(3) = 0.248414
    assert a["ci95"][0] == pytest.approx(0.451586, abs=1e-6) and a["ci95"][1] == pytest.approx(0.948414, abs=1e-6)


def test_one_value_and_missing_values():
    assert aggregate([0.7]) == {"n": 1, "mean": 0.7, "sd": None, "ci95": None}
    assert aggregate([]) == {"n": 0, "mean": None, "sd": None, "ci95": None}
    assert aggregate([0.6, None, float("nan"), 0.8])["n"] == 2


def test_aggregate_seeds_flattens_and_keeps_per_seed():
    per = {13: {"test": {"acc": 0.6, "ece": 0.1}, "rel": 0.9},
           21: {"test": {"acc": 0.7, "ece": 0.2}, "rel": None},
           42: {"test": {"acc": 0.8, "ece": 0.3}, "rel": 0.7}}
    g = aggregate_seeds(per)
    assert g["seeds"] == [13, 21, 42] and g["per_seed"]["21"]["rel"] is None
    mean, sd, lo, hi = _by_hand([0.6, 0.7, 0.8])
    assert g["mean"]["test.acc"] == pytest.approx(mean) and g["sd"]["test.acc"] == pytest.approx(sd)
    assert g["ci95"]["test.acc"] == pytest.approx([lo, hi])
    assert g["n"]["rel"] == 2 and g["mean"]["rel"] == pytest.approx(0.8)
    assert format_ci({"mean": 0.62, "ci95": [0.58, 0.66]}) == "0.620 ± 0.040"
