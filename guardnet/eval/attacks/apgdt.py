"""Targeted APGD on the DLR loss (APGD-T): Croce & Hein, "Reliable evaluation of adversarial
robustness with an ensemble of diverse parameter-free attacks", ICML 2020 (Sec. 4 and 5).

One APGD run per target class, the classifier's 2nd, 3rd, ... most likely classes on the clean
image (9 targets by default, fewer when the model has fewer classes), each on the targeted DLR
loss ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)``. Each run attacks only the images that no
earlier run has fooled; success is any wrong label, as in the authors' code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from guardnet.errors import InputShapeError
from guardnet.eval.attacks.apgd import APGD, apgd
from guardnet.eval.attacks.norms import Norm
from guardnet.eval.attacks.pgd import _check_steps

__all__ = ["APGDT", "apgd_targeted"]


def apgd_targeted(
    model: Callable[[Tensor], Tensor],
    images: Tensor,
    labels: Tensor,
    *,
    eps: float,
    steps: int = 100,
    norm: Norm = "Linf",
    target_classes: int = 9,
    rho: float = 0.75,
    momentum: float = 0.75,
    generator: torch.Generator | None = None,
    skip: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """APGD-T on a batch (the function behind :class:`APGDT`).

    Args:
        model: [0, 1] images -> logits; at least 4 classes.
        images: (B, C, H, W) clean images in [0, 1].
        labels: (B,) true labels.
        eps, steps, norm, rho, momentum, generator: see
            :func:`~guardnet.eval.attacks.apgd.apgd`.
        target_classes: how many of the most likely wrong classes to try, in order.
        skip: (B,) images not to attack (e.g. those an earlier attack fooled); they come back
            unchanged and count as fooled.

    Returns:
        ``(adversarial, fooled)`` as :func:`~guardnet.eval.attacks.apgd.apgd`.

    Raises:
        InputShapeError: the model has fewer than 4 classes.
    """
    images = images.detach()
    with torch.no_grad():
        logits = model(images)
    if logits.shape[1] < 4:
        raise InputShapeError(
            f"APGD-T's targeted DLR loss needs at least 4 classes, the model has {logits.shape[1]}"
        )
    ranked = logits.argsort(dim=1, descending=True)
    fooled = logits.argmax(dim=1) != labels
    if skip is not None:
        fooled = fooled | skip.to(fooled.device)
    out = images.clone()
    for rank in range(1, min(target_classes, logits.shape[1] - 1) + 1):
        todo = (~fooled).nonzero().squeeze(1)
        if todo.numel() == 0:
            break
        adv, hit = apgd(
            model,
            images[todo],
            labels[todo],
            eps=eps,
            steps=steps,
            norm=norm,
            loss="dlr",
            targets=ranked[todo, rank],
            rho=rho,
            momentum=momentum,
            generator=generator,
        )
        out[todo] = adv
        fooled[todo] = hit
    return out, fooled


class APGDT(APGD):
    """Untargeted-success APGD-T on a classifier (Croce & Hein, ICML 2020).

    Args:
        model: the classifier: [0, 1] images -> logits, at least 4 classes.
        eps: the budget on the [0, 1] scale (L-inf, or L2 with ``norm="L2"``).
        steps: iterations per target class (100).
        target_classes: how many wrong classes to target (9).
        norm, rho, momentum: see :class:`~guardnet.eval.attacks.APGD`.
        batch_size, seed, progress: see :class:`~guardnet.eval.attacks.Attack`.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5))
        >>> x = torch.rand(3, 3, 2, 2)
        >>> APGDT(net, eps=0.1, steps=5)(x, net(x).argmax(1)).shape
        torch.Size([3, 3, 2, 2])
    """

    name: ClassVar[str] = "apgdt"

    def __init__(
        self,
        model: nn.Module,
        *,
        eps: float,
        steps: int = 100,
        target_classes: int = 9,
        norm: Norm = "Linf",
        rho: float = 0.75,
        momentum: float = 0.75,
        batch_size: int = 256,
        seed: int = 0,
        progress: bool = False,
    ) -> None:
        super().__init__(
            model,
            eps=eps,
            steps=steps,
            norm=norm,
            loss="dlr",
            rho=rho,
            momentum=momentum,
            batch_size=batch_size,
            seed=seed,
            progress=progress,
        )
        self.target_classes = _check_steps(target_classes)

    def params(self) -> dict[str, Any]:
        params = super().params()
        del params["loss"]  # always the targeted DLR loss
        return {**params, "target_classes": self.target_classes}

    def perturb(self, images: Tensor, labels: Tensor, generator: torch.Generator) -> Tensor:
        return apgd_targeted(self.model, images, labels, generator=generator, **self.params())[0]
