"""Calibrating a guard: clean validation scores in, every rejecting layer's threshold set.

Calibration never sees attacks: a detector's threshold is a promise about how many *clean* inputs
it rejects, so it is fitted on clean validation data alone. The threshold rules live in
:mod:`guardnet.thresholds` and what they promise on new data in :mod:`guardnet.conformal`; this
module scores the guard's layers, applies the rules and reports the outcome.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from guardnet._utils import iter_image_batches, module_device, num_batches
from guardnet.conformal import check_target_fpr, fpr_interval, rejection_slots
from guardnet.errors import CalibrationError
from guardnet.layers.base import LayerKind, score_keys
from guardnet.thresholds import BudgetChoice, choose_budget, joint_thresholds, threshold_at_fpr

if TYPE_CHECKING:
    from guardnet.guard import GuardedModel

__all__ = [
    "CalibrationReport",
    "LayerCalibration",
    "calibrate_guard",
    "collect_clean_scores",
]


@dataclass
class LayerCalibration:
    """One rejecting score's calibration outcome.

    Attributes:
        threshold: the threshold (+inf or -inf: the score rejects nothing).
        target_fpr: the rate this threshold alone rejects a new clean input with (its share of
            the joint budget, or the whole target in ``per_layer`` mode).
        achieved_fpr: the rate it rejects on the calibration images.
        score_scale: the clean scores' spread (attack-view margins are in these units).
        higher_is_suspicious: which side of the threshold is rejected.
    """

    threshold: float
    target_fpr: float
    achieved_fpr: float
    score_scale: float
    higher_is_suspicious: bool


@dataclass
class CalibrationReport:
    """What :meth:`GuardedModel.calibrate` did, and what it promises on new clean data.

    The calibration images are used up: the rate on them (``overall_fpr``) is not the rate on new
    data. For new clean inputs drawn like the calibration images (exchangeable with them), a
    ``joint`` calibration on n images rejects with probability at most ``expected_fpr`` =
    ``slots / (n + 1)`` <= ``target_fpr``, and the rate the thresholds have on the whole clean
    distribution lies in ``fpr_interval`` for 95% of calibration sets (see
    :mod:`guardnet.conformal`).

    Attributes:
        mode: ``"joint"`` or ``"per_layer"``.
        target_fpr: the requested rate.
        num_samples: clean images used.
        layers: per score key, its :class:`LayerCalibration`.
        overall_fpr: the whole guard's rate on the calibration data (OR of all layers).
        slots: ``joint`` only: the rank slots of n + 1 the guard's OR may take.
        expected_fpr: the probability that a new clean input is rejected: at most
            ``slots / (n + 1)`` (``joint``); at most the sum of the layers' rates
            (``per_layer``, capped at 1).
        fpr_interval: ``joint`` only: 95% interval of the thresholds' rate on new clean data.
        budget: the shares of the joint budget, when not equal.
        runner_up_rejection_rate: with ``budget="runner_up"``, the share of the calibration
            images the guard rejects under their runner-up labels.
    """

    mode: str
    target_fpr: float
    num_samples: int
    layers: dict[str, LayerCalibration] = field(default_factory=dict)
    overall_fpr: float = 0.0
    slots: int | None = None
    expected_fpr: float = 0.0
    fpr_interval: tuple[float, float] | None = None
    budget: dict[str, float] | None = None
    runner_up_rejection_rate: float | None = None

    def test_interval(self, test_size: int, *, level: float = 0.95) -> tuple[float, float] | None:
        """The range of clean rates to expect on ``test_size`` new clean images.

        ``level`` of (calibration set, test set) draws give a rate inside; a measured rate far
        outside hints that the test images are not drawn like the calibration images. ``None``
        in ``per_layer`` mode (no joint guarantee). See :func:`guardnet.conformal.fpr_interval`.
        """
        if self.slots is None:
            return None
        return fpr_interval(self.slots, self.num_samples, level=level, test_size=test_size)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CalibrationReport:
        """The report :meth:`to_dict` (or its JSON) describes; unknown keys are ignored.

        Example:
            >>> report = CalibrationReport("joint", 0.05, 100, fpr_interval=(0.01, 0.1))
            >>> CalibrationReport.from_dict(report.to_dict()) == report
            True
        """

        def known(kind: type, values: Mapping[str, Any]) -> dict[str, Any]:
            names = {f.name for f in fields(kind)}
            return {k: v for k, v in values.items() if k in names}

        kwargs = known(cls, data)
        kwargs["layers"] = {
            name: LayerCalibration(**known(LayerCalibration, entry))
            for name, entry in (data.get("layers") or {}).items()
        }
        if kwargs.get("fpr_interval") is not None:
            low, high = kwargs["fpr_interval"]
            kwargs["fpr_interval"] = (float(low), float(high))
        return cls(**kwargs)

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
        if self.fpr_interval is not None:
            low, high = self.fpr_interval
            lines.append(
                f"  expected FPR on new clean data: {self.expected_fpr:.2%} (95% interval "
                f"{low:.2%}-{high:.2%}; {self.slots} of {self.num_samples + 1} rank slots)"
            )
        else:
            lines.append(
                f"  expected FPR on new clean data: at most {self.expected_fpr:.2%} (the sum of "
                "the layers' rates)"
            )
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
    check_target_fpr(target_fpr)
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
    n = next(iter(scores.values())).numel()
    slots: int | None = None
    interval: tuple[float, float] | None = None
    if mode == "joint":
        fit = joint_thresholds(scores, sides, target_fpr, budget=budget)
        thresholds, rates, slots = fit.thresholds, fit.rates, fit.slots
        expected = fit.expected_fpr
        interval = fpr_interval(slots, n)
    else:
        thresholds = {
            k: threshold_at_fpr(scores[k], target_fpr, higher_is_suspicious=sides[k])
            for k in layers
        }
        rates = dict.fromkeys(layers, rejection_slots(n, target_fpr) / (n + 1))
        expected = min(1.0, sum(rates.values()))
    report = CalibrationReport(
        mode=mode,
        target_fpr=target_fpr,
        num_samples=n,
        slots=slots,
        expected_fpr=expected,
        fpr_interval=interval,
        budget=None if budget is None else {k: float(budget.get(k, 1.0)) for k in layers},
        runner_up_rejection_rate=runner_up_rate,
    )
    union = torch.zeros(n, dtype=torch.bool)
    for name, (layer, score_name) in layers.items():
        s = scores[name]
        scale = _robust_scale(s)
        layer.set_threshold(thresholds[name], score_scale=scale, score=score_name)
        rejected = s > thresholds[name] if layer.higher_is_suspicious else s < thresholds[name]
        union |= rejected
        report.layers[name] = LayerCalibration(
            threshold=float(thresholds[name]),
            target_fpr=rates[name],
            achieved_fpr=int(rejected.sum()) / n,
            score_scale=scale,
            higher_is_suspicious=sides[name],
        )
    report.overall_fpr = int(union.sum()) / n
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
