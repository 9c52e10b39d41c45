"""PGD in L2: Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks",
ICLR 2018, with the L2 threat model.

As :class:`~guardnet.eval.attacks.PGD`, but each step moves ``alpha`` along the per-image
normalised gradient and the projection rescales perturbations longer than ``eps``; the random
start is uniform in radius within the L2 ball. Default step size ``2.5 * eps / steps``.
"""

from __future__ import annotations

from typing import ClassVar

from guardnet.eval.attacks.norms import Norm
from guardnet.eval.attacks.pgd import PGD

__all__ = ["PGDL2"]


class PGDL2(PGD):
    """Untargeted PGD-L2 on a classifier: the arguments of :class:`PGD`, ``eps`` an L2 radius.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
        >>> x = torch.rand(2, 3, 2, 2)
        >>> adv = PGDL2(net, eps=0.5, steps=5)(x, torch.tensor([0, 1]))
        >>> bool((adv - x).flatten(1).norm(dim=1).max() <= 0.5 + 1e-5)
        True
    """

    name: ClassVar[str] = "pgdl2"
    norm: ClassVar[Norm] = "L2"
