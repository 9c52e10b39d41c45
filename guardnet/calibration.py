"""Thresholds from clean validation scores at a target false-positive rate.

Calibration never sees attacks: a detector's threshold is a promise about how many *clean* inputs
it rejects, so it is fitted on clean validation data alone, and the rate it achieves on held-out
clean data is the number to report.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from tqdm.auto import tqdm

from guardnet._utils import iter_image_batches, module_device, num_batches
from guardnet.errors import CalibrationError

if TYPE_CHECKING:
    from guardnet.guard import GuardedModel

__all__ = [
    "BudgetChoice",
    "CalibrationReport",
    "LayerCalibration",
    "calibrate_guard",
    "choose_budget",
    "false_positive_rate",
    "joint_thresholds",
    "threshold_at_fpr",
]

_BISECTION_STEPS = 40


def _check_fpr(target_fpr: float) -> None:
    if not 0.0 <= target_fpr < 1.0:
        raise CalibrationError(f"target_fpr must be in [0, 1), got {target_fpr}")


def _suspicion(scores: Tensor, higher_is_suspicious: bool) -> Tensor:
    """Scores flipped so that higher always means more suspicious."""
    return scores if higher_is_suspicious else -scores


def threshold_at_fpr(
    scores: Tensor, target_fpr: float, *, higher_is_suspicious: bool = True
) -> Tensor:
    """The threshold that rejects at most ``target_fpr`` of ``scores``.

    With n clean scores it lets ``floor(target_fpr * n)`` of them fall on the suspicious side
    (strictly above the threshold, or strictly below when ``higher_is_suspicious`` is False), so
    the rate on the calibration data never exceeds the target; ties only lower it.

    Args:
        scores: (N,) clean scores, all finite.
        target_fpr: the rate, in [0, 1).
        higher_is_suspicious: which side is rejected.

    Returns:
        A 0-d tensor.

    Example:
        >>> threshold_at_fpr(torch.arange(100.0), 0.05)
        tensor(94.)
    """
    _check_fpr(target_fpr)
    ordered = _sorted_suspicion(scores, higher_is_suspicious)
    return _threshold_from_sorted(ordered, target_fpr, higher_is_suspicious)


def _sorted_suspicion(scores: Tensor, higher_is_suspicious: bool) -> Tensor:
    """Checked scores, flipped to "higher is suspicious" and sorted in descending order."""
    if scores.ndim != 1 or scores.numel() == 0:
        raise CalibrationError(f"need a non-empty 1-D tensor of scores, got {tuple(scores.shape)}")
    if not bool(torch.isfinite(scores).all()):
        raise CalibrationError("calibration scores contain NaN or Inf")
    return torch.sort(_suspicion(scores, higher_is_suspicious), descending=True).values


def _threshold_from_sorted(ordered: Tensor, rate: float, higher_is_suspicious: bool) -> Tensor:
    """The (floor(rate * n) + 1)-th most suspicious score, in the scores' own units."""
    allowed = int(rate * ordered.numel())
    return _suspicion(ordered[min(allowed, ordered.numel() - 1)], higher_is_suspicious)


def _beyond(scores: Tensor, threshold: Tensor | float, higher_is_suspicious: bool) -> Tensor:
    """Boolean mask of ``scores`` strictly on the suspicious side of ``threshold``."""
    return scores > threshold if higher_is_suspicious else scores < threshold


def false_positive_rate(
    scores: Tensor, threshold: Tensor | float, *, higher_is_suspicious: bool = True
) -> float:
    """Fraction of ``scores`` on the suspicious side of ``threshold``."""
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


def _joint_from_sorted(
    scores: Mapping[str, Tensor],
    ordered: Mapping[str, Tensor],
    higher_is_suspicious: Mapping[str, bool],
    target_fpr: float,
    weights: Mapping[str, float],
) -> tuple[dict[str, Tensor], dict[str, float]]:
    """:func:`joint_thresholds` on scores already sorted by :func:`_sorted_suspicion`."""
    names = list(scores)
    top = max(weights.values())

    def rates_for(scale: float) -> dict[str, float]:
        return {n: min(scale * weights[n] / top, target_fpr) for n in names}

    def thresholds_for(scale: float) -> dict[str, Tensor]:
        return {
            n: _threshold_from_sorted(ordered[n], rate, higher_is_suspicious[n])
            for n, rate in rates_for(scale).items()
        }

    allowed = int(target_fpr * scores[names[0]].numel())

    def within_budget(thresholds: Mapping[str, Tensor]) -> bool:
        rejected = torch.zeros_like(scores[names[0]], dtype=torch.bool)
        for n in names:
            rejected |= _beyond(scores[n], thresholds[n], higher_is_suspicious[n])
        return int(rejected.sum()) <= allowed

    # Each layer alone must stay within the target, so the scale lies in [0, target_fpr].
    low, high = 0.0, target_fpr
    if within_budget(thresholds_for(high)):
        return thresholds_for(high), rates_for(high)
    for _ in range(_BISECTION_STEPS):
        mid = (low + high) / 2
        if within_budget(thresholds_for(mid)):
            low = mid
        else:
            high = mid
    return thresholds_for(low), rates_for(low)


def _check_same_sizes(scores: Mapping[str, Tensor]) -> None:
    sizes = {scores[n].numel() for n in scores}
    if len(sizes) != 1:
        raise CalibrationError(f"layers scored different numbers of inputs: {sorted(sizes)}")


def joint_thresholds(
    scores: Mapping[str, Tensor],
    higher_is_suspicious: Mapping[str, bool],
    target_fpr: float,
    *,
    budget: Mapping[str, float] | None = None,
) -> tuple[dict[str, Tensor], dict[str, float]]:
    """Per-layer thresholds whose union rejects at most ``target_fpr`` of the clean data.

    Layer ``l`` gets the rate ``s * w_l`` (``w`` = ``budget``, equal by default) and the scale
    ``s`` is the largest for which the OR of all layers stays within ``target_fpr`` on these
    scores, found by bisection. Correlated layers thus get more than ``target_fpr / L`` each.

    Args:
        scores: per layer, (N,) clean scores of the same N inputs.
        higher_is_suspicious: per layer, which side is rejected.
        target_fpr: the guard's total rate, in [0, 1).
        budget: relative shares (>= 0, not all 0) per layer name; missing names get 1. A layer
            with share 0 rejects none of these clean inputs.

    Returns:
        Per layer, a 0-d threshold tensor, and the rate each layer was given.
    """
    _check_fpr(target_fpr)
    names = list(scores)
    if not names:
        return {}, {}
    _check_same_sizes(scores)
    weights = _share_weights(names, budget)
    # Sort each layer's scores once; the bisection only indexes into them.
    ordered = {n: _sorted_suspicion(scores[n], higher_is_suspicious[n]) for n in names}
    return _joint_from_sorted(scores, ordered, higher_is_suspicious, target_fpr, weights)


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
    clean rate stays within ``target_fpr`` whichever wins) and keeps the one whose OR rejects
    most ``positive`` inputs; ties go to the split nearest an equal one. The positives must not
    come from the attacks the guard will be measured on (see ``calibrate(budget="runner_up")``).

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
        >>> clean = {"a": torch.randn(1000), "b": torch.randn(1000)}
        >>> positive = {"a": torch.randn(500) + 3, "b": torch.randn(500)}
        >>> sides = {"a": True, "b": True}
        >>> choose_budget(clean, positive, sides, 0.05, searched=["a", "b"]).shares
        {'a': 1.0, 'b': 0.0}
    """
    _check_fpr(target_fpr)
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
    ordered = {n: _sorted_suspicion(clean[n], higher_is_suspicious[n]) for n in names}
    equal = searched_total / len(searched)
    best: tuple[float, float] | None = None
    best_shares: dict[str, float] = {}
    for parts in _compositions(units, len(searched)):
        shares = {n: searched_total * p / units for n, p in zip(searched, parts, strict=True)}
        weights = _share_weights(names, fixed | shares)
        thresholds, _ = _joint_from_sorted(
            clean, ordered, higher_is_suspicious, target_fpr, weights
        )
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


@dataclass
class LayerCalibration:
    """One layer's calibration outcome."""

    threshold: float
    target_fpr: float
    achieved_fpr: float
    score_scale: float
    higher_is_suspicious: bool


@dataclass
class CalibrationReport:
    """What :meth:`GuardedModel.calibrate` did.

    Attributes:
        mode: ``"joint"`` or ``"per_layer"``.
        target_fpr: the requested rate.
        num_samples: clean images used.
        layers: per layer name, its :class:`LayerCalibration`.
        overall_fpr: the whole guard's rate on the calibration data (OR of all layers).
        budget: the shares of the joint budget, when not equal.
        runner_up_rejection_rate: with ``budget="runner_up"``, the share of the calibration
            images the guard rejects under their runner-up labels.
    """

    mode: str
    target_fpr: float
    num_samples: int
    layers: dict[str, LayerCalibration] = field(default_factory=dict)
    overall_fpr: float = 0.0
    budget: dict[str, float] | None = None
    runner_up_rejection_rate: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        lines = [
            f"calibration ({self.mode}) on {self.num_samples} clean images, target FPR "
            f"{self.target_fpr:.2%}",
            f"  {'layer':<16} {'threshold':>12} {'side':>5} {'target':>8} {'achieved':>9}",
        ]
        for name, c in self.layers.items():
            side = "high" if c.higher_is_suspicious else "low"
            lines.append(
                f"  {name:<16} {c.threshold:>12.5g} {side:>5} {c.target_fpr:>8.2%} "
                f"{c.achieved_fpr:>9.2%}"
            )
        lines.append(f"  {'overall':<16} {'':>12} {'':>5} {'':>8} {self.overall_fpr:>9.2%}")
        if self.budget is not None:
            shares = ", ".join(f"{k} {v:g}" for k, v in self.budget.items())
            lines.append(f"  budget shares: {shares}")
        if self.runner_up_rejection_rate is not None:
            lines.append(f"  rejected under runner-up labels: {self.runner_up_rejection_rate:.2%}")
        return "\n".join(lines)


def _robust_scale(scores: Tensor) -> float:
    """Spread of the clean scores (std, falling back to 1 when they are constant)."""
    scale = float(scores.double().std()) if scores.numel() > 1 else 0.0
    return scale if scale > 0 and scale == scale else 1.0


def collect_clean_scores(
    guard: GuardedModel,
    clean_data: Tensor | Iterable,
    *,
    batch_size: int,
    progress: bool,
    labels: str = "predicted",
) -> dict[str, Tensor]:
    """Every rejecting score's values on the clean data, concatenated, on the CPU.

    ``labels``: see :meth:`GuardedModel.compute_scores`.
    """
    device = module_device(guard)
    names = list(guard.rejectors)
    collected: dict[str, list[Tensor]] = {n: [] for n in names}
    batches = iter_image_batches(clean_data, batch_size=batch_size)
    total = num_batches(clean_data, batch_size=batch_size)
    desc = "calibrating" if labels == "predicted" else f"scoring ({labels} labels)"
    for batch in tqdm(batches, total=total, desc=desc, disable=not progress, unit="batch"):
        if device is not None:
            batch = batch.to(device, non_blocking=True)
        batch_scores = guard.compute_scores(batch, labels=labels)
        for n in names:
            collected[n].append(batch_scores[n].detach().float().cpu())
    if not names:
        return {}
    out = {n: torch.cat(v) if v else torch.zeros(0) for n, v in collected.items()}
    if out[names[0]].numel() == 0:
        raise CalibrationError("calibration data is empty")
    return out


def calibrate_guard(
    guard: GuardedModel,
    clean_data: Tensor | Iterable,
    *,
    target_fpr: float = 0.05,
    mode: str = "joint",
    budget: Mapping[str, float] | str | None = None,
    batch_size: int = 256,
    progress: bool = True,
    scores: Mapping[str, Tensor] | None = None,
    runner_up_scores: Mapping[str, Tensor] | None = None,
) -> CalibrationReport:
    """Implementation of :meth:`guardnet.GuardedModel.calibrate`.

    ``scores``: the clean scores per rejector key, when already computed (e.g. by
    :func:`collect_clean_scores` once for several target FPRs); ``runner_up_scores`` the same
    under runner-up labels for ``budget="runner_up"``. ``clean_data`` is unused for what is given.
    """
    _check_fpr(target_fpr)
    if mode not in ("joint", "per_layer"):
        raise CalibrationError(f"mode must be 'joint' or 'per_layer', got {mode!r}")
    if budget is not None and mode != "joint":
        raise CalibrationError("budget only applies to mode='joint'")
    layers = guard.rejectors
    if not layers:
        raise CalibrationError("the guard has no layer with a threshold to calibrate")
    reads = (scores is None) + (budget == "runner_up" and runner_up_scores is None)
    if reads > 1 and isinstance(clean_data, Iterator):
        raise CalibrationError(
            "budget='runner_up' reads the clean data twice: pass a tensor or a DataLoader, "
            "not a one-pass iterator"
        )
    if scores is None:
        scores = collect_clean_scores(guard, clean_data, batch_size=batch_size, progress=progress)
    elif set(scores) != set(layers):
        raise CalibrationError(f"scores name {sorted(scores)}, the guard has {sorted(layers)}")
    for name, s in scores.items():
        if not bool(torch.isfinite(s).all()):
            raise CalibrationError(f"score {name!r} produced NaN/Inf values on clean data")
    sides = {n: layer.higher_is_suspicious for n, (layer, _) in layers.items()}
    runner_up_rate: float | None = None
    if isinstance(budget, str):
        if budget != "runner_up":
            raise CalibrationError(f"budget must be a mapping or 'runner_up', got {budget!r}")
        if runner_up_scores is None:
            runner_up_scores = collect_clean_scores(
                guard, clean_data, batch_size=batch_size, progress=progress, labels="runner_up"
            )
        choice = _runner_up_budget(guard, scores, runner_up_scores, sides, target_fpr)
        budget, runner_up_rate = choice.shares, choice.positive_rejection_rate
    if mode == "joint":
        thresholds, rates = joint_thresholds(scores, sides, target_fpr, budget=budget)
    else:
        rates = dict.fromkeys(layers, target_fpr)
        thresholds = {
            n: threshold_at_fpr(scores[n], target_fpr, higher_is_suspicious=sides[n])
            for n in layers
        }
    report = CalibrationReport(
        mode=mode,
        target_fpr=target_fpr,
        num_samples=0,
        budget=None if budget is None else {n: float(budget.get(n, 1.0)) for n in layers},
        runner_up_rejection_rate=runner_up_rate,
    )
    union = torch.zeros(0, dtype=torch.bool)
    for name, (layer, score_name) in layers.items():
        s = scores[name]
        scale = _robust_scale(s)
        layer.set_threshold(thresholds[name], score_scale=scale, score=score_name)
        rejected = _beyond(s, thresholds[name].to(s.dtype), layer.higher_is_suspicious)
        union = rejected if union.numel() == 0 else union | rejected
        achieved = int(rejected.sum()) / rejected.numel()
        report.layers[name] = LayerCalibration(
            threshold=float(thresholds[name]),
            target_fpr=rates[name],
            achieved_fpr=achieved,
            score_scale=scale,
            higher_is_suspicious=sides[name],
        )
    report.num_samples = union.numel()
    report.overall_fpr = int(union.sum()) / union.numel()
    return report


def _runner_up_budget(
    guard: GuardedModel,
    clean: Mapping[str, Tensor],
    runner_up: Mapping[str, Tensor],
    sides: Mapping[str, bool],
    target_fpr: float,
) -> BudgetChoice:
    """``budget="runner_up"``: split each label-reading layer's part by :func:`choose_budget`.

    Every rejecting layer has one part of the budget. A layer that reads the classifier's label
    (``post``/``probe``) is scored again on the clean images under their runner-up labels, the
    label a small attack most likely forces; its parts are split over its score keys so as to
    reject the most of those. Other layers (``pre``, ``reform``) split their part equally.
    Attack-free: only clean validation images are used.
    """
    from guardnet.guard import score_keys
    from guardnet.layers.base import LayerKind

    searched: list[str] = []
    fixed: dict[str, float] = {}
    searched_layers = 0
    for name, layer in guard.rejecting_layers.items():
        keys = score_keys(name, layer)
        if layer.kind in (LayerKind.POST, LayerKind.PROBE):
            searched += keys
            searched_layers += 1
        else:
            fixed.update(dict.fromkeys(keys, 1.0 / len(keys)))
    if not searched:
        raise CalibrationError(
            "budget='runner_up' needs a layer that reads the classifier's label (post or probe)"
        )
    return choose_budget(
        clean,
        runner_up,
        sides,
        target_fpr,
        searched=searched,
        fixed=fixed,
        searched_total=float(searched_layers),
    )
