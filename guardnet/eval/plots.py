"""Pictures of an evaluation report: ROC curves, robust accuracy against the budget, examples.

matplotlib is an optional dependency (``pip install guardnet[eval]``), imported on use; the
example grid only needs torchvision.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["plot_robust_accuracy", "plot_roc", "save_examples"]


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError("plots need matplotlib: pip install 'guardnet[eval]'") from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt: Any, fig: Any, path: str | os.PathLike[str], *, tight: bool = False) -> Path:
    if not tight:
        fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    # bbox_inches="tight" keeps a legend placed outside the axes in the picture.
    fig.savefig(out, dpi=120, **({"bbox_inches": "tight"} if tight else {}))
    plt.close(fig)
    return out


def plot_roc(report: Mapping[str, Any], path: str | os.PathLike[str], *, title: str = "") -> Path:
    """One ROC curve per attack (the guard's combined score, clean test vs successful examples).

    The dashed line marks the headline FPR; curves are at the headline calibration (adaptive
    attacks at their own).
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    for label, entry in report["attacks"].items():
        metrics = next(iter(entry["at_fpr"].values()))
        if "roc" not in metrics:
            continue
        auc = metrics["auroc"].get("guard", math.nan)
        ax.plot(metrics["roc"]["fpr"], metrics["roc"]["tpr"], label=f"{label} (AUROC {auc:.3f})")
    ax.plot([0, 1], [0, 1], color="0.7", linewidth=0.8)
    ax.axvline(report["fprs"][0], color="0.4", linestyle="--", linewidth=0.8)
    ax.set_xlabel("false-positive rate (clean test)")
    ax.set_ylabel("true-positive rate (successful adversarial examples)")
    ax.set_title(title or "ROC of the guard's combined score")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    return _save(plt, fig, path)


def plot_robust_accuracy(
    report: Mapping[str, Any], path: str | os.PathLike[str], *, title: str = ""
) -> Path | None:
    """Robust accuracy against the budget, guarded and bare, per attack (at the headline FPR).

    Returns ``None`` (and writes nothing) when no attack was run at two or more budgets.
    """
    head = f"{report['fprs'][0]:g}"
    series: dict[str, list[tuple[float, float, float]]] = {}
    adaptive: set[str] = set()
    for label, entry in report["attacks"].items():
        if entry["eps"] is None or head not in entry["at_fpr"]:
            continue
        # One line per run label without its budget: variants of an attack get their own.
        name = " ".join(part for part in label.split() if not part.startswith("eps="))
        if entry["adaptive"]:
            name += " (adaptive)"
            adaptive.add(name)
        m = entry["at_fpr"][head]
        series.setdefault(name, []).append((entry["eps"], m["acc_rob"], m["bare_robust_accuracy"]))
    series = {k: sorted(v) for k, v in series.items() if len(v) >= 2}
    if not series:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    from guardnet.eval.harness import format_eps

    budgets = [p[0] for points in series.values() for p in points]
    on_grid = all(format_eps(e).endswith("/255") for e in budgets)  # colour-image budgets
    many = len(series) > 8
    palette = plt.get_cmap("tab20").colors
    for i, (name, points) in enumerate(series.items()):
        eps = [p[0] * 255 if on_grid else p[0] for p in points]
        colour = palette[i % len(palette)] if many else None
        line = ax.plot(
            eps, [p[1] for p in points], marker="o", color=colour, label=f"{name}: guarded"
        )[0]
        # Under an adaptive attack the bare classifier's accuracy is not the figure of interest.
        if name in adaptive:
            continue
        ax.plot(
            eps,
            [p[2] for p in points],
            marker="x",
            linestyle=":",
            color=line.get_color(),
            label=f"{name}: bare classifier",
        )
    worst = sorted(
        (row["eps"], row["robust_accuracy"])
        for row in report.get("worst_case") or []
        if row["fpr"] == head
    )
    if len(worst) >= 2:
        ax.plot(
            [e * 255 if on_grid else e for e, _ in worst],
            [w for _, w in worst],
            color="black",
            linewidth=2.5,
            marker="s",
            label="worst case per example",
        )
    ax.set_xlabel("budget eps (x 1/255)" if on_grid else "budget eps")
    ax.set_ylabel("robust accuracy (Acc_rob)")
    ax.set_ylim(0, 1.02)
    ax.set_title(title or f"Robust accuracy at {float(head):.0%} FPR")
    if many:  # a long legend goes beside the axes, not over the lines
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    else:
        ax.legend(fontsize=7)
    return _save(plt, fig, path, tight=many)


def save_examples(
    examples: Mapping[str, Tensor],
    path: str | os.PathLike[str],
    *,
    rebuild: Any = None,
    classify: Any = None,
) -> Path:
    """A PNG grid: per attack, a row of clean inputs, their adversarial versions, the
    perturbation (amplified to the full range) and, with ``rebuild``, ContraNet's rebuild of each
    adversarial input under the label the classifier gave it.

    Args:
        examples: per attack label, a (2, N, C, H, W) stack of clean and adversarial images.
        path: the PNG.
        rebuild: ``(images, labels) -> images`` (e.g. :meth:`guardnet.ContraNetLayer.rebuild`).
        classify: ``images -> logits``, needed with ``rebuild``.
    """
    from torch.nn import functional as F
    from torchvision.utils import make_grid, save_image

    rows: list[Tensor] = []
    for pair in examples.values():
        clean, adv = pair[0], pair[1]
        if clean.numel() == 0:
            continue
        delta = adv - clean
        scale = delta.flatten(1).abs().amax(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        rows += [clean, adv, delta / (2 * scale) + 0.5]
        if rebuild is not None and classify is not None:
            with torch.no_grad():
                rebuilt = rebuild(adv, classify(adv).argmax(dim=1))
            if rebuilt.shape[-2:] != adv.shape[-2:]:
                rebuilt = F.interpolate(rebuilt, size=adv.shape[-2:], mode="bilinear")
            rows.append(rebuilt.clamp(0, 1))
    if not rows:
        raise ValueError("no examples to draw")
    width = max(r.shape[0] for r in rows)
    padded = [
        torch.cat([r, r.new_ones(width - r.shape[0], *r.shape[1:])]) if r.shape[0] < width else r
        for r in rows
    ]
    grid = make_grid(torch.cat(padded), nrow=width, padding=2, pad_value=1.0)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_image(grid, out)
    return out
