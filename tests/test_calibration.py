"""Thresholds at a target FPR: hand-computed cases, known distributions, both modes."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import LowConfidenceLayer, PixelScoreLayer, TinyClassifier
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from guardnet import CalibrationError, GuardedModel, threshold_at_fpr
from guardnet.calibration import (
    _compositions,
    choose_budget,
    false_positive_rate,
    joint_thresholds,
)
from guardnet.layers.base import Layer, LayerInput, LayerKind, LayerOutput


class TestThresholdAtFpr:
    def test_hand_computed(self) -> None:
        scores = torch.arange(100.0)  # 0..99
        # 5% of 100 = 5 scores may exceed: 95..99 > 94.
        assert float(threshold_at_fpr(scores, 0.05)) == 94.0
        assert false_positive_rate(scores, 94.0) == 0.05
        # Low side: 0..4 < 5.
        assert float(threshold_at_fpr(scores, 0.05, higher_is_suspicious=False)) == 5.0
        assert false_positive_rate(scores, 5.0, higher_is_suspicious=False) == 0.05

    def test_zero_fpr_rejects_nothing(self) -> None:
        scores = torch.randn(50)
        thr = threshold_at_fpr(scores, 0.0)
        assert false_positive_rate(scores, thr) == 0.0

    def test_ties_only_lower_the_rate(self) -> None:
        scores = torch.tensor([0.0] * 90 + [1.0] * 10)
        thr = threshold_at_fpr(scores, 0.05)
        assert false_positive_rate(scores, thr) <= 0.05

    @pytest.mark.parametrize("bad", [-0.1, 1.0, 2.0])
    def test_bad_rate(self, bad: float) -> None:
        with pytest.raises(CalibrationError, match=r"target_fpr must be in \[0, 1\)"):
            threshold_at_fpr(torch.randn(10), bad)

    def test_bad_scores(self) -> None:
        with pytest.raises(CalibrationError, match="NaN or Inf"):
            threshold_at_fpr(torch.tensor([0.0, float("nan")]), 0.1)
        with pytest.raises(CalibrationError, match="non-empty 1-D"):
            threshold_at_fpr(torch.zeros(0), 0.1)

    @pytest.mark.parametrize("higher", [True, False])
    def test_held_out_rate_close_to_target(self, higher: bool) -> None:
        gen = torch.Generator().manual_seed(0)
        calib, held_out = torch.randn(20000, generator=gen), torch.randn(20000, generator=gen)
        thr = threshold_at_fpr(calib, 0.05, higher_is_suspicious=higher)
        rate = false_positive_rate(held_out, thr, higher_is_suspicious=higher)
        assert abs(rate - 0.05) < 0.006  # 4 binomial standard deviations at n = 20000


class TestJointThresholds:
    def test_union_meets_target_and_budget_splits(self) -> None:
        gen = torch.Generator().manual_seed(1)
        scores = {"a": torch.randn(10000, generator=gen), "b": torch.rand(10000, generator=gen)}
        sides = {"a": True, "b": False}
        thresholds, rates = joint_thresholds(scores, sides, 0.05)
        union = (scores["a"] > thresholds["a"]) | (scores["b"] < thresholds["b"])
        assert 490 <= int(union.sum()) <= 500
        # Independent layers: each gets about half the budget.
        assert rates["a"] == pytest.approx(rates["b"])
        assert 0.024 < rates["a"] < 0.027
        thresholds, rates = joint_thresholds(scores, sides, 0.05, budget={"a": 3, "b": 1})
        assert rates["a"] == pytest.approx(3 * rates["b"])

    def test_identical_layers_each_get_the_full_budget(self) -> None:
        s = torch.randn(5000)
        _, rates = joint_thresholds({"a": s, "b": s.clone()}, {"a": True, "b": True}, 0.05)
        assert rates == {"a": 0.05, "b": 0.05}

    def test_errors(self) -> None:
        s = torch.randn(10)
        with pytest.raises(CalibrationError, match="unknown layers"):
            joint_thresholds({"a": s}, {"a": True}, 0.05, budget={"z": 1.0})
        with pytest.raises(CalibrationError, match="not all 0"):
            joint_thresholds({"a": s}, {"a": True}, 0.05, budget={"a": 0.0})
        with pytest.raises(CalibrationError, match="budget shares must be >= 0"):
            joint_thresholds({"a": s, "b": s}, {"a": True, "b": True}, 0.05, budget={"a": -1})
        with pytest.raises(CalibrationError, match="different numbers of inputs"):
            joint_thresholds({"a": s, "b": s[:5]}, {"a": True, "b": True}, 0.05)

    def test_zero_share_rejects_no_calibration_input(self) -> None:
        gen = torch.Generator().manual_seed(2)
        scores = {"a": torch.randn(4000, generator=gen), "b": torch.randn(4000, generator=gen)}
        sides = {"a": True, "b": True}
        thresholds, rates = joint_thresholds(scores, sides, 0.05, budget={"a": 1.0, "b": 0.0})
        assert rates == {"a": 0.05, "b": 0.0}
        assert false_positive_rate(scores["b"], thresholds["b"]) == 0.0
        assert false_positive_rate(scores["a"], thresholds["a"]) == 0.05


class TestChooseBudget:
    def test_compositions_cover_the_simplex_grid(self) -> None:
        parts = list(_compositions(10, 3))
        assert len(parts) == math.comb(12, 2) == len(set(parts))
        assert all(sum(p) == 10 and min(p) >= 0 for p in parts)
        assert list(_compositions(2, 1)) == [(2,)]

    def test_informative_score_gets_the_budget(self) -> None:
        gen = torch.Generator().manual_seed(3)
        clean = {k: torch.randn(4000, generator=gen) for k in ("a", "b", "c")}
        # Positives: "a" separates them well, "b" a little, "c" not at all.
        positive = {
            "a": torch.randn(1000, generator=gen) + 3,
            "b": torch.randn(1000, generator=gen) + 0.5,
            "c": torch.randn(1000, generator=gen),
        }
        sides = dict.fromkeys(clean, True)
        choice = choose_budget(clean, positive, sides, 0.05, searched=["a", "b", "c"])
        assert choice.candidates == 66
        assert choice.shares == {"a": 1.0, "b": 0.0, "c": 0.0}
        # The reported rate is what those thresholds reject, and the clean rate is in budget.
        thresholds, _ = joint_thresholds(clean, sides, 0.05, budget=choice.shares)
        assert choice.positive_rejection_rate == false_positive_rate(positive["a"], thresholds["a"])
        assert false_positive_rate(clean["a"], thresholds["a"]) <= 0.05
        # Equal shares reject fewer positives than the chosen split.
        eq, _ = joint_thresholds(clean, sides, 0.05)
        rejected = torch.zeros(1000, dtype=torch.bool)
        for k in clean:
            rejected |= positive[k] > eq[k]
        assert float(rejected.float().mean()) < choice.positive_rejection_rate

    def test_fixed_shares_are_kept_and_ties_go_to_equal(self) -> None:
        gen = torch.Generator().manual_seed(4)
        clean = {k: torch.randn(2000, generator=gen) for k in ("pre", "x", "y")}
        # Positives no score can tell apart: every split ties, so the equal one wins.
        positive = {k: torch.full((100,), -10.0) for k in clean}
        sides = dict.fromkeys(clean, True)
        choice = choose_budget(
            clean, positive, sides, 0.05, searched=["x", "y"], fixed={"pre": 1.0},
            searched_total=2.0, step=0.25,
        )  # fmt: skip
        assert choice.shares == {"pre": 1.0, "x": 1.0, "y": 1.0}
        assert choice.positive_rejection_rate == 0.0 and choice.candidates == 5

    def test_errors(self) -> None:
        clean = {"a": torch.randn(50), "b": torch.randn(50)}
        sides = {"a": True, "b": True}
        with pytest.raises(CalibrationError, match="split the keys"):
            choose_budget(clean, clean, sides, 0.05, searched=["a"])
        with pytest.raises(CalibrationError, match="positive scores name"):
            choose_budget(clean, {"a": clean["a"]}, sides, 0.05, searched=["a", "b"])
        bad = {"a": torch.tensor([float("nan")]), "b": torch.zeros(1)}
        with pytest.raises(CalibrationError, match="NaN or Inf"):
            choose_budget(clean, bad, sides, 0.05, searched=["a", "b"])
        with pytest.raises(CalibrationError, match="use a larger step"):
            choose_budget(clean, clean, sides, 0.05, searched=["a", "b"], step=1e-5)
        with pytest.raises(CalibrationError, match="0 < step"):
            choose_budget(clean, clean, sides, 0.05, searched=["a", "b"], step=0.0)


class LabelOrPixelLayer(Layer):
    """``post`` with two scores: one that reads the label and a pixel that does not.

    ``mismatch`` is 1 when the label is not the classifier's argmax, plus noise (twice a pixel),
    so the lower its threshold, the more mismatched labels it catches.
    """

    kind = LayerKind.POST
    default_name = "two"
    score_names = ("mismatch", "pixel")

    def forward(self, inputs: LayerInput) -> LayerOutput:
        assert inputs.logits is not None and inputs.labels is not None
        mismatch = (inputs.labels != inputs.logits.argmax(dim=1)).float()
        pixels = inputs.images[:, :, 0, 0]
        return LayerOutput(scores=torch.stack([mismatch + 2 * pixels[:, 2], pixels[:, 0]], 1))


class LabelScoreLayer(Layer):
    """``post``: the label it is given, as its score."""

    kind = LayerKind.POST
    default_name = "label"

    def forward(self, inputs: LayerInput) -> LayerOutput:
        assert inputs.labels is not None
        return LayerOutput(scores=inputs.labels.float())


class TestRunnerUpBudget:
    def test_runner_up_labels_are_the_second_class(self) -> None:
        guard = GuardedModel(TinyClassifier(), [LabelOrPixelLayer(), LabelScoreLayer()]).eval()
        x = torch.rand(40, 3, 4, 4)
        with torch.no_grad():
            logits = guard.classify(x)  # eval mode: no dropout
        scores = guard.compute_scores(x, labels="runner_up")
        second = logits.topk(2, dim=1).indices[:, 1]
        torch.testing.assert_close(scores["label"], second.float())
        torch.testing.assert_close(guard.compute_scores(x)["label"], logits.argmax(1).float())
        torch.testing.assert_close(scores["two.mismatch"], 1 + 2 * x[:, 2, 0, 0])
        torch.testing.assert_close(guard.compute_scores(x)["two.mismatch"], 2 * x[:, 2, 0, 0])
        with pytest.raises(ValueError, match="'predicted' or 'runner_up'"):
            guard.compute_scores(x, labels="second")

    def test_calibrate_gives_the_label_score_the_layer_part(self) -> None:
        torch.manual_seed(0)
        layers = [PixelScoreLayer(channel=1), LabelOrPixelLayer()]
        guard = GuardedModel(TinyClassifier(), layers).eval()
        x = torch.rand(3000, 3, 4, 4)
        report = guard.calibrate(x, target_fpr=0.05, budget="runner_up", progress=False)
        # The pre layer keeps one part; the post layer's part goes to the score that reads the
        # label (a pixel rejects runner-up labels no more often than clean images).
        assert report.budget == {"pixel": 1.0, "two.mismatch": 1.0, "two.pixel": 0.0}
        assert report.runner_up_rejection_rate is not None
        # mismatch + 2 U(0, 1) beyond a threshold near 2 - 2 x 0.03: about half.
        assert 0.4 < report.runner_up_rejection_rate < 0.6
        assert report.overall_fpr <= 0.05
        assert report.layers["two.pixel"].achieved_fpr == 0.0
        assert "rejected under runner-up labels" in str(report)
        # A DataLoader (read twice) gives the same split and thresholds.
        again = GuardedModel(TinyClassifier(), [PixelScoreLayer(channel=1), LabelOrPixelLayer()])
        again.load_state_dict(guard.state_dict())
        loaded = again.eval().calibrate(
            DataLoader(x, batch_size=500), target_fpr=0.05, budget="runner_up", progress=False
        )
        assert loaded.budget == report.budget
        assert loaded.layers["two.mismatch"].threshold == report.layers["two.mismatch"].threshold

    def test_errors(self) -> None:
        x = torch.rand(100, 3, 4, 4)
        with pytest.raises(CalibrationError, match="reads the classifier's label"):
            pixel_guard().calibrate(x, budget="runner_up", progress=False)
        with pytest.raises(CalibrationError, match="a mapping or 'runner_up'"):
            pixel_guard().calibrate(x, budget="best", progress=False)
        with pytest.raises(CalibrationError, match="reads the clean data twice"):
            pixel_guard().calibrate(iter(x.split(10)), budget="runner_up", progress=False)
        one_class = GuardedModel(
            nn.Sequential(nn.Flatten(), nn.Linear(48, 1)), [LowConfidenceLayer()]
        )
        with pytest.raises(ValueError, match="runner-up labels need >= 2 classes"):
            one_class.compute_scores(x, labels="runner_up")


def pixel_guard() -> GuardedModel:
    """Two layers whose scores are pixels: a known uniform distribution on each side."""
    layers = [PixelScoreLayer(channel=0), PixelScoreLayer(channel=1, higher_is_suspicious=False)]
    return GuardedModel(TinyClassifier(), layers)


class TestGuardCalibrate:
    @pytest.mark.parametrize("mode", ["joint", "per_layer"])
    def test_held_out_fpr_close_to_target(self, mode: str) -> None:
        guard = pixel_guard()
        calib, test = torch.rand(8000, 3, 4, 4), torch.rand(8000, 3, 4, 4)
        report = guard.calibrate(calib, target_fpr=0.05, mode=mode, progress=False)
        assert report.num_samples == 8000 and report.mode == mode
        held_out = guard(test)
        if mode == "joint":
            assert report.overall_fpr <= 0.05
            assert abs(float(held_out.rejected.float().mean()) - 0.05) < 0.01
        else:
            for name, layer_report in report.layers.items():
                assert layer_report.achieved_fpr == pytest.approx(0.05, abs=2e-4)
                rate = float(held_out.layer_rejected[name].float().mean())
                assert abs(rate - 0.05) < 0.01
            # Two independent layers at 5% each: the union is near 1 - 0.95^2.
            assert report.overall_fpr == pytest.approx(1 - 0.95**2, abs=0.01)
        # Uniform scores: the thresholds sit at the matching quantiles.
        pixel, low = report.layers["pixel"], report.layers["pixel_2"]
        assert pixel.threshold == pytest.approx(1 - pixel.target_fpr, abs=0.02)
        assert low.threshold == pytest.approx(low.target_fpr, abs=0.02)
        assert "overall" in str(report)

    def test_dataloader_of_labelled_batches(self) -> None:
        guard = pixel_guard()
        data = TensorDataset(torch.rand(500, 3, 4, 4), torch.zeros(500, dtype=torch.long))
        report = guard.calibrate(DataLoader(data, batch_size=64), target_fpr=0.1, progress=False)
        assert report.num_samples == 500
        assert report.overall_fpr <= 0.1

    def test_same_thresholds_for_tensor_and_loader(self) -> None:
        x = torch.rand(300, 3, 4, 4)
        a, b = pixel_guard(), pixel_guard()
        a.calibrate(x, target_fpr=0.1, progress=False)
        b.calibrate(DataLoader(x, batch_size=32), target_fpr=0.1, progress=False)
        for name in a.layers:
            assert float(a.layers[name].threshold) == float(b.layers[name].threshold)

    def test_errors(self) -> None:
        guard = pixel_guard()
        with pytest.raises(CalibrationError, match="mode must be"):
            guard.calibrate(torch.rand(10, 3, 4, 4), mode="both", progress=False)
        with pytest.raises(CalibrationError, match="budget only applies"):
            guard.calibrate(
                torch.rand(10, 3, 4, 4), mode="per_layer", budget={"pixel": 1}, progress=False
            )
        with pytest.raises(CalibrationError, match="no layer with a threshold"):
            GuardedModel(TinyClassifier()).calibrate(torch.rand(10, 3, 4, 4), progress=False)
        with pytest.raises(CalibrationError, match="empty"):
            guard.calibrate(torch.rand(0, 3, 4, 4), progress=False)
        with pytest.raises(ValueError, match="single image"):
            guard.calibrate(torch.rand(3, 4, 4), progress=False)
        with pytest.raises(ValueError, match=r"values in \[0, 1\]"):
            guard.calibrate(torch.rand(10, 3, 4, 4) + 1, progress=False)

    def test_score_scale_is_set(self) -> None:
        guard = pixel_guard()
        guard.calibrate(torch.rand(4000, 3, 4, 4), progress=False)
        # std of U(0, 1) = 0.2887
        assert float(guard.layers["pixel"].score_scale) == pytest.approx(0.2887, abs=0.01)
