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


def test_bootstrap_is_paired_and_seeded():
    import numpy as np

    from mtgraft.evaluation.uncertainty import bootstrap_accuracies, percentile_interval, rel_samples

    y = np.array([0, 1] * 50)
    same = bootstrap_accuracies(y, {"a": y, "b": y.copy(), "c": 1 - y}, n_boot=200, seed=3)
    assert np.array_equal(same["a"], same["b"]) and (same["a"] == 1).all() and (same["c"] == 0).all()
    again = bootstrap_accuracies(y, {"a": np.zeros(100, int)}, n_boot=200, seed=3)
    assert np.array_equal(again["a"], bootstrap_accuracies(y, {"a": np.zeros(100, int)}, n_boot=200, seed=3)["a"])
    # Rel of a model equal to the fine-tuned one is 1 in every resample, whatever the resample
    pre, ft = np.zeros(100, int), y.copy()
    ft[:10] = 1 - ft[:10]  # 90% correct
    acc = bootstrap_accuracies(y, {"pre": pre, "ft": ft, "g": ft.copy()}, n_boot=200, seed=0)
    assert np.allclose(rel_samples(acc["g"], acc["pre"], acc["ft"]), 1.0)
    lo, hi = percentile_interval(acc["ft"])
    assert lo < 0.9 < hi and hi - lo < 0.15


def test_bootstrap_interval_covers_the_true_accuracy_about_95_percent():
    """A synthetic classifier, right with probability 0.7 on each example: over 200 test sets of 300
    examples, the 95% percentile interval must cover 0.7 in roughly 95% of them (binomial sd 1.5 points)."""
    import numpy as np

    from mtgraft.evaluation.uncertainty import bootstrap_accuracies, percentile_interval

    rng = np.random.default_rng(2026)
    covered, repeats = 0, 200
    for r in range(repeats):
        y = rng.integers(0, 2, 300)
        right = rng.random(300) < 0.7
        pred = np.where(right, y, 1 - y)
        lo, hi = percentile_interval(bootstrap_accuracies(y, {"m": pred}, n_boot=500, seed=r)["m"])
        covered += lo <= 0.7 <= hi
    assert 0.90 <= covered / repeats <= 0.99, covered


def test_compare_over_seeds_against_hand_values():
    from mtgraft.evaluation.uncertainty import compare_over_seeds

    a = {13: 0.80, 21: 0.75, 42: 0.90, 87: 0.70, 100: 0.85}
    b = {13: 0.70, 21: 0.72, 42: 0.80, 87: 0.71, 100: 0.80, 7: 0.1}
    c = compare_over_seeds(a, b)
    diffs = [0.10, 0.03, 0.10, -0.01, 0.05]
    mean, sd, lo, hi = _by_hand(diffs)
    assert c["seeds"] == [13, 21, 42, 87, 100] and c["diffs"] == pytest.approx(diffs)
    assert c["mean_diff"] == pytest.approx(mean) and c["ci95"] == pytest.approx([lo, hi])
    # Wilcoxon by hand: |d| ranks 0.01→1, 0.03→2, 0.05→3, 0.10,0.10→4.5,4.5; W- = 1; exact two-sided p for
    # W = min(W+, W-) = 1 with n = 5 (no ties in the exact table) is 2 * 2/32 = 0.125
    assert c["wilcoxon_p"] == pytest.approx(0.125, abs=0.02) and c["min_possible_p"] == pytest.approx(0.0625)
