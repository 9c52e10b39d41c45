"""Copy a trained ContraNet into the repository's hub/ mirror with its measured detection figures.

Reads a training run's Hub folder (``RUN_DIR/model``) and the JSON written by
``scripts/measure_contranet.py``; writes ``hub/NAME`` with the test metrics added to
``config.json`` and a "Measured detection" section (table and command) appended to the model
card; prints the metrics dict (the ``PretrainedEntry`` in ``guardnet/weights/pretrained.py``
then needs the new files' sha256s). A JSON
measured with both splits (``--budget equal runner_up``, either order) gives the ``*_test_*``
metrics from the equal shares and the ``*_runner_up_*`` ones, and the card's table, from the
runner-up split.

Branched or resumed runs need words the exported card cannot write: ``--wall-time`` replaces the
text of its "Training wall time" bullet, ``--notes FILE`` inserts hand-written Markdown (a "Use"
section, how the run was branched) before its "## Command" section, so a re-ship does not drop
them.

Usage:
    python scripts/ship_contranet.py --run runs/contranet-gtsrb --measure \
        benchmarks/results/contranet_gtsrb.json --name contranet-gtsrb \
        --measure-command "python scripts/measure_contranet.py ..."
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "hub"


def _pct(value: float | None) -> str:
    return "-" if value is None or value != value else f"{value:.2%}"


def _alone_metrics(prefix: str, alone: dict, budget: str) -> dict[str, float]:
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
            raise SystemExit(f"--wall-time: the card has {len(hits)} {bullet.strip()!r} bullets")
        lines[hits[0]] = bullet + wall_time.strip()
        card = "\n".join(lines)
    if notes is not None:
        marker = "\n## Command\n"
        if card.count(marker) != 1:
            raise SystemExit("--notes: the card has no single '## Command' section to go before")
        card = card.replace(marker, f"\n{notes}\n{marker}")
    return card


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, help="training run folder (holds model/)")
    parser.add_argument("--measure", required=True, help="measure_contranet.py JSON")
    parser.add_argument("--name", required=True, help="registry name, e.g. contranet-gtsrb")
    parser.add_argument("--measure-command", required=True, help="the measurement command line")
    parser.add_argument(
        "--fpr", type=float, default=None, help="budget for config.json's metrics (default: first)"
    )
    parser.add_argument(
        "--wall-time", default=None, help="text for the card's 'Training wall time' bullet"
    )
    parser.add_argument(
        "--notes", default=None, help="Markdown file inserted before the card's '## Command'"
    )
    args = parser.parse_args()

    source = Path(args.run) / "model"
    target = ASSETS / args.name
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target)
    measured = json.loads(Path(args.measure).read_text())
    # One operating point per validation FPR budget (older JSONs hold only the headline one).
    points = measured.get("by_target_fpr") or {
        f"{measured['target_fpr']:g}": {"results": measured["results"]}
    }
    # JSONs measured with both splits: equal shares give the `*_test_*` metrics, the runner-up
    # split (the one the cards recommend) the `*_runner_up_*` ones and the card's table.
    by_budget = measured.get("by_budget", {})
    runner_up = by_budget.get("runner_up") if "equal" in by_budget else None
    if runner_up is not None:
        points = by_budget["equal"]
    headline = f"{args.fpr:g}" if args.fpr is not None else next(iter(points))
    if headline not in points:
        raise SystemExit(f"--fpr {headline} not measured; the JSON has {sorted(points)}")
    config_path = target / "config.json"
    config = json.loads(config_path.read_text())
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
    config_path.write_text(json.dumps(config, indent=2) + "\n")

    attacks = list(alone["attacks"])
    header = (
        "| validation FPR budget | guard | clean FPR | Acc_dec (bare accuracy {acc}) | ".format(
            acc=_pct(alone["clean_accuracy"])
        )
        + " | ".join(attacks)
        + " |"
    )
    rows = [header, "| --- " * (4 + len(attacks)) + "|"]
    labels = {"contranet": "ContraNet alone", "saec+contranet": "SAEC + ContraNet"}
    for budget, point in points.items():
        for key, result in point["results"].items():
            cells = [_pct(result["attacks"][a]["tpr"]) for a in attacks]
            rows.append(
                f"| {float(budget):.0%} | {labels.get(key, key)} | {_pct(result['fpr'])} | "
                f"{_pct(result['acc_dec'])} | " + " | ".join(cells) + " |"
            )
    success = ", ".join(f"{a} {_pct(alone['attacks'][a]['attack_success_rate'])}" for a in attacks)
    budgets = ", ".join(f"{float(b):.0%}" for b in points)
    card = _with_notes(
        (target / "README.md").read_text().rstrip("\n"),
        wall_time=args.wall_time,
        notes=Path(args.notes).read_text().strip("\n") if args.notes else None,
    )
    card += f"""

## Measured detection ({measured["dataset"]} test, {measured["test_images"]} seeded images)

Thresholds from `guard.calibrate` on {measured["val_images"]} clean validation images at a joint
FPR budget of {budgets} (never test or attack data); attacks from torchattacks against
`{measured["classifier"]}` on the {measured["attacked_images"]} correctly classified test images;
TPR = share of successful adversarial examples rejected (attack success rates: {success}). {which}

```
{args.measure_command}
```

{chr(10).join(rows)}
"""
    (target / "README.md").write_text(card)
    print(json.dumps(config["metrics"], indent=1))


if __name__ == "__main__":
    main()
