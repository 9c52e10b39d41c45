"""Detection metrics on scores: plain functions, no model in sight."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["auroc", "tpr_at_threshold"]


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
