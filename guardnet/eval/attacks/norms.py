"""The threat models: L-inf and L2 balls around the input, intersected with the [0, 1] box.

Pure functions on (B, ...) image batches shared by every gradient attack (guardnet's PGD family,
APGD and the adaptive attacks), so they agree on what a step and a projection are. A budget
``eps`` and a step size ``alpha`` are a float or a (B,) tensor (one value per image).

Example:
    >>> import torch
    >>> x = torch.full((2, 1, 2, 2), 0.5)
    >>> adv = step(x, x, torch.ones_like(x), alpha=0.3, eps=0.1, norm="Linf")
    >>> float((adv - x).abs().max())  # the step overshoots; the projection brings it back
    0.10000002384185791
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

__all__ = ["NORMS", "Norm", "check_budget", "project", "random_start", "step"]

Norm = Literal["Linf", "L2"]

#: The supported norms.
NORMS: tuple[str, ...] = ("Linf", "L2")


def check_budget(eps: float, norm: str) -> float:
    """``eps`` as a float after checking it is > 0 and ``norm`` is known.

    Raises:
        ValueError: ``eps`` is not > 0 or ``norm`` is not one of :data:`NORMS`.
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"eps must be a number > 0, got {eps!r}")
    return float(eps)


def _per_image(value: float | Tensor, like: Tensor) -> float | Tensor:
    """A float as is; a (B,) tensor viewed as (B, 1, ..., 1) to broadcast over ``like``."""
    if isinstance(value, Tensor):
        return value.to(like).view(-1, *([1] * (like.ndim - 1)))
    return value


def _flat_norms(t: Tensor) -> Tensor:
    return t.flatten(1).norm(dim=1)


def project(adv: Tensor, images: Tensor, eps: float | Tensor, norm: Norm) -> Tensor:
    """Project ``adv`` onto the ``eps`` ball around ``images``, then into [0, 1].

    Args:
        adv: (B, ...) candidate points.
        images: (B, ...) centres of the balls.
        eps: the radius (float or (B,)).
        norm: ``"Linf"`` (clip each pixel) or ``"L2"`` (rescale the perturbation).

    Returns:
        (B, ...) projected points.
    """
    if norm == "Linf":
        e = _per_image(eps, images)
        adv = torch.minimum(torch.maximum(adv, images - e), images + e)
    else:
        delta = adv - images
        radius = eps.to(delta) if isinstance(eps, Tensor) else eps
        factor = (radius / _flat_norms(delta).clamp_min(1e-12)).clamp(max=1.0)
        adv = images + delta * _per_image(factor, delta)
    return adv.clamp(0.0, 1.0)


def step(
    adv: Tensor,
    images: Tensor,
    direction: Tensor,
    *,
    alpha: float | Tensor,
    eps: float | Tensor,
    norm: Norm,
) -> Tensor:
    """One projected ascent step along ``direction`` (pass the negated gradient to descend).

    L-inf moves every pixel by ``alpha`` along the direction's sign; L2 moves ``alpha`` along the
    direction normalised per image. The result is projected with :func:`project`.

    Args:
        adv: (B, ...) current iterates.
        images: (B, ...) the clean inputs (centres of the budget balls).
        direction: (B, ...) where to go, usually the loss gradient.
        alpha: step size (float or (B,)).
        eps: budget (float or (B,)).
        norm: ``"Linf"`` or ``"L2"``.

    Returns:
        (B, ...) the next iterates.
    """
    a = _per_image(alpha, adv)
    if norm == "Linf":
        adv = adv + a * direction.sign()
    else:
        lengths = _flat_norms(direction).clamp_min(1e-12)
        adv = adv + a * direction / _per_image(lengths, direction)
    return project(adv, images, eps, norm)


def random_start(
    images: Tensor, eps: float | Tensor, norm: Norm, generator: torch.Generator | None
) -> Tensor:
    """A uniformly random point of the budget ball around each image, clipped to [0, 1].

    L-inf draws each pixel's offset uniformly in ``[-eps, eps]``; L2 draws a Gaussian direction
    and a radius uniform in ``[0, eps]``. The draws come from ``generator`` in a fixed order
    (uniform first, then Gaussian), so a seed gives the same start on every run.

    Args:
        images: (B, ...) centres.
        eps: radius (float or (B,)).
        norm: ``"Linf"`` or ``"L2"``.
        generator: random generator on the images' device (``None``: the global one).

    Returns:
        (B, ...) starting points.
    """
    noise = torch.rand(images.shape, generator=generator, device=images.device)
    if norm == "Linf":
        delta = (noise * 2 - 1) * _per_image(eps, noise)
    else:
        gauss = torch.randn(images.shape, generator=generator, device=images.device)
        radius = noise.flatten(1)[:, 0] * (eps.to(noise) if isinstance(eps, Tensor) else eps)
        delta = gauss * _per_image(radius / _flat_norms(gauss).clamp_min(1e-12), gauss)
    return (images + delta.to(images.dtype)).clamp(0.0, 1.0)
