"""``scripts/ship_contranet.py``: which measured split becomes which shipped metric."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "scripts" / "ship_contranet.py")


def _point(tpr: float, fpr: float) -> dict[str, Any]:
    """One budget's results as ``measure_contranet.py`` writes them (two guards, one attack)."""
    result = {
        "attacks": {"pgd_linf_8/255": {"tpr": tpr, "attack_success_rate": 0.9}},
        "fpr": fpr,
        "acc_dec": 0.9,
        "clean_accuracy": 0.95,
    }
    return {"results": {"contranet": result, "saec+contranet": {**result, "fpr": fpr + 0.01}}}


def _ship(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    measured: dict,
    *extra: str,
    card: str = "# card\n",
) -> Path:
    """Run the script on a fake run folder and measurement; return the shipped folder."""
    model = tmp_path / "run" / "model"
    model.mkdir(parents=True, exist_ok=True)
    (model / "config.json").write_text(json.dumps({"dataset": "ds", "metrics": {"ds_val_l2": 0.1}}))
    (model / "README.md").write_text(card)
    measure = tmp_path / "measure.json"
    measure.write_text(json.dumps(measured))
    assets = tmp_path / "assets"
    namespace = runpy.run_path(SCRIPT, run_name="ship_contranet")
    monkeypatch.setitem(namespace["main"].__globals__, "ASSETS", assets)
    monkeypatch.setattr(sys, "argv", [SCRIPT, "--run", str(tmp_path / "run"), "--measure",
                                      str(measure), "--name", "net", "--measure-command", "cmd",
                                      *extra])  # fmt: skip
    namespace["main"]()
    return assets / "net"


def _measured(**by_budget: dict[str, Any]) -> dict[str, Any]:
    first = next(iter(by_budget.values()))
    return {
        "dataset": "DS",
        "test_images": 10,
        "val_images": 20,
        "attacked_images": 9,
        "classifier": "clf",
        "by_target_fpr": first,
        "by_budget": by_budget,
    }


def test_both_splits_equal_gives_test_metrics_runner_up_the_card(tmp_path, monkeypatch) -> None:
    # runner_up measured first, as in `--budget runner_up equal`: the order must not matter.
    measured = _measured(
        runner_up={"0.05": _point(0.7, 0.052), "0.03": _point(0.6, 0.031)},
        equal={"0.05": _point(0.5, 0.048), "0.03": _point(0.4, 0.027)},
    )
    shipped = _ship(tmp_path, monkeypatch, measured, "--fpr", "0.03")
    metrics = json.loads((shipped / "config.json").read_text())["metrics"]
    assert metrics == {
        "ds_val_l2": 0.1,  # the training run's validation metric stays
        "ds_val_fpr_budget": 0.03,
        "ds_test_tpr_pgd_linf_8/255": 0.4,
        "ds_test_fpr": 0.027,
        "ds_test_acc_dec": 0.9,
        "ds_runner_up_val_fpr_budget": 0.03,
        "ds_runner_up_test_tpr_pgd_linf_8/255": 0.6,
        "ds_runner_up_test_fpr": 0.031,
        "ds_runner_up_test_acc_dec": 0.9,
    }
    card = (shipped / "README.md").read_text()
    assert 'below are `budget="runner_up"`' in card
    assert "| 3% | ContraNet alone | 3.10% | 90.00% | 60.00% |" in card
    assert "| 5% | SAEC + ContraNet | 6.20% |" in card
    assert "40.00%" not in card  # no equal-share row in the table


def test_one_split_keeps_test_metrics_only(tmp_path, monkeypatch) -> None:
    measured = _measured(equal={"0.05": _point(0.5, 0.048)})
    shipped = _ship(tmp_path, monkeypatch, measured)
    metrics = json.loads((shipped / "config.json").read_text())["metrics"]
    assert metrics["ds_test_tpr_pgd_linf_8/255"] == 0.5
    assert not any("runner_up" in key for key in metrics)
    assert "metrics in `config.json` are the 5% rows" in (shipped / "README.md").read_text()


def test_unmeasured_budget_is_refused(tmp_path, monkeypatch) -> None:
    measured = _measured(equal={"0.05": _point(0.5, 0.048)})
    with pytest.raises(SystemExit, match=r"--fpr 0.03 not measured; the JSON has \['0.05'\]"):
        _ship(tmp_path, monkeypatch, measured, "--fpr", "0.03")


EXPORTED_CARD = """# card

- Dataset: ds.
- Training wall time: 10 s.
- Licence: Apache-2.0.

## Command

```
train
```
"""


def test_notes_and_wall_time_go_into_the_exported_card(tmp_path, monkeypatch) -> None:
    notes = tmp_path / "notes.md"
    notes.write_text("\n## Use\n\nCall it.\n\n")
    measured = _measured(equal={"0.05": _point(0.5, 0.048)})
    wall_time = "30 s: 20 s kept from the source run,\n  10 s here."
    options = ["--notes", str(notes), "--wall-time", wall_time]
    shipped = _ship(tmp_path, monkeypatch, measured, *options, card=EXPORTED_CARD)
    card = (shipped / "README.md").read_text()
    assert card.startswith(
        "# card\n\n- Dataset: ds.\n"
        "- Training wall time: 30 s: 20 s kept from the source run,\n  10 s here.\n"
        "- Licence: Apache-2.0.\n\n## Use\n\nCall it.\n\n## Command\n\n```\ntrain\n```\n\n"
        "## Measured detection"
    )
    assert "10 s." not in card


def test_notes_or_wall_time_with_nowhere_to_go_are_refused(tmp_path, monkeypatch) -> None:
    notes = tmp_path / "notes.md"
    notes.write_text("## Use\n")
    measured = _measured(equal={"0.05": _point(0.5, 0.048)})
    with pytest.raises(SystemExit, match="no single '## Command' section"):
        _ship(tmp_path, monkeypatch, measured, "--notes", str(notes))
    with pytest.raises(SystemExit, match="the card has 0 '- Training wall time:' bullets"):
        _ship(tmp_path, monkeypatch, measured, "--wall-time", "5 s")
