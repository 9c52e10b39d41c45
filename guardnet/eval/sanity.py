"""Sanity checks of an evaluation (Carlini et al., "On Evaluating Adversarial Robustness", 2019).

- **Budget curves**: an attack's success against its budget. Success must approach 100% as the
  budget grows (at a large enough budget any image can be turned into any other); where it
  stays far below at the largest budget tried, the attack is probably broken (a gradient that
  does not reach, a loss that saturates), not the defense strong.
- **Convergence**: doubling an attack's effort (steps, queries, iterations) should change robust
  accuracy by less than a point; a larger change means the figure was not converged.

Example:
    >>> curve = budget_curve([(8 / 255, 0.4), (32 / 255, 0.55)], min_success=0.9)
    >>> curve["warning"].startswith("success 55.0% at the largest budget")
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["CONVERGENCE_TOLERANCE", "MIN_SUCCESS", "budget_curve", "convergence_check"]

#: Success an attack should reach at the largest budget of its curve.
MIN_SUCCESS = 0.9
#: Most change of robust accuracy when the attack's effort doubles.
CONVERGENCE_TOLERANCE = 0.01


def budget_curve(
    points: Sequence[tuple[float, float]], *, min_success: float = MIN_SUCCESS
) -> dict[str, Any]:
    """An attack's success rate per budget, flagged when it stays low at the largest budget.

    Args:
        points: ``(eps, success rate)`` pairs, success = fooled the classifier and passed the
            guard.
        min_success: the success expected at the largest budget.

    Returns:
        ``eps`` and ``success`` (sorted by budget) and ``warning``: ``None``, or a sentence when
        the curve has at least two budgets and success at the largest is below
        ``min_success`` (one budget says nothing about how the attack scales).
    """
    if not 0 < min_success <= 1:
        raise ValueError(f"min_success must be in (0, 1], got {min_success}")
    ordered = sorted(points)
    eps = [float(e) for e, _ in ordered]
    success = [float(s) for _, s in ordered]
    warning = None
    if len(ordered) >= 2 and success[-1] < min_success:
        warning = (
            f"success {success[-1]:.1%} at the largest budget eps={eps[-1]:.4g} (below "
            f"{min_success:.0%}): the attack may be broken; success should approach 100% as "
            "the budget grows"
        )
    return {"eps": eps, "success": success, "warning": warning}


def convergence_check(
    param: str,
    value: Any,
    robust_accuracy: float,
    doubled_robust_accuracy: float,
    *,
    tolerance: float = CONVERGENCE_TOLERANCE,
) -> dict[str, Any]:
    """The change of robust accuracy when ``param`` doubles, flagged above ``tolerance``.

    Example:
        >>> convergence_check("steps", 50, 0.30, 0.25)["warning"] is not None
        True
    """
    change = doubled_robust_accuracy - robust_accuracy
    warning = None
    if abs(change) >= tolerance:
        warning = (
            f"doubling {param} to {value} changed robust accuracy by {change:+.1%} (at least "
            f"{tolerance:.0%}): the figure has not converged"
        )
    return {
        "param": param,
        "value": value,
        "robust_accuracy": doubled_robust_accuracy,
        "change": change,
        "warning": warning,
    }
