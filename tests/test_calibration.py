"""Calibrating a guard: both modes, runner-up budgets, the report and its promise on new data."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from helpers import LowConfidenceLayer, PixelScoreLayer, TinyClassifier
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from guardnet import CalibrationError, CalibrationWarning, GuardedModel
from guardnet.conformal import fpr_interval, rejection_slots
from guardnet.layers.base import Layer, LayerInput, LayerKind, LayerOutput


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
                # floor(8001 * 0.05) = 400 slots: 399 of the 8000 calibration images beyond.
                assert layer_report.target_fpr == 400 / 8001
                assert layer_report.achieved_fpr == pytest.approx(399 / 8000, abs=1 / 8000)
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


class TestReport:
    def test_joint_promise_on_new_data(self) -> None:
        guard = pixel_guard()
        report = guard.calibrate(torch.rand(500, 3, 4, 4), target_fpr=0.05, progress=False)
        assert report.num_samples == 500 and report.slots is not None
        assert report.slots <= rejection_slots(500, 0.05) == 25
        assert report.expected_fpr == report.slots / 501 <= 0.05
        assert report.fpr_interval == fpr_interval(report.slots, 500)
        low, high = report.fpr_interval
        assert low < report.expected_fpr < high
        # Two thresholds, each with its own boundary image: two slots more than the images
        # rejected on the calibration set (unless a boundary is shared).
        assert report.overall_fpr * 500 <= report.slots - 1
        text = str(report)
        assert "expected FPR on new clean data: " in text
        assert f"{low:.2%}-{high:.2%}" in text and f"{report.slots} of 501 rank slots" in text
        data = report.to_dict()
        assert data["slots"] == report.slots and data["fpr_interval"] == report.fpr_interval
        assert data["expected_fpr"] == report.expected_fpr
        test_low, test_high = report.test_interval(1000)
        assert test_low <= low and test_high >= high
        assert report.test_interval(1000) == fpr_interval(report.slots, 500, test_size=1000)

    def test_per_layer_bound(self) -> None:
        report = pixel_guard().calibrate(
            torch.rand(500, 3, 4, 4), target_fpr=0.05, mode="per_layer", progress=False
        )
        assert report.slots is None and report.fpr_interval is None
        assert report.test_interval(100) is None
        assert report.expected_fpr == 2 * 25 / 501  # two layers, each at 25 of 501 slots
        assert "at most 9.98% (the sum of the layers' rates)" in str(report)

    def test_too_few_images_warn_and_reject_nothing(self) -> None:
        guard = pixel_guard()
        with pytest.warns(CalibrationWarning, match="needs at least 19 clean") as record:
            report = guard.calibrate(torch.rand(10, 3, 4, 4), target_fpr=0.05, progress=False)
        assert record[0].filename == __file__  # points at the calibrate call
        assert report.slots == 0 and report.expected_fpr == 0.0
        assert report.fpr_interval == (0.0, 0.0)
        assert [c.threshold for c in report.layers.values()] == [math.inf, -math.inf]
        assert not bool(guard(torch.rand(64, 3, 4, 4)).rejected.any())

    def test_few_images_for_the_thresholds_warn(self) -> None:
        guard = pixel_guard()
        # floor(21 * 0.05) = 1 slot for 2 thresholds; 39 images give 2.
        with pytest.warns(CalibrationWarning, match=r"give 1 rank slot.*39 images"):
            report = guard.calibrate(torch.rand(20, 3, 4, 4), target_fpr=0.05, progress=False)
        assert report.slots is not None and report.slots <= 1
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            pixel_guard().calibrate(torch.rand(39, 3, 4, 4), target_fpr=0.05, progress=False)
