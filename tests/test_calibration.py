"""Thresholds at a target FPR: hand-computed cases, known distributions, both modes."""

from __future__ import annotations

import pytest
import torch
from helpers import PixelScoreLayer, TinyClassifier
from torch.utils.data import DataLoader, TensorDataset

from guardnet import CalibrationError, GuardedModel, threshold_at_fpr
from guardnet.calibration import false_positive_rate, joint_thresholds


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
        with pytest.raises(CalibrationError, match="must be > 0"):
            joint_thresholds({"a": s}, {"a": True}, 0.05, budget={"a": 0.0})
        with pytest.raises(CalibrationError, match="different numbers of inputs"):
            joint_thresholds({"a": s, "b": s[:5]}, {"a": True, "b": True}, 0.05)


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
