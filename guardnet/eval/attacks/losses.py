"""Per-image losses that the classifier attacks maximise, and their input gradients.

Every loss maps logits (B, K) and labels (B,) to a (B,) tensor; an attack ascends it. Losses are
summed before the backward pass, so each image's gradient is that of its own loss, whatever else
is in the batch.

Example:
    >>> import torch
    >>> logits = torch.tensor([[3.0, 1.0, 0.0, -1.0]])
    >>> dlr_loss(logits, torch.tensor([0]))  # -(3 - 1) / (3 - 0)
    tensor([-0.6667])
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from guardnet.errors import InputShapeError

__all__ = ["LOSSES", "Loss", "ce_loss", "dlr_loss", "loss_and_gradient"]

#: ``loss(logits, labels, targets)``: (B,) values to maximise; ``targets`` for targeted losses.
Loss = Callable[[Tensor, Tensor, Tensor | None], Tensor]


def ce_loss(logits: Tensor, labels: Tensor, targets: Tensor | None = None) -> Tensor:
    """Cross-entropy of the true label (untargeted), or minus that of the target (targeted).

    Args:
        logits: (B, K).
        labels: (B,) true labels.
        targets: (B,) target labels, or ``None`` for the untargeted loss.

    Returns:
        (B,) losses to maximise.
    """
    if targets is None:
        return F.cross_entropy(logits, labels, reduction="none")
    return -F.cross_entropy(logits, targets, reduction="none")


def dlr_loss(logits: Tensor, labels: Tensor, targets: Tensor | None = None) -> Tensor:
    """The Difference of Logits Ratio of Croce & Hein (ICML 2020, Sec. 4).

    Untargeted: ``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3)``; targeted:
    ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)``, where ``z_pi1 >= z_pi2 >= ...`` are the
    sorted logits (1e-12 added to each denominator). Both are invariant to shifting and scaling
    the logits, which is what makes APGD with this loss hard to mask.

    Args:
        logits: (B, K), K >= 3 (untargeted) or K >= 4 (targeted).
        labels: (B,) true labels.
        targets: (B,) target labels, or ``None`` for the untargeted loss.

    Returns:
        (B,) losses to maximise.

    Raises:
        InputShapeError: too few classes for the ratio.
    """
    need = 3 if targets is None else 4
    if logits.shape[1] < need:
        kind = "untargeted" if targets is None else "targeted"
        raise InputShapeError(
            f"the {kind} DLR loss needs at least {need} classes, the model has {logits.shape[1]}"
        )
    ordered = logits.sort(dim=1, descending=True).values
    true = logits.gather(1, labels[:, None]).squeeze(1)
    if targets is None:
        others = logits.scatter(1, labels[:, None], float("-inf")).amax(dim=1)
        return -(true - others) / (ordered[:, 0] - ordered[:, 2] + 1e-12)
    target = logits.gather(1, targets[:, None]).squeeze(1)
    spread = ordered[:, 0] - 0.5 * (ordered[:, 2] + ordered[:, 3])
    return -(true - target) / (spread + 1e-12)


#: Losses by name.
LOSSES: dict[str, Loss] = {"ce": ce_loss, "dlr": dlr_loss}


def loss_and_gradient(
    model: Callable[[Tensor], Tensor],
    images: Tensor,
    labels: Tensor,
    *,
    loss: Loss = ce_loss,
    targets: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-image loss, logits and the loss's gradient with respect to the images.

    Args:
        model: [0, 1] images -> logits.
        images: (B, ...) points at which to differentiate.
        labels: (B,) true labels.
        loss: one of :data:`LOSSES` (or any function of the same form).
        targets: (B,) target labels for a targeted loss.

    Returns:
        ``(losses (B,), logits (B, K), gradient (B, ...))``, all detached.
    """
    x = images.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        values = loss(logits, labels, targets)
        (grad,) = torch.autograd.grad(values.sum(), x)
    return values.detach(), logits.detach(), grad.detach()
