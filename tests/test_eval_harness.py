"""The evaluation harness, guard recipes and ``guardnet eval``."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import LowConfidenceLayer, SecondPixelDetector, SumClassifier
from torch import Tensor

from guardnet import GuardedModel
from guardnet.cli import main
from guardnet.cli.eval import _budget_arg, parse_eps
from guardnet.eval.attacks import AdversarialCache
from guardnet.eval.harness import (
    AttackPlan,
    evaluate_guard,
    format_eps,
    format_report,
    variant_name,
)
from guardnet.layers import LayerInput, LayerOutput
from guardnet.recipes import load_recipe


def toy_data(n: int, seed: int) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x1 = 0.25 + torch.rand(n, generator=gen) * 0.15
    x2 = 0.5 + (torch.rand(n, generator=gen) - 0.5) * 0.12
    return torch.stack([x1, x2], dim=1).view(n, 1, 1, 2), torch.zeros(n, dtype=torch.long)


def toy_guard() -> GuardedModel:
    return GuardedModel(SumClassifier(), [SecondPixelDetector()], num_classes=2)


def test_harness_on_the_toy_guard(tmp_path) -> None:
    guard = toy_guard()
    val, _ = toy_data(400, 0)
    test_x, test_y = toy_data(200, 1)
    report = evaluate_guard(
        guard,
        val_images=val,
        test_images=test_x,
        test_labels=test_y,
        plans=[
            AttackPlan("pgd", eps=0.4, params={"steps": 20}),
            AttackPlan("pgd", eps=0.02, params={"steps": 20}),
            AttackPlan("orthogonal", adaptive=True, eps=0.4, fpr=0.05),
            AttackPlan("orthogonal", adaptive=True, eps=0.4, fpr=0.5),
        ],
        fprs=(0.05, 0.03),
        log=lambda _: None,
    )
    assert set(report["calibration"]) == {"0.03", "0.05", "0.5"}
    clean = report["clean"]["0.05"]
    assert clean["clean_accuracy"] == 1.0 and report["attacked_images"] == 200
    assert 0.0 < clean["fpr"] <= 0.12  # a 5% budget on validation, measured on test
    # Thresholds end at the headline FPR: the guard's own verdicts match the harness's.
    assert float(guard(test_x).rejected.float().mean()) == pytest.approx(clean["fpr"])
    pgd = report["attacks"]["pgd eps=0.4"]
    assert set(pgd["at_fpr"]) == {"0.05", "0.03"}
    m = pgd["at_fpr"]["0.05"]
    # The classifier-only attack raises x2 and is caught every time.
    assert m["attack_success_rate"] == 1.0 and m["tpr"] == 1.0 and m["acc_rob"] == 1.0
    assert m["auroc"]["pixel"] == pytest.approx(1.0) and len(m["roc"]["fpr"]) >= 2
    assert m["acc_rc"] == m["acc_rob"]  # no reform layer
    for fpr in ("0.05", "0.5"):
        entry = report["attacks"][f"orthogonal eps=0.4 fpr={fpr}"]
        assert list(entry["at_fpr"]) == [fpr]  # judged at the FPR it attacked
        m = entry["at_fpr"][fpr]
        # Orthogonal PGD keeps x2 in place: the detector misses (nearly) everything.
        assert m["attack_success_rate"] > 0.9 and m["tpr"] < 0.1
        assert m["acc_rob"] == pytest.approx(1 - m["attack_success_rate"] * (1 - m["tpr"]))
    assert report["examples"]["pgd eps=0.4"].shape == (2, 8, 1, 1, 2)
    text = format_report(report)
    assert "orthogonal eps=0.4 fpr=0.5" in text and "Acc_rob" in text
    # A budget too small to flip any label: no successful example, so no TPR.
    small = report["attacks"]["pgd eps=0.02"]["at_fpr"]["0.05"]
    assert small["successful"] == 0 and small["tpr"] != small["tpr"] and small["acc_rob"] == 1.0
    pytest.importorskip("matplotlib")
    from guardnet.eval.plots import plot_robust_accuracy, plot_roc, save_examples

    assert plot_roc(report, tmp_path / "roc.png").stat().st_size > 0
    curve = plot_robust_accuracy(report, tmp_path / "robust.png")
    assert curve is not None and curve.stat().st_size > 0
    grid = save_examples(report["examples"], tmp_path / "examples.png")
    assert grid.stat().st_size > 0


def test_harness_reuses_cached_examples(tmp_path) -> None:
    guard = toy_guard()
    val, _ = toy_data(200, 0)
    x, y = toy_data(50, 1)
    cache = AdversarialCache(tmp_path)
    kwargs = {
        "val_images": val,
        "test_images": x,
        "test_labels": y,
        "plans": [AttackPlan("fgsm", eps=0.1)],
        "cache": cache,
        "log": lambda _: None,
    }
    first = evaluate_guard(guard, **kwargs)
    second = evaluate_guard(toy_guard(), **kwargs)  # another guard, same classifier
    assert cache.hits == 1 and cache.misses == 1
    assert first["attacks"] == {
        k: {**v, "seconds": first["attacks"][k]["seconds"]} for k, v in second["attacks"].items()
    }


class FirstPixelDetector(SecondPixelDetector):
    """Like :class:`SecondPixelDetector` on the first pixel: a score independent of it."""

    default_name = "first"

    def forward(self, inputs: LayerInput) -> LayerOutput:
        return LayerOutput(scores=(inputs.images.flatten(1)[:, 0] - 0.325).abs())


def test_harness_budget_shares_the_joint_fpr() -> None:
    val, _ = toy_data(2000, 0)
    x, y = toy_data(50, 1)

    def layer_rates(budget: dict[str, float] | None) -> dict[str, float]:
        guard = GuardedModel(
            SumClassifier(), [SecondPixelDetector(), FirstPixelDetector()], num_classes=2
        )
        report = evaluate_guard(
            guard, val_images=val, test_images=x, test_labels=y, plans=[], fprs=(0.1,),
            budget=budget, log=lambda _: None,
        )  # fmt: skip
        assert report["budget"] == budget
        calibration = report["calibration"]["0.1"]
        assert calibration["overall_fpr"] == pytest.approx(0.1, abs=0.01)
        return {k: v["achieved_fpr"] for k, v in calibration["layers"].items()}

    equal, weighted = layer_rates(None), layer_rates({"pixel": 4.0})
    assert equal["pixel"] == pytest.approx(equal["first"], abs=0.01)
    # Four shares to one: the favoured score gets about 4/5 of the joint budget.
    assert weighted["pixel"] == pytest.approx(4 * weighted["first"], rel=0.25)
    assert weighted["pixel"] > equal["pixel"] > weighted["first"]


def test_harness_runner_up_budget() -> None:
    val, _ = toy_data(1000, 0)
    x, y = toy_data(50, 1)
    guard = GuardedModel(
        SumClassifier(), [SecondPixelDetector(), LowConfidenceLayer()], num_classes=2
    )
    report = evaluate_guard(
        guard, val_images=val, test_images=x, test_labels=y, plans=[], fprs=(0.1, 0.05),
        budget="runner_up", log=lambda _: None,
    )  # fmt: skip
    assert report["budget"] == "runner_up"
    for fpr in ("0.1", "0.05"):
        calibration = report["calibration"][fpr]
        # The pre layer keeps its part; the post layer has one score, so it keeps its part.
        assert calibration["budget"] == {"pixel": 1.0, "confidence": 1.0}
        assert calibration["runner_up_rejection_rate"] > 0.5
        assert calibration["overall_fpr"] <= float(fpr)
    assert _budget_arg("runner_up") == "runner_up"
    assert _budget_arg('{"saec": 2}') == {"saec": 2}


def test_format_and_parse_eps() -> None:
    assert format_eps(8 / 255) == "8/255" and format_eps(0.3) == "0.3"
    assert parse_eps("8/255") == pytest.approx(8 / 255) and parse_eps("0.1") == 0.1
    for bad in ("x", "1/0", "-0.1"):
        with pytest.raises(Exception, match="budget"):
            parse_eps(bad)


def test_recipes_load(tmp_path) -> None:
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"dataset": "mnist", "classifier": "mnist-cnn", "layers": []}))
    assert load_recipe(path).name == "mine"
    with pytest.raises(ValueError, match="unknown layer type"):
        load_recipe({"dataset": "mnist", "classifier": "mnist-cnn", "layers": [{"type": "x"}]})
    with pytest.raises(ValueError, match="lacks"):
        load_recipe({"dataset": "mnist"})
    with pytest.raises(ValueError, match="neither a registered guard"):
        load_recipe("no-such-guard")


# 100 validation images are few for four thresholds at 3%: the CalibrationWarning is right and is
# tested in test_calibration.py; here it would only clutter the output.
@pytest.mark.filterwarnings("ignore::guardnet.errors.CalibrationWarning")
def test_eval_cli_on_fixtures(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    argv = [
        "eval", "--guard", "mnist-mixdefense", "--fixtures", "--limit", "12",
        "--val-limit", "100", "--attack", "fgsm", "--eps", "0.3", "--adaptive", "bpda",
        "--attack-args", '{"bpda": {"steps": 2}}', "--out", str(out), "--no-progress",
        "--cache", str(tmp_path / "cache"),
    ]  # fmt: skip
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "fgsm eps=0.3" in text and "bpda eps=0.3 fpr=0.05" in text
    report = json.loads((out / "report.json").read_text())
    assert report["test_images"] == 12 and report["guard"]["name"] == "mnist-mixdefense"
    assert report["command"].startswith("guardnet eval --guard mnist-mixdefense")
    assert {"saec", "contranet.dmm", "contranet.dis", "contranet.ssim"} == set(
        report["clean"]["0.05"]["per_score_fpr"]
    )
    assert (out / "examples.png").stat().st_size > 0 and (out / "roc.png").is_file()
    assert main(argv) == 0  # second run: both attacks from the cache
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 2


def test_eval_cli_errors(capsys) -> None:
    assert main(["eval"]) == 2
    assert "--guard is required" in capsys.readouterr().err
    assert main(["eval", "--guard", "nope", "--fixtures"]) == 2
    assert "neither a registered guard" in capsys.readouterr().err
    assert main(["eval", "--list-guards"]) == 0
    assert "mnist-mixdefense" in capsys.readouterr().out
    argv = ["eval", "--guard", "mnist-saec", "--fixtures", "--val-limit", "50", "--limit", "5"]
    assert main([*argv, "--attack", "fgsm", "--budget", '{"sace": 2}', "--no-progress"]) == 2
    assert "budget names unknown layers ['sace']" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore::guardnet.errors.CalibrationWarning")
def test_eval_cli_runs_each_listed_setting(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    argv = [
        "eval", "--guard", "mnist-saec", "--fixtures", "--limit", "10", "--val-limit", "100",
        "--attack", "fgsm", "--eps", "0.3", "--adaptive", "bpda", "--budget", "{}",
        "--adaptive-eps", "0.1", "0.3",
        "--attack-args", '{"bpda": [{"steps": 1}, {"steps": 3, "random_start": false}]}',
        "--out", str(out), "--no-progress",
    ]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    one = "bpda eps=0.3 fpr=0.05 steps=1"
    three = "bpda eps=0.3 fpr=0.05 random_start=false steps=3"
    assert {"fgsm eps=0.3", one, three} < set(report["attacks"])
    assert report["attacks"][one]["attack"]["params"]["steps"] == 1
    assert report["attacks"][three]["attack"]["params"]["steps"] == 3
    assert report["attacks"][three]["attack"]["params"]["random_start"] is False
    (row,) = [r for r in report["worst_case"] if r["fpr"] == "0.05" and r["eps"] == 0.3]
    assert {one, three} <= set(row["runs"])
    # Both runs take part: the worst case is no better than either.
    assert row["robust_accuracy"] <= min(row["runs"][one], row["runs"][three]) + 1e-12
    printed = capsys.readouterr().out
    # One budget curve per variant, each named by its settings.
    assert "bpda fpr=0.05 steps=1: 0.1 " in printed
    assert "bpda fpr=0.05 random_start=false steps=3: 0.1 " in printed
    assert (out / "robust_accuracy.png").stat().st_size > 0
    for bad, message in [
        ('{"bpda": []}', "non-empty list"),
        ('{"bpda": [{"steps": 1}, 2]}', "non-empty list"),
        ('{"bpda": [{"steps": 1}, {"steps": 1}]}', "the same settings twice"),
    ]:
        assert main([*argv[:-5], "--attack-args", bad, "--no-progress"]) == 2
        assert message in capsys.readouterr().err


def test_evaluate_guard_refuses_plans_with_one_label() -> None:
    plans = [
        AttackPlan("bpda", adaptive=True, eps=0.3, params={"steps": 1}, fpr=0.05),
        AttackPlan("bpda", adaptive=True, eps=0.3, params={"steps": 2}, fpr=0.05),
    ]
    with pytest.raises(ValueError, match="share a label"):
        evaluate_guard(
            None,  # type: ignore[arg-type]  # refused before the guard is used
            val_images=torch.zeros(1),
            test_images=torch.zeros(1),
            test_labels=torch.zeros(1),
            plans=plans,
        )
    assert variant_name({"steps": 2}) == "steps=2" and variant_name({}) == "default"


class ExactFlagLayer(SecondPixelDetector):
    """Scores 1 where the caller asked for exact scores, else 0 (a layer that may stop early)."""

    default_name = "flag"

    def forward(self, inputs: LayerInput) -> LayerOutput:
        from guardnet.layers.base import exact_scores_requested

        value = 1.0 if exact_scores_requested() else 0.0
        return LayerOutput(scores=torch.full((inputs.batch_size,), value))


def test_harness_reads_exact_scores() -> None:
    """AUROCs and several FPRs are read from the same scores: none may be cut at a threshold."""
    from guardnet.eval.harness import _run

    guard = GuardedModel(SumClassifier(), [ExactFlagLayer()], num_classes=2)
    x, _ = toy_data(5, 0)
    assert bool((_run(guard, x)["scores"]["flag"] == 1).all())


def test_robust_accuracy_plot_keeps_a_long_legend_beside_the_axes(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    from PIL import Image

    from guardnet.eval.plots import plot_robust_accuracy

    def run(adaptive: bool, eps: float, acc: float) -> dict:
        return {
            "adaptive": adaptive,
            "eps": eps,
            "at_fpr": {"0.05": {"acc_rob": acc, "bare_robust_accuracy": acc / 2}},
        }

    attacks = {
        f"selective eps={e:g} fpr=0.05 steps={steps}": run(True, e, 1 / steps)
        for steps in range(10, 20)
        for e in (2 / 255, 8 / 255)
    }
    worst = [{"eps": e, "fpr": "0.05", "robust_accuracy": 0.05} for e in (2 / 255, 8 / 255)]
    report = {"fprs": [0.05], "attacks": attacks, "worst_case": worst}
    many = plot_robust_accuracy(report, tmp_path / "many.png")
    few = plot_robust_accuracy(
        {**report, "attacks": dict(list(attacks.items())[:4])}, tmp_path / "few.png"
    )
    assert many is not None and few is not None
    # Ten series: the legend sits to the right, so the picture is wider than the axes' figure.
    assert Image.open(many).size[0] > Image.open(few).size[0] + 100
