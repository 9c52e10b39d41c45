"""``guardnet.ship``: shipped ContraNet folders, converted ResNets and the data fixtures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from guardnet.cli import main
from guardnet.errors import CalibrationError, WeightsError
from guardnet.ship import load_akamaster, ship_contranet, write_fixtures


def _point(tpr: float, fpr: float) -> dict[str, Any]:
    """One budget's results as ``measure_contranet`` reports them (two guards, one attack)."""
    result = {
        "attacks": {"pgd_linf_8/255": {"tpr": tpr, "attack_success_rate": 0.9}},
        "fpr": fpr,
        "acc_dec": 0.9,
        "clean_accuracy": 0.95,
    }
    return {"results": {"contranet": result, "saec+contranet": {**result, "fpr": fpr + 0.01}}}


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


def _run(tmp_path: Path, card: str = "# card\n") -> Path:
    """A fake training run's Hub folder (config with a validation metric, card, weights)."""
    model = tmp_path / "run" / "model"
    model.mkdir(parents=True, exist_ok=True)
    (model / "config.json").write_text(json.dumps({"dataset": "ds", "metrics": {"ds_val_l2": 0.1}}))
    (model / "README.md").write_text(card)
    (model / "model.safetensors").write_bytes(b"weights")
    return model


def _ship(tmp_path: Path, measured: dict, card: str = "# card\n", **options: Any) -> Path:
    out = tmp_path / "shipped" / "net"
    ship_contranet(
        _run(tmp_path, card), out, measurement=measured, measure_command="cmd", **options
    )
    return out


def test_both_splits_equal_gives_test_metrics_runner_up_the_card(tmp_path) -> None:
    # runner_up measured first, as in `--budget runner_up equal`: the order must not matter.
    measured = _measured(
        runner_up={"0.05": _point(0.7, 0.052), "0.03": _point(0.6, 0.031)},
        equal={"0.05": _point(0.5, 0.048), "0.03": _point(0.4, 0.027)},
    )
    shipped = _ship(tmp_path, measured, fpr=0.03)
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
    assert (shipped / "model.safetensors").read_bytes() == b"weights"  # the rest is copied


def test_one_split_keeps_test_metrics_only(tmp_path) -> None:
    shipped = _ship(tmp_path, _measured(equal={"0.05": _point(0.5, 0.048)}))
    metrics = json.loads((shipped / "config.json").read_text())["metrics"]
    assert metrics["ds_test_tpr_pgd_linf_8/255"] == 0.5
    assert not any("runner_up" in key for key in metrics)
    assert "metrics in `config.json` are the 5% rows" in (shipped / "README.md").read_text()


def test_unmeasured_budget_is_refused_and_nothing_is_written(tmp_path) -> None:
    measured = _measured(equal={"0.05": _point(0.5, 0.048)})
    with pytest.raises(CalibrationError, match=r"fpr 0.03 not measured; the report has \['0.05'\]"):
        _ship(tmp_path, measured, fpr=0.03)
    assert not (tmp_path / "shipped").exists()


def test_shipping_onto_the_run_itself_is_refused(tmp_path) -> None:
    model = _run(tmp_path)
    measured = _measured(equal={"0.05": _point(0.5, 0.048)})
    with pytest.raises(WeightsError, match="out must differ from model_dir"):
        ship_contranet(model, model, measurement=measured, measure_command="cmd")
    assert (model / "model.safetensors").is_file()


EXPORTED_CARD = """# card

- Dataset: ds.
- Training wall time: 10 s.
- Licence: Apache-2.0.

## Command

```
train
```
"""


def test_notes_and_wall_time_go_into_the_exported_card(tmp_path) -> None:
    measured = _measured(equal={"0.05": _point(0.5, 0.048)})
    wall_time = "30 s: 20 s kept from the source run,\n  10 s here."
    notes = "\n## Use\n\nCall it.\n"
    shipped = _ship(tmp_path, measured, EXPORTED_CARD, notes=notes, wall_time=wall_time)
    card = (shipped / "README.md").read_text()
    assert card.startswith(
        "# card\n\n- Dataset: ds.\n"
        "- Training wall time: 30 s: 20 s kept from the source run,\n  10 s here.\n"
        "- Licence: Apache-2.0.\n\n## Use\n\nCall it.\n\n## Command\n\n```\ntrain\n```\n\n"
        "## Measured detection"
    )
    assert "10 s." not in card


def test_notes_or_wall_time_with_nowhere_to_go_are_refused(tmp_path) -> None:
    measured = _measured(equal={"0.05": _point(0.5, 0.048)})
    with pytest.raises(WeightsError, match="no single '## Command' section"):
        _ship(tmp_path, measured, notes="## Use\n")
    with pytest.raises(WeightsError, match="the card has 0 '- Training wall time:' bullets"):
        _ship(tmp_path, measured, wall_time="5 s")


def test_cli_ship_contranet_reads_the_report_and_notes(tmp_path, capsys) -> None:
    _run(tmp_path, EXPORTED_CARD)
    report = tmp_path / "measure.json"
    report.write_text(json.dumps(_measured(equal={"0.05": _point(0.5, 0.048)})))
    notes = tmp_path / "notes.md"
    notes.write_text("\n## Use\n\nCall it.\n\n")
    out = tmp_path / "shipped"
    argv = ["ship", "contranet", "--run", str(tmp_path / "run"), "--measure", str(report)]
    argv += ["--measure-command", "guardnet measure contranet --dataset ds", "--out", str(out)]
    assert main([*argv, "--notes", str(notes)]) == 0
    assert json.loads(capsys.readouterr().out)["ds_test_fpr"] == 0.048
    card = (out / "README.md").read_text()
    assert "Call it.\n\n## Command" in card
    assert "```\nguardnet measure contranet --dataset ds\n```" in card
    assert main([*argv, "--fpr", "0.03"]) == 2
    assert "fpr 0.03 not measured" in capsys.readouterr().err


def _fake_akamaster(path: Path, state: dict[str, torch.Tensor]) -> None:
    torch.save({"state_dict": state, "best_prec1": 91.5}, path)


def test_load_akamaster_strips_the_prefix_and_loads_strictly(tmp_path) -> None:
    from guardnet.nets import resnet20

    reference = resnet20()
    path = tmp_path / "resnet20.th"
    state = {k: v for k, v in reference.state_dict().items() if "num_batches_tracked" not in k}
    _fake_akamaster(path, {f"module.{k}": v for k, v in state.items()})
    model, stated = load_akamaster(path, 20)
    assert stated == 91.5 and not model.training
    x = torch.rand(2, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), reference.eval()(x))

    _fake_akamaster(path, state)  # no `module.` prefix
    with pytest.raises(WeightsError, match=r"keys without the 'module\.' prefix"):
        load_akamaster(path, 20)
    with pytest.raises(WeightsError, match=r"depth must be one of \[20, 56\], got 32"):
        load_akamaster(path, 32)


@pytest.mark.slow
def test_write_fixtures_reproduces_the_shipped_fixtures(tmp_path) -> None:
    """Drawn again from the real data, every fixture holds the shipped tensors (needs the data)."""
    from safetensors.torch import load_file

    from guardnet.data import FIXTURES, resolve_data_root
    from guardnet.errors import DataNotFoundError
    from guardnet.ship.fixtures import DEFAULT_OUT

    try:
        resolve_data_root()
    except DataNotFoundError:
        pytest.skip("the real datasets are not available")
    written = write_fixtures(out=tmp_path)
    assert len(written) == len(FIXTURES)
    for spec in FIXTURES.values():
        new, shipped = load_file(tmp_path / spec.filename), load_file(DEFAULT_OUT / spec.filename)
        assert new.keys() == shipped.keys()
        for key in new:
            assert torch.equal(new[key], shipped[key]), f"{spec.filename}: {key}"
    assert "guardnet ship fixtures --root" in (tmp_path / "README.md").read_text()
