"""ContraNetLayer inside a guard: scores, calibration of its three thresholds, resizing, I/O."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from helpers import tiny_contranet as tiny_net
from torch import nn

from guardnet import GuardedModel, SAECLayer
from guardnet.errors import InputShapeError, WeightsError
from guardnet.layers import ContraNetLayer, LayerInput
from guardnet.nets.contranet import ContraNetConfig, ssim_scores, to_unit_range
from guardnet.weights import save_pretrained

pytestmark = pytest.mark.usefixtures("flush_denormals")


def linear_classifier(channels: int, size: int, num_classes: int = 10) -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(channels * size * size, num_classes)).eval()


class TestScores:
    def test_three_named_scores_match_the_nets(self) -> None:
        net = tiny_net()
        guard = GuardedModel(linear_classifier(1, 28), [ContraNetLayer(net)])
        x = torch.rand(6, 1, 28, 28)
        scores = guard.compute_scores(x)
        assert list(scores) == ["contranet.dmm", "contranet.dis", "contranet.ssim"]
        labels = guard.classify(x).argmax(1)
        with torch.no_grad():
            xs = to_unit_range(x)
            reference = net.scores(xs, net.rebuild(xs, labels), labels)
        got = torch.stack(list(scores.values()), dim=1)
        torch.testing.assert_close(got, reference)
        assert bool(((got[:, 0] >= 0) & (got[:, 0] <= 1)).all())  # a probability

    def test_channels_last_default_matches_contiguous_layout(self) -> None:
        x = torch.rand(5, 3, 32, 32)
        labels = torch.tensor([0, 3, 9, 2, 2])
        fast = ContraNetLayer(tiny_net(channels=3))
        plain = ContraNetLayer(tiny_net(channels=3), channels_last=False)
        conv = next(m for m in fast.net.modules() if isinstance(m, nn.Conv2d))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
        assert not conv.weight.is_contiguous()
        with torch.no_grad():
            got = fast(LayerInput(images=x, labels=labels)).scores
            want = plain(LayerInput(images=x, labels=labels)).scores
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
        # Saved weights stay loadable: the state dict holds the same values.
        for key, value in plain.net.state_dict().items():
            torch.testing.assert_close(fast.net.state_dict()[key], value)

    def test_mnist_is_padded_not_stretched(self) -> None:
        x = torch.rand(2, 1, 28, 28)
        padded = to_unit_range(x)
        assert padded.shape == (2, 1, 32, 32)
        torch.testing.assert_close(padded[..., 2:30, 2:30], x * 2 - 1)
        assert bool((padded[..., :2, :] == -1).all())

    def test_ssim_of_identical_images_is_one(self) -> None:
        x = torch.rand(3, 3, 32, 32)
        torch.testing.assert_close(ssim_scores(x, x), torch.ones(3))
        assert bool((ssim_scores(x, torch.rand(3, 3, 32, 32)) < 0.2).all())

    def test_rebuilds_only_the_predicted_label(self) -> None:
        net = tiny_net()
        seen: list[torch.Tensor] = []
        net.generator.register_forward_hook(lambda m, args, out: seen.append(args[1].clone()))
        guard = GuardedModel(linear_classifier(1, 28), [ContraNetLayer(net)])
        x = torch.rand(5, 1, 28, 28)
        guard.compute_scores(x)
        assert len(seen) == 1
        torch.testing.assert_close(seen[0], guard.classify(x).argmax(1))

    def test_larger_classifier_input_is_resized(self) -> None:
        net = tiny_net(channels=3)
        guard = GuardedModel(linear_classifier(3, 64), [ContraNetLayer(net)])
        x = torch.rand(4, 3, 64, 64)
        scores = guard.compute_scores(x)
        labels = guard.classify(x).argmax(1)
        small = nn.functional.interpolate(x, size=(32, 32), mode="bilinear", antialias=True)
        with torch.no_grad():
            xs = small.clamp(0, 1) * 2 - 1
            reference = net.scores(xs, net.rebuild(xs, labels), labels)
        torch.testing.assert_close(torch.stack(list(scores.values()), 1), reference)

    def test_wrong_channel_count_is_named(self) -> None:
        guard = GuardedModel(linear_classifier(3, 28), [ContraNetLayer(tiny_net(channels=1))])
        with pytest.raises(InputShapeError, match="1-channel"):
            guard.compute_scores(torch.rand(2, 3, 28, 28))

    def test_class_count_must_match(self) -> None:
        with pytest.raises(ValueError, match="43 classes"):
            GuardedModel(
                linear_classifier(3, 32), [ContraNetLayer(tiny_net(43, 3))], num_classes=10
            )

    def test_sampling_is_seeded(self) -> None:
        layer = ContraNetLayer(tiny_net(), sample=True, seed=3)
        guard = GuardedModel(linear_classifier(1, 28), [layer])
        x = torch.rand(4, 1, 28, 28)
        a, b = guard.compute_scores(x), guard.compute_scores(x)
        torch.testing.assert_close(a, b)
        det = GuardedModel(linear_classifier(1, 28), [ContraNetLayer(layer.net)])
        assert not torch.equal(a["contranet.ssim"], det.compute_scores(x)["contranet.ssim"])


class TestCalibration:
    def make_guard(self) -> GuardedModel:
        return GuardedModel(linear_classifier(1, 28), [SAECLayer(), ContraNetLayer(tiny_net())])

    def test_joint_calibration_sets_three_thresholds(self) -> None:
        guard = self.make_guard()
        clean = torch.rand(400, 1, 28, 28)
        report = guard.calibrate(clean, target_fpr=0.1, progress=False)
        assert set(report.layers) == {"saec", "contranet.dmm", "contranet.dis", "contranet.ssim"}
        layer = guard.layers["contranet"]
        assert layer.threshold.shape == (3,) and not bool(layer.threshold.isnan().any())
        assert report.overall_fpr <= 0.1
        result = guard(clean)
        assert float(result.rejected.float().mean()) == pytest.approx(report.overall_fpr)
        # The guard rejects exactly the OR of the four per-score decisions.
        union = torch.stack(list(result.layer_rejected.values()), 1).any(1)
        assert torch.equal(union, result.rejected)
        for i, name in enumerate(("dmm", "dis", "ssim")):
            expected = result.scores[f"contranet.{name}"] < layer.threshold[i]
            assert torch.equal(result.layer_rejected[f"contranet.{name}"], expected)

    def test_uncalibrated_guard_refuses(self) -> None:
        guard = self.make_guard()
        guard.layers["saec"].set_threshold(0.0)
        guard.layers["contranet"].set_threshold(0.5, score="dmm")
        with pytest.raises(Exception, match="contranet"):
            guard(torch.rand(2, 1, 28, 28))

    def test_set_threshold_by_name(self) -> None:
        layer = ContraNetLayer(tiny_net())
        layer.set_threshold(0.25, score="dis", score_scale=2.0)
        assert layer.threshold[1] == 0.25 and layer.score_scale[1] == 2.0
        assert bool(layer.threshold[[0, 2]].isnan().all())
        with pytest.raises(ValueError, match="not 'psnr'"):
            layer.set_threshold(0.1, score="psnr")

    def test_cascade_marks_skipped_inputs(self) -> None:
        def smooth(n: int) -> torch.Tensor:
            small = torch.rand(n, 1, 4, 4)
            return nn.functional.interpolate(small, size=(28, 28), mode="bilinear")

        guard = self.make_guard()
        guard.calibrate(smooth(200), target_fpr=0.1, progress=False)
        guard.cascade = True
        batch = torch.cat([smooth(4), torch.rand(4, 1, 28, 28)])  # noise: SAEC rejects it
        full = GuardedModel(guard.classifier, guard.layers)  # same layers, no cascade
        a, b = guard(batch), full(batch)
        assert torch.equal(a.rejected, b.rejected)
        skipped = ~a.computed["contranet.dmm"]
        assert bool(skipped.any()), "the test needs inputs SAEC rejects"
        assert torch.equal(skipped, a.layer_rejected["saec"])
        assert bool(a.scores["contranet.ssim"][skipped].isnan().all())
        assert not bool(a.scores["contranet.ssim"][~skipped].isnan().any())

    def test_state_dict_round_trip(self) -> None:
        guard = self.make_guard()
        guard.calibrate(torch.rand(200, 1, 28, 28), target_fpr=0.1, progress=False)
        fresh = GuardedModel(
            linear_classifier(1, 28), [SAECLayer(), ContraNetLayer(tiny_net(seed=5))]
        )
        fresh.load_state_dict(guard.state_dict())
        x = torch.rand(8, 1, 28, 28)
        torch.testing.assert_close(fresh.compute_scores(x), guard.compute_scores(x))
        assert torch.equal(fresh(x).rejected, guard(x).rejected)


class TestIO:
    def test_grid_shows_inputs_and_rebuilds(self, tmp_path) -> None:
        layer = ContraNetLayer(tiny_net())
        path = tmp_path / "grid.png"
        grid = layer.reconstruction_grid(
            torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 9]), other_labels=3, path=path
        )
        # 4 rows of 1 input + 1 true-label rebuild + 3 others, 32 px tiles, 2 px padding.
        assert grid.shape == (3, 4 * 34 + 2, 5 * 34 + 2)
        assert path.stat().st_size > 0

    def test_from_pretrained_folder(self, tmp_path) -> None:
        net = tiny_net()
        config = {
            "architecture": "ContraNet",
            "arch_args": dataclasses.asdict(net.config),
            "num_classes": 10,
        }
        save_pretrained(net, tmp_path / "cn", config=config)
        layer = ContraNetLayer.from_pretrained(tmp_path / "cn")
        x = to_unit_range(torch.rand(2, 1, 28, 28))
        y = torch.tensor([1, 2])
        with torch.no_grad():
            torch.testing.assert_close(layer.net(x, y)[1], net(x, y)[1])

    def test_from_pretrained_rejects_other_architectures(self, tmp_path) -> None:
        from guardnet.nets import MnistCNN

        save_pretrained(
            MnistCNN(),
            tmp_path / "cnn",
            config={"architecture": "MnistCNN", "arch_args": {"num_classes": 10}},
        )
        with pytest.raises(WeightsError, match="not a ContraNet"):
            ContraNetLayer.from_pretrained(tmp_path / "cnn")

    def test_config_json_rebuilds_the_net(self, tmp_path) -> None:
        net = tiny_net(43, 3)
        config = {"architecture": "ContraNet", "arch_args": dataclasses.asdict(net.config)}
        folder = save_pretrained(net, tmp_path / "g", config=config)
        args = json.loads((folder / "config.json").read_text())["arch_args"]
        assert ContraNetConfig(**args) == net.config
