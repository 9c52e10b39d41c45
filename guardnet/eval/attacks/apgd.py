"""Auto-PGD (APGD): Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble
of diverse parameter-free attacks", ICML 2020 (Sec. 3, Algorithm 1).

PGD without a step size to tune. The step starts at ``2 eps`` and is halved, per image, at
checkpoints ``w_j`` where progress stalled; each iterate mixes the projected signed-gradient
step ``z`` with the previous move (momentum ``alpha = 0.75``)::

    z       = P(x_k + eta_k sign(grad f(x_k)))                       (L2: normalised gradient)
    x_{k+1} = P(x_k + alpha (z - x_k) + (1 - alpha)(x_k - x_{k-1}))  (x_1 = z)

Checkpoints: ``w_j = p_j * steps`` with ``p_0 = 0``, ``p_1 = 0.22`` and
``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``, computed on integers as the authors' code
does (:func:`apgd_checkpoints`; 100 steps: 22, 41, 57, 70, 80, 87, 93, 99). At ``w_j`` an image's
step is halved, and it restarts from its best point so far, when

1. fewer than ``rho * (w_j - w_{j-1})`` of the steps since ``w_{j-1}`` raised its loss
   (``rho = 0.75``), or
2. its step was not halved at ``w_{j-1}`` and its best loss has not risen since.

The losses are cross-entropy (APGD-CE) or the DLR loss (APGD-DLR), untargeted or targeted (see
:mod:`~guardnet.eval.attacks.losses`). The start is a uniform point of the budget ball (the
authors start on its surface); an increase is counted against the loss at the point a step
starts from, so after a restart against the best loss.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from guardnet.eval.attacks import norms
from guardnet.eval.attacks.base import Attack
from guardnet.eval.attacks.losses import LOSSES, loss_and_gradient
from guardnet.eval.attacks.norms import Norm
from guardnet.eval.attacks.pgd import _check_steps

__all__ = ["APGD", "apgd", "apgd_checkpoints"]


def apgd_checkpoints(steps: int) -> list[int]:
    """The iterations after which APGD checks each image's progress.

    Periods start at ``int(0.22 steps)`` and shrink by ``int(0.03 steps)`` down to
    ``int(0.06 steps)`` (each at least 1).

    Example:
        >>> apgd_checkpoints(100)
        [22, 41, 57, 70, 80, 87, 93, 99]
    """
    period = max(int(0.22 * steps), 1)
    shrink, shortest = max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    points: list[int] = []
    at = period
    while at <= steps:
        points.append(at)
        period = max(period - shrink, shortest)
        at += period
    return points


def _rows(mask: Tensor, like: Tensor) -> Tensor:
    return mask.view(-1, *([1] * (like.ndim - 1)))


def apgd(
    model: Callable[[Tensor], Tensor],
    images: Tensor,
    labels: Tensor,
    *,
    eps: float | Tensor,
    steps: int = 100,
    norm: Norm = "Linf",
    loss: str = "ce",
    targets: Tensor | None = None,
    rho: float = 0.75,
    momentum: float = 0.75,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """APGD on a batch (the function behind :class:`APGD`); one run, no restarts.

    The model is used as it is (put it in eval mode first; :class:`APGD` does).

    Args:
        model: [0, 1] images -> logits.
        images: (B, C, H, W) clean images in [0, 1].
        labels: (B,) true labels.
        eps: budget (float or (B,)).
        steps: iterations.
        norm: ``"Linf"`` or ``"L2"``.
        loss: ``"ce"`` or ``"dlr"`` (a key of :data:`~guardnet.eval.attacks.losses.LOSSES`).
        targets: (B,) target labels for a targeted loss; success is still any wrong label.
        rho: the share of loss-raising steps below which a checkpoint halves the step.
        momentum: weight of the new step against the previous move.
        generator: random generator of the start (on the images' device).

    Returns:
        ``(adversarial, fooled)``: per image the last iterate the model misclassified, or the
        input where none was (and where the model already misclassifies the input); and the
        (B,) mask of images the returned adversarial is misclassified for.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
        >>> x = torch.rand(4, 3, 2, 2)
        >>> adv, fooled = apgd(net, x, net(x).argmax(1), eps=0.1, steps=10)
        >>> bool((adv - x).abs().max() <= 0.1 + 1e-6), fooled.shape
        (True, torch.Size([4]))
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {loss!r}")
    loss_fn = LOSSES[loss]
    images = images.detach()
    n = images.shape[0]
    with torch.no_grad():
        clean_fooled = model(images).argmax(dim=1) != labels

    x = norms.random_start(images, eps, norm, generator)
    value, logits, grad = loss_and_gradient(model, x, labels, loss=loss_fn, targets=targets)
    fooled = logits.argmax(dim=1) != labels
    found = torch.where(_rows(fooled, x), x, images)
    best_value, x_best, grad_best = value, x, grad
    radius = eps.to(images) if isinstance(eps, Tensor) else torch.full((n,), float(eps))
    eta = 2 * radius.to(images.device, images.dtype)
    x_prev = x
    previous = value
    increases = torch.zeros(n, device=images.device)
    halved_last = torch.zeros(n, dtype=torch.bool, device=images.device)
    best_at_check = best_value
    checkpoints = set(apgd_checkpoints(steps))
    last_check = 0
    for k in range(1, steps + 1):
        z = norms.step(x, images, grad, alpha=eta, eps=eps, norm=norm)
        if k > 1:
            z = norms.project(
                x + momentum * (z - x) + (1 - momentum) * (x - x_prev), images, eps, norm
            )
        x_prev, x = x, z
        value, logits, grad = loss_and_gradient(model, x, labels, loss=loss_fn, targets=targets)
        now = logits.argmax(dim=1) != labels
        found = torch.where(_rows(now, x), x, found)
        fooled = fooled | now
        increases += (value > previous).float()
        previous = value
        better = value > best_value
        x_best = torch.where(_rows(better, x), x, x_best)
        grad_best = torch.where(_rows(better, x), grad, grad_best)
        best_value = torch.where(better, value, best_value)
        if k in checkpoints:
            stalled = increases < rho * (k - last_check)
            halve = stalled | (~halved_last & (best_value <= best_at_check))
            eta = torch.where(halve, eta / 2, eta)
            x = torch.where(_rows(halve, x), x_best, x)
            grad = torch.where(_rows(halve, x), grad_best, grad)
            previous = torch.where(halve, best_value, previous)
            halved_last, best_at_check, last_check = halve, best_value, k
            increases.zero_()
    adversarial = torch.where(_rows(clean_fooled, images), images, found)
    return adversarial, clean_fooled | fooled


class APGD(Attack):
    """Untargeted APGD on a classifier (Croce & Hein, ICML 2020): APGD-CE by default.

    Args:
        model: the classifier: [0, 1] images -> logits (normalisation inside).
        eps: the budget on the [0, 1] scale (L-inf, or L2 with ``norm="L2"``).
        steps: iterations (the paper's 100).
        norm: ``"Linf"`` or ``"L2"``.
        loss: ``"ce"`` (APGD-CE) or ``"dlr"`` (APGD-DLR).
        rho: checkpoint threshold on the share of loss-raising steps (0.75).
        momentum: the paper's ``alpha`` (0.75).
        batch_size, seed, progress: see :class:`~guardnet.eval.attacks.Attack`.

    Returns (when called) the input for images it does not fool, as AutoAttack does.

    Shape:
        images (B, C, H, W) in [0, 1] and labels (B,) -> (B, C, H, W).

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
        >>> APGD(net, eps=8 / 255).params()["steps"]
        100
    """

    name: ClassVar[str] = "apgd"

    def __init__(
        self,
        model: nn.Module,
        *,
        eps: float,
        steps: int = 100,
        norm: Norm = "Linf",
        loss: str = "ce",
        rho: float = 0.75,
        momentum: float = 0.75,
        batch_size: int = 256,
        seed: int = 0,
        progress: bool = False,
    ) -> None:
        super().__init__(model, batch_size=batch_size, seed=seed, progress=progress)
        self.eps = norms.check_budget(eps, norm)
        self.steps = _check_steps(steps)
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {loss!r}")
        if not 0 < rho < 1 or not 0 < momentum <= 1:
            raise ValueError(f"need 0 < rho < 1 and 0 < momentum <= 1, got {rho}, {momentum}")
        self.norm: Norm = norm
        self.loss = loss
        self.rho = float(rho)
        self.momentum = float(momentum)

    def params(self) -> dict[str, Any]:
        return {
            "eps": self.eps,
            "steps": self.steps,
            "norm": self.norm,
            "loss": self.loss,
            "rho": self.rho,
            "momentum": self.momentum,
        }

    def perturb(self, images: Tensor, labels: Tensor, generator: torch.Generator) -> Tensor:
        return apgd(self.model, images, labels, generator=generator, **self.params())[0]
