"""Thresholds from clean scores at a target false-positive rate, with a finite-sample guarantee.

A threshold is a promise about how many *clean* inputs a detector rejects, so it is set on clean
calibration scores alone. With n clean scores and target ``alpha``, :func:`threshold_at_fpr`
rejects strictly beyond the ``ceil((n + 1) * (1 - alpha))``-th smallest suspicion score: a new
clean input drawn like the calibration ones is then rejected with probability at most ``alpha``
(``floor((n + 1) * alpha) / (n + 1)``, see :mod:`guardnet.conformal`), not only about ``alpha``
of the calibration scores.

:func:`joint_thresholds` sets several thresholds whose OR keeps that guarantee: each key's
threshold moves out one calibration input at a time, in proportion to its budget share, while
the rank slots the union occupies stay within ``floor((n + 1) * alpha)`` (the counting rule is
:func:`_occupied_slots`). :func:`choose_budget` picks the shares that reject the most of a set of
positive inputs. Nothing here knows about layers or guards: inputs are score tensors.
"""

from __future__ import annotations

import inspect
import itertools
import math
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from guardnet.conformal import (
    check_target_fpr,
    expected_fpr,
    min_calibration_size,
    rejection_slots,
)
from guardnet.errors import CalibrationError, CalibrationWarning

__all__ = [
    "BudgetChoice",
    "JointThresholds",
    "calibration_size_problem",
    "choose_budget",
    "false_positive_rate",
    "joint_thresholds",
    "threshold_at_fpr",
]

_METHODS = ("conformal", "empirical")
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _check_scores(scores: Tensor, name: str = "calibration") -> None:
    if scores.ndim != 1 or scores.numel() == 0:
        raise CalibrationError(f"need a non-empty 1-D tensor of scores, got {tuple(scores.shape)}")
    if not bool(torch.isfinite(scores).all()):
        raise CalibrationError(f"{name} scores contain NaN or Inf")


def _suspicion(scores: Tensor, higher_is_suspicious: bool) -> Tensor:
    """Scores flipped so that higher always means more suspicious."""
    return scores if higher_is_suspicious else -scores


def _rejects_nothing(like: Tensor, higher_is_suspicious: bool) -> Tensor:
    """The threshold no finite score is beyond: +inf, or -inf for a low suspicious side."""
    return like.new_tensor(float("inf") if higher_is_suspicious else float("-inf"))


def _beyond(scores: Tensor, threshold: Tensor | float, higher_is_suspicious: bool) -> Tensor:
    """Boolean mask of ``scores`` strictly on the suspicious side of ``threshold``."""
    return scores > threshold if higher_is_suspicious else scores < threshold


def _warn(message: str) -> None:
    """A :class:`CalibrationWarning` attributed to the first caller outside guardnet."""
    frame, level = inspect.currentframe(), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, CalibrationWarning, stacklevel=level)


def calibration_size_problem(
    num_samples: int, target_fpr: float, shares: Mapping[str, float] | None = None
) -> str | None:
    """Why ``num_samples`` clean images are too few for ``target_fpr`` and these thresholds.

    Every threshold needs one of the ``floor((n + 1) * target_fpr)`` rank slots to reject
    anything (see :func:`guardnet.conformal.rejection_slots`). With no slot at all, every
    threshold rejects nothing; with fewer slots than a threshold's budget share asks for, that
    threshold may reject nothing. :func:`threshold_at_fpr`, :func:`joint_thresholds` and
    :meth:`guardnet.GuardedModel.calibrate` warn (:class:`~guardnet.errors.CalibrationWarning`)
    with this text.

    Args:
        num_samples: n, the clean calibration images.
        target_fpr: the rate, in [0, 1).
        shares: relative budget shares (>= 0) per threshold; ``None``: one threshold.

    Returns:
        The problem and the n that avoids it, or ``None`` when n suffices.

    Example:
        >>> print(calibration_size_problem(10, 0.05))  # doctest: +NORMALIZE_WHITESPACE
        target_fpr=0.05 needs at least 19 clean calibration images before a threshold can reject
        anything with a finite-sample guarantee, got 10: thresholds are set to reject nothing
        >>> calibration_size_problem(500, 0.05, dict.fromkeys("abcd", 1.0)) is None
        True
    """
    check_target_fpr(target_fpr)
    if target_fpr == 0:
        return None
    slots = rejection_slots(num_samples, target_fpr)
    if slots == 0:
        return (
            f"target_fpr={target_fpr:g} needs at least {min_calibration_size(target_fpr)} clean "
            f"calibration images before a threshold can reject anything with a finite-sample "
            f"guarantee, got {num_samples}: thresholds are set to reject nothing"
        )
    positive = {k: w for k, w in (shares or {"score": 1.0}).items() if w > 0}
    if not positive:
        return None
    total = sum(positive.values())
    short = [k for k, w in positive.items() if slots * w / total < 1]
    if not short:
        return None
    # Slots the smallest share needs for one of its own (tolerating float rounding of shares).
    needed = math.ceil(total / min(positive.values()) - 1e-9)
    return (
        f"{num_samples} clean calibration images give {slots} rank slot(s) at "
        f"target_fpr={target_fpr:g}, under one each for {short} ({len(positive)} thresholds "
        f"share them): those may reject nothing; "
        f"{min_calibration_size(target_fpr, needed)} images give each threshold at least one"
    )


def threshold_at_fpr(
    scores: Tensor,
    target_fpr: float,
    *,
    higher_is_suspicious: bool = True,
    method: str = "conformal",
) -> Tensor:
    """The threshold that rejects a new clean input with probability at most ``target_fpr``.

    ``method="conformal"`` (default): with n clean scores the threshold is the
    ``ceil((n + 1) * (1 - target_fpr))``-th smallest suspicion score, and inputs strictly
    beyond it are rejected, so ``floor((n + 1) * target_fpr) - 1`` calibration scores are. A new
    clean input exchangeable with them (drawn the same way) is rejected with probability
    ``floor((n + 1) * target_fpr) / (n + 1) <= target_fpr``; ties only lower it. When
    ``(n + 1) * target_fpr < 1`` no threshold has that guarantee: the result rejects nothing
    (+inf, or -inf for a low side) and a :class:`~guardnet.errors.CalibrationWarning` says how
    many scores are needed.

    ``method="empirical"``: ``floor(n * target_fpr)`` calibration scores lie beyond the
    threshold. That is the rate on the calibration data only; a new input is rejected with
    probability ``(floor(n * target_fpr) + 1) / (n + 1)``, which can exceed ``target_fpr``.

    Args:
        scores: (N,) clean scores, all finite.
        target_fpr: the rate, in [0, 1).
        higher_is_suspicious: which side is rejected.
        method: ``"conformal"`` or ``"empirical"``.

    Returns:
        A 0-d tensor of the scores' dtype.

    Example:
        >>> threshold_at_fpr(torch.arange(100.0), 0.05)  # 96..99 beyond: 4 of 100; 5/101 new
        tensor(95.)
        >>> threshold_at_fpr(torch.arange(100.0), 0.05, method="empirical")
        tensor(94.)
    """
    check_target_fpr(target_fpr)
    if method not in _METHODS:
        raise CalibrationError(f"method must be one of {_METHODS}, got {method!r}")
    _check_scores(scores)
    n = scores.numel()
    if method == "conformal":
        slots = rejection_slots(n, target_fpr)
    else:  # floor(n * target_fpr) scores beyond, so the threshold is the next one
        slots = rejection_slots(n - 1, target_fpr) + 1
    if slots == 0:
        problem = calibration_size_problem(n, target_fpr)
        if problem is not None:
            _warn(problem)
        return _rejects_nothing(scores, higher_is_suspicious)
    suspicion = _suspicion(scores, higher_is_suspicious)
    # The slots-th largest is the (n + 1 - slots)-th smallest.
    return _suspicion(torch.kthvalue(suspicion, n + 1 - slots).values, higher_is_suspicious)


def false_positive_rate(
    scores: Tensor, threshold: Tensor | float, *, higher_is_suspicious: bool = True
) -> float:
    """Fraction of ``scores`` strictly on the suspicious side of ``threshold``."""
    rejected = _beyond(scores, threshold, higher_is_suspicious)
    # Exact count / n in Python floats: a float32 mean would put 5/100 above 0.05.
    return int(rejected.sum()) / scores.numel() if scores.numel() else 0.0


def _share_weights(names: Sequence[str], budget: Mapping[str, float] | None) -> dict[str, float]:
    """Checked relative shares per name (missing names get 1)."""
    unknown = set(budget or {}) - set(names)
    if unknown:
        raise CalibrationError(f"budget names unknown layers {sorted(unknown)}; layers: {names}")
    weights = {n: float((budget or {}).get(n, 1.0)) for n in names}
    if any(not w >= 0 for w in weights.values()) or not any(w > 0 for w in weights.values()):
        raise CalibrationError(f"budget shares must be >= 0 and not all 0, got {weights}")
    return weights


def _check_same_sizes(scores: Mapping[str, Tensor]) -> None:
    sizes = {scores[n].numel() for n in scores}
    if len(sizes) != 1:
        raise CalibrationError(f"layers scored different numbers of inputs: {sorted(sizes)}")


@dataclass(frozen=True)
class _Ranked:
    """Clean scores of L keys on the same n inputs, each key's ranked once.

    ``values[l, p]``: the p-th largest suspicion score of key l (float64); ``order[l, p]``: the
    input holding it; ``ranks[l, i]``: input i's position in key l (ties keep input order).
    """

    names: list[str]
    sides: list[bool]
    dtypes: list[torch.dtype]
    values: Tensor
    order: Tensor
    ranks: Tensor

    @property
    def num_samples(self) -> int:
        return self.values.shape[1]


def _rank(scores: Mapping[str, Tensor], higher_is_suspicious: Mapping[str, bool]) -> _Ranked:
    names = list(scores)
    for name in names:
        _check_scores(scores[name], name=repr(name))
    stacked = torch.stack([_suspicion(scores[n].double(), higher_is_suspicious[n]) for n in names])
    values, order = torch.sort(stacked, dim=1, descending=True, stable=True)
    positions = torch.arange(stacked.shape[1]).expand_as(order)
    ranks = torch.empty_like(order).scatter_(1, order, positions)
    sides = [higher_is_suspicious[n] for n in names]
    return _Ranked(names, sides, [scores[n].dtype for n in names], values, order, ranks)


def _occupied_slots(ranked: _Ranked, counts: Tensor) -> int:
    """How many of the n + 1 rank slots the OR of thresholds at ``counts`` may take.

    Key l rejects strictly beyond its ``counts[l]``-th largest calibration score (0: nothing).
    Call ``inside`` the calibration inputs at or beyond some key's threshold and key l's
    boundary the input on its threshold. Rank a new input that key l rejects together with the
    n calibration inputs: the inputs at or beyond a threshold are then the new one and
    ``inside`` less key l's boundary (pushed below the threshold of n + 1 inputs), unless that
    boundary is inside for another key too. So a rejected input is one of at most ``|inside|``
    such inputs, or ``|inside| + 1`` when some boundary input is inside for two keys. The same
    rule fitted on each n of n + 1 exchangeable inputs keeps this count within ``limit``, so
    each of them is rejected with probability at most ``limit / (n + 1)``, although the
    thresholds come from the data (for scores without ties). With one key the count is
    ``counts[0]``, the single-threshold rule. It never shrinks as a threshold moves outwards,
    which lets :func:`_joint_from_ranked` bisect.
    """
    inside = ranked.ranks < counts[:, None]  # (L, n): at or beyond the key's threshold
    active = torch.nonzero(counts > 0).squeeze(1)
    if active.numel() == 0:
        return 0
    boundary = ranked.order[active, counts[active] - 1]  # (A,) inputs on a threshold
    shared = inside[:, boundary].sum(dim=0) > 1
    return int(inside.any(dim=0).sum()) + int(bool(shared.any()))


def _schedule(weights: Sequence[float], cap: int) -> Tensor:
    """Slot counts per key, one step at a time: (E + 1, L), row e after e steps.

    Key l's count reaches j at level ``j / w_l``, so counts grow in proportion to the weights;
    steps at equal levels go in key order; the largest-weight key stops at ``cap``.
    """
    num_keys = len(weights)
    top = max(weights)
    levels: list[Tensor] = []
    keys: list[Tensor] = []
    steps = torch.arange(1, cap + 1, dtype=torch.float64)
    for key, weight in enumerate(weights):
        if weight > 0:
            level = steps / weight
            level = level[level <= cap / top]
            levels.append(level)
            keys.append(torch.full(level.shape, key, dtype=torch.long))
    start = torch.zeros(1, num_keys, dtype=torch.long)
    if not levels or sum(k.numel() for k in keys) == 0:
        return start
    step_keys = torch.cat(keys)[torch.sort(torch.cat(levels), stable=True).indices]
    counts = torch.nn.functional.one_hot(step_keys, num_keys).cumsum(dim=0)
    return torch.cat([start, counts])


@dataclass
class JointThresholds:
    """What :func:`joint_thresholds` found.

    Attributes:
        thresholds: per key, a 0-d threshold in the key's units (+inf or -inf: rejects nothing).
        rates: per key, the rate its threshold alone rejects a new clean input with,
            ``key_slots[key] / (n + 1)``.
        key_slots: per key, the rank slots its threshold alone takes: it rejects strictly
            beyond the key's ``key_slots[key]``-th largest calibration score (0: nothing).
        slots: rank slots of n + 1 the OR of all thresholds may take; a new clean input is
            rejected with probability at most ``slots / (n + 1)`` (see
            :mod:`guardnet.conformal`).
        num_samples: n, the clean calibration inputs.
    """

    thresholds: dict[str, Tensor]
    rates: dict[str, float]
    key_slots: dict[str, int]
    slots: int
    num_samples: int

    @property
    def expected_fpr(self) -> float:
        """The bound ``slots / (n + 1)`` on a new clean input's rejection probability."""
        return expected_fpr(self.slots, self.num_samples)


def _joint_from_ranked(
    ranked: _Ranked, weights: Mapping[str, float], target_fpr: float
) -> JointThresholds:
    """:func:`joint_thresholds` on scores already ranked by :func:`_rank`."""
    n = ranked.num_samples
    limit = rejection_slots(n, target_fpr)
    schedule = _schedule([weights[k] for k in ranked.names], limit)

    def occupied(step: int) -> int:
        return _occupied_slots(ranked, schedule[step])

    # The occupied count grows with the step: take the last step within the limit.
    low, high = 0, schedule.shape[0] - 1
    if occupied(high) <= limit:
        low = high
    while high - low > 1:
        mid = (low + high) // 2
        if occupied(mid) <= limit:
            low = mid
        else:
            high = mid
    counts = schedule[low].tolist()
    thresholds: dict[str, Tensor] = {}
    for key, name in enumerate(ranked.names):
        side, count = ranked.sides[key], counts[key]
        if count == 0:
            threshold = _rejects_nothing(ranked.values, side)
        else:
            threshold = _suspicion(ranked.values[key, count - 1], side)
        thresholds[name] = threshold.to(ranked.dtypes[key])
    return JointThresholds(
        thresholds=thresholds,
        rates={name: counts[k] / (n + 1) for k, name in enumerate(ranked.names)},
        key_slots=dict(zip(ranked.names, counts, strict=True)),
        slots=occupied(low),
        num_samples=n,
    )


def joint_thresholds(
    scores: Mapping[str, Tensor],
    higher_is_suspicious: Mapping[str, bool],
    target_fpr: float,
    *,
    budget: Mapping[str, float] | None = None,
) -> JointThresholds:
    """Per-key thresholds whose OR rejects a new clean input with probability <= ``target_fpr``.

    Each key's threshold moves outwards one calibration input at a time, key l at the pace of
    its share ``w_l`` (``budget``, equal by default), as long as the union keeps within the
    ``floor((n + 1) * target_fpr)`` rank slots of the conformal guarantee (see
    :mod:`guardnet.thresholds`). Correlated keys thus get more than ``target_fpr / L`` each;
    every key with a positive share costs at least one slot, so a union of L keys rejects a
    little less of the calibration data than one threshold would.

    Args:
        scores: per key, (N,) clean scores of the same N inputs.
        higher_is_suspicious: per key, which side is rejected.
        target_fpr: the OR's rate, in [0, 1).
        budget: relative shares (>= 0, not all 0) per key; missing keys get 1. A key with
            share 0 rejects nothing.

    Returns:
        A :class:`JointThresholds`. A :class:`~guardnet.errors.CalibrationWarning` says when N
        is too small for every key to get a slot.

    Example:
        >>> gen = torch.Generator().manual_seed(0)
        >>> scores = {"a": torch.randn(1000, generator=gen), "b": torch.rand(1000, generator=gen)}
        >>> fit = joint_thresholds(scores, {"a": True, "b": False}, 0.05)
        >>> fit.slots, round(fit.expected_fpr, 4)  # of 1001 rank slots
        (50, 0.05)
        >>> fit.key_slots  # a union of independent scores: about half each
        {'a': 26, 'b': 25}
    """
    check_target_fpr(target_fpr)
    names = list(scores)
    if not names:
        return JointThresholds({}, {}, {}, slots=0, num_samples=0)
    _check_same_sizes(scores)
    weights = _share_weights(names, budget)
    ranked = _rank(scores, higher_is_suspicious)
    problem = calibration_size_problem(ranked.num_samples, target_fpr, weights)
    if problem is not None:
        _warn(problem)
    return _joint_from_ranked(ranked, weights, target_fpr)


@dataclass
class BudgetChoice:
    """What :func:`choose_budget` found.

    Attributes:
        shares: relative share of the joint budget per score key (pass as ``budget=``).
        positive_rejection_rate: share of the positive inputs the guard rejects with them.
        candidates: how many splits were tried.
    """

    shares: dict[str, float]
    positive_rejection_rate: float
    candidates: int


def _compositions(total: int, parts: int) -> Iterator[tuple[int, ...]]:
    """Every way to write ``total`` as an ordered sum of ``parts`` integers >= 0."""
    for bars in itertools.combinations(range(total + parts - 1), parts - 1):
        edges = (-1, *bars, total + parts - 1)
        yield tuple(b - a - 1 for a, b in itertools.pairwise(edges))


def choose_budget(
    clean: Mapping[str, Tensor],
    positive: Mapping[str, Tensor],
    higher_is_suspicious: Mapping[str, bool],
    target_fpr: float,
    *,
    searched: Sequence[str],
    fixed: Mapping[str, float] | None = None,
    searched_total: float = 1.0,
    step: float = 0.1,
    max_candidates: int = 20_000,
) -> BudgetChoice:
    """The split of a joint FPR budget that rejects the most ``positive`` inputs.

    Tries every split of ``searched_total`` over the ``searched`` keys on a grid of ``step``
    (shares 0, step, 2 step, ... summing to 1, times ``searched_total``; the other keys keep
    their ``fixed`` shares), sets the joint thresholds on the ``clean`` scores for each (so the
    guarantee of :func:`joint_thresholds` holds whichever wins) and keeps the one whose OR
    rejects most ``positive`` inputs; ties go to the split nearest an equal one. The positives
    must not come from the attacks the guard will be measured on (see
    ``calibrate(budget="runner_up")``).

    Args:
        clean: per score key, (N,) clean validation scores.
        positive: per score key (the same keys), (M,) scores of inputs that should be rejected.
        higher_is_suspicious: per score key, which side is rejected.
        target_fpr: the guard's total clean rate, in [0, 1).
        searched: the keys whose shares are searched.
        fixed: shares of every other key of ``clean``.
        searched_total: the sum of the searched keys' shares.
        step: the grid's resolution, in (0, 1].
        max_candidates: refuse grids larger than this (coarsen ``step``).

    Returns:
        A :class:`BudgetChoice`.

    Example:
        >>> gen = torch.Generator().manual_seed(0)
        >>> clean = {k: torch.randn(1000, generator=gen) for k in "ab"}
        >>> positive = {k: torch.randn(500, generator=gen) + (3 if k == "a" else 0) for k in "ab"}
        >>> sides = {"a": True, "b": True}
        >>> choose_budget(clean, positive, sides, 0.05, searched=["a", "b"]).shares
        {'a': 1.0, 'b': 0.0}
    """
    check_target_fpr(target_fpr)
    fixed = dict(fixed or {})
    names = list(clean)
    searched = list(searched)
    if not searched or len(set(searched)) != len(searched):
        raise CalibrationError(f"searched must name distinct keys, got {searched}")
    if set(searched) & set(fixed) or set(searched) | set(fixed) != set(names):
        raise CalibrationError(
            f"searched {sorted(searched)} and fixed {sorted(fixed)} must split the keys "
            f"{sorted(names)} between them"
        )
    if set(positive) != set(names):
        raise CalibrationError(f"positive scores name {sorted(positive)}, clean {sorted(names)}")
    if not 0 < step <= 1 or searched_total <= 0:
        raise CalibrationError(
            f"need 0 < step <= 1 and searched_total > 0, got {step} and {searched_total}"
        )
    _check_same_sizes(clean)
    _check_same_sizes(positive)
    for n in names:
        if not bool(torch.isfinite(positive[n]).all()):
            raise CalibrationError(f"positive scores {n!r} contain NaN or Inf")
    units = round(1 / step)
    candidates = math.comb(units + len(searched) - 1, len(searched) - 1)
    if candidates > max_candidates:
        raise CalibrationError(
            f"{candidates} splits of {len(searched)} keys at step {step}: use a larger step"
        )
    ranked = _rank(clean, higher_is_suspicious)
    equal = searched_total / len(searched)
    best: tuple[float, float] | None = None
    best_shares: dict[str, float] = {}
    for parts in _compositions(units, len(searched)):
        shares = {n: searched_total * p / units for n, p in zip(searched, parts, strict=True)}
        weights = _share_weights(names, fixed | shares)
        thresholds = _joint_from_ranked(ranked, weights, target_fpr).thresholds
        rejected = torch.zeros_like(positive[names[0]], dtype=torch.bool)
        for n in names:
            rejected |= _beyond(positive[n], thresholds[n], higher_is_suspicious[n])
        rate = int(rejected.sum()) / rejected.numel()
        key = (rate, -sum(abs(v - equal) for v in shares.values()))
        if best is None or key > best:
            best, best_shares = key, fixed | shares
    assert best is not None
    return BudgetChoice(
        shares={n: best_shares[n] for n in names},
        positive_rejection_rate=best[0],
        candidates=candidates,
    )
