"""What a threshold set on n clean scores promises about new clean inputs.

Put the n calibration scores and one new clean input's score together: if they are exchangeable
(drawn the same way, e.g. i.i.d.), the new one is equally likely to hold each of the n + 1 ranks.
A threshold that rejects the new input only when it lands among the top ``j`` of those n + 1
"rank slots" therefore rejects it with probability ``j / (n + 1)``, whatever the score's
distribution. With a target rate ``alpha`` the most slots one may use is
``floor((n + 1) * alpha)``: the single-threshold rule
(:func:`guardnet.thresholds.threshold_at_fpr`) puts the threshold at the
``ceil((n + 1) * (1 - alpha))``-th smallest score and rejects strictly beyond it.

That expectation is over calibration sets too. For the one calibration set a user has, the rate
the fixed thresholds reject on the whole clean distribution is itself random: with ``j`` slots it
follows a ``Beta(j, n + 1 - j)`` law, and the rate on a test set of N images a beta-binomial
one. :func:`fpr_interval` gives both intervals. The functions here are plain arithmetic on
(n, j, alpha); they know nothing of scores or guards.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction

import torch
from torch import Tensor

from guardnet.errors import CalibrationError

__all__ = [
    "beta_cdf",
    "beta_quantile",
    "check_target_fpr",
    "expected_fpr",
    "fpr_interval",
    "min_calibration_size",
    "rejection_slots",
]

_BISECTION_STEPS = 64  # halves [0, 1] down to float64 resolution


def check_target_fpr(target_fpr: float) -> None:
    """Raise :class:`~guardnet.errors.CalibrationError` unless ``target_fpr`` is in [0, 1)."""
    if not 0.0 <= target_fpr < 1.0:
        raise CalibrationError(f"target_fpr must be in [0, 1), got {target_fpr}")


def _exact_rate(target_fpr: float) -> Fraction:
    """``target_fpr`` as the decimal the user wrote (0.29, not 0.28999999999999998)."""
    check_target_fpr(target_fpr)
    return Fraction(repr(float(target_fpr)))


def rejection_slots(num_samples: int, target_fpr: float) -> int:
    """The most rank slots a guard calibrated on ``num_samples`` clean scores may use.

    ``floor((n + 1) * target_fpr)``: a new clean input is then rejected with probability at most
    ``slots / (n + 1) <= target_fpr``. 0 means no threshold can reject anything with that
    guarantee.

    Args:
        num_samples: n, the number of clean calibration scores (>= 0).
        target_fpr: the rate, in [0, 1).

    Returns:
        The slot count, in [0, n].

    Example:
        >>> rejection_slots(500, 0.05), rejection_slots(18, 0.05), rejection_slots(19, 0.05)
        (25, 0, 1)
    """
    if num_samples < 0:
        raise CalibrationError(f"num_samples must be >= 0, got {num_samples}")
    return math.floor((num_samples + 1) * _exact_rate(target_fpr))


def min_calibration_size(target_fpr: float, slots: int = 1) -> int:
    """The fewest clean calibration images that give ``slots`` rank slots at ``target_fpr``.

    A threshold needs at least one slot to reject anything, so a guard with L thresholds that
    share the budget needs ``min_calibration_size(target_fpr, L)`` images before every threshold
    can take part (and many more before their rates are precise, see :func:`fpr_interval`).

    Args:
        target_fpr: the rate, in (0, 1).
        slots: the slots needed (>= 1).

    Returns:
        The smallest n with ``floor((n + 1) * target_fpr) >= slots``.

    Example:
        >>> min_calibration_size(0.05), min_calibration_size(0.05, slots=4)
        (19, 79)
    """
    rate = _exact_rate(target_fpr)
    if rate == 0:
        raise CalibrationError("target_fpr 0 rejects nothing whatever the calibration size")
    if slots < 1:
        raise CalibrationError(f"slots must be >= 1, got {slots}")
    return max(math.ceil(slots / rate) - 1, 0)


def expected_fpr(slots: int, num_samples: int) -> float:
    """The probability that a new clean input is rejected: ``slots / (n + 1)``.

    Exact for continuous scores (ties only lower it); over calibration sets and new inputs.

    Example:
        >>> round(expected_fpr(25, 500), 6)
        0.0499
    """
    _check_slots(slots, num_samples)
    return slots / (num_samples + 1)


def _check_slots(slots: int, num_samples: int) -> None:
    if not 0 <= slots <= num_samples + 1:
        raise CalibrationError(f"need 0 <= slots <= n + 1, got {slots} slots with n={num_samples}")


def _check_beta_parameters(a: int, b: int) -> None:
    if int(a) != a or int(b) != b or a < 1 or b < 1:
        raise CalibrationError(f"Beta parameters must be integers >= 1, got a={a}, b={b}")


def _unit_interval(values: Tensor | float, message: str) -> Tensor:
    """``values`` in float64, checked to lie in [0, 1]."""
    values = torch.as_tensor(values, dtype=torch.float64)
    if bool(((values < 0) | (values > 1) | values.isnan()).any()):
        raise CalibrationError(message)
    return values


def _beta_cdf_of(a: int, b: int) -> Callable[[Tensor], Tensor]:
    """``I_x(a, b)`` as a function of float64 ``x``, its binomial coefficients computed once."""
    trials = a + b - 1
    # P(>= a) has b terms, P(<= a - 1) has a: sum the shorter side.
    upper = b <= a
    k = (torch.arange(a, trials + 1) if upper else torch.arange(0, a)).to(torch.float64)
    log_choose = math.lgamma(trials + 1) - torch.lgamma(k + 1) - torch.lgamma(trials - k + 1)

    def cdf(x: Tensor) -> Tensor:
        flat = x.reshape(-1, 1)
        log_terms = log_choose + torch.xlogy(k, flat) + torch.special.xlog1py(trials - k, -flat)
        tail = torch.logsumexp(log_terms, dim=1).exp().clamp(0.0, 1.0)  # (X,)
        return (tail if upper else 1.0 - tail).reshape(x.shape)

    return cdf


def beta_cdf(x: Tensor | float, a: int, b: int) -> Tensor:
    """The regularised incomplete beta function ``I_x(a, b)`` for integer ``a, b >= 1``.

    Uses the order-statistic identity ``I_x(a, b) = P(Binomial(a + b - 1, x) >= a)`` and sums the
    shorter tail of binomial terms in log space (float64): the absolute error stays near 1e-10
    for ``a + b`` up to 1e5. Integer parameters are all that order statistics of n scores need.

    Args:
        x: points in [0, 1], any shape.
        a: first shape parameter.
        b: second shape parameter.

    Returns:
        ``I_x(a, b)`` in float64, shaped like ``x``.

    Example:
        >>> beta_cdf(torch.tensor([0.25, 0.5]), 2, 2)
        tensor([0.1563, 0.5000], dtype=torch.float64)
    """
    _check_beta_parameters(a, b)
    return _beta_cdf_of(a, b)(_unit_interval(x, "beta_cdf needs points in [0, 1]"))


def beta_quantile(q: Tensor | float, a: int, b: int) -> Tensor:
    """The inverse of :func:`beta_cdf` in ``x``: the ``q``-quantile of ``Beta(a, b)``.

    Bisection on [0, 1] (the CDF is increasing), all quantiles at once.

    Args:
        q: probabilities in [0, 1], any shape.
        a: first shape parameter (integer >= 1).
        b: second shape parameter (integer >= 1).

    Returns:
        The quantiles in float64, shaped like ``q``.

    Example:
        >>> beta_quantile(torch.tensor([0.5, 0.75]), 1, 1)
        tensor([0.5000, 0.7500], dtype=torch.float64)
    """
    _check_beta_parameters(a, b)
    q = _unit_interval(q, "beta_quantile needs probabilities in [0, 1]")
    cdf = _beta_cdf_of(a, b)
    low, high = torch.zeros_like(q), torch.ones_like(q)
    for _ in range(_BISECTION_STEPS):
        mid = (low + high) / 2
        below = cdf(mid) < q
        low = torch.where(below, mid, low)
        high = torch.where(below, high, mid)
    return high


def _beta_binomial_quantiles(q: Tensor, trials: int, a: int, b: int) -> Tensor:
    """Smallest counts c with ``P(C <= c) >= q`` for ``C ~ BetaBinomial(trials, a, b)``."""
    c = torch.arange(trials + 1, dtype=torch.float64)
    log_pmf = (
        math.lgamma(trials + 1)
        - torch.lgamma(c + 1)
        - torch.lgamma(trials - c + 1)
        + torch.lgamma(c + a)
        + torch.lgamma(trials - c + b)
        - math.lgamma(trials + a + b)
        - (math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))
    )
    cdf = torch.cumsum(log_pmf.exp(), dim=0)
    cdf = cdf / cdf[-1]  # rounding only: the pmf sums to 1
    index = torch.searchsorted(cdf, q.clamp(max=1.0) - 1e-12)
    return index.clamp(max=trials).to(torch.float64)


def fpr_interval(
    slots: int, num_samples: int, *, level: float = 0.95, test_size: int | None = None
) -> tuple[float, float]:
    """A central interval of the false-positive rate of thresholds calibrated with ``slots``.

    Without ``test_size``: the rate the thresholds have on the whole clean distribution, which
    over calibration sets follows ``Beta(slots, n + 1 - slots)`` (exact for one continuous
    score); ``level`` of all calibration sets give thresholds whose rate lies inside. With
    ``test_size`` N: the rate measured on N new clean images, which adds the test set's own
    sampling (beta-binomial counts); a measured clean rate outside it is a sign that the test
    images are not exchangeable with the calibration images.

    Args:
        slots: the rank slots the thresholds use (0 to n + 1).
        num_samples: n, the clean calibration images.
        level: the probability inside the interval, in (0, 1).
        test_size: N, the size of a clean test set (>= 1), or ``None``.

    Returns:
        ``(low, high)`` rates; ``(0.0, 0.0)`` when ``slots`` is 0 (nothing is ever rejected).

    Example:
        >>> low, high = fpr_interval(25, 500)
        >>> round(low, 4), round(high, 4)
        (0.0326, 0.0706)
    """
    _check_slots(slots, num_samples)
    if not 0.0 < level < 1.0:
        raise CalibrationError(f"level must be in (0, 1), got {level}")
    if test_size is not None and test_size < 1:
        raise CalibrationError(f"test_size must be >= 1, got {test_size}")
    if slots == 0:
        return 0.0, 0.0
    if slots == num_samples + 1:
        return 1.0, 1.0
    tails = torch.tensor([(1.0 - level) / 2, (1.0 + level) / 2], dtype=torch.float64)
    a, b = slots, num_samples + 1 - slots
    if test_size is None:
        low, high = beta_quantile(tails, a, b).tolist()
    else:
        low, high = (_beta_binomial_quantiles(tails, test_size, a, b) / test_size).tolist()
    return low, high
