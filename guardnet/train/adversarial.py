"""What ContraNet learns to reject: rebuilds under wrong labels and PGD copies of the classifier.

Both feed training only; evaluation attacks come from guardnet's attack library.

Example:
    >>> labels = torch.tensor([0, 1, 2, 3])
    >>> bool((wrong_labels(labels, 4, torch.Generator().manual_seed(0)) != labels).all())
    True
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["pgd_linf", "wrong_labels"]


def wrong_labels(labels: Tensor, num_classes: int, generator: torch.Generator | None) -> Tensor:
    """A uniformly drawn label different from each of ``labels`` (any class count >= 2).

    ``generator`` must live on ``labels``' device.
    """
    shift = torch.randint(1, num_classes, labels.shape, generator=generator, device=labels.device)
    return (labels + shift) % num_classes


def pgd_linf(
    classify: Callable[[Tensor], Tensor],
    images: Tensor,
    labels: Tensor,
    eps: Tensor,
    *,
    steps: int = 10,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Untargeted PGD-L-inf with a per-image budget, used to make training examples.

    guardnet's PGD (:func:`guardnet.eval.attacks.pgd.pgd`) with the step rule of training.

    Args:
        classify: [0, 1] images -> logits.
        images: (B, C, H, W) in [0, 1].
        labels: (B,) true labels.
        eps: (B,) per-image budgets.
        steps: iterations; the step size is ``2.5 * eps / steps``.
        generator: random generator of the random start.

    Returns:
        (B, C, H, W) adversarial images in [0, 1], detached.
    """
    from guardnet.eval.attacks.pgd import pgd

    with torch.enable_grad():
        return pgd(
            classify, images, labels, eps=eps, alpha=2.5 * eps / steps, steps=steps,
            generator=generator,
        )  # fmt: skip
