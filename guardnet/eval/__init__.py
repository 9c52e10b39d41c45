"""Evaluation: detection metrics (attacks and the ``guardnet eval`` harness come later)."""

from guardnet.eval.metrics import (
    auroc,
    detection_accuracy,
    oracle_tpr_at_fpr,
    robust_accuracy,
    roc_curve,
    tpr_at_fpr,
    tpr_at_threshold,
)

__all__ = [
    "auroc",
    "detection_accuracy",
    "oracle_tpr_at_fpr",
    "robust_accuracy",
    "roc_curve",
    "tpr_at_fpr",
    "tpr_at_threshold",
]
