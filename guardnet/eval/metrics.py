"""Detection metrics on scores: plain functions, no model in sight."""

from __future__ import annotations

import torch
from torch import Tensor

from guardnet.thresholds import false_positive_rate, threshold_at_fpr

__all__ = [
    "auroc",
    "detection_accuracy",
    "oracle_tpr_at_fpr",
    "robust_accuracy",
    "roc_curve",
    "tpr_at_fpr",
    "tpr_at_threshold",
]


def auroc(negative: Tensor, positive: Tensor, *, higher_is_suspicious: bool = True) -> float:
    """Area under the ROC curve: P(a positive scores as more suspicious than a negative).

    Ties count one half (the Mann-Whitney U statistic), computed from ranks in O(n log n).

    Args:
        negative: (N,) scores of clean inputs.
        positive: (M,) scores of adversarial/noisy inputs.
        higher_is_suspicious: which side is suspicious.

    Returns:
        AUROC in [0, 1]; 0.5 means no separation.

    Example:
        >>> auroc(torch.tensor([0.1, 0.2]), torch.tensor([0.3, 0.4]))
        1.0
    """
    if negative.numel() == 0 or positive.numel() == 0:
        raise ValueError("auroc needs at least one negative and one positive score")
    neg = negative.double().flatten()
    pos = positive.double().flatten()
    if not higher_is_suspicious:
        neg, pos = -neg, -pos
    both = torch.cat([neg, pos])
    # Average ranks of tied values: rank = (first position + last position) / 2 + 1.
    _, inverse, counts = torch.unique(both, return_inverse=True, return_counts=True)
    last = torch.cumsum(counts, 0).double()
    average_rank = last - (counts.double() - 1) / 2
    ranks = average_rank[inverse]
    n_neg, n_pos = neg.numel(), pos.numel()
    u = ranks[n_neg:].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_neg * n_pos))


def tpr_at_threshold(
    positive: Tensor, threshold: Tensor | float, *, higher_is_suspicious: bool = True
) -> float:
    """Fraction of ``positive`` scores on the suspicious side of ``threshold``."""
    hit = positive > threshold if higher_is_suspicious else positive < threshold
    return int(hit.sum()) / max(positive.numel(), 1)


def roc_curve(
    negative: Tensor, positive: Tensor, *, higher_is_suspicious: bool = True
) -> tuple[Tensor, Tensor, Tensor]:
    """ROC curve: (FPR, TPR) at every distinct score used as the threshold.

    A score is rejected when it is strictly more suspicious than the threshold, as in
    :meth:`guardnet.Layer.reject`. The thresholds run from the most suspicious score (nothing
    rejected: the point (0, 0)) to one unit beyond the least suspicious (everything rejected).

    Args:
        negative: (N,) clean scores.
        positive: (M,) adversarial scores.
        higher_is_suspicious: which side is rejected.

    Returns:
        ``fpr``, ``tpr`` (float64, non-decreasing) and ``thresholds`` (in the scores' units).

    Example:
        >>> fpr, tpr, _ = roc_curve(torch.tensor([0.0, 1.0]), torch.tensor([2.0]))
        >>> fpr.tolist(), tpr.tolist()
        ([0.0, 0.0, 0.5, 1.0], [0.0, 1.0, 1.0, 1.0])
    """
    if negative.numel() == 0 or positive.numel() == 0:
        raise ValueError("roc_curve needs at least one negative and one positive score")
    sign = 1.0 if higher_is_suspicious else -1.0
    neg = negative.double().flatten() * sign
    pos = positive.double().flatten() * sign
    distinct = torch.cat([neg, pos]).unique().flip(0)  # most suspicious first
    thresholds = torch.cat([distinct, distinct[-1:] - 1.0])
    # Scores strictly above t: n - (number <= t).
    fp = neg.numel() - torch.searchsorted(neg.sort().values, thresholds, right=True)
    tp = pos.numel() - torch.searchsorted(pos.sort().values, thresholds, right=True)
    return fp.double() / neg.numel(), tp.double() / pos.numel(), thresholds * sign


def tpr_at_fpr(
    val_clean: Tensor,
    test_adversarial: Tensor,
    target_fpr: float,
    *,
    test_clean: Tensor | None = None,
    higher_is_suspicious: bool = True,
) -> dict[str, float]:
    """TPR on test data at a threshold fitted on clean *validation* scores (the honest protocol).

    Args:
        val_clean: clean validation scores: they alone set the threshold.
        test_adversarial: adversarial test scores: the TPR.
        target_fpr: the rate the threshold allows on ``val_clean``.
        test_clean: clean test scores, to report the FPR actually achieved on test.
        higher_is_suspicious: which side is rejected.

    Returns:
        ``threshold``, ``tpr`` and, with ``test_clean``, ``test_fpr``.
    """
    threshold = threshold_at_fpr(
        val_clean.flatten(), target_fpr, higher_is_suspicious=higher_is_suspicious
    )
    out = {
        "threshold": float(threshold),
        "tpr": tpr_at_threshold(
            test_adversarial, threshold, higher_is_suspicious=higher_is_suspicious
        ),
    }
    if test_clean is not None:
        out["test_fpr"] = false_positive_rate(
            test_clean, threshold, higher_is_suspicious=higher_is_suspicious
        )
    return out


def oracle_tpr_at_fpr(
    test_clean: Tensor,
    test_adversarial: Tensor,
    target_fpr: float,
    *,
    higher_is_suspicious: bool = True,
) -> float:
    """TPR with the threshold fitted on the *test* clean scores themselves.

    Optimistic by construction: only for comparison with published numbers that were computed
    this way. Report :func:`tpr_at_fpr` as guardnet's figure.
    """
    return tpr_at_fpr(
        test_clean, test_adversarial, target_fpr, higher_is_suspicious=higher_is_suspicious
    )["tpr"]


def detection_accuracy(correct: Tensor, rejected: Tensor) -> float:
    """Acc_dec on clean data: the share of inputs classified correctly and passed, or
    misclassified and rejected (ContraNet's metric).

    Args:
        correct: (N,) bool, the classifier's label equals the truth.
        rejected: (N,) bool, the guard rejected the input.
    """
    if correct.shape != rejected.shape:
        raise ValueError(f"shapes differ: {tuple(correct.shape)} vs {tuple(rejected.shape)}")
    good = (correct & ~rejected) | (~correct & rejected)
    return int(good.sum()) / max(good.numel(), 1)


def robust_accuracy(fooled: Tensor, rejected: Tensor) -> float:
    """Acc_rob on adversarial data: 1 - (successful adversarial examples) / (all of them),
    where a success fools the classifier *and* passes the guard.

    Args:
        fooled: (N,) bool, the adversarial example's label differs from the truth.
        rejected: (N,) bool, the guard rejected it.
    """
    if fooled.shape != rejected.shape:
        raise ValueError(f"shapes differ: {tuple(fooled.shape)} vs {tuple(rejected.shape)}")
    success = fooled & ~rejected
    return 1.0 - int(success.sum()) / max(success.numel(), 1)
