"""Base of the adaptive attacks that only *query* a guard: no gradient of any layer is used.

A layer without a useful gradient (SAEC's histogram, A2D's attack counts) still decides every
query exactly, so these attacks reach it where gradient attacks, even with BPDA surrogates, may
not. Two levels of access:

- score-based (:class:`guardnet.eval.attacks.square.SquareAttack`): the attack view's K+1
  outputs, i.e. the classifier's logits and every rejector's margin
  (:meth:`guardnet.GuardAttackView.logits_and_margins`), evaluated without gradients;
- decision-based (:class:`guardnet.eval.attacks.hopskipjump.HopSkipJump`): only the guard's
  verdict ``(classifier label, rejected)`` of :meth:`guardnet.GuardedModel.forward`.

Both are L-inf attacks on [0, 1] images and count a query as a success when it *fools the
classifier and passes the guard*, the event robust accuracy counts.
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import torch
from torch import Tensor

from guardnet.errors import ConfigError
from guardnet.eval.attacks.adaptive import check_guard
from guardnet.eval.attacks.base import Attack
from guardnet.guard import GuardAttackView, GuardedModel

__all__ = ["GuardQueryAttack", "fooled_and_passed", "linf_distance", "project_linf"]


def fooled_and_passed(logits: Tensor, margins: Tensor, labels: Tensor) -> Tensor:
    """(B,) the attack view's outputs fool the classifier (any label but ``labels``) and no
    rejector's margin is > 0: the guard's own verdict, from (B, K) logits and (B, R) margins."""
    fooled = logits.argmax(dim=1) != labels
    if margins.shape[1] == 0:
        return fooled
    return fooled & ~(margins > 0).any(dim=1)


def linf_distance(a: Tensor, b: Tensor) -> Tensor:
    """(B,) L-inf distance between two batches of images."""
    return (a - b).flatten(1).abs().amax(dim=1)


def project_linf(images: Tensor, points: Tensor, radius: Tensor | float) -> Tensor:
    """``points`` clipped into the L-inf ball of ``radius`` (scalar or (B,)) around ``images``.

    Shape:
        images, points: (B, C, H, W); radius: () or (B,). Returns (B, C, H, W).
    """
    r = torch.as_tensor(radius, dtype=images.dtype, device=images.device)
    if r.ndim == 1:
        r = r.view(-1, *([1] * (images.ndim - 1)))
    return torch.minimum(torch.maximum(points, images - r), images + r)


class GuardQueryAttack(Attack):
    """Base class: a guard, an L-inf budget and the two query primitives.

    Args:
        guard: a calibrated :class:`guardnet.GuardedModel`.
        eps: the L-inf budget on [0, 1] images.
        batch_size: images per chunk; also the most images in one query forward pass.
        seed, progress: see :class:`~guardnet.eval.attacks.base.Attack`.

    Raises:
        TypeError: ``guard`` is not a :class:`guardnet.GuardedModel`.
        ConfigError: ``eps`` is not > 0.
    """

    name: ClassVar[str] = "guard_query"

    def __init__(
        self,
        guard: GuardedModel,
        *,
        eps: float,
        batch_size: int = 256,
        seed: int = 0,
        progress: bool = False,
    ) -> None:
        check_guard(self, guard)
        if not eps > 0:
            raise ConfigError(f"eps must be > 0, got {eps}")
        super().__init__(guard, batch_size=batch_size, seed=seed, progress=progress)
        self.guard = guard
        self.eps = float(eps)
        self._view: GuardAttackView | None = None

    def params(self) -> dict[str, Any]:
        return {"eps": self.eps, "norm": "Linf"}

    @property
    def view(self) -> GuardAttackView:
        """The guard's attack view, exact forward (no surrogate layers: nothing is derived)."""
        if self._view is None:
            with warnings.catch_warnings():  # "no rejecting layer is differentiable": no matter
                warnings.simplefilter("ignore", UserWarning)
                self._view = self.guard.attack_view(bpda=False)
        return self._view

    @torch.no_grad()
    def scores(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """The classifier's logits (B, K) and the rejectors' margins (B, R), > 0 rejects."""
        parts = [self.view.logits_and_margins(chunk) for chunk in images.split(self.batch_size)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    @torch.no_grad()
    def decide(self, images: Tensor, labels: Tensor) -> Tensor:
        """(B,) ``True`` where ``images`` fool the classifier (label != ``labels``) and pass."""
        out = []
        for x, y in zip(images.split(self.batch_size), labels.split(self.batch_size), strict=True):
            result = self.guard(x)
            out.append((result.classifier_labels != y) & ~result.rejected)
        return torch.cat(out)
