"""Target classes for the targeted variants of the standard attacks."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["TARGET_RULES", "choose_targets"]

#: ``"second"``: the classifier's second most likely class; ``"random"``: uniform over the
#: classes other than the label (seeded).
TARGET_RULES = ("second", "random")


def choose_targets(
    logits: Tensor, labels: Tensor, rule: str, *, generator: torch.Generator | None = None
) -> Tensor:
    """One target class per image, never its label.

    Args:
        logits: (B, K) the classifier's logits on the clean images.
        labels: (B,) the labels to move away from.
        rule: one of :data:`TARGET_RULES`.
        generator: the seeded generator of the ``"random"`` rule (on the labels' device).

    Returns:
        (B,) long target classes.

    Raises:
        ValueError: an unknown rule, or fewer than 2 classes.
    """
    if rule not in TARGET_RULES:
        raise ValueError(f"the target rule must be one of {TARGET_RULES}, got {rule!r}")
    num_classes = logits.shape[1]
    if num_classes < 2:
        raise ValueError(f"a targeted attack needs at least 2 classes, got {num_classes}")
    if rule == "second":
        return logits.scatter(1, labels[:, None], float("-inf")).argmax(1)
    # Uniform over the other classes: draw among K - 1 and step over the label.
    draw = torch.randint(num_classes - 1, labels.shape, generator=generator, device=labels.device)
    return draw + (draw >= labels).long()
