"""What ContraNet learns to reject: rebuilds under wrong labels, PGD copies of the classifier
and joint (adaptive) attacks on the classifier and the DMM.

All three feed training only; evaluation attacks come from guardnet's attack library.

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

__all__ = ["joint_loss", "joint_pgd_linf", "pgd_linf", "wrong_labels"]


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


def joint_loss(
    classify: Callable[[Tensor], Tensor],
    consistency: Callable[[Tensor, Tensor], Tensor],
    images: Tensor,
    targets: Tensor,
) -> Tensor:
    """Per image, what :func:`joint_pgd_linf` minimises: ``CE(classify(x), target) +
    CE(consistency(x, target), consistent)`` (arguments as there); shape (B,)."""
    consistent = torch.ones_like(targets)
    return F.cross_entropy(classify(images), targets, reduction="none") + F.cross_entropy(
        consistency(images, targets), consistent, reduction="none"
    )


def joint_pgd_linf(
    classify: Callable[[Tensor], Tensor],
    consistency: Callable[[Tensor, Tensor], Tensor],
    images: Tensor,
    targets: Tensor,
    eps: Tensor,
    *,
    steps: int = 10,
    resolution: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Targeted PGD-L-inf against the classifier and a consistency detector together.

    The adaptive attacker of a detector that conditions on the predicted label (ContraNet's
    DMM): it moves each image towards its target class and, at the same time, towards a
    "consistent" verdict of the detector for ``(image, target)``. Each signed-gradient step
    lowers ``CE(classify(x), target) + CE(consistency(x, target), consistent)``. With
    ``resolution``, the optimised perturbation is ``resolution`` x ``resolution`` per channel,
    bilinearly upsampled (the smooth parameterisation of
    :class:`~guardnet.eval.attacks.smooth.SmoothPGD`, which a noise statistic does not see);
    it stays within the ball because upsampling takes convex combinations.

    Args:
        classify: [0, 1] images -> logits.
        consistency: ``([0, 1] images, labels) -> (B, 2)`` detector logits, index 1 meaning
            "consistent"; differentiable in the images.
        images: (B, C, H, W) in [0, 1].
        targets: (B,) the labels the attacker wants.
        eps: (B,) per-image budgets.
        steps: iterations; the step size is ``2.5 * eps / steps``.
        resolution: side of the low-resolution perturbation; None: every pixel.
        generator: random generator of the uniform random start.

    Returns:
        (B, C, H, W) adversarial images in [0, 1], detached.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
        >>> head = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
        >>> x = torch.rand(2, 3, 8, 8)
        >>> adv = joint_pgd_linf(net, lambda im, t: head(im), x, torch.tensor([1, 2]),
        ...                      torch.full((2,), 0.1), steps=3, resolution=4)
        >>> bool(((adv - x).abs() <= 0.1 + 1e-6).all())
        True
    """
    from guardnet.eval.attacks.smooth import upsample_perturbation

    b, c, h, w = images.shape
    shape = (b, c, h, w) if resolution is None else (b, c, min(resolution, h), min(resolution, w))
    radius = eps.view(-1, 1, 1, 1).to(images.dtype)
    alpha = 2.5 * radius / steps
    start = torch.rand(shape, generator=generator, device=images.device, dtype=images.dtype)
    param = (start * 2 - 1) * radius

    def perturb(p: Tensor) -> Tensor:
        return (images + upsample_perturbation(p, (h, w))).clamp(0, 1)

    with torch.enable_grad():
        for _ in range(steps):
            param = param.detach().requires_grad_(True)
            loss = joint_loss(classify, consistency, perturb(param), targets).sum()
            (grad,) = torch.autograd.grad(loss, param)
            param = torch.minimum(torch.maximum(param - alpha * grad.sign(), -radius), radius)
    return perturb(param.detach()).detach()
