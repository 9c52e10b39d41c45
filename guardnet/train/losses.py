"""The losses of ContraNet's training stages (the classifier trainer uses plain cross-entropy).

Pure functions on batches, each with its formula:

* :func:`kl_to_standard_normal`: the encoder's KL term.
* :func:`hinge_discriminator_loss`: the hinge loss of D_phi, D_aux and Dis.
* :func:`triplet_cross_modal` and :func:`supcon_cross_modal`: the metric losses of the DMM's
  ``dmm_pretrain`` stage between input features and rebuild features.

Example:
    >>> import torch
    >>> float(hinge_discriminator_loss(torch.full((4,), 2.0), torch.full((4,), -2.0)))
    0.0
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "hinge_discriminator_loss",
    "kl_to_standard_normal",
    "supcon_cross_modal",
    "triplet_cross_modal",
]


def kl_to_standard_normal(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, 1)) summed over dims, mean over the batch.

    Args:
        mu: ``(B, D)`` means.
        logvar: ``(B, D)`` log-variances.

    Returns:
        A scalar.

    Example:
        >>> float(kl_to_standard_normal(torch.zeros(3, 8), torch.zeros(3, 8)))
        0.0
    """
    return 0.5 * (mu.square() + logvar.exp() - 1 - logvar).sum(dim=1).mean()


def hinge_discriminator_loss(real: Tensor, fake: Tensor) -> Tensor:
    """Hinge loss of a discriminator: ``mean(relu(1 - real)) + mean(relu(1 + fake))``.

    Args:
        real: Logits of the inputs that should score high.
        fake: Logits of the inputs that should score low.

    Returns:
        A scalar; 0 once every real logit is >= 1 and every fake one <= -1.
    """
    return F.relu(1 - real).mean() + F.relu(1 + fake).mean()


def triplet_cross_modal(a: Tensor, p: Tensor, labels: Tensor, margin: float) -> Tensor:
    """Batch-hard triplet loss between input features ``a`` and rebuild features ``p``.

    Anchor ``a[i]``, positive ``p[i]`` (its own rebuild), negative the nearest ``p[j]`` of
    another class; symmetric in the two modalities.

    Args:
        a: ``(B, D)`` features of the inputs.
        p: ``(B, D)`` features of their rebuilds.
        labels: ``(B,)`` classes.
        margin: Margin on the distance of L2-normalised features.

    Returns:
        A scalar.
    """
    a, p = F.normalize(a, dim=1), F.normalize(p, dim=1)
    distances = torch.cdist(a, p)
    same = labels[:, None] == labels[None, :]
    positive = distances.diagonal()
    masked = distances.masked_fill(same, float("inf"))
    loss = F.relu(positive - masked.amin(dim=1) + margin) + F.relu(
        positive - masked.amin(dim=0) + margin
    )
    return loss.mean() / 2


def supcon_cross_modal(
    a: Tensor,
    p: Tensor,
    labels: Tensor,
    temperature: float,
    *,
    a_labels: Tensor | None = None,
) -> Tensor:
    """Supervised contrastive loss over input features ``a`` and rebuild features ``p``.

    Both modalities form one batch of normalised features; each one's positives are all
    others of its class (its own rebuild or input among them), the rest are negatives
    (Khosla et al., 2020, eq. 2).

    Args:
        a: ``(A, D)`` features of the inputs.
        p: ``(B, D)`` features of the rebuilds.
        labels: ``(B,)`` classes of ``p`` and, unless ``a_labels`` is given, of ``a`` too.
        temperature: Softmax temperature.
        a_labels: ``(A,)`` classes of ``a`` when it holds more rows than ``p`` (e.g.
            adversarial copies of some inputs).

    Returns:
        A scalar.
    """
    a_labels = labels if a_labels is None else a_labels
    z = F.normalize(torch.cat([a, p]), dim=1)
    y = torch.cat([a_labels, labels])
    self_pair = torch.eye(z.shape[0], dtype=torch.bool, device=z.device)
    logits = (z @ z.T / temperature).masked_fill(self_pair, float("-inf"))
    log_prob = logits - logits.logsumexp(dim=1, keepdim=True)
    positive = (y[:, None] == y[None, :]) & ~self_pair
    per_anchor = log_prob.masked_fill(~positive, 0.0).sum(dim=1) / positive.sum(dim=1)
    return -per_anchor.mean()
