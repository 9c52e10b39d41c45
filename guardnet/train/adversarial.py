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
import torch.nn.functional as F
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

    (Evaluation uses an independent attack library; this one only feeds training.)

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
    eps = eps.view(-1, 1, 1, 1).to(images)
    alpha = 2.5 * eps / steps
    noise = torch.rand(images.shape, generator=generator, device=images.device)
    x = (images + (2 * noise - 1) * eps).clamp(0, 1)
    with torch.enable_grad():
        for _ in range(steps):
            x.requires_grad_(True)
            loss = F.cross_entropy(classify(x), labels, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x)
            x = x.detach() + alpha * grad.sign()
            x = torch.minimum(torch.maximum(x, images - eps), images + eps).clamp(0, 1)
    return x.detach()
