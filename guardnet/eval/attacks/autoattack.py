"""AutoAttack's white-box core: Croce & Hein, "Reliable evaluation of adversarial robustness with
an ensemble of diverse parameter-free attacks", ICML 2020 (Sec. 5).

APGD-CE on every image, then APGD-T (targeted DLR, 9 target classes) on those it left correctly
classified; 100 iterations each, one run each. The authors' standard ensemble adds FAB-T and the
black-box Square attack; this one leaves them out, so it may fool fewer images than the standard
ensemble, and its reports name it ``apgd-ce+apgd-t``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from guardnet.eval.attacks.apgd import apgd
from guardnet.eval.attacks.apgdt import APGDT, apgd_targeted

__all__ = ["AutoAttack"]


class AutoAttack(APGDT):
    """APGD-CE followed by APGD-T on a classifier (at least 4 classes).

    Takes the arguments of :class:`~guardnet.eval.attacks.APGDT` (``steps`` for each APGD run).
    Returns (when called) the input for images neither attack fools.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5))
        >>> AutoAttack(net, eps=8 / 255).params()["ensemble"]
        'apgd-ce+apgd-t'
    """

    name: ClassVar[str] = "autoattack"

    def params(self) -> dict[str, Any]:
        return {**super().params(), "ensemble": "apgd-ce+apgd-t"}

    def perturb(self, images: Tensor, labels: Tensor, generator: torch.Generator) -> Tensor:
        common = {
            "eps": self.eps,
            "steps": self.steps,
            "norm": self.norm,
            "rho": self.rho,
            "momentum": self.momentum,
            "generator": generator,
        }
        first, fooled = apgd(self.model, images, labels, loss="ce", **common)
        second, _ = apgd_targeted(
            self.model, images, labels, target_classes=self.target_classes, skip=fooled, **common
        )
        return torch.where(fooled.view(-1, *([1] * (images.ndim - 1))), first, second)
