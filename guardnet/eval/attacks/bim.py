"""The basic iterative method: Kurakin, Goodfellow & Bengio, "Adversarial examples in the
physical world", ICLR Workshop 2017.

Iterated FGSM with small steps from the clean image, each projected onto the ``eps`` ball and
[0, 1]: PGD-L-inf without a random start. The paper's defaults: steps of ``1/255`` and
``min(255 eps + 4, 1.25 * 255 eps)`` of them (``eps`` on the [0, 1] scale; the paper states it in
pixel values), enough to reach the edge of the ball and a little more. torchattacks implements
the same rule; guardnet rounds the count down and takes at least one step.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn

from guardnet.eval.attacks.pgd import PGD

__all__ = ["BIM", "bim_steps"]


def bim_steps(eps: float) -> int:
    """Kurakin et al.'s step count for budget ``eps`` (on [0, 1]) with steps of 1/255.

    Example:
        >>> bim_steps(8 / 255), bim_steps(0.3)
        (10, 80)
    """
    if not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"eps must be a number > 0, got {eps!r}")
    return max(1, int(min(eps * 255 + 4, 1.25 * eps * 255)))


class BIM(PGD):
    """Untargeted BIM on a classifier.

    Args:
        model: the classifier: [0, 1] images -> logits (normalisation inside).
        eps: the L-inf budget.
        alpha: step size.
        steps: step count; ``None`` gives :func:`bim_steps` of ``eps``.
        batch_size, seed, progress: see :class:`~guardnet.eval.attacks.Attack`.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
        >>> BIM(net, eps=8 / 255).params()["steps"]
        10
    """

    name: ClassVar[str] = "bim"

    def __init__(
        self,
        model: nn.Module,
        *,
        eps: float,
        alpha: float = 1 / 255,
        steps: int | None = None,
        batch_size: int = 256,
        seed: int = 0,
        progress: bool = False,
    ) -> None:
        super().__init__(
            model,
            eps=eps,
            steps=bim_steps(eps) if steps is None else steps,
            alpha=alpha,
            random_start=False,
            batch_size=batch_size,
            seed=seed,
            progress=progress,
        )

    def params(self) -> dict[str, Any]:
        return {"eps": self.eps, "alpha": self.alpha, "steps": self.steps}
