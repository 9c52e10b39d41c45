"""A trained ContraNet's Hub folder, shipped with its measured detection figures.

:func:`ship_contranet` copies a training run's Hub folder (``RUN_DIR/model``) to the shipped
location and adds what :func:`guardnet.eval.measure.measure_contranet` measured: the test
metrics of ContraNet alone in ``config.json`` and a "Measured detection" section (table and
command) at the end of the model card. A measurement with both budget rules (``budgets=
("equal", "runner_up")``, either order) gives the ``<dataset>_test_*`` metrics from the equal
shares and the ``<dataset>_runner_up_*`` ones, and the card's table, from the runner-up split.

Branched or resumed runs need words the exported card cannot write: ``wall_time`` replaces the
text of its "Training wall time" bullet, and ``notes`` (Markdown: a "Use" section, how the run
was branched) go before its "## Command" section, so that shipping again keeps them.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from guardnet.errors import CalibrationError, WeightsError

__all__ = ["detection_table", "ship_contranet"]

_LABELS = {"contranet": "ContraNet alone", "saec+contranet": "SAEC + ContraNet"}


def _pct(value: float | None) -> str:
    return "-" if value is None or value != value else f"{value:.2%}"


def _alone_metrics(prefix: str, alone: Mapping[str, Any], budget: str) -> dict[str, float]:
    """Config metrics of ContraNet alone at one validation budget, keys starting with ``prefix``."""
    metrics = {f"{prefix}val_fpr_budget": float(budget)}
    for attack, entry in alone["attacks"].items():
        metrics[f"{prefix}test_tpr_{attack}"] = round(entry["tpr"], 4)
    metrics[f"{prefix}test_fpr"] = round(alone["fpr"], 4)
    metrics[f"{prefix}test_acc_dec"] = round(alone["acc_dec"], 4)
    return metrics


def _with_notes(card: str, *, wall_time: str | None, notes: str | None) -> str:
    """The exported card with its wall-time bullet replaced and hand-written notes inserted."""
    if wall_time is not None:
        bullet = "- Training wall time: "
        lines = card.split("\n")
        hits = [i for i, line in enumerate(lines) if line.startswith(bullet)]
        if len(hits) != 1:
            raise WeightsError(
                f"wall_time: the card has {len(hits)} {bullet.strip()!r} bullets, not one"
            )
        lines[hits[0]] = bullet + wall_time.strip()
        card = "\n".join(lines)
    if notes is not None:
        marker = "\n## Command\n"
        if card.count(marker) != 1:
            raise WeightsError("notes: the card has no single '## Command' section to go before")
        text = notes.strip("\n")
        card = card.replace(marker, f"\n{text}\n{marker}")
    return card


def detection_table(points: Mapping[str, Any]) -> list[str]:
    """Markdown rows (header first) of every guard at every validation budget of ``points``.

    Args:
        points: per validation FPR budget (``"0.05"``), ``{"results": {guard: figures}}`` as
            :func:`guardnet.eval.measure.measure_contranet` writes them.

    Returns:
        The table's lines: clean FPR, Acc_dec and the TPR of each attack, per budget and guard.
    """
    first = next(iter(points.values()))["results"]
    alone = first.get("contranet", next(iter(first.values())))
    attacks = list(alone["attacks"])
    rows = [
        f"| validation FPR budget | guard | clean FPR | Acc_dec (bare accuracy "
        f"{_pct(alone['clean_accuracy'])}) | " + " | ".join(attacks) + " |",
        "| --- " * (4 + len(attacks)) + "|",
    ]
    for budget, point in points.items():
        for key, result in point["results"].items():
            cells = [_pct(result["attacks"][a]["tpr"]) for a in attacks]
            rows.append(
                f"| {float(budget):.0%} | {_LABELS.get(key, key)} | {_pct(result['fpr'])} | "
                f"{_pct(result['acc_dec'])} | " + " | ".join(cells) + " |"
            )
    return rows


def ship_contranet(
    model_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    measurement: str | os.PathLike[str] | Mapping[str, Any],
    measure_command: str,
    fpr: float | None = None,
    wall_time: str | None = None,
    notes: str | None = None,
) -> dict[str, float]:
    """Copy a trained ContraNet's Hub folder to ``out`` with its measured detection figures.

    ``out`` is replaced. ``config.json`` keeps the run's validation metrics and gains the test
    metrics of ContraNet alone at the ``fpr`` budget (``<dataset>_test_tpr_<attack>``,
    ``_test_fpr``, ``_test_acc_dec``, ``_val_fpr_budget``; with ``runner_up_`` after the dataset
    for the runner-up split); the card gains a "Measured detection" section with the command and
    a table of every budget.

    Args:
        model_dir: the run's Hub folder (``RUN_DIR/model``: config.json, model.safetensors,
            README.md).
        out: the folder to write (e.g. the repository's ``hub/contranet-gtsrb``).
        measurement: the report of :func:`~guardnet.eval.measure.measure_contranet`, or the
            JSON file holding it.
        measure_command: the command line that measured it, quoted in the card.
        fpr: the validation budget for ``config.json``'s metrics; default the first measured.
        wall_time: text replacing the card's "Training wall time" bullet.
        notes: Markdown inserted before the card's "## Command" section.

    Returns:
        The config's metrics after the update.

    Raises:
        WeightsError: ``out`` is ``model_dir``, a file is missing, or ``wall_time`` / ``notes``
            find no single place in the card.
        CalibrationError: ``fpr`` was not measured.

    Example:
        >>> ship_contranet("runs/contranet-gtsrb/model", "hub/contranet-gtsrb",
        ...                measurement="benchmarks/results/contranet_gtsrb.json",
        ...                measure_command="guardnet measure contranet ...")  # doctest: +SKIP
    """
    source, target = Path(model_dir), Path(out)
    missing = [n for n in ("config.json", "README.md") if not (source / n).is_file()]
    if missing:
        raise WeightsError(f"{source} is not a trained ContraNet's Hub folder: no {missing}")
    if target.resolve() == source.resolve():
        raise WeightsError(f"out must differ from model_dir ({source}): it is replaced")
    measured = (
        dict(measurement)
        if isinstance(measurement, Mapping)
        else json.loads(Path(measurement).read_text())
    )
    # One operating point per validation FPR budget (older reports hold only the headline one).
    points = measured.get("by_target_fpr") or {
        f"{measured['target_fpr']:g}": {"results": measured["results"]}
    }
    # Reports with both rules: equal shares give the `*_test_*` metrics, the runner-up split (the
    # one the cards recommend) the `*_runner_up_*` ones and the card's table.
    by_budget = measured.get("by_budget", {})
    runner_up = by_budget.get("runner_up") if "equal" in by_budget else None
    if runner_up is not None:
        points = by_budget["equal"]
    headline = f"{fpr:g}" if fpr is not None else next(iter(points))
    if headline not in points:
        raise CalibrationError(f"fpr {headline} not measured; the report has {sorted(points)}")

    card = _with_notes(
        (source / "README.md").read_text().rstrip("\n"), wall_time=wall_time, notes=notes
    )
    config = json.loads((source / "config.json").read_text())
    prefix = config["dataset"]
    alone = points[headline]["results"]["contranet"]
    metrics = _alone_metrics(f"{prefix}_", alone, headline)
    if runner_up is not None:
        metrics |= _alone_metrics(
            f"{prefix}_runner_up_", runner_up[headline]["results"]["contranet"], headline
        )
        points = runner_up
        which = (
            'The rows\nbelow are `budget="runner_up"`; the `*_runner_up_*` metrics in '
            f"`config.json` are its {float(headline):.0%} row of\nContraNet alone, the "
            f"`{prefix}_test_*` metrics the equal-share one (in the JSON)."
        )
    else:
        which = (
            f"The\nmetrics in `config.json` are the {float(headline):.0%} rows of ContraNet alone."
        )
    # This measurement replaces older test figures; the training run's validation ones stay.
    config["metrics"] = {**config.get("metrics", {}), **metrics}

    attacks = list(alone["attacks"])
    success = ", ".join(f"{a} {_pct(alone['attacks'][a]['attack_success_rate'])}" for a in attacks)
    budgets = ", ".join(f"{float(b):.0%}" for b in points)
    card += f"""

## Measured detection ({measured["dataset"]} test, {measured["test_images"]} seeded images)

Thresholds from `guard.calibrate` on {measured["val_images"]} clean validation images at a joint
FPR budget of {budgets} (never test or attack data); attacks ({_attack_libraries(measured)}) against
`{measured["classifier"]}` on the {measured["attacked_images"]} correctly classified test images;
TPR = share of successful adversarial examples rejected (attack success rates: {success}). {which}

```
{measure_command}
```

{chr(10).join(detection_table(points))}
"""
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target)
    (target / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (target / "README.md").write_text(card)
    return config["metrics"]


def _attack_libraries(measured: Mapping[str, Any]) -> str:
    """Which libraries made a measurement's attacks, from its ``attack_settings``."""
    settings = measured.get("attack_settings") or {}
    named = [f"{name}: {s['library']}" for name, s in settings.items() if "library" in s]
    return ", ".join(named) or "torchattacks"
