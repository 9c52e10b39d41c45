"""Square Attack on a guard's K+1 outputs: a score-based, gradient-free L-inf attack.

Andriushchenko, Croce, Flammarion and Hein, "Square Attack: a query-efficient black-box
adversarial attack via random search" (ECCV 2020). The perturbation lives on the vertices of the
L-inf ball: it starts as vertical stripes of ``+-eps`` and, at every query, one random square
window (its side shrinks on the paper's schedule) is redrawn to ``+-eps`` per channel; the change
is kept where it lowers the loss. No gradient is used, so layers whose statistic has none (SAEC's
histogram, A2D's counts) are attacked through their exact verdict.

The loss reads the attack view's outputs (:meth:`guardnet.GuardAttackView.logits_and_margins`):
the classifier's margin ``z_y - max_{k != y} z_k`` and every rejector's margin ``m_r`` (> 0
rejects). ``loss="sum"`` (default) is ``max(margin, -kappa) + sum_r max(m_r, -kappa)``: every
term that still blocks success has a say, which suits random search (a max would ignore changes
to all but the largest term). ``loss="max"`` is ``max(margin, max_r m_r)`` floored at
``-kappa``, the K+1-logit "fool the classifier and stay out of the reject class" margin.

All images of a chunk are updated at once (one square per image, per-image positions and signs,
built with index arithmetic, no per-image Python loop); only the images not yet successful are
queried. Each image keeps its first perturbation that fools the classifier and passes the guard.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from guardnet.errors import ConfigError
from guardnet.eval.attacks.adaptive import register_adaptive_attack
from guardnet.eval.attacks.query import GuardQueryAttack, fooled_and_passed
from guardnet.guard import GuardedModel

__all__ = ["SquareAttack", "square_fraction", "square_masks"]

# Query counts (out of 10,000) after which the paper's schedule halves the square's area.
_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def square_fraction(query: int, queries: int, p_init: float) -> float:
    """The share of the image a square covers at ``query`` (of ``queries``).

    The paper's schedule for 10,000 queries, rescaled to ``queries``: ``p_init``, halved after
    queries 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000.

    Example:
        >>> square_fraction(0, 10_000, 0.05), square_fraction(60, 10_000, 0.05)
        (0.05, 0.0125)
    """
    scaled = int(query / queries * 10_000)
    return p_init / 2 ** sum(scaled > t for t in _HALVINGS)


def square_masks(
    size: int, height: int, width: int, batch: int, generator: torch.Generator, device: Any
) -> Tensor:
    """(B, 1, H, W) masks of one ``size`` x ``size`` square per image, at random positions."""
    top = torch.randint(0, height - size + 1, (batch,), generator=generator, device=device)
    left = torch.randint(0, width - size + 1, (batch,), generator=generator, device=device)
    rows = torch.arange(height, device=device)
    cols = torch.arange(width, device=device)
    in_rows = (rows >= top[:, None]) & (rows < top[:, None] + size)  # (B, H)
    in_cols = (cols >= left[:, None]) & (cols < left[:, None] + size)  # (B, W)
    return (in_rows[:, :, None] & in_cols[:, None, :])[:, None]


@register_adaptive_attack
class SquareAttack(GuardQueryAttack):
    """Square Attack (L-inf, score-based) on classifier and guard together.

    Args:
        guard: a calibrated :class:`guardnet.GuardedModel`.
        eps: the L-inf budget.
        queries: forward passes per image (the first one is the stripes' initialisation).
        p_init: the share of the image the first squares cover (the paper's L-inf value).
        loss: ``"sum"`` (hinge sum of the classifier's and every rejector's margin) or ``"max"``
            (the K+1-logit margin); see the module docstring.
        confidence: ``kappa``: how far past each boundary the loss keeps rewarding.
        batch_size, seed, progress: see :class:`~guardnet.eval.attacks.base.Attack`.

    Shape:
        Images (B, C, H, W) in [0, 1]; returns the same shape, within ``eps`` in L-inf.

    Example:
        >>> import torch
        >>> from guardnet import GuardedModel
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
        >>> guard = GuardedModel(net, [], num_classes=4)
        >>> attack = SquareAttack(guard, eps=8 / 255, queries=20)
        >>> attack(torch.rand(2, 3, 8, 8), torch.tensor([0, 1])).shape
        torch.Size([2, 3, 8, 8])
    """

    name: ClassVar[str] = "square"

    def __init__(
        self,
        guard: GuardedModel,
        *,
        eps: float,
        queries: int = 1000,
        p_init: float = 0.05,
        loss: str = "sum",
        confidence: float = 0.0,
        batch_size: int = 256,
        seed: int = 0,
        progress: bool = False,
    ) -> None:
        super().__init__(guard, eps=eps, batch_size=batch_size, seed=seed, progress=progress)
        if queries < 1:
            raise ConfigError(f"queries must be >= 1, got {queries}")
        if not 0 < p_init <= 1:
            raise ConfigError(f"p_init must be in (0, 1], got {p_init}")
        if loss not in ("sum", "max"):
            raise ConfigError(f"loss must be 'sum' or 'max', got {loss!r}")
        if confidence < 0:
            raise ConfigError(f"confidence must be >= 0, got {confidence}")
        self.queries = queries
        self.p_init = float(p_init)
        self.loss = loss
        self.confidence = float(confidence)

    def params(self) -> dict[str, Any]:
        return {
            **super().params(),
            "queries": self.queries,
            "p_init": self.p_init,
            "loss": self.loss,
            "confidence": self.confidence,
        }

    def _loss(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """(B,) loss, minimised, and (B,) success of ``images``."""
        logits, margins = self.scores(images)
        goal = logits.gather(1, labels[:, None]).squeeze(1)
        margin = goal - logits.scatter(1, labels[:, None], float("-inf")).amax(dim=1)
        kappa = self.confidence
        if margins.shape[1] == 0:
            loss = margin.clamp_min(-kappa)
        elif self.loss == "sum":
            loss = margin.clamp_min(-kappa) + margins.clamp_min(-kappa).sum(dim=1)
        else:
            loss = torch.maximum(margin, margins.amax(dim=1)).clamp_min(-kappa)
        return loss, fooled_and_passed(logits, margins, labels)

    def perturb(self, images: Tensor, labels: Tensor, generator: torch.Generator) -> Tensor:
        images = images.detach()
        b, c, h, w = images.shape
        device = images.device
        # Vertical stripes: one sign per (image, channel, column).
        signs = torch.randint(0, 2, (b, c, 1, w), generator=generator, device=device) * 2 - 1
        delta = (signs * self.eps).to(images.dtype).expand_as(images).contiguous()
        loss, done = self._loss((images + delta).clamp(0.0, 1.0), labels)
        for query in range(1, self.queries):
            active = (~done).nonzero().squeeze(1)  # one host sync per query, not per image
            if active.numel() == 0:
                break
            x, d = images[active], delta[active]
            p = square_fraction(query, self.queries, self.p_init)
            size = min(max(round(math.sqrt(p * h * w)), 1), h, w)
            mask = square_masks(size, h, w, active.numel(), generator, device)
            draw = torch.randint(0, 2, (len(x), c, 1, 1), generator=generator, device=device)
            candidate = torch.where(mask, ((draw * 2 - 1) * self.eps).to(d.dtype), d)
            new_loss, success = self._loss((x + candidate).clamp(0.0, 1.0), labels[active])
            better = (new_loss < loss[active]) | success
            delta[active] = torch.where(better[:, None, None, None], candidate, d)
            loss[active] = torch.where(better, new_loss, loss[active])
            done[active] = success
        return (images + delta).clamp(0.0, 1.0)
