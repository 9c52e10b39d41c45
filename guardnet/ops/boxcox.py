"""The Box-Cox power transform and its maximum-likelihood fit, in float64 torch.

A2D's Z-score detectors (Zhao et al., ISSTA 2021, section 4.2) assume clean attack costs are
roughly normal and make them so with a Box-Cox transform (Box and Cox, 1964) fitted on clean
validation costs.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["boxcox", "boxcox_log_likelihood", "fit_boxcox"]

# |lambda| below this is the logarithm (the transform's limit at 0).
_LOG_LIMIT = 1e-9


def _check_positive(values: Tensor) -> None:
    if values.numel() and not bool((values > 0).all()):
        raise ValueError("Box-Cox needs positive values (shift the data first)")


def boxcox(values: Tensor, lam: Tensor | float) -> Tensor:
    """``(x**lam - 1) / lam``, or ``log(x)`` where ``lam`` is 0.

    Args:
        values: positive values, any shape.
        lam: the power, a float or a tensor broadcastable to ``values``.

    Returns:
        The transformed values (monotone increasing in ``values`` for every ``lam``).

    Example:
        >>> boxcox(torch.tensor([1.0, 4.0]), 0.5)
        tensor([0., 2.])
    """
    lam_t = torch.as_tensor(lam, dtype=values.dtype, device=values.device)
    is_log = lam_t.abs() < _LOG_LIMIT
    safe = torch.where(is_log, torch.ones_like(lam_t), lam_t)
    power = torch.expm1(safe * torch.log(values)) / safe
    return torch.where(is_log, torch.log(values), power)


def boxcox_log_likelihood(values: Tensor, lams: Tensor) -> Tensor:
    """The Box-Cox profile log-likelihood of ``values`` (1-D) at each power in ``lams``.

    ``(lam - 1) * sum(log x) - n / 2 * log(var(boxcox(x, lam)))`` with the population variance,
    as in Box and Cox (1964).
    """
    x = values.double().flatten()
    lam = lams.double().flatten()
    transformed = boxcox(x[None, :], lam[:, None])
    variance = transformed.var(dim=1, unbiased=False)
    n = x.numel()
    return (lam - 1) * torch.log(x).sum() - 0.5 * n * torch.log(variance)


def fit_boxcox(values: Tensor, *, lam_range: tuple[float, float] = (-3.0, 3.0)) -> float:
    """The power that maximises the Box-Cox log-likelihood of ``values``.

    A grid of 601 powers over ``lam_range``, then a grid of 201 around the best, so the result
    is deterministic and within 1e-4 of the exact maximiser inside the range.

    Args:
        values: positive values (at least two distinct).
        lam_range: the powers searched.

    Returns:
        The fitted power.

    Raises:
        ValueError: a non-positive value, or fewer than two distinct values.
    """
    x = values.double().flatten()
    _check_positive(x)
    if x.numel() < 2 or bool((x == x[0]).all()):
        raise ValueError("Box-Cox needs at least two distinct values to fit")
    lo, hi = lam_range
    grid = torch.linspace(lo, hi, 601, dtype=torch.float64, device=x.device)
    best = grid[boxcox_log_likelihood(x, grid).nan_to_num(nan=-float("inf")).argmax()]
    width = (hi - lo) / 600
    fine = torch.linspace(
        float(best) - width, float(best) + width, 201, dtype=torch.float64, device=x.device
    )
    return float(fine[boxcox_log_likelihood(x, fine).nan_to_num(nan=-float("inf")).argmax()])
