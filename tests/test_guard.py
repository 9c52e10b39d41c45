"""GuardedModel: the layer protocol, every layer kind, cascade, modes, input errors, state."""

from __future__ import annotations

import pytest
import torch
from helpers import (
    GradientNormLayer,
    LowConfidenceLayer,
    PixelScoreLayer,
    ShiftLabelsLayer,
    TinyClassifier,
)
from safetensors.torch import load_file, save_file

from guardnet import (
    DeviceMismatchError,
    GuardedModel,
    GuardResult,
    InputDTypeError,
    InputRangeError,
    InputShapeError,
    NotCalibratedError,
    SAECLayer,
)
from guardnet.eval.attacks import make_attack


def calibrated(guard: GuardedModel, n: int = 400, channels: int = 3) -> GuardedModel:
    guard.calibrate(torch.rand(n, channels, 16, 16), target_fpr=0.1, progress=False)
    return guard


def all_kinds_guard(**kwargs) -> GuardedModel:
    layers = [PixelScoreLayer(), LowConfidenceLayer(), GradientNormLayer(), ShiftLabelsLayer()]
    return GuardedModel(TinyClassifier(), layers, num_classes=10, **kwargs)


class TestLayerKinds:
    def test_every_kind_runs_and_reports(self) -> None:
        guard = calibrated(all_kinds_guard())
        x = torch.rand(12, 3, 16, 16)
        result = guard(x)
        assert isinstance(result, GuardResult)
        assert result.labels.shape == (12,) and result.labels.dtype == torch.long
        assert result.rejected.shape == (12,) and result.rejected.dtype == torch.bool
        assert result.logits.shape == (12, 10)
        assert set(result.scores) == {"pixel", "confidence", "gradnorm", "negate"}
        for name in result.scores:
            assert result.scores[name].shape == (12,)
            assert bool(result.computed[name].all())
        union = torch.stack(list(result.layer_rejected.values())).any(dim=0)
        assert torch.equal(result.rejected, union)
        # The reform layer never rejects and its labels replace the classifier's.
        assert not bool(result.layer_rejected["negate"].any())
        guard.eval()  # dropout off for the reference computation
        expected = guard.classify(1 - x).argmax(1)
        assert torch.equal(result.labels, expected)
        assert torch.equal(result.classifier_labels, guard.classify(x).argmax(1))

    def test_scores_match_direct_computation(self) -> None:
        guard = calibrated(all_kinds_guard())
        x = torch.rand(5, 3, 16, 16)
        result = guard(x)
        torch.testing.assert_close(result.scores["pixel"], x[:, 0, 0, 0])
        guard.eval()
        probs = guard.classify(x).softmax(1)
        torch.testing.assert_close(result.scores["confidence"], 1 - probs.amax(1))

    @pytest.mark.parametrize("context", ["no_grad", "inference_mode", "grad"])
    def test_probe_layer_gets_autograd_in_any_mode(self, context: str) -> None:
        guard = calibrated(GuardedModel(TinyClassifier(), [GradientNormLayer()]))
        x = torch.rand(4, 3, 16, 16)
        ctx = {
            "no_grad": torch.no_grad(),
            "inference_mode": torch.inference_mode(),
            "grad": torch.enable_grad(),
        }[context]
        with ctx:
            scores = guard(x).scores["gradnorm"]
        assert bool((scores > 0).all())
        assert not scores.requires_grad

    def test_result_has_no_grad(self) -> None:
        guard = calibrated(all_kinds_guard())
        x = torch.rand(3, 3, 16, 16, requires_grad=True)
        result = guard(x)
        assert not result.logits.requires_grad
        assert not result.scores["confidence"].requires_grad

    def test_pre_layers_must_come_first(self) -> None:
        with pytest.raises(ValueError, match=r"'pre' layers .* must come first"):
            GuardedModel(TinyClassifier(), [LowConfidenceLayer(), PixelScoreLayer()])

    def test_rejects_non_layers(self) -> None:
        with pytest.raises(TypeError, match="must be a guardnet Layer"):
            GuardedModel(TinyClassifier(), [torch.nn.Identity()])  # type: ignore[list-item]

    def test_duplicate_default_names_get_suffixes_and_mappings_name_layers(self) -> None:
        guard = GuardedModel(TinyClassifier(), [PixelScoreLayer(), PixelScoreLayer(channel=1)])
        assert list(guard.layers) == ["pixel", "pixel_2"]
        named = GuardedModel(TinyClassifier(), {"red": PixelScoreLayer()})
        assert list(named.layers) == ["red"]

    def test_layer_without_kind_is_an_error(self) -> None:
        from guardnet import Layer

        class NoKind(Layer):
            pass

        with pytest.raises(TypeError, match="must set the class attribute `kind`"):
            NoKind()


class TestCascade:
    def test_same_decision_fewer_computations(self) -> None:
        torch.manual_seed(1)
        layers = [PixelScoreLayer(), LowConfidenceLayer()]
        plain = calibrated(GuardedModel(TinyClassifier(), layers))
        cascade = GuardedModel(plain.classifier, plain.layers, cascade=True)
        x = torch.rand(64, 3, 16, 16)
        a, b = plain(x), cascade(x)
        assert torch.equal(a.rejected, b.rejected)
        assert torch.equal(a.labels, b.labels)
        early = a.layer_rejected["pixel"]
        assert bool(early.any()), "the test needs some inputs rejected by the first layer"
        assert torch.equal(b.computed["confidence"], ~early)
        assert bool(b.scores["confidence"][early].isnan().all())
        torch.testing.assert_close(b.scores["confidence"][~early], a.scores["confidence"][~early])
        # The later layer ran once, on one batch holding exactly the survivors.
        conf = cascade.layers["confidence"]
        conf.batch_sizes.clear()
        cascade(x)
        assert conf.batch_sizes == [int((~early).sum())]

    def test_all_rejected_skips_later_layers(self) -> None:
        pixel = PixelScoreLayer()
        conf = LowConfidenceLayer()
        guard = GuardedModel(TinyClassifier(), [pixel, conf], cascade=True)
        pixel.set_threshold(-1.0)  # every score > -1: everything rejected
        conf.set_threshold(0.5)
        result = guard(torch.rand(4, 3, 8, 8))
        assert bool(result.rejected.all())
        assert conf.batch_sizes == []
        assert not bool(result.computed["confidence"].any())


class TestModes:
    def test_never_runs_in_training_mode_and_restores_modes(self) -> None:
        classifier = TinyClassifier(bn=True)
        with torch.no_grad():  # give BatchNorm non-trivial running stats
            classifier.bn.running_mean.uniform_(-1, 1)
            classifier.bn.running_var.uniform_(0.5, 2)
        guard = calibrated(GuardedModel(classifier, [LowConfidenceLayer()]))
        x = torch.rand(8, 3, 16, 16)
        guard.train()
        classifier.bn.train()
        first = guard(x)
        assert guard.training and classifier.training and classifier.bn.training
        # Same result for a sample whatever the batch around it (BN uses running stats,
        # dropout is off), and equal to the eval-mode classifier.
        alone = guard(x[:1])
        torch.testing.assert_close(alone.logits[0], first.logits[0])
        classifier.eval()
        torch.testing.assert_close(first.logits, classifier(x))
        running = classifier.bn.running_mean.clone()
        classifier.train()
        guard(x)
        torch.testing.assert_close(classifier.bn.running_mean, running)

    def test_mixed_modes_are_restored_per_module(self) -> None:
        classifier = TinyClassifier(bn=True)
        guard = calibrated(GuardedModel(classifier, [LowConfidenceLayer()]))
        classifier.train()
        classifier.drop.eval()
        guard(torch.rand(2, 3, 16, 16))
        assert classifier.training and classifier.bn.training and not classifier.drop.training


class TestNormalization:
    def test_mean_std_given_or_inside_classifier_agree(self) -> None:
        mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
        bare = TinyClassifier().eval()

        class WithNorm(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.net = bare

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                m = torch.tensor(mean).view(1, 3, 1, 1)
                s = torch.tensor(std).view(1, 3, 1, 1)
                return self.net((x - m) / s)

        inside = WithNorm()
        pixel_a, pixel_b = PixelScoreLayer(), PixelScoreLayer()
        given = GuardedModel(bare, [pixel_a, LowConfidenceLayer()], mean=mean, std=std)
        builtin = GuardedModel(inside, [pixel_b, LowConfidenceLayer()])
        for g in (given, builtin):
            calibrated(g)
        x = torch.rand(6, 3, 16, 16)
        ra, rb = given(x), builtin(x)
        torch.testing.assert_close(ra.logits, rb.logits)
        torch.testing.assert_close(ra.scores["confidence"], rb.scores["confidence"])
        # Layers see the [0, 1] images, not the normalised ones.
        torch.testing.assert_close(pixel_a.seen[-1], x)

    def test_mean_without_std_is_an_error(self) -> None:
        with pytest.raises(ValueError, match="both mean and std"):
            GuardedModel(TinyClassifier(), mean=(0.5, 0.5, 0.5))

    def test_mean_std_fix_the_channel_count(self) -> None:
        guard = GuardedModel(TinyClassifier(), [SAECLayer()], mean=(0.5,) * 3, std=(0.2,) * 3)
        assert guard.in_channels == 3
        with pytest.raises(ValueError, match="std must be > 0"):
            GuardedModel(TinyClassifier(), mean=(0.5,) * 3, std=(0.2, 0.0, 0.2))


class TestBadInput:
    @pytest.fixture
    def guard(self) -> GuardedModel:
        return calibrated(GuardedModel(TinyClassifier(), [SAECLayer()], num_classes=10))

    def test_wrong_rank(self, guard: GuardedModel) -> None:
        with pytest.raises(InputShapeError, match=r"\(B, C, H, W\).*add a batch dimension"):
            guard(torch.rand(3, 16, 16))

    def test_wrong_channels(self) -> None:
        guard = calibrated(GuardedModel(TinyClassifier(), [SAECLayer()], in_channels=3))
        with pytest.raises(InputShapeError, match="must have 3 channel"):
            guard(torch.rand(2, 1, 16, 16))

    def test_integer_dtype(self, guard: GuardedModel) -> None:
        with pytest.raises(InputDTypeError, match=r"floating-point.*uint8.*divide by 255"):
            guard(torch.zeros(2, 3, 16, 16, dtype=torch.uint8))

    def test_not_a_tensor(self, guard: GuardedModel) -> None:
        with pytest.raises(InputDTypeError, match=r"must be a torch\.Tensor"):
            guard([[0.0]])  # type: ignore[arg-type]

    @pytest.mark.parametrize("value", [-0.1, 1.5, 255.0])
    def test_out_of_range(self, guard: GuardedModel, value: float) -> None:
        x = torch.rand(2, 3, 16, 16)
        x[0, 0, 0, 0] = value
        with pytest.raises(InputRangeError, match=r"values in \[0, 1\]"):
            guard(x)

    def test_validation_can_be_switched_off(self) -> None:
        guard = calibrated(GuardedModel(TinyClassifier(), [SAECLayer()], validate_inputs=False))
        guard(torch.rand(2, 3, 16, 16) * 2)  # no range check

    def test_device_mismatch(self, guard: GuardedModel) -> None:
        guard.to("meta")
        with pytest.raises(DeviceMismatchError, match=r"input is on cpu but the guard is on meta"):
            guard(torch.rand(2, 3, 16, 16))

    def test_wrong_class_count(self) -> None:
        guard = GuardedModel(TinyClassifier(num_classes=5), [LowConfidenceLayer()], num_classes=10)
        guard.layers["confidence"].set_threshold(0.5)
        with pytest.raises(InputShapeError, match="returned 5 classes but the guard expects 10"):
            guard(torch.rand(2, 3, 16, 16))

    def test_layer_class_count_must_match(self) -> None:
        layer = LowConfidenceLayer()
        layer.num_classes = 43
        with pytest.raises(ValueError, match="built for 43 classes but the guard has 10"):
            GuardedModel(TinyClassifier(), [layer], num_classes=10)
        assert GuardedModel(TinyClassifier(num_classes=43), [layer]).num_classes == 43

    def test_classifier_returning_non_logits(self) -> None:
        guard = GuardedModel(torch.nn.Identity(), [LowConfidenceLayer()])
        guard.layers["confidence"].set_threshold(0.5)
        with pytest.raises(InputShapeError, match=r"logits of shape .* got \(2, 3, 4, 4\)"):
            guard(torch.rand(2, 3, 4, 4))

    def test_not_calibrated(self) -> None:
        guard = GuardedModel(TinyClassifier(), [SAECLayer(), LowConfidenceLayer()])
        with pytest.raises(NotCalibratedError, match=r"\['saec', 'confidence'\].*calibrate"):
            guard(torch.rand(2, 3, 16, 16))
        scores = guard.compute_scores(torch.rand(2, 3, 16, 16))  # raw scores still work
        assert set(scores) == {"saec", "confidence"}


class TestStateAndChunks:
    def test_thresholds_round_trip_through_state_dict_and_safetensors(self, tmp_path) -> None:
        guard = calibrated(all_kinds_guard())
        state = guard.state_dict()
        assert "layers.pixel.threshold" in state and "layers.gradnorm.score_scale" in state
        path = tmp_path / "guard.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
        fresh = all_kinds_guard()
        fresh.load_state_dict(load_file(str(path)), strict=True)
        for name in guard.rejecting_layers:
            assert float(fresh.layers[name].threshold) == float(guard.layers[name].threshold)
        x = torch.rand(10, 3, 16, 16)
        a, b = guard(x), fresh(x)
        assert torch.equal(a.rejected, b.rejected) and torch.equal(a.labels, b.labels)

    def test_strict_loading_catches_missing_thresholds(self) -> None:
        guard = calibrated(all_kinds_guard())
        state = guard.state_dict()
        del state["layers.pixel.threshold"]
        with pytest.raises(RuntimeError, match=r"Missing key.*layers\.pixel\.threshold"):
            all_kinds_guard().load_state_dict(state, strict=True)

    def test_chunking_gives_identical_results(self) -> None:
        guard = calibrated(all_kinds_guard())
        chunked = GuardedModel(guard.classifier, guard.layers, max_batch_size=7)
        x = torch.rand(30, 3, 16, 16)
        a, b = guard(x), chunked(x)
        assert torch.equal(a.rejected, b.rejected) and torch.equal(a.labels, b.labels)
        torch.testing.assert_close(a.scores["gradnorm"], b.scores["gradnorm"])
        with pytest.raises(ValueError, match="max_batch_size"):
            GuardedModel(TinyClassifier(), max_batch_size=0)

    def test_rejected_by_and_summary(self) -> None:
        pixel, conf = PixelScoreLayer(), LowConfidenceLayer()
        guard = GuardedModel(TinyClassifier(), [pixel, conf])
        pixel.set_threshold(0.5)
        conf.set_threshold(2.0)  # never rejects (score <= 1)
        x = torch.rand(16, 3, 8, 8)
        result = guard(x)
        expected = torch.where(x[:, 0, 0, 0] > 0.5, 0, -1)
        assert torch.equal(result.rejected_by(), expected)
        assert f"{int((expected == 0).sum())} rejected" in result.summary()

    def test_no_layers_is_a_plain_classifier(self) -> None:
        classifier = TinyClassifier().eval()
        guard = GuardedModel(classifier)
        x = torch.rand(4, 3, 8, 8)
        result = guard(x)
        torch.testing.assert_close(result.logits, classifier(x))
        assert not bool(result.rejected.any())


class TestAttackView:
    def test_k_plus_one_logits_match_guard_decision(self) -> None:
        guard = calibrated(
            GuardedModel(TinyClassifier(), [PixelScoreLayer(), LowConfidenceLayer()])
        )
        view = guard.attack_view()
        assert view.num_classes is None
        x = torch.rand(64, 3, 16, 16)
        out = view(x)
        assert out.shape == (64, 11)
        result = guard(x)
        assert bool(result.rejected.any()) and not bool(result.rejected.all())
        assert torch.equal(out.argmax(1) == 10, result.rejected)
        accepted = ~result.rejected
        assert torch.equal(out[accepted].argmax(1), result.labels[accepted])

    def test_gradients_flow_through_differentiable_layers(self) -> None:
        guard = calibrated(GuardedModel(TinyClassifier(), [LowConfidenceLayer()], num_classes=10))
        view = guard.attack_view()
        assert view.num_classes == 11
        x = torch.rand(4, 3, 16, 16, requires_grad=True)
        view(x)[:, 10].sum().backward()
        assert x.grad is not None and float(x.grad.abs().sum()) > 0

    def test_warns_when_no_rejecting_layer_is_differentiable(self) -> None:
        guard = calibrated(GuardedModel(TinyClassifier(), [SAECLayer()]))
        with pytest.warns(UserWarning, match="no rejecting layer of this guard is differentiable"):
            view = guard.attack_view(bpda=False)
        x = torch.rand(4, 3, 16, 16, requires_grad=True)
        view(x).sum().backward()  # still differentiable through the classifier
        assert x.grad is not None
        x.grad = None
        _, margins = view.logits_and_margins(x)
        assert not margins.requires_grad  # SAEC passes no gradient without BPDA

    def test_bpda_passes_a_gradient_through_saec_with_exact_values(self) -> None:
        guard = calibrated(GuardedModel(TinyClassifier(), [SAECLayer()]))
        view = guard.attack_view()  # bpda=True by default: no warning
        x = torch.rand(4, 3, 16, 16).mul(0.02).add(0.5).requires_grad_(True)
        _, margins = view.logits_and_margins(x)
        assert view.margin_keys == ["saec"] and margins.shape == (4, 1)
        exact = guard.layers["saec"].margin(guard.compute_scores(x.detach())["saec"])
        torch.testing.assert_close(margins.detach().squeeze(1), exact)
        margins.sum().backward()
        assert x.grad is not None and bool(x.grad.abs().sum() > 0)
        # The view's reject logit is the same with and without BPDA (without, SAEC's
        # histogram has no gradient, and the view says so).
        with pytest.warns(UserWarning, match="no rejecting layer of this guard is differentiable"):
            plain = guard.attack_view(bpda=False)
        torch.testing.assert_close(view(x.detach()), plain(x.detach()), rtol=0, atol=0)

    def test_works_with_guardnets_pgd_and_foolbox(self) -> None:
        guard = calibrated(GuardedModel(TinyClassifier(), [LowConfidenceLayer()], num_classes=10))
        view = guard.attack_view()
        x = torch.rand(8, 3, 16, 16)
        labels = guard(x).labels
        attack = make_attack("pgd", view, eps=8 / 255, alpha=2 / 255, steps=3, random_start=False)
        adv = attack(x, labels)
        assert adv.shape == x.shape
        assert float((adv - x).abs().max()) <= 8 / 255 + 1e-6
        fb = pytest.importorskip("foolbox")  # an independent library sees a plain nn.Module
        fmodel = fb.PyTorchModel(view.eval(), bounds=(0.0, 1.0), device=x.device)
        pgd = fb.attacks.LinfPGD(steps=3, abs_stepsize=2 / 255, random_start=False)
        _, clipped, _ = pgd(fmodel, x, labels, epsilons=8 / 255)
        assert clipped.shape == x.shape
        assert float((clipped - x).abs().max()) <= 8 / 255 + 1e-6
