"""The Jacobian-based saliency map attack: Papernot et al., "The Limitations of Deep Learning
in Adversarial Settings", EuroS&P 2016.

An L0 attack: it changes few input elements, each by a large amount, one element per iteration
(:func:`guardnet.ops.attack_cost.saliency_map_attack`, the kernel A2D's JSMA_d also counts
iterations with). Defaults are foolbox 2's ``SaliencyMapAttack``, which the A2D paper crafts its
JSMA examples with: ``theta`` 0.1, at most 7 moves per element, 2,000 iterations, pushed towards
the second most likely class and stopped at the first misclassification.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from guardnet.eval.attacks.base import Attack
from guardnet.eval.attacks.targets import TARGET_RULES, choose_targets
from guardnet.ops.attack_cost import saliency_map_attack

__all__ = ["JSMA"]


class JSMA(Attack):
    """Untargeted JSMA on a classifier, steered towards one other class per image.

    Args:
        model: the classifier: [0, 1] images -> logits (normalisation inside).
        max_iterations: the most element moves per image.
        theta: how far one move changes an element.
        max_changes_per_feature: how often one element may move.
        target: the class each image is pushed towards: ``"second"`` (the classifier's second
            most likely class) or ``"random"`` (uniform over the other classes, seeded).
        batch_size, seed, progress: see :class:`~guardnet.eval.attacks.Attack`.

    Where the label never leaves the true one within ``max_iterations``, the last iterate comes
    back (it does not fool the classifier, so it counts as a failure).

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
        >>> JSMA(net, max_iterations=20)(torch.rand(2, 3, 2, 2), torch.tensor([0, 1])).shape
        torch.Size([2, 3, 2, 2])
    """

    name: ClassVar[str] = "jsma"

    def __init__(
        self,
        model: nn.Module,
        *,
        max_iterations: int = 2000,
        theta: float = 0.1,
        max_changes_per_feature: int = 7,
        target: str = "second",
        batch_size: int = 256,
        seed: int = 0,
        progress: bool = False,
    ) -> None:
        if isinstance(max_iterations, bool) or not isinstance(max_iterations, int):
            raise ValueError(f"max_iterations must be an integer, got {max_iterations!r}")
        if max_iterations < 1:
            raise ValueError(f"max_iterations must be >= 1, got {max_iterations}")
        if not 0.0 < theta <= 1.0:
            raise ValueError(f"theta must be in (0, 1], got {theta}")
        if max_changes_per_feature < 1:
            raise ValueError(f"max_changes_per_feature must be >= 1, got {max_changes_per_feature}")
        if target not in TARGET_RULES:
            raise ValueError(f"target must be one of {TARGET_RULES}, got {target!r}")
        super().__init__(model, batch_size=batch_size, seed=seed, progress=progress)
        self.max_iterations = max_iterations
        self.theta = float(theta)
        self.max_changes_per_feature = int(max_changes_per_feature)
        self.target = target

    def params(self) -> dict[str, Any]:
        return {
            "max_iterations": self.max_iterations,
            "theta": self.theta,
            "max_changes_per_feature": self.max_changes_per_feature,
            "target": self.target,
        }

    def targets(self, logits: Tensor, labels: Tensor, generator: torch.Generator) -> Tensor:
        """The class each image is pushed towards: never its label."""
        return choose_targets(logits, labels, self.target, generator=generator)

    def perturb(self, images: Tensor, labels: Tensor, generator: torch.Generator) -> Tensor:
        with torch.no_grad():
            logits = self.model(images)
        with torch.enable_grad():
            adversarial, _ = saliency_map_attack(
                self.model,
                images,
                labels,
                self.targets(logits, labels, generator),
                limit=self.max_iterations,
                theta=self.theta,
                max_changes_per_feature=self.max_changes_per_feature,
            )
        return adversarial
