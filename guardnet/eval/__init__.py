"""Evaluation: detection metrics, the cost benchmark (:mod:`guardnet.eval.bench`), attacks
(:mod:`guardnet.eval.attacks`) and the harness behind ``guardnet eval``
(:mod:`guardnet.eval.harness`)."""

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
