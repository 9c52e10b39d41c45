"""Worst case per example over attack runs, as AutoAttack reports robust accuracy.

An attacked image counts as robust at budget ``eps`` and target FPR ``f`` only if *no* attack
run produced, within ``eps`` (L-inf), an input that fools the classifier and passes the guard
calibrated at ``f`` (for a guard with a reform layer such as DeT: whose final label is wrong and
that passes). Robust accuracy under the worst case is the share of such images: the
per-example AND, over runs, of "this run failed" (Croce & Hein, "Reliable evaluation of
adversarial robustness with an ensemble of diverse parameter-free attacks", ICML 2020). It is
never above any single run's figure, and it is the figure an outside attacker who tries every
run faces.

Runs of any attack take part at every budget their examples fit in: a run at 2/255 also counts
at 8/255, and a minimum-norm attack (C&W, DeepFool) counts its examples whose L-inf distance is
within the budget.

Example:
    >>> import torch
    >>> a = torch.tensor([True, False, False, False])
    >>> b = torch.tensor([False, True, False, False])
    >>> robust_mask({"a": a, "b": b}).tolist()
    [False, False, True, True]
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = ["LINF_TOLERANCE", "RunOutcome", "robust_mask", "worst_case_table"]

#: Slack on the L-inf budget check (float32 rounding of ``x + eps - x``).
LINF_TOLERANCE = 1e-6


def robust_mask(successes: Mapping[str, Tensor] | Iterable[Tensor]) -> Tensor:
    """(N,) ``True`` where no run succeeded: the per-example AND of the runs' failures.

    Args:
        successes: per run, an (N,) bool mask of the images it broke (fooled and passed), all
            over the same N images in the same order.

    Raises:
        ValueError: no run, or masks of different shapes or not 1-D bool.
    """
    masks = list(successes.values() if isinstance(successes, Mapping) else successes)
    if not masks:
        raise ValueError("the worst case needs at least one run")
    shape = masks[0].shape
    for mask in masks:
        if mask.dtype != torch.bool or mask.ndim != 1 or mask.shape != shape:
            raise ValueError(
                "success masks must be 1-D bool tensors of one shape, got "
                f"{[(tuple(m.shape), str(m.dtype)) for m in masks]}"
            )
    return ~torch.stack(masks).any(dim=0)


@dataclass
class RunOutcome:
    """What one attack run did to the attacked images.

    Args:
        linf: (N,) L-inf distance of each adversarial example from its clean image.
        success: per target FPR (as formatted in reports, e.g. ``"0.05"``), (N,) fooled the
            classifier and passed the guard calibrated at that FPR.
    """

    linf: Tensor
    success: dict[str, Tensor] = field(default_factory=dict)


def worst_case_table(
    runs: Mapping[str, RunOutcome],
    *,
    budgets: Sequence[float],
    fprs: Sequence[str],
    tolerance: float = LINF_TOLERANCE,
) -> list[dict[str, Any]]:
    """Worst-case robust accuracy per (budget, FPR), next to each run's own figure.

    Args:
        runs: per run label, its :class:`RunOutcome` (all over the same images).
        budgets: L-inf budgets.
        fprs: target FPR keys.
        tolerance: slack on ``linf <= eps``.

    Returns:
        One entry per budget and FPR: ``eps``, ``fpr``, ``attacked``, ``robust`` (count),
        ``robust_accuracy``, ``runs`` (each run's robust accuracy within the budget) and
        ``only_run`` (per run, the images no other run broke). Entries without any run are
        left out.
    """
    table = []
    for eps in sorted(set(budgets)):
        for fpr in fprs:
            broke = {
                label: run.success[fpr] & (run.linf <= eps + tolerance)
                for label, run in runs.items()
                if fpr in run.success
            }
            if not broke:
                continue
            robust = robust_mask(broke)
            n = int(robust.numel())
            stacked = torch.stack(list(broke.values()))
            alone = stacked & (stacked.sum(dim=0) == 1)
            table.append(
                {
                    "eps": float(eps),
                    "fpr": fpr,
                    "attacked": n,
                    "robust": int(robust.sum()),
                    "robust_accuracy": int(robust.sum()) / max(n, 1),
                    "runs": {k: 1.0 - int(m.sum()) / max(n, 1) for k, m in broke.items()},
                    "only_run": {k: int(a.sum()) for k, a in zip(broke, alone, strict=True)},
                }
            )
    return table
