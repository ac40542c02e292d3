"""Evaluation (layer 3): prediction, classification metrics (accuracy, F1, ECE, Brier, agreement, Rel) and
continual metrics. ``mtgraft.evaluation.runner`` is ``mtgraft eval``."""

from mtgraft.evaluation.continual import continual_metrics, mlflow_metric_keys, save_accuracy_matrix
from mtgraft.evaluation.metrics import (
    agreement,
    brier,
    classification_metrics,
    ece,
    relative_gain,
    reliability_bins,
    reliability_diagram,
)
from mtgraft.evaluation.predict import accuracy, autocast_ctx, evaluate_probs, predict_probs

__all__ = [
    "accuracy",
    "autocast_ctx",
    "evaluate_probs",
    "predict_probs",
    "agreement",
    "brier",
    "classification_metrics",
    "continual_metrics",
    "ece",
    "mlflow_metric_keys",
    "relative_gain",
    "reliability_bins",
    "reliability_diagram",
    "save_accuracy_matrix",
]
