"""``guardnet.eval.measure``: the ContraNet measurement and classifier accuracy, on fixtures."""

from __future__ import annotations

import json
import math

import pytest
import torch

import guardnet.data
from guardnet.cli import main
from guardnet.errors import CalibrationError, InputRangeError
from guardnet.eval.measure import classifier_accuracy, measure_contranet


def _fixture_split(name: str, split: str, *, limit: int | None = None, **_: object):
    """``load_split`` on the shipped MNIST fixtures (data-free tests; not a real split)."""
    from guardnet.data import SplitDataset, dataset_info, load_fixture

    images, labels = load_fixture("mnist-val" if split == "val" else "mnist")
    images, labels = images[:limit], labels[:limit]
    indices = torch.arange(labels.numel())
    return SplitDataset(images, labels, info=dataset_info(name), split=split, indices=indices)


@pytest.fixture
def fixtures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guardnet.data, "load_split", _fixture_split)


OPTIONS = {
    "eps": [0.3],
    "steps": 3,
    "cw_steps": 2,
    "target_fprs": [0.1, 0.2],
    "budgets": ["runner_up", "equal"],
    "val_limit": 120,
    "test_limit": 40,
}


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[dict, object]:
    """One measurement of the shipped MNIST ContraNet with an attack cache: (report, cache)."""
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(guardnet.data, "load_split", _fixture_split)
        result = measure_contranet(
            "contranet-mnist", "mnist-cnn", "mnist", attack_cache=cache, **OPTIONS
        )
    return result, cache


def test_report_holds_every_budget_and_guard(report) -> None:
    result, _ = report
    json.dumps(result)  # JSON-serialisable
    assert result["test_images"] == 40 and result["val_images"] == 120
    assert set(result["by_budget"]) == {"runner_up", "equal"}
    assert result["budget"] == "runner_up" and result["target_fpr"] == 0.1
    assert result["by_target_fpr"] is result["by_budget"]["runner_up"]
    assert result["results"] is result["by_budget"]["runner_up"]["0.1"]["results"]
    for points in result["by_budget"].values():
        assert set(points) == {"0.1", "0.2"}
        for point in points.values():
            assert set(point["results"]) == {"contranet", "saec+contranet"}
            for figures in point["results"].values():
                assert set(figures["attacks"]) == {"pgd_linf_0.3", "cw_l2"}
                pgd = figures["attacks"]["pgd_linf_0.3"]
                assert pgd["attacked"] == result["attacked_images"]
                assert pgd["successful"] == round(pgd["attack_success_rate"] * pgd["attacked"])
                assert 0 <= pgd["tpr"] <= 1 and 0 <= figures["fpr"] <= 1
    # A larger budget never rejects fewer clean images (same scores, lower thresholds).
    equal = result["by_budget"]["equal"]
    for guard in ("contranet", "saec+contranet"):
        low, high = equal["0.1"]["results"][guard], equal["0.2"]["results"][guard]
        assert high["fpr"] >= low["fpr"]
    assert equal["0.1"]["calibration"]["contranet"]["budget"] is None  # equal shares
    assert result["by_budget"]["runner_up"]["0.1"]["calibration"]["contranet"]["budget"]


def test_headline_figures_match_a_guard_calibrated_the_same_way(report) -> None:
    """The equal-share figures are those of ``GuardedModel.calibrate`` on the same images."""
    from guardnet import ContraNetLayer, GuardedModel
    from guardnet.guard import Normalize
    from guardnet.weights import from_pretrained

    result, _ = report
    net = from_pretrained("mnist-cnn")
    cfg = net.pretrained_config
    model = torch.nn.Sequential(Normalize(cfg["mean"], cfg["std"]), net).eval()
    guard = GuardedModel(model, [ContraNetLayer.from_pretrained("contranet-mnist")])
    guard.calibrate(_fixture_split("mnist", "val", limit=120).images, target_fpr=0.1)
    test = _fixture_split("mnist", "test", limit=40)
    out = guard(test.images)
    figures = result["by_budget"]["equal"]["0.1"]["results"]["contranet"]
    assert figures["fpr"] == pytest.approx(out.rejected.float().mean().item())
    assert figures["clean_accuracy"] == pytest.approx(
        (out.classifier_labels == test.labels).float().mean().item()
    )


def test_attack_cache_gives_the_same_examples(report, fixtures) -> None:
    result, cache = report
    assert len(list(cache.glob("*.safetensors"))) == 2  # PGD and C&W
    options = {**OPTIONS, "target_fprs": [0.1], "budgets": ["equal"]}
    again = measure_contranet(
        "contranet-mnist", "mnist-cnn", "mnist", attack_cache=cache, **options
    )
    first = result["by_budget"]["equal"]["0.1"]["results"]
    for guard, figures in again["results"].items():
        for name, attack in figures["attacks"].items():
            tpr, first_tpr = attack["tpr"], first[guard]["attacks"][name]["tpr"]
            assert tpr == first_tpr or (math.isnan(tpr) and math.isnan(first_tpr))
            assert attack["successful"] == first[guard]["attacks"][name]["successful"]


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"eps": []}, InputRangeError, "at least one PGD budget"),
        ({"eps": [8]}, InputRangeError, r"in \(0, 1\]"),
        ({"target_fprs": [1.5]}, CalibrationError, "target_fprs"),
        ({"budgets": ["runner-up"]}, CalibrationError, "budgets must be among"),
    ],
)
def test_bad_options_are_refused_before_any_work(options, error, message) -> None:
    with pytest.raises(error, match=message):
        measure_contranet("contranet-mnist", "mnist-cnn", "mnist", **{"eps": [0.1], **options})


def test_cli_measure_contranet_writes_the_report(
    tmp_path, fixtures, capsys, flush_denormals
) -> None:
    """(The command flushes denormal floats for the process; the fixture restores that.)"""
    out = tmp_path / "report.json"
    argv = ["measure", "contranet", "--dataset", "mnist", "--contranet", "contranet-mnist"]
    argv += ["--classifier", "mnist-cnn", "--eps", "0.3", "--steps", "2", "--cw-steps", "0"]
    argv += ["--val-limit", "100", "--test-limit", "20", "--json", str(out)]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert list(report["results"]["contranet"]["attacks"]) == ["pgd_linf_0.3"]  # no C&W
    assert "validation FPR budget 0.05, split equal" in capsys.readouterr().out
    assert main([*argv[:-2], "--fpr", "2"]) == 2
    assert "target_fprs must be in (0, 1)" in capsys.readouterr().err


def test_classifier_accuracy_matches_a_direct_count(tmp_path, fixtures, capsys) -> None:
    from guardnet.weights import from_pretrained

    result = classifier_accuracy("mnist-cnn", limit=300)
    net = from_pretrained("mnist-cnn")
    cfg = net.pretrained_config
    test = _fixture_split("mnist", "test", limit=300)
    mean = torch.tensor(cfg["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, -1, 1, 1)
    with torch.inference_mode():
        correct = int((net.eval()((test.images - mean) / std).argmax(1) == test.labels).sum())
    assert (result["n"], result["correct"]) == (300, correct)
    assert result["accuracy"] == correct / 300 and result["dataset"] == "mnist"

    out = tmp_path / "eval.json"
    argv = ["measure", "classifier", "mnist-cnn", "--limit", "300", "--json", str(out)]
    assert main(argv) == 0
    written = json.loads(out.read_text())
    assert written["correct"] == correct
    assert written["command"].endswith("guardnet measure classifier mnist-cnn --limit 300 "
                                       f"--json {out}")  # fmt: skip
    capsys.readouterr()
    assert main(["measure", "classifier", "resnet20-gtsrb", "--dataset", "mnist"]) == 2
    assert "the model has 43 classes, mnist has 10" in capsys.readouterr().err
