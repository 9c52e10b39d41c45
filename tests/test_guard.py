"""GuardedModel: the layer protocol, every layer kind, cascade, modes, input errors, state."""

from __future__ import annotations

import pytest
import torch
from helpers import (
    FailingLayer,
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
    InputValueError,
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
        with pytest.raises(InputDTypeError, match=r"point.*uint8.*images\.float\(\) / 255"):
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


class TestDTypes:
    def test_floating_inputs_follow_the_guards_dtype(self) -> None:
        guard = calibrated(GuardedModel(TinyClassifier(), [SAECLayer()], num_classes=10))
        x = torch.rand(3, 3, 16, 16, dtype=torch.float64)
        got, want = guard(x), guard(x.float())
        assert got.logits.dtype == torch.float32 and torch.equal(got.logits, want.logits)
        guard.double()
        assert guard(x.float()).logits.dtype == torch.float64

    def test_the_attack_view_converts_and_passes_gradients_back(self) -> None:
        guard = GuardedModel(TinyClassifier(), [LowConfidenceLayer()], num_classes=10)
        calibrated(guard)
        x = torch.rand(2, 3, 16, 16, dtype=torch.float64, requires_grad=True)
        logits = guard.attack_view()(x)
        assert logits.dtype == torch.float32 and logits.shape == (2, 11)
        logits[:, -1].sum().backward()
        assert x.grad is not None and x.grad.dtype == torch.float64
        assert float(x.grad.abs().sum()) > 0

    @pytest.fixture
    def half_guard_without_kernels(self, monkeypatch: pytest.MonkeyPatch) -> GuardedModel:
        """A float16 guard whose layer hits an operation PyTorch lacks for float16."""
        guard = GuardedModel(TinyClassifier(), [PixelScoreLayer()], num_classes=10)
        guard.layers["pixel"].set_threshold(0.5)
        guard.half()

        def missing_kernel(inputs: object) -> None:
            raise RuntimeError("\"slow_conv2d_cpu\" not implemented for 'Half'")

        monkeypatch.setattr(guard.layers["pixel"], "forward", missing_kernel)
        return guard

    def test_a_dtype_pytorch_cannot_run_is_refused_naming_the_fix(
        self, half_guard_without_kernels: GuardedModel
    ) -> None:
        x = torch.rand(2, 3, 16, 16)
        for call in (half_guard_without_kernels, half_guard_without_kernels.compute_scores):
            with pytest.raises(
                InputDTypeError, match=r"computes in float16, which PyTorch .* guard\.float\(\)"
            ) as error:
                call(x)
            assert isinstance(error.value.__cause__, RuntimeError)
        half_guard_without_kernels.fail_closed = True
        result = half_guard_without_kernels(x)
        assert "not implemented for 'Half'" in result.errors["pixel"]
        assert bool(result.rejected.all())

    def test_other_runtime_errors_pass_through_unchanged(self) -> None:
        guard = GuardedModel(TinyClassifier(), [FailingLayer()], num_classes=10)
        guard.layers["failing"].set_threshold(0.5)
        x = torch.rand(2, 3, 16, 16)
        x[0, 0, 0, 0] = 1.0
        with pytest.raises(RuntimeError, match=r"first pixel above 0\.9") as error:
            guard(x)
        assert type(error.value) is RuntimeError


def failing_guard(layer: FailingLayer | None = None, **kwargs) -> GuardedModel:
    """A classifier behind a ``FailingLayer`` and a ``PixelScoreLayer`` on channel 1, both with
    threshold 0.5, fail-closed unless told."""
    kwargs.setdefault("fail_closed", True)
    layers = {"failing": layer or FailingLayer(), "pixel": PixelScoreLayer(channel=1)}
    guard = GuardedModel(TinyClassifier(), layers, num_classes=10, **kwargs)
    for layer_ in guard.layers.values():
        layer_.set_threshold(0.5)
    return guard


def triggering(batch: int, rows: list[int]) -> torch.Tensor:
    """Images whose first pixel is 0.2, except 0.95 (a ``FailingLayer`` trigger) in ``rows``."""
    x = torch.rand(batch, 3, 16, 16)
    x[:, 0, 0, 0] = 0.2
    x[rows, 0, 0, 0] = 0.95
    return x


class TestFailClosed:
    def test_off_by_default_the_layers_error_propagates(self) -> None:
        guard = failing_guard(fail_closed=False)
        assert GuardedModel(TinyClassifier()).fail_closed is False
        with pytest.raises(RuntimeError, match=r"first pixel above 0\.9"):
            guard(triggering(4, [1]))

    def test_a_failing_layer_rejects_its_rows_and_reports_the_error(self) -> None:
        guard = failing_guard()
        x = triggering(5, [3])
        result = guard(x)
        assert result.errors == {"failing": "RuntimeError: first pixel above 0.9"}
        assert bool(result.rejected.all()) and bool(result.layer_rejected["failing"].all())
        assert bool(result.scores["failing"].isnan().all())
        assert not bool(result.computed["failing"].any())
        # The other layer and the classifier ran as usual.
        assert bool(result.computed["pixel"].all())
        assert torch.equal(result.scores["pixel"], x[:, 1, 0, 0])
        assert torch.equal(result.layer_rejected["pixel"], x[:, 1, 0, 0] > 0.5)
        guard.eval()
        assert torch.equal(result.labels, guard.classify(x).argmax(1))
        assert "failing failed: RuntimeError: first pixel above 0.9" in result.summary()
        # A batch that does not trigger it has no errors.
        clean = guard(triggering(5, []))
        assert clean.errors == {} and torch.equal(clean.scores["failing"], torch.full((5,), 0.2))

    def test_only_the_failing_chunk_is_rejected(self) -> None:
        guard = failing_guard(max_batch_size=2)
        x = triggering(7, [3])
        result = guard(x)
        assert guard.layers["failing"].batch_sizes == [2, 2, 2, 1]
        failed = torch.tensor([False, False, True, True, False, False, False])
        assert torch.equal(result.layer_rejected["failing"], failed)
        assert torch.equal(result.computed["failing"], ~failed)
        assert torch.equal(result.scores["failing"].isnan(), failed)
        assert torch.equal(result.rejected, failed | (x[:, 1, 0, 0] > 0.5))
        assert list(result.errors) == ["failing"]
        # The other rows get what a guard that never fails gives them.
        keep = (~failed).nonzero().squeeze(1)
        want = failing_guard(fail_closed=False)(x[keep])
        for key in ("failing", "pixel"):
            assert torch.equal(result.scores[key][keep], want.scores[key])
            assert torch.equal(result.layer_rejected[key][keep], want.layer_rejected[key])
        assert torch.equal(result.rejected[keep], want.rejected)

    def test_cascade_rejects_only_the_rows_the_layer_ran_on(self) -> None:
        layers = {"pixel": PixelScoreLayer(channel=1), "failing": FailingLayer()}
        guard = GuardedModel(TinyClassifier(), layers, cascade=True, fail_closed=True)
        for layer in guard.layers.values():
            layer.set_threshold(0.5)
        x = triggering(4, [2])
        x[:, 1, 0, 0] = torch.tensor([0.9, 0.1, 0.1, 0.1])  # row 0 rejected first
        result = guard(x)
        assert guard.layers["failing"].batch_sizes == [3]
        ran = torch.tensor([False, True, True, True])
        assert torch.equal(result.layer_rejected["failing"], ran)
        assert bool(result.rejected.all()) and not bool(result.computed["failing"].any())

    def test_malformed_scores_count_as_a_failure(self) -> None:
        guard = failing_guard(FailingLayer(failure="shape"))
        result = guard(triggering(3, [0]))
        assert "returned scores of shape (3, 1), expected (3,)" in result.errors["failing"]
        assert bool(result.rejected.all())

    def test_nan_scores_are_rejected_only_when_fail_closed(self) -> None:
        x = triggering(4, [1])
        result = failing_guard(FailingLayer(failure="nan"))(x)
        assert result.errors == {}
        assert torch.equal(result.layer_rejected["failing"], torch.tensor([0, 1, 0, 0]).bool())
        assert bool(result.computed["failing"].all())
        lenient = failing_guard(FailingLayer(failure="nan"), fail_closed=False)(x)
        assert not bool(lenient.layer_rejected["failing"].any())

    def test_a_failing_reform_layer_leaves_labels_to_the_classifier(self) -> None:
        class BrokenReform(ShiftLabelsLayer):
            def forward(self, inputs):  # type: ignore[no-untyped-def]
                raise ValueError("cannot reform")

        guard = GuardedModel(TinyClassifier(), [BrokenReform()], fail_closed=True)
        x = torch.rand(3, 3, 16, 16)
        result = guard(x)
        assert result.errors == {"negate": "ValueError: cannot reform"}
        assert bool(result.rejected.all())
        assert torch.equal(result.labels, result.classifier_labels)

    def test_input_checks_calibration_and_the_classifier_still_raise(self) -> None:
        guard = failing_guard()
        bad = triggering(2, [])
        bad[0, 0, 1, 1] = float("nan")
        with pytest.raises(InputValueError):
            guard(bad)
        with pytest.raises(RuntimeError, match="first pixel"):
            guard.compute_scores(triggering(2, [0]))
        guard.layers["pixel"].threshold.fill_(float("nan"))
        with pytest.raises(NotCalibratedError):
            guard(triggering(2, [0]))

        class BrokenClassifier(torch.nn.Module):
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                raise ValueError("classifier down")

        broken = GuardedModel(BrokenClassifier(), [LowConfidenceLayer()], fail_closed=True)
        broken.layers["confidence"].set_threshold(0.5)
        with pytest.raises(ValueError, match="classifier down"):
            broken(torch.rand(2, 3, 16, 16))

    def test_results_keep_their_errors_when_moved_and_concatenated(self) -> None:
        guard = failing_guard()
        first, second = guard(triggering(2, [0])), guard(triggering(2, []))
        assert first.to("cpu").errors == first.errors
        joined = GuardResult.cat([second, first, first])
        assert joined.errors == first.errors and len(joined) == 6
        assert "fail_closed=True" in repr(guard)


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
