"""Classification metrics on small hand-computed examples."""

import math

import numpy as np
import pytest

from mtgraft.errors import MtgraftError
from mtgraft.evaluation.metrics import (
    agreement,
    brier,
    classification_metrics,
    ece,
    relative_gain,
    reliability_bins,
    reliability_diagram,
)

# conf = max prob: 0.9, 0.8, 0.7, 0.55, 0.6 ; preds 0,0,1,1,0 ; labels 0,1,1,0,0 ; correct 1,0,1,0,1
PROBS = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.45, 0.55], [0.6, 0.4]])
LABELS = np.array([0, 1, 1, 0, 0])


def test_ece_hand_example_10_bins():
    # bins (0.8,0.9]: acc 1 conf .9 ; (0.7,0.8]: acc 0 conf .8 ; (0.6,0.7]: acc 1 conf .7 ;
    # (0.5,0.6]: {0.55 wrong, 0.6 right} acc .5 conf .575 -> (0.1 + 0.8 + 0.3 + 2*0.075) / 5
    assert ece(PROBS, LABELS) == pytest.approx((0.1 + 0.8 + 0.3 + 0.15) / 5)


def test_ece_two_bins_and_edge_convention():
    # all five confidences are in (0.5, 1]: acc 3/5, mean conf 3.55/5
    assert ece(PROBS, LABELS, n_bins=2) == pytest.approx(abs(0.6 - 3.55 / 5))
    # a confidence exactly on an edge belongs to the lower bin: 0.5 -> (0, 0.5], 0.7 -> (0.6, 0.7]
    rb = reliability_bins(np.array([[0.5, 0.5]]), np.array([0]), n_bins=2)
    assert rb["count"] == [1, 0]
    rb = reliability_bins(np.array([[0.7, 0.3], [0.3, 0.7]]), np.array([0, 0]), n_bins=10)
    assert rb["count"][6] == 2 and sum(rb["count"]) == 2
    assert rb["accuracy"][6] == pytest.approx(0.5)
    assert rb["confidence"][6] == pytest.approx(0.7)
    assert rb["accuracy"][0] is None


def test_ece_perfectly_confident_and_right_is_zero():
    p = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    assert ece(p, np.array([0, 2])) == 0.0
    rb = reliability_bins(p, np.array([0, 2]))
    assert rb["count"][-1] == 2


def test_brier_hand_example():
    # per example sum_c (p_c - y_c)^2: .02, 1.28, .18, .605, .32
    assert brier(PROBS, LABELS) == pytest.approx((0.02 + 1.28 + 0.18 + 0.605 + 0.32) / 5)


def test_classification_metrics_keys_and_values():
    m = classification_metrics(PROBS, LABELS, reference_preds=np.array([0, 1, 1, 1, 1]), positive_label=1)
    assert m["accuracy"] == pytest.approx(0.6)
    # class 0: tp 2 fp 1 fn 1 -> 2/3 ; class 1: tp 1 fp 1 fn 1 -> 1/2
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.5) / 2)
    assert m["f1"] == pytest.approx(0.5)
    assert m["agreement"] == pytest.approx(3 / 5)
    assert m["ece_bins"] == 10 and m["n"] == 5
    assert m["ece"] == pytest.approx(0.27)
    assert m["brier"] == pytest.approx(0.481)
    m0 = classification_metrics(PROBS, LABELS, positive_label=0)
    assert m0["f1"] == pytest.approx(2 / 3)
    assert "agreement" not in m0
    assert "f1" not in classification_metrics(PROBS, LABELS)


def test_agreement_accepts_probabilities():
    ref = np.array([[0.2, 0.8], [0.9, 0.1], [0.1, 0.9], [0.5, 0.5], [0.3, 0.7]])  # argmax 1,0,1,0,1
    assert agreement(PROBS, ref) == pytest.approx(2 / 5)  # preds 0,0,1,1,0: equal at 2nd and 3rd


def test_relative_gain():
    assert relative_gain(0.85, 0.5, 0.9) == pytest.approx(0.875)
    assert relative_gain(0.4, 0.5, 0.9) == pytest.approx(-0.25)
    assert relative_gain(0.9, 0.7, 0.7) is None
    assert relative_gain(0.9, 0.7, 0.7 + 1e-12) is None


def test_bad_inputs_raise_user_errors():
    with pytest.raises(MtgraftError):
        ece(np.array([[2.0, -1.0]]), np.array([0]))  # logits, not probabilities
    with pytest.raises(MtgraftError):
        brier(PROBS, LABELS[:3])
    with pytest.raises(MtgraftError):
        ece(np.zeros((0, 2)), np.zeros(0, dtype=int))
    with pytest.raises(MtgraftError):
        ece(PROBS, np.array([0, 1, 2, 0, 0]))


def test_reliability_diagram_single_and_overlay(tmp_path):
    out = reliability_diagram(PROBS, LABELS, tmp_path / "rel.png", title="sst2")
    assert out.exists() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out2 = reliability_diagram({"fine-tuned": (PROBS, LABELS), "graft": (PROBS[::-1], LABELS)},
                               tmp_path / "sub" / "both.png", n_bins=5)
    assert out2.exists() and out2.stat().st_size > 1000
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")]  # no temp files left
    assert math.isfinite(ece(PROBS, LABELS))
