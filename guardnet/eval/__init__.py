"""Evaluation: detection metrics (attacks and the ``guardnet eval`` harness come later)."""

from guardnet.eval.metrics import auroc, tpr_at_threshold

__all__ = ["auroc", "tpr_at_threshold"]
