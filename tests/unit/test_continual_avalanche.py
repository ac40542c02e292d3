"""The continual metrics (mtgraft.evaluation.continual) against the definitions of Avalanche, the field's
library (avalanche-lib 0.6.0, ``avalanche/evaluation/metrics/forgetting_bwt.py``, ``forward_transfer.py``,
``accuracy.py``), and of Chaudhry et al. 2018 for forgetting (max).

Avalanche is not installed (it would replace the pinned torch, docs/continual.md), so its bookkeeping is
replayed here by hand on a hand-made accuracy matrix, event by event as its plugins see them:

- an evaluation of every experience at initialisation (``eval_every > -1``) records ForwardTransfer's
  ``initial[k]``;
- after training experience t, an evaluation of every experience k:
  - Forgetting: ``initial[k]`` is set when k == t (the accuracy just after training k), ``last[k]`` otherwise
    (``last`` is cleared before every evaluation); an experience's forgetting is ``initial[k] - last[k]``,
    defined only when both exist; StreamForgetting is the plain mean over the experiences with a value, so at
    the end of the stream it averages the experiences trained before the last one;
  - BWT (StreamBWT) = − StreamForgetting;
  - ForwardTransfer: ``previous[k]`` is set when t == k − 1; an experience's forward transfer is
    ``previous[k] - initial[k]``; StreamForwardTransfer averages those defined (k = 2..T at the end);
  - StreamAccuracy: correct / total over every test pattern of the stream (pooled), so it equals the mean
    of the per-experience accuracies when the experiences' test sets have the same size.
- Chaudhry et al. (2018, eq. 4-5): f_j = max_{l in 1..T-1} a_{l,j} − a_{T,j}, averaged over j < T.
"""

from __future__ import annotations

import numpy as np
import pytest

from mtgraft.evaluation.continual import continual_metrics
from mtgraft.workflows.continual import approach_metrics

# R[t, k]: accuracy on experience k after training experience t (0-based here); hand-made, with forgetting,
# a later recovery (task 0 at stage 2) and above-diagonal values that differ from the initial ones
R = np.array([
    [0.90, 0.52, 0.31, 0.47, 0.60],
    [0.71, 0.85, 0.36, 0.50, 0.58],
    [0.78, 0.69, 0.93, 0.44, 0.62],
    [0.64, 0.72, 0.80, 0.88, 0.55],
    [0.60, 0.66, 0.75, 0.81, 0.95],
])
R_INIT = np.array([0.50, 0.49, 0.33, 0.51, 0.62])
T = R.shape[0]


def avalanche_replay(R: np.ndarray, r_init: np.ndarray, sizes: list[int]) -> dict[str, float]:
    """The stream metrics Avalanche reports after the last training experience, by replaying its plugins."""
    ft_initial, ft_previous = {}, {}
    fg_initial: dict[int, float] = {}
    for k in range(len(r_init)):  # evaluation at initialisation
        ft_initial[k] = r_init[k]
    stream = {}
    for t in range(R.shape[0]):
        fg_last: dict[int, float] = {}  # before_eval: reset_last
        forgetting, fwt = [], []
        correct = total = 0.0
        for k in range(R.shape[1]):
            acc = R[t, k]
            if t == k:
                fg_initial[k] = acc
            else:
                fg_last[k] = acc
            if k in fg_initial and k in fg_last:
                forgetting.append(fg_initial[k] - fg_last[k])
            if t == k - 1:
                ft_previous[k] = acc
            if k in ft_previous:
                fwt.append(ft_previous[k] - ft_initial[k])
            correct += acc * sizes[k]
            total += sizes[k]
        stream = {"StreamForgetting": float(np.mean(forgetting)) if forgetting else None,
                  "StreamBWT": -float(np.mean(forgetting)) if forgetting else None,
                  "StreamForwardTransfer": float(np.mean(fwt)) if fwt else None,
                  "StreamAccuracy": correct / total}
    return stream


def chaudhry_forgetting(R: np.ndarray) -> float:
    T = R.shape[0]
    return float(np.mean([max(R[s, j] for s in range(T - 1)) - R[T - 1, j] for j in range(T - 1)]))


def test_metrics_match_avalanche_definitions():
    ours = continual_metrics(R, R_INIT)
    ava = avalanche_replay(R, R_INIT, [100] * T)
    assert ours["acc"] == pytest.approx(ava["StreamAccuracy"])
    assert ours["bwt"] == pytest.approx(ava["StreamBWT"])
    assert ours["forgetting_final"] == pytest.approx(ava["StreamForgetting"])
    assert ours["fwt"] == pytest.approx(ava["StreamForwardTransfer"])
    assert ours["forgetting_max"] == pytest.approx(chaudhry_forgetting(R))
    # the numbers themselves, by hand
    assert ours["forgetting_final"] == pytest.approx(((0.90 - 0.60) + (0.85 - 0.66) + (0.93 - 0.75) + (0.88 - 0.81)) / 4)
    assert ours["fwt"] == pytest.approx(((0.52 - 0.49) + (0.36 - 0.33) + (0.44 - 0.51) + (0.55 - 0.62)) / 4)
    # task 0 recovers (0.71 -> 0.78) but its best is still its diagonal; the max variant >= the final one
    assert ours["forgetting_max"] >= ours["forgetting_final"]


def test_where_the_definitions_part():
    """Avalanche pools test patterns for StreamAccuracy: with unequal test sets it weights tasks by size, while
    mtgraft's ACC is the plain mean over tasks (docs/continual.md says so)."""
    sizes = [100, 300, 100, 200, 210]
    ava = avalanche_replay(R, R_INIT, sizes)
    ours = continual_metrics(R, R_INIT)
    assert ava["StreamAccuracy"] == pytest.approx(float(np.average(R[-1], weights=sizes)))
    assert ours["acc"] == pytest.approx(float(np.mean(R[-1])))
    assert ours["acc"] != pytest.approx(ava["StreamAccuracy"])
    # forgetting (max) reads every earlier stage, also those before the task was trained (Chaudhry's
    # l in 1..T-1): a task that scored higher before its own stage counts that as its best
    R2 = R.copy()
    R2[0, 3] = 0.97  # task 3 evaluated after stage 0, before it was trained
    assert continual_metrics(R2)["forgetting_max"] == pytest.approx(chaudhry_forgetting(R2))
    assert continual_metrics(R2)["forgetting_final"] == pytest.approx(continual_metrics(R)["forgetting_final"])


def test_approach_metrics_follow_the_same_definitions():
    final = [0.9, 0.85, 0.93, 0.88, 0.95]  # e.g. own grafts that keep what each stage reached
    m = approach_metrics(R, final)
    R3 = R.copy()
    R3[-1] = final
    ava = avalanche_replay(R3, R_INIT, [100] * T)
    assert m["bwt"] == pytest.approx(ava["StreamBWT"]) and m["bwt"] == pytest.approx(0.0)
    assert m["acc"] == pytest.approx(ava["StreamAccuracy"])
