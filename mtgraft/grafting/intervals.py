"""Uncertainty of one graft's numbers (docs/method.md §3, "Uncertainty of one run"): a paired bootstrap over
the test examples.

Every evaluation set (the test set and each OOD test set) gets one fixed set of resamples (seeded by the
graft's ``--seed``); the pretrained model P_0, the fine-tuned P_1 and every grafted region are scored on the
*same* resamples. Accuracy, Rel = (acc − P_0) / (P_1 − P_0) and differences between methods are computed per
resample, and their 95% percentile intervals are reported beside the point estimates (which stay the
full-test-set values). The fine-tuned model's Rel is 1 in every resample, so its interval is [1, 1].
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mtgraft.evaluation.uncertainty import (
    CONFIDENCE,
    N_BOOT,
    bootstrap_counts,
    bootstrap_p,
    paired_difference,
    percentile_interval,
    rel_samples,
)

TEST_NAME = "paired bootstrap over test examples"


@dataclass
class Bootstrap:
    """The shared resamples of one graft's evaluation sets and P_0's / P_1's accuracies on them.

    ``counts[name]`` is the [n_boot, n] matrix of multinomial counts of evaluation set ``name`` ("test" or an
    OOD task, as in ``Measured.preds``); ``pre``/``ft`` map each set to the models' resampled accuracies;
    ``samples`` keeps each scored region's resampled test accuracies for ``comparisons``."""

    labels: dict[str, np.ndarray]
    counts: dict[str, np.ndarray]
    pre: dict[str, np.ndarray]
    ft: dict[str, np.ndarray]
    n_boot: int
    seed: int
    samples: dict[tuple[str, float], np.ndarray] = field(default_factory=dict)

    @classmethod
    def build(cls, labels: Mapping[str, Sequence[int] | np.ndarray], pre_preds: Mapping[str, np.ndarray],
              ft_preds: Mapping[str, np.ndarray], seed: int, n_boot: int = N_BOOT) -> Bootstrap:
        """Draw the resamples of every set in ``labels`` (seed ``seed``) and score P_0 and P_1 on them."""
        lab = {k: np.asarray(v) for k, v in labels.items()}
        counts = {k: bootstrap_counts(int(y.size), n_boot, seed) for k, y in lab.items()}
        boot = cls(lab, counts, {}, {}, n_boot, seed)
        boot.pre = boot.accuracies(pre_preds)
        boot.ft = boot.accuracies(ft_preds)
        return boot

    def accuracies(self, preds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Set name → the model's ``n_boot`` resampled accuracies (one matrix-vector product per set)."""
        out = {}
        for k, y in self.labels.items():
            correct = (np.asarray(preds[k]) == y).astype(np.float64)
            out[k] = self.counts[k] @ correct / max(1, y.size)
        return out

    def info(self) -> dict[str, Any]:
        """How the intervals were computed (results.json ``uncertainty``)."""
        return {"method": TEST_NAME, "n_boot": self.n_boot, "seed": self.seed, "confidence": CONFIDENCE,
                "interval": "percentile", "keys": ["accuracy_ci95", "rel_ci95", "gain_ci95", "comparisons"]}

    def annotate(self, metrics: dict[str, Any], preds: Mapping[str, np.ndarray],
                 key: tuple[str, float] | None = None) -> None:
        """Add ``accuracy_ci95`` and ``rel_ci95`` to ``metrics`` (and to each of its OOD metrics) for the model
        with predictions ``preds``; with ``key`` (method, sparsity), keep its test resamples for comparisons."""
        acc = self.accuracies(preds)
        for name, m in self._sets(metrics):
            m["accuracy_ci95"] = percentile_interval(acc[name])
            m["rel_ci95"] = percentile_interval(rel_samples(acc[name], self.pre[name], self.ft[name]))
        if key is not None:
            self.samples[key] = acc["test"]

    def annotate_reference(self, pre: dict[str, Any], ft: dict[str, Any]) -> None:
        """Intervals of P_0 and P_1 themselves, and the fine-tuning gain P_1 − P_0 with its paired interval
        and bootstrap p-value on the fine-tuned model's metrics (``gain``, ``gain_ci95``, ``gain_p``)."""
        for metrics, own in ((pre, self.pre), (ft, self.ft)):
            for name, m in self._sets(metrics):
                m["accuracy_ci95"] = percentile_interval(own[name])
                m["rel_ci95"] = percentile_interval(rel_samples(own[name], self.pre[name], self.ft[name]))
        for name, m in self._sets(ft):
            base = pre if name == "test" else pre["ood"][name]
            d = paired_difference(self.ft[name], self.pre[name], m.get("accuracy"), base.get("accuracy"))
            m["gain"], m["gain_ci95"], m["gain_p"] = d["diff"], d["ci95"], d["p"]

    def _sets(self, metrics: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        out = [("test", metrics)] if "test" in self.labels else []
        return out + [(o, om) for o, om in metrics.get("ood", {}).items() if o in self.labels]


def comparisons(boot: Bootstrap, points: Mapping[tuple[str, float], Mapping[str, Any]],
                pairs: Sequence[tuple[tuple[str, float], tuple[str, float]]]) -> list[dict[str, Any]]:
    """Paired comparisons of regions on the same test resamples: for each pair (a, b) of (method, sparsity)
    keys, accuracy and Rel differences a − b with their interval and two-sided bootstrap p-value.
    ``points`` maps each key to its test metrics (the full-test-set accuracy and Rel)."""
    out = []
    gain = boot.ft["test"] - boot.pre["test"]
    for a, b in pairs:
        if a not in boot.samples or b not in boot.samples:
            continue
        sa, sb = boot.samples[a], boot.samples[b]
        for metric in ("accuracy", "rel"):
            if metric == "accuracy":
                d = paired_difference(sa, sb, points[a].get("accuracy"), points[b].get("accuracy"))
            else:
                with np.errstate(divide="ignore", invalid="ignore"):
                    rd = np.where(gain != 0, (sa - sb) / np.where(gain != 0, gain, 1.0), np.nan)
                ra, rb = points[a].get("rel"), points[b].get("rel")
                d = {"diff": None if ra is None or rb is None else float(ra) - float(rb),
                     "ci95": percentile_interval(rd), "p": bootstrap_p(rd)}
            out.append({"sparsity": a[1], "a": a[0], "b": b[0], "metric": metric,
                        "a_value": points[a].get(metric), "b_value": points[b].get(metric), **d,
                        "n_boot": boot.n_boot, "test": TEST_NAME})
    return out


def default_pairs(keys: Sequence[tuple[str, float]], learned: Mapping[str, bool]) -> list[tuple[tuple[str, float],
                                                                                                tuple[str, float]]]:
    """At each sparsity, every learned method against every other method (a learned one first): "graft vs
    top-k at equal size" and the like."""
    pairs = []
    for a in keys:
        if not learned.get(a[0]):
            continue
        for b in keys:
            if b != a and b[1] == a[1] and (not learned.get(b[0]) or b[0] > a[0]):
                pairs.append((a, b))
    return pairs
