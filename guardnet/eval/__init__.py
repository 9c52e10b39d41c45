"""Evaluation: detection metrics and the cost benchmark (attacks and ``guardnet eval`` come
later)."""

from guardnet.eval.bench import bench_guard, count_flops, measure_latency, render_markdown
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
    "bench_guard",
    "count_flops",
    "detection_accuracy",
    "measure_latency",
    "oracle_tpr_at_fpr",
    "render_markdown",
    "robust_accuracy",
    "roc_curve",
    "tpr_at_fpr",
    "tpr_at_threshold",
]
