"""The fast gradient sign method: Goodfellow, Shlens & Szegedy, "Explaining and Harnessing
Adversarial Examples", ICLR 2015.

One step of size ``eps`` along the sign of the cross-entropy gradient, clipped to [0, 1]:
PGD-L-inf with one step of ``alpha = eps`` and no random start.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn

from guardnet.eval.attacks.pgd import PGD

__all__ = ["FGSM"]


class FGSM(PGD):
    """Untargeted FGSM on a classifier.

    Args:
        model: the classifier: [0, 1] images -> logits (normalisation inside).
        eps: the L-inf budget (the step size).
        batch_size, seed, progress: see :class:`~guardnet.eval.attacks.Attack`.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
        >>> FGSM(net, eps=0.1)(torch.rand(2, 3, 2, 2), torch.tensor([0, 1])).shape
        torch.Size([2, 3, 2, 2])
    """

    name: ClassVar[str] = "fgsm"

    def __init__(
        self,
        model: nn.Module,
        *,
        eps: float,
        batch_size: int = 256,
        seed: int = 0,
        progress: bool = False,
    ) -> None:
        super().__init__(
            model,
            eps=eps,
            steps=1,
            alpha=eps,
            random_start=False,
            batch_size=batch_size,
            seed=seed,
            progress=progress,
        )

    def params(self) -> dict[str, Any]:
        return {"eps": self.eps}
