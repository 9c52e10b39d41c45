"""Projected gradient descent (PGD) in L-inf: Madry et al., "Towards Deep Learning Models
Resistant to Adversarial Attacks", ICLR 2018.

From a uniformly random point of the ``eps`` ball, ``steps`` times: move ``alpha`` along the sign
of the cross-entropy gradient, then project back onto the ball and into [0, 1]. The default step
size is ``2.5 * eps / steps``, the rule recommended by the authors' ``robustness`` library
(Engstrom et al. 2019): over all steps an iterate can travel 2.5 times the radius.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from guardnet.eval.attacks import norms
from guardnet.eval.attacks.base import Attack
from guardnet.eval.attacks.losses import ce_loss, loss_and_gradient
from guardnet.eval.attacks.norms import Norm

__all__ = ["PGD", "pgd"]


def pgd(
    model: Callable[[Tensor], Tensor],
    images: Tensor,
    labels: Tensor,
    *,
    eps: float | Tensor,
    alpha: float | Tensor,
    steps: int,
    norm: Norm = "Linf",
    random_start: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Untargeted PGD on the cross-entropy loss, batched (the function behind :class:`PGD`).

    The model is used as it is (put it in eval mode first; :class:`PGD` does).

    Args:
        model: [0, 1] images -> logits.
        images: (B, C, H, W) clean images in [0, 1].
        labels: (B,) true labels.
        eps: budget (float or (B,) per image; 0 returns the images).
        alpha: step size (float or (B,)).
        steps: gradient steps.
        norm: ``"Linf"`` (signed steps) or ``"L2"`` (normalised steps).
        random_start: start from a uniform point of the ball instead of the image.
        generator: random generator of the start (on the images' device).

    Returns:
        (B, C, H, W) adversarial images, detached, within the budget and [0, 1].

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
        >>> x, y = torch.rand(4, 3, 2, 2), torch.tensor([0, 1, 2, 0])
        >>> adv = pgd(net, x, y, eps=0.1, alpha=0.01, steps=10)
        >>> bool((adv - x).abs().max() <= 0.1 + 1e-6)
        True
    """
    images = images.detach()
    adv = norms.random_start(images, eps, norm, generator) if random_start else images.clone()
    for _ in range(steps):
        _, _, grad = loss_and_gradient(model, adv, labels, loss=ce_loss)
        adv = norms.step(adv, images, grad, alpha=alpha, eps=eps, norm=norm)
    return adv


def _check_steps(steps: Any) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    return steps


class PGD(Attack):
    """Untargeted PGD-L-inf on a classifier (Madry et al., ICLR 2018).

    Args:
        model: the classifier: [0, 1] images -> logits (normalisation inside).
        eps: the L-inf budget on the [0, 1] scale.
        steps: gradient steps.
        alpha: step size; ``None`` gives ``2.5 * eps / steps``.
        random_start: start from a uniform point of the ``eps`` ball (seeded by ``seed``).
        batch_size, seed, progress: see :class:`~guardnet.eval.attacks.Attack`.

    Shape:
        images (B, C, H, W) in [0, 1] and labels (B,) -> (B, C, H, W).

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
        >>> attack = PGD(net, eps=8 / 255)
        >>> attack.params()["alpha"] == 2.5 * (8 / 255) / 50
        True
        >>> attack(torch.rand(2, 3, 2, 2), torch.tensor([0, 1])).shape
        torch.Size([2, 3, 2, 2])
    """

    name: ClassVar[str] = "pgd"
    norm: ClassVar[Norm] = "Linf"

    def __init__(
        self,
        model: nn.Module,
        *,
        eps: float,
        steps: int = 50,
        alpha: float | None = None,
        random_start: bool = True,
        batch_size: int = 256,
        seed: int = 0,
        progress: bool = False,
    ) -> None:
        super().__init__(model, batch_size=batch_size, seed=seed, progress=progress)
        self.eps = norms.check_budget(eps, self.norm)
        self.steps = _check_steps(steps)
        self.alpha = 2.5 * self.eps / self.steps if alpha is None else float(alpha)
        if not self.alpha > 0:
            raise ValueError(f"alpha must be > 0, got {alpha!r}")
        self.random_start = bool(random_start)

    def params(self) -> dict[str, Any]:
        return {
            "eps": self.eps,
            "steps": self.steps,
            "alpha": self.alpha,
            "random_start": self.random_start,
        }

    def perturb(self, images: Tensor, labels: Tensor, generator: torch.Generator) -> Tensor:
        return pgd(
            self.model,
            images,
            labels,
            eps=self.eps,
            alpha=self.alpha,
            steps=self.steps,
            norm=self.norm,
            random_start=self.random_start,
            generator=generator,
        )
