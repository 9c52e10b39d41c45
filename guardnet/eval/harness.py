"""The evaluation harness behind ``guardnet eval``: calibrate on validation, attack the test split,
measure.

Protocol (the honest one; every number it reports follows it):

1. Thresholds come from :meth:`guardnet.GuardedModel.calibrate` (joint budget over all scores) on
   clean *validation* images, once per target FPR. Test and attack data never set a threshold.
2. Clean test images give clean accuracy, the guard's FPR and Acc_dec.
3. Attacks run on the test images the bare classifier gets right. Standard attacks
   (:func:`~guardnet.eval.attacks.make_attack`) attack the classifier alone; adaptive attacks
   attack classifier and guard together, with the guard calibrated at the attack's own FPR.
4. A *successful* adversarial example fools the classifier. TPR = share of successful examples
   the guard rejects; Acc_rob = 1 - (fooled and passed) / attacked; Acc_RC = share of attacked
   inputs the guarded system handles right (rejected, or accepted with the true label: equal to
   Acc_rob unless a reform layer corrects labels); AUROC per score and for the guard's combined
   score (the largest margin over its rejectors), clean test vs successful examples.
5. Worst case per example: at each L-inf budget and target FPR, the share of attacked images
   that no attack run (within that budget, judged at that FPR) turned into an input that fools
   the classifier and passes the guard, next to each run's own figure.
6. Sanity checks: each adaptive attack's success (fooled and passed) against its budgets, flagged
   when it stays far below 100% at the largest budget (the attack may be broken); optionally
   the change of robust accuracy when each adaptive attack's effort doubles.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from guardnet._utils import eval_mode, module_device
from guardnet.calibration import calibrate_guard, collect_clean_scores
from guardnet.eval.attacks import (
    AdversarialCache,
    Attack,
    make_adaptive_attack,
    make_attack,
)
from guardnet.eval.metrics import auroc, detection_accuracy, robust_accuracy, roc_curve
from guardnet.eval.sanity import MIN_SUCCESS, budget_curve, convergence_check
from guardnet.eval.worst_case import LINF_TOLERANCE, RunOutcome, worst_case_table
from guardnet.guard import GuardedModel
from guardnet.layers.base import exact_scores

__all__ = [
    "AttackPlan",
    "ClassifierView",
    "evaluate_guard",
    "format_report",
    "variant_name",
]


@dataclass(frozen=True)
class AttackPlan:
    """One attack of an evaluation.

    Args:
        name: a standard attack (``pgd``, ``cw``, ...) or an adaptive one (``orthogonal``, ...).
        adaptive: attack the guard too (see :mod:`guardnet.eval.attacks.adaptive`).
        eps: the budget, for attacks that take one.
        params: other parameters of the attack.
        fpr: adaptive attacks: the FPR the guard is calibrated at while attacked and judged.
        variant: tells apart runs of one attack at one budget with different ``params`` (see
            :func:`variant_name`); it ends the run's label.
    """

    name: str
    adaptive: bool = False
    eps: float | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    fpr: float | None = None
    variant: str | None = None

    @property
    def label(self) -> str:
        parts = [self.name]
        if self.eps is not None:
            parts.append(f"eps={format_eps(self.eps)}")
        if self.adaptive and self.fpr is not None:
            parts.append(f"fpr={self.fpr:g}")
        if self.variant:
            parts.append(self.variant)
        return " ".join(parts)


def variant_name(params: Mapping[str, Any]) -> str:
    """A run label's suffix for one setting of an attack: ``steps=400 restarts=2``.

    Example:
        >>> variant_name({"steps": 400, "alpha": 0.001})
        'alpha=0.001 steps=400'
        >>> variant_name({})
        'default'
    """
    if not params:
        return "default"
    return " ".join(
        f"{key}={json.dumps(value, sort_keys=True, separators=(',', ':'))}"
        for key, value in sorted(params.items())
    )


def format_eps(eps: float) -> str:
    """``8/255`` for small budgets on the 1/255 grid (up to 32/255), ``0.3`` otherwise."""
    k = eps * 255
    return f"{round(k)}/255" if abs(k - round(k)) < 1e-6 and 1 <= k <= 32 else f"{eps:g}"


class ClassifierView(nn.Module):
    """The guard's bare classifier on [0, 1] images (its normalisation included).

    Holding only the classifier's modules means its cache key does not depend on the guard's
    layers or thresholds: guards that share a classifier share cached standard attacks.
    """

    def __init__(self, guard: GuardedModel) -> None:
        super().__init__()
        self.normalize = guard.normalize
        self.classifier = guard.classifier

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier(self.normalize(images))


@torch.no_grad()
def _run(guard: GuardedModel, images: Tensor) -> dict[str, Any]:
    """Scores (no thresholds, no cascade), classifier labels and final labels, on the CPU.

    Scores are exact (:func:`~guardnet.layers.base.exact_scores`): a layer that stops at its
    threshold (A2D) computes the full score, since several FPRs and AUROCs are read from it.
    """
    device = module_device(guard) or images.device
    parts: list[Any] = []
    with eval_mode(guard), exact_scores():
        for chunk in images.split(guard.max_batch_size or 256):
            result = guard._pipeline(
                chunk.to(device), cascade=False, grad=False, apply_thresholds=False
            )
            parts.append(result.to("cpu"))
    return {
        "scores": {k: torch.cat([p.scores[k] for p in parts]) for k in guard.score_keys},
        "classifier_labels": torch.cat([p.classifier_labels for p in parts]),
        "labels": torch.cat([p.labels for p in parts]),
    }


def _thresholds(guard: GuardedModel) -> dict[str, tuple[float, float]]:
    """Per rejector key: (threshold, score scale) as currently set."""
    out = {}
    for key, (layer, score_name) in guard.rejectors.items():
        index = ... if score_name is None else layer.score_names.index(score_name)
        out[key] = (float(layer.threshold[index]), float(layer.score_scale[index]))
    return out


def _apply_thresholds(guard: GuardedModel, thresholds: Mapping[str, tuple[float, float]]) -> None:
    for key, (layer, score_name) in guard.rejectors.items():
        threshold, scale = thresholds[key]
        layer.set_threshold(threshold, score_scale=scale, score=score_name)


def _rejections(
    guard: GuardedModel, run: Mapping[str, Any], thresholds: Mapping[str, tuple[float, float]]
) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """Per key rejection masks, their OR, and the combined score (largest margin)."""
    scores = run["scores"]
    masks: dict[str, Tensor] = {}
    margins = []
    for key, (layer, _) in guard.rejectors.items():
        threshold, scale = thresholds[key]
        s = scores[key].double()
        signed = s - threshold if layer.higher_is_suspicious else threshold - s
        masks[key] = signed > 0
        margins.append(signed / scale)
    if not masks:
        empty = torch.zeros(run["labels"].shape[0], dtype=torch.bool)
        return masks, empty, empty.double()
    union = torch.stack(list(masks.values())).any(dim=0)
    return masks, union, torch.stack(margins).amax(dim=0)


def _roc_points(negative: Tensor, positive: Tensor, limit: int = 200) -> dict[str, list[float]]:
    fpr, tpr, _ = roc_curve(negative, positive)
    if fpr.numel() > limit:
        index = torch.linspace(0, fpr.numel() - 1, limit).round().long()
        fpr, tpr = fpr[index], tpr[index]
    return {"fpr": [round(float(v), 5) for v in fpr], "tpr": [round(float(v), 5) for v in tpr]}


def _clean_metrics(
    guard: GuardedModel, run: Mapping[str, Any], labels: Tensor, thresholds: Mapping
) -> dict[str, Any]:
    masks, rejected, _ = _rejections(guard, run, thresholds)
    correct = run["classifier_labels"] == labels
    return {
        "clean_accuracy": float(correct.float().mean()),
        "fpr": float(rejected.float().mean()),
        "acc_dec": detection_accuracy(correct, rejected),
        "per_score_fpr": {k: float(m.float().mean()) for k, m in masks.items()},
    }


def _attack_metrics(
    guard: GuardedModel,
    clean_run: Mapping[str, Any],
    adv_run: Mapping[str, Any],
    labels: Tensor,
    thresholds: Mapping,
) -> dict[str, Any]:
    masks, rejected, combined = _rejections(guard, adv_run, thresholds)
    _, _, clean_combined = _rejections(guard, clean_run, thresholds)
    success = adv_run["classifier_labels"] != labels
    n = int(success.sum())
    handled = rejected | (adv_run["labels"] == labels)
    out: dict[str, Any] = {
        "attacked": int(labels.numel()),
        "successful": n,
        "attack_success_rate": n / max(labels.numel(), 1),
        "tpr": float(rejected[success].float().mean()) if n else math.nan,
        "acc_rob": robust_accuracy(success, rejected),
        "acc_rc": float(handled.float().mean()),
        "bare_robust_accuracy": 1.0 - n / max(labels.numel(), 1),
        "per_score_tpr": {},
        "only_this_score": {},
        "auroc": {},
    }
    others_count = torch.stack(list(masks.values())).sum(dim=0) if masks else None
    for key, mask in masks.items():
        if n:
            out["per_score_tpr"][key] = float(mask[success].float().mean())
            alone = mask & (others_count == 1)  # type: ignore[operator]
            out["only_this_score"][key] = float(alone[success].float().mean())
            layer = guard.rejectors[key][0]
            out["auroc"][key] = auroc(
                clean_run["scores"][key],
                adv_run["scores"][key][success],
                higher_is_suspicious=layer.higher_is_suspicious,
            )
    if n and masks:
        out["auroc"]["guard"] = auroc(clean_combined, combined[success])
        out["roc"] = _roc_points(clean_combined, combined[success])
    return out


def _perturbation(clean: Tensor, adv: Tensor, success: Tensor) -> dict[str, float]:
    delta = (adv - clean).flatten(1)
    linf, l2 = delta.abs().amax(dim=1), delta.norm(dim=1)
    if not bool(success.any()):
        return {"linf_median": math.nan, "l2_median": math.nan}
    return {
        "linf_median": float(linf[success].median()),
        "l2_median": float(l2[success].median()),
    }


def _build_attack(
    plan: AttackPlan, guard: GuardedModel, *, batch_size: int, seed: int, progress: bool
) -> Attack:
    common = {"batch_size": batch_size, "seed": seed, "progress": progress, **plan.params}
    if plan.adaptive:
        if plan.eps is None:
            raise ValueError(f"adaptive attack {plan.name!r} needs an eps")
        return make_adaptive_attack(plan.name, guard, eps=plan.eps, **common)
    kwargs = dict(common)
    if plan.eps is not None:
        kwargs["eps"] = plan.eps
    return make_attack(plan.name, ClassifierView(guard), **kwargs)


def _linf_budget(plan: AttackPlan, attack: Attack) -> float | None:
    """The plan's budget if it is an L-inf one (keys of the worst-case table)."""
    if plan.eps is None:
        return None
    norm = attack.params().get("norm", "L2" if plan.name.endswith("l2") else "Linf")
    return plan.eps if str(norm).lower() in ("linf", "inf") else None


#: Parameters that set an attack's effort: ``convergence=True`` doubles the first one found.
_EFFORT = ("steps", "queries", "iterations")


def _outcome(
    guard: GuardedModel,
    run: Mapping[str, Any],
    clean: Tensor,
    adv: Tensor,
    labels: Tensor,
    thresholds: Mapping[float, Mapping[str, tuple[float, float]]],
) -> RunOutcome:
    # The guard's final labels: a reform layer (DeT) that corrects a label defeats the run.
    fooled = run["labels"] != labels
    return RunOutcome(
        linf=(adv.cpu() - clean.cpu()).flatten(1).abs().amax(dim=1),
        success={
            f"{fpr:g}": fooled & ~_rejections(guard, run, t)[1] for fpr, t in thresholds.items()
        },
    )


def evaluate_guard(
    guard: GuardedModel,
    *,
    val_images: Tensor,
    test_images: Tensor,
    test_labels: Tensor,
    plans: Sequence[AttackPlan],
    fprs: Sequence[float] = (0.05, 0.03),
    budget: Mapping[str, float] | str | None = None,
    cache: AdversarialCache | None = None,
    batch_size: int = 250,
    seed: int = 0,
    progress: bool = False,
    keep_examples: int = 8,
    min_success: float = MIN_SUCCESS,
    convergence: bool | Sequence[str] = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Calibrate on ``val_images``, attack ``test_images``, measure. See the module docstring.

    Args:
        guard: the guard (its thresholds are overwritten; on return they are those of
            ``fprs[0]``).
        val_images: clean validation images: the only data that sets thresholds.
        test_images, test_labels: the test split.
        plans: the attacks; their labels must be unique.
        fprs: target FPRs for the standard attacks' figures; the first is the headline.
        budget: relative share of the joint FPR budget per rejector key (e.g. ``"saec"``,
            ``"contranet.dmm"``; missing keys get 1), or ``"runner_up"`` (chosen per target
            FPR on the clean validation images under their runner-up labels), as in
            :meth:`guardnet.GuardedModel.calibrate`; ``None``: equal shares.
        cache: reuse adversarial examples across runs and guards.
        batch_size: attack chunk size.
        seed: attack seed.
        progress: progress bars.
        keep_examples: adversarial examples kept per attack (for pictures), from the first
            successful ones.
        min_success: success (fooled and passed) an adaptive attack should reach at the
            largest budget of its curve; below it, the curve carries a warning.
        convergence: ``True``: rerun every adaptive attack with its effort (``steps``,
            ``queries`` or ``iterations``, the first it has) doubled and report the change of
            robust accuracy; a list of parameter names (e.g. ``["steps", "restarts",
            "eot_samples"]``): one rerun per name the attack has, that parameter doubled. The
            reruns take part in the worst case.
        log: receives one line per step.

    Returns:
        A JSON-serialisable report (``report["examples"]`` holds tensors; drop it before
        ``json.dumps``).
    """
    if not fprs:
        raise ValueError("fprs must name at least one target FPR")
    repeated = sorted(k for k, n in Counter(plan.label for plan in plans).items() if n > 1)
    if repeated:
        raise ValueError(
            f"two attack plans share a label, so one would hide the other: {repeated}; give "
            "runs of one attack with different params a variant"
        )
    began = time.perf_counter()
    all_fprs = sorted({*fprs, *(p.fpr for p in plans if p.adaptive and p.fpr is not None)})
    calibrations: dict[float, dict[str, Any]] = {}
    thresholds: dict[float, dict[str, tuple[float, float]]] = {}
    val_scores = collect_clean_scores(guard, val_images, batch_size=256, progress=progress)
    runner_up_scores = None
    if budget == "runner_up" and guard.rejectors:
        runner_up_scores = collect_clean_scores(
            guard, val_images, batch_size=256, progress=progress, labels="runner_up"
        )
    for fpr in all_fprs:
        if not guard.rejectors:  # a guard that only corrects labels (DeT) has no threshold
            calibrations[fpr] = {"target_fpr": fpr, "layers": {}, "note": "no rejecting layer"}
            thresholds[fpr] = {}
            continue
        report = calibrate_guard(
            guard,
            val_images,
            target_fpr=fpr,
            budget=budget,
            scores=val_scores,
            runner_up_scores=runner_up_scores,
        )
        calibrations[fpr] = report.to_dict()
        thresholds[fpr] = _thresholds(guard)
    log(f"calibrated on {len(val_images)} validation images at FPR {', '.join(map(str, all_fprs))}")

    clean_run = _run(guard, test_images)
    correct = clean_run["classifier_labels"] == test_labels.cpu()
    clean = {
        f"{fpr:g}": _clean_metrics(guard, clean_run, test_labels.cpu(), thresholds[fpr])
        for fpr in all_fprs
    }
    log(f"clean test: accuracy {float(correct.float().mean()):.2%} on {len(test_labels)} images")

    attacked_x = test_images[correct.to(test_images.device)]
    attacked_y = test_labels[correct.to(test_labels.device)]
    results: dict[str, Any] = {}
    examples: dict[str, Tensor] = {}
    outcomes: dict[str, RunOutcome] = {}
    budgets: set[float] = set()
    curves: dict[str, dict[str, Any]] = {}
    for plan in plans:
        tick = time.perf_counter()
        if plan.adaptive:
            _apply_thresholds(guard, thresholds[plan.fpr if plan.fpr is not None else fprs[0]])
        attack = _build_attack(plan, guard, batch_size=batch_size, seed=seed, progress=progress)
        adv = (cache.run if cache is not None else _call)(attack, attacked_x, attacked_y)
        seconds = time.perf_counter() - tick
        adv_run = _run(guard, adv)
        y = attacked_y.cpu()
        success = adv_run["classifier_labels"] != y
        judged_at = [plan.fpr if plan.fpr is not None else fprs[0]] if plan.adaptive else list(fprs)
        entry = {
            "attack": attack.config(),
            "adaptive": plan.adaptive,
            "eps": plan.eps,
            "seconds": seconds,
            "perturbation": _perturbation(attacked_x.cpu(), adv.cpu(), success),
            "at_fpr": {
                f"{fpr:g}": _attack_metrics(guard, clean_run, adv_run, y, thresholds[fpr])
                for fpr in judged_at
            },
        }
        results[plan.label] = entry
        first = entry["at_fpr"][f"{judged_at[0]:g}"]
        log(
            f"{plan.label:<28} success {first['attack_success_rate']:6.1%}  TPR "
            f"{first['tpr']:6.1%}  Acc_rob {first['acc_rob']:6.1%}  ({seconds:.0f} s)"
        )
        outcomes[plan.label] = _outcome(guard, adv_run, attacked_x, adv, y, thresholds)
        linf_eps = _linf_budget(plan, attack)
        if linf_eps is not None:
            budgets.add(linf_eps)
        if plan.adaptive and plan.eps is not None:
            key = json.dumps([plan.name, judged_at[0], dict(plan.params)], sort_keys=True)
            curve = curves.setdefault(
                key,
                {"attack": plan.name, "fpr": judged_at[0], "params": dict(plan.params)},
            )
            curve.setdefault("points", [])
            curve["points"].append((plan.eps, 1.0 - first["acc_rob"]))
        params = attack.params()
        if convergence is True:
            efforts = [next((k for k in _EFFORT if k in params), None)]
        else:
            efforts = list(convergence or [])
        for effort in efforts if plan.adaptive else []:
            if effort is None or not isinstance(params.get(effort), int):
                continue
            doubled = 2 * params[effort]
            more = {**plan.params, effort: doubled}
            twice = AttackPlan(plan.name, adaptive=True, eps=plan.eps, params=more, fpr=plan.fpr)
            again = _build_attack(twice, guard, batch_size=batch_size, seed=seed, progress=progress)
            adv2 = (cache.run if cache is not None else _call)(again, attacked_x, attacked_y)
            run2 = _run(guard, adv2)
            m2 = _attack_metrics(guard, clean_run, run2, y, thresholds[judged_at[0]])
            check = convergence_check(effort, doubled, first["acc_rob"], m2["acc_rob"])
            entry.setdefault("convergence", []).append({"attack": again.config(), **check})
            outcomes[f"{plan.label} {effort}={doubled}"] = _outcome(
                guard, run2, attacked_x, adv2, y, thresholds
            )
            if check["warning"]:
                log(f"{plan.label}: {check['warning']}")
        order = torch.argsort((~success).to(torch.int8), stable=True)[:keep_examples]
        examples[plan.label] = torch.stack([attacked_x.cpu()[order], adv.cpu()[order]])
    _apply_thresholds(guard, thresholds[fprs[0]])
    worst = worst_case_table(outcomes, budgets=sorted(budgets), fprs=[f"{f:g}" for f in all_fprs])
    for row in worst:
        log(
            f"worst case eps={format_eps(row['eps'])} fpr={row['fpr']}: robust accuracy "
            f"{row['robust_accuracy']:.1%} over {len(row['runs'])} runs"
        )
    budget_curves = []
    for curve in curves.values():
        checked = budget_curve(curve.pop("points"), min_success=min_success)
        budget_curves.append({**curve, **checked})
        if checked["warning"]:
            log(f"{curve['attack']} fpr={curve['fpr']:g}: {checked['warning']}")
    return {
        "protocol": __doc__.split("Protocol")[1].strip() if __doc__ else "",
        "fprs": list(fprs),
        "budget": budget if budget is None or isinstance(budget, str) else dict(budget),
        "val_images": len(val_images),
        "test_images": len(test_labels),
        "attacked_images": int(correct.sum()),
        "calibration": {f"{k:g}": v for k, v in calibrations.items()},
        "clean": clean,
        "attacks": results,
        "worst_case": worst,
        "budget_curves": budget_curves,
        "attack_settings": {
            "batch_size": batch_size,
            "seed": seed,
            "linf_tolerance": LINF_TOLERANCE,
            "min_success": min_success,
            "convergence": convergence if isinstance(convergence, bool) else list(convergence),
        },
        "cache": None if cache is None else {"hits": cache.hits, "misses": cache.misses},
        "seconds": time.perf_counter() - began,
        "examples": examples,
    }


def _call(attack: Attack, images: Tensor, labels: Tensor) -> Tensor:
    return attack(images, labels)


def _pct(value: float) -> str:
    return "   -  " if value != value else f"{value:6.1%}"


def format_report(report: Mapping[str, Any]) -> str:
    """The report as a plain-text table (one row per attack and FPR)."""
    lines = []
    head = report["fprs"][0]
    c = report["clean"][f"{head:g}"]
    lines.append(
        f"clean: accuracy {c['clean_accuracy']:.2%}  Acc_dec {c['acc_dec']:.2%}  "
        + "  ".join(f"FPR@{f}: {report['clean'][f]['fpr']:.2%}" for f in report["clean"])
    )
    keys = list(c["per_score_fpr"])
    lines.append(
        "clean rejections per score at FPR "
        + f"{head:g}: "
        + ", ".join(f"{k} {v:.1%}" for k, v in c["per_score_fpr"].items())
    )
    header = (
        f"{'attack':<30}{'FPR':>6}{'success':>9}{'TPR':>8}{'AUROC':>8}{'Acc_rob':>9}"
        f"{'Acc_RC':>8}{'sec':>7}"
    )
    lines.append(header + "  per-score TPR")
    lines.append("-" * (len(header) + 30))
    for label, entry in report["attacks"].items():
        for fpr, m in entry["at_fpr"].items():
            guard_auc = m["auroc"].get("guard", math.nan)
            per = " ".join(
                f"{k.split('.')[-1]}={_pct(m['per_score_tpr'][k]).strip()}"
                for k in keys
                if k in m["per_score_tpr"]
            )
            lines.append(
                f"{label:<30}{fpr:>6}{_pct(m['attack_success_rate']):>9}{_pct(m['tpr']):>8}"
                f"{guard_auc:>8.3f}{_pct(m['acc_rob']):>9}{_pct(m['acc_rc']):>8}"
                f"{entry['seconds']:>7.0f}  {per}"
            )
            for check in entry.get("convergence", []):
                lines.append(
                    f"{'':<30}{'':>6}  {check['param']} x2 -> Acc_rob "
                    f"{_pct(check['robust_accuracy']).strip()} ({check['change']:+.1%})"
                    + (f"  WARNING: {check['warning']}" if check["warning"] else "")
                )
    lines.extend(_format_worst_case(report.get("worst_case") or []))
    lines.extend(_format_curves(report.get("budget_curves") or []))
    return "\n".join(lines)


def _format_worst_case(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    if not rows:
        return []
    lines = [
        "",
        "worst case per example (robust: no run within the budget fooled the classifier and "
        "passed the guard); below each, every run's own Acc_rob within the budget and the "
        "images only it broke",
        f"{'eps':<10}{'FPR':>6}{'robust':>9}",
    ]
    for row in rows:
        lines.append(
            f"{format_eps(row['eps']):<10}{row['fpr']:>6}{_pct(row['robust_accuracy']):>9}"
        )
        for label, value in row["runs"].items():
            only = row.get("only_run", {}).get(label, 0)
            lines.append(
                f"{'':<16}{_pct(value):>9}  {label}" + (f"  (only: {only})" if only else "")
            )
    return lines


def _format_curves(curves: Sequence[Mapping[str, Any]]) -> list[str]:
    if not curves:
        return []
    lines = ["", "budget curves of the adaptive attacks (success: fooled and passed)"]
    for curve in curves:
        points = ", ".join(
            f"{format_eps(e)} {_pct(s).strip()}"
            for e, s in zip(curve["eps"], curve["success"], strict=True)
        )
        settings = f" {variant_name(curve['params'])}" if curve.get("params") else ""
        lines.append(f"{curve['attack']} fpr={curve['fpr']:g}{settings}: {points}")
        if curve["warning"]:
            lines.append(f"  WARNING: {curve['warning']}")
    return lines
