"""Fit, calibrate and write an A2D layer as a Hub folder with its model card.

The folder holds the layer's config (attacks and their settings, the detector) as
``arch_args`` of the ``"A2D"`` architecture, and its fitted state in ``model.safetensors``:
per attack the Box-Cox power and the mean and spread of the transformed clean costs, plus
thresholds at the shipped FPR (a guard recalibrates them with :meth:`GuardedModel.calibrate
<guardnet.GuardedModel.calibrate>`). :func:`guardnet.from_pretrained` and
:meth:`A2DLayer.from_pretrained <guardnet.A2DLayer.from_pretrained>` load it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from guardnet.calibration import calibrate_guard
from guardnet.data.datasets import dataset_info, load_split
from guardnet.guard import GuardedModel
from guardnet.layers.a2d import A2DLayer
from guardnet.recipes import build_classifier
from guardnet.weights.io import write_folder

__all__ = ["a2d_metadata", "ship_a2d"]


def _card(config: dict[str, Any]) -> str:
    fit = config["fit"]
    layer = config["arch_args"]
    rows = "\n".join(
        f"| `{a}` | {json.dumps(s)} | {lam:.4f} | {mean:.4f} | {std:.4f} | {thr} |"
        for a, s, lam, mean, std, thr in zip(
            layer["attacks"],
            fit["settings"].values(),
            fit["boxcox_lambda"],
            fit["cost_mean"],
            fit["cost_std"],
            fit["thresholds"],
            strict=True,
        )
    )
    measured = config.get("measured")
    measured_text = (
        "\n".join(f"- {line}" for line in measured)
        if measured
        else "- Not measured with this folder yet."
    )
    return f"""---
license: apache-2.0
library_name: guardnet
tags: [adversarial-detection, a2d, {config["dataset"]}]
---

# {config["name"]}: A2D (Attack as Defense) settings for `{config["classifier"]}`

The fitted state of guardnet's `A2DLayer` (Zhao et al., "Attack as Defense: Characterizing
Adversarial Examples using Robustness", ISSTA 2021) for the classifier `{config["classifier"]}`
on {config["dataset_title"]}: every input is attacked by the attacks below, and an input whose
label flips too cheaply is rejected. There are no network weights: the file holds, per attack,
the Box-Cox power and the mean and spread of the transformed clean costs, and thresholds at
{config["target_fpr"]:.0%} FPR.

```python
import guardnet
guard = guardnet.from_pretrained("{config["recipe"]}")  # classifier + this layer
guard.calibrate(clean_val_images, target_fpr=0.05)
```

## Settings and fit

Detector `{layer["detector"]}`; fitted on {fit["fit_images"]} clean validation images, thresholds
from {fit["val_images"]} other clean validation images at {config["target_fpr"]:.0%} FPR (achieved
{fit["val_fpr"]:.2%}). Costs are steps (BIM, BIM2), iterations (JSMA) or queries (DBA) until the
predicted label changes; an input that does not flip within the limit gets the limit.

| attack | settings | Box-Cox power | mean | spread | threshold (z) |
| --- | --- | ---: | ---: | ---: | ---: |
{rows}

Fitting took {fit["seconds"]:.0f} s on {fit["threads"]} CPU thread(s).

## Measured

{measured_text}

## Limitations

- The costs depend on the classifier: these parameters are for `{config["classifier"]}` only.
- A2D's scores are counts and give no gradient. High-confidence attacks (PGD with many steps,
  C&W with a large kappa) push inputs far past the boundary, where attacking them again is as
  expensive as for a clean input: A2D is a detector of *minimal* adversarial examples.
- Every input costs up to {max(s["limit"] for s in fit["settings"].values())} extra forward (and
  backward) passes; `stop_at_threshold` (on by default) stops at the threshold.

## Command

```bash
{config["command"]}
```
"""


def a2d_metadata(config: Mapping[str, Any]) -> dict[str, Any]:
    """Licence, source and metrics of a shipped A2D folder's config, from its ``fit``."""
    dataset = config["dataset"]
    return {
        "license": "Apache-2.0",
        "source": f"fitted by guardnet (guardnet ship a2d) on {config['classifier']}",
        "metrics": {f"{dataset}_val_fpr": round(float(config["fit"]["val_fpr"]), 4)},
        "headline_metric": f"{dataset}_val_fpr",
    }


def ship_a2d(
    out: str | os.PathLike[str],
    *,
    dataset: str,
    classifier: str,
    attacks: Sequence[str],
    name: str,
    recipe: str,
    settings: Mapping[str, Mapping[str, float]] | None = None,
    detector: str = "zscore",
    fit_limit: int = 300,
    val_limit: int = 300,
    target_fpr: float = 0.05,
    batch_size: int = 256,
    command: str = "",
    measured: Sequence[str] = (),
) -> dict[str, Any]:
    """Fit an A2D layer on clean validation images, calibrate it, and write its Hub folder.

    Validation images ``[0, fit_limit)`` fit the Box-Cox transforms, ``[fit_limit, fit_limit +
    val_limit)`` set the thresholds (joint calibration at ``target_fpr``).

    Args:
        out: the folder to write (e.g. ``hub/a2d-mnist``).
        dataset: the dataset (its validation split and the layer's preset).
        classifier: the registered classifier the costs are measured on.
        attacks: the attacks used as defense.
        name: the registered name the folder ships under.
        recipe: the guard recipe that uses it (for the card).
        settings: per attack, settings that replace the preset's.
        detector: the layer's detector.
        fit_limit: validation images for the Box-Cox fit.
        val_limit: other validation images for the thresholds.
        target_fpr: the thresholds' false-positive rate.
        batch_size: images per batch.
        command: the command line, quoted in the card.
        measured: Markdown lines for the card's "Measured" section.

    Returns:
        The written config.
    """
    start = time.perf_counter()
    model = build_classifier(classifier)
    layer = A2DLayer(attacks, preset=dataset, settings=settings, detector=detector)
    guard = GuardedModel(model, [layer])
    data = load_split(dataset, "val", limit=fit_limit + val_limit)
    fit_images, val_images = data.images[:fit_limit], data.images[fit_limit:]
    layer.fit(fit_images, guard.classify, batch_size=batch_size)
    with torch.enable_grad():
        val_costs = torch.cat(
            [layer.costs(c, guard.classify) for c in val_images.split(batch_size)]
        )
    scores = layer.scores_from_costs(val_costs)
    keys = list(guard.rejectors)
    by_key = {k: (scores[:, i] if scores.ndim == 2 else scores) for i, k in enumerate(keys)}
    report = calibrate_guard(guard, None, target_fpr=target_fpr, scores=by_key, progress=False)
    info = dataset_info(dataset)
    config: dict[str, Any] = {
        "architecture": "A2D",
        "arch_args": layer.get_config(),
        "name": name,
        "recipe": recipe,
        "dataset": dataset,
        "dataset_title": info.display_name,
        "input_size": [info.channels, info.image_size, info.image_size],
        "classifier": classifier,
        "num_classes": info.num_classes,
        "target_fpr": target_fpr,
        "fit": {
            "fit_images": len(fit_images),
            "val_images": len(val_images),
            "settings": layer.settings,
            "boxcox_lambda": layer.boxcox_lambda.tolist(),
            "cost_mean": layer.cost_mean.tolist(),
            "cost_std": layer.cost_std.tolist(),
            "thresholds": [round(t, 4) for t in layer.threshold.flatten().tolist()]
            * (1 if layer.score_names else len(attacks)),
            "val_fpr": report.overall_fpr,
            "seconds": time.perf_counter() - start,
            "threads": torch.get_num_threads(),
        },
        "measured": list(measured),
        "command": command,
    }
    config.update(a2d_metadata(config))
    state = {k: v.detach().cpu().contiguous().clone() for k, v in layer.state_dict().items()}
    write_folder(Path(out), state, config, card=_card)
    return config
