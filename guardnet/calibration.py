"""Thresholds from clean validation scores at a target false-positive rate.

Calibration never sees attacks: a detector's threshold is a promise about how many *clean* inputs
it rejects, so it is fitted on clean validation data alone, and the rate it achieves on held-out
clean data is the number to report.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
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
    "CalibrationReport",
    "LayerCalibration",
    "calibrate_guard",
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
        budget: relative shares (> 0) per layer name; missing names get 1.

    Returns:
        Per layer, a 0-d threshold tensor, and the rate each layer was given.
    """
    _check_fpr(target_fpr)
    names = list(scores)
    if not names:
        return {}, {}
    sizes = {scores[n].numel() for n in names}
    if len(sizes) != 1:
        raise CalibrationError(f"layers scored different numbers of inputs: {sorted(sizes)}")
    weights = {n: float((budget or {}).get(n, 1.0)) for n in names}
    unknown = set(budget or {}) - set(names)
    if unknown:
        raise CalibrationError(f"budget names unknown layers {sorted(unknown)}; layers: {names}")
    if any(w <= 0 for w in weights.values()):
        raise CalibrationError(f"budget shares must be > 0, got {weights}")
    top = max(weights.values())

    def rates_for(scale: float) -> dict[str, float]:
        return {n: min(scale * weights[n] / top, target_fpr) for n in names}

    # Sort each layer's scores once; the bisection only indexes into them.
    ordered = {n: _sorted_suspicion(scores[n], higher_is_suspicious[n]) for n in names}

    def thresholds_for(scale: float) -> dict[str, Tensor]:
        return {
            n: _threshold_from_sorted(ordered[n], rate, higher_is_suspicious[n])
            for n, rate in rates_for(scale).items()
        }

    allowed = int(target_fpr * sizes.pop())

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
    """

    mode: str
    target_fpr: float
    num_samples: int
    layers: dict[str, LayerCalibration] = field(default_factory=dict)
    overall_fpr: float = 0.0

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
        return "\n".join(lines)


def _robust_scale(scores: Tensor) -> float:
    """Spread of the clean scores (std, falling back to 1 when they are constant)."""
    scale = float(scores.double().std()) if scores.numel() > 1 else 0.0
    return scale if scale > 0 and scale == scale else 1.0


def collect_clean_scores(
    guard: GuardedModel, clean_data: Tensor | Iterable, *, batch_size: int, progress: bool
) -> dict[str, Tensor]:
    """Every rejecting score's values on the clean data, concatenated, on the CPU."""
    device = module_device(guard)
    names = list(guard.rejectors)
    collected: dict[str, list[Tensor]] = {n: [] for n in names}
    batches = iter_image_batches(clean_data, batch_size=batch_size)
    total = num_batches(clean_data, batch_size=batch_size)
    for batch in tqdm(batches, total=total, desc="calibrating", disable=not progress, unit="batch"):
        if device is not None:
            batch = batch.to(device, non_blocking=True)
        batch_scores = guard.compute_scores(batch)
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
    budget: Mapping[str, float] | None = None,
    batch_size: int = 256,
    progress: bool = True,
    scores: Mapping[str, Tensor] | None = None,
) -> CalibrationReport:
    """Implementation of :meth:`guardnet.GuardedModel.calibrate`.

    ``scores``: the clean scores per rejector key, when already computed (e.g. by
    :func:`collect_clean_scores` once for several target FPRs); ``clean_data`` is then unused.
    """
    _check_fpr(target_fpr)
    if mode not in ("joint", "per_layer"):
        raise CalibrationError(f"mode must be 'joint' or 'per_layer', got {mode!r}")
    if budget is not None and mode != "joint":
        raise CalibrationError("budget only applies to mode='joint'")
    layers = guard.rejectors
    if not layers:
        raise CalibrationError("the guard has no layer with a threshold to calibrate")
    if scores is None:
        scores = collect_clean_scores(guard, clean_data, batch_size=batch_size, progress=progress)
    elif set(scores) != set(layers):
        raise CalibrationError(f"scores name {sorted(scores)}, the guard has {sorted(layers)}")
    for name, s in scores.items():
        if not bool(torch.isfinite(s).all()):
            raise CalibrationError(f"score {name!r} produced NaN/Inf values on clean data")
    sides = {n: layer.higher_is_suspicious for n, (layer, _) in layers.items()}
    if mode == "joint":
        thresholds, rates = joint_thresholds(scores, sides, target_fpr, budget=budget)
    else:
        rates = dict.fromkeys(layers, target_fpr)
        thresholds = {
            n: threshold_at_fpr(scores[n], target_fpr, higher_is_suspicious=sides[n])
            for n in layers
        }
    report = CalibrationReport(mode=mode, target_fpr=target_fpr, num_samples=0)
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
