"""The contract every guardnet ``Layer`` class keeps, run over every layer class guardnet has.

Each test is parametrised over :func:`contract.discover_layer_classes` (every ``Layer`` subclass
in the ``guardnet`` package). A new layer joins the suite by having an entry in
:data:`CONTRACT_FACTORIES` that builds a small instance; a layer class without one fails
:func:`test_every_layer_class_has_a_factory` and every contract test, so it cannot skip the
contract unnoticed.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable

import pytest
import torch
from contract import BaseLayerTester, CaseFactory, LayerCase, discover_layer_classes
from helpers import TinyClassifier, tiny_contranet
from safetensors.torch import load_file, save_file

import guardnet.layers
from guardnet import (
    A2DLayer,
    ContraNetLayer,
    DeTReformer,
    GuardedModel,
    Layer,
    LayerKind,
    SAECLayer,
)
from guardnet.errors import (
    DeviceMismatchError,
    InputDTypeError,
    InputValueError,
    NotCalibratedError,
)
from guardnet.layers.base import LayerInput
from guardnet.nets.reformer import REFORMER_STYLES, ReformerSet


def _saec_case(seed: int) -> LayerCase:
    torch.manual_seed(seed)
    return LayerCase(
        layer=SAECLayer(),
        classifier=TinyClassifier(3, 10, bn=True),
        image_shape=(3, 16, 16),
        num_classes=10,
    )


def _contranet_case(seed: int) -> LayerCase:
    layer = ContraNetLayer(tiny_contranet(num_classes=10, channels=1, seed=seed))
    torch.manual_seed(seed)
    return LayerCase(
        layer=layer,
        classifier=TinyClassifier(1, 10, bn=True),
        image_shape=(1, 28, 28),  # padded to ContraNet's 32x32 inside the layer
        num_classes=10,
    )


def _linear_classifier() -> torch.nn.Module:
    """A linear classifier of 8x8 grey images that also takes other sizes (pooled to 8x8)."""
    return torch.nn.Sequential(
        torch.nn.AdaptiveAvgPool2d(8), torch.nn.Flatten(), torch.nn.Linear(64, 10)
    )


def _a2d_case(seed: int) -> LayerCase:
    torch.manual_seed(seed)
    # A linear classifier: random conv nets with pooling barely move, so costs would all hit
    # the limit.
    classifier = _linear_classifier()
    layer = A2DLayer(
        ["bim", "jsma", "dba"],
        settings={
            "bim": {"eps": 0.5, "step": 0.005, "limit": 40},
            "jsma": {"theta": 0.2, "limit": 40},
            "dba": {"limit": 60, "mse_target": 0.05},
        },
    )
    # The Box-Cox fit (not a threshold): the contract's guards calibrate thresholds themselves.
    generator = torch.Generator().manual_seed(100 + seed)
    layer.fit(torch.rand(24, 1, 8, 8, generator=generator), classifier)
    return LayerCase(layer=layer, classifier=classifier, image_shape=(1, 8, 8), num_classes=10)


def _det_case(seed: int) -> LayerCase:
    torch.manual_seed(seed)
    nets = ReformerSet(
        [{"in_channels": 1, **REFORMER_STYLES[s]} for s in ("pooled", "plain", "wide")]
    )
    # A few steps towards the identity, so rebuilds keep enough of the input for labels to vary.
    images = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.Adam(nets.parameters(), lr=0.02)
    for _ in range(60):
        optimizer.zero_grad()
        sum(((r(images) - images) ** 2).mean() for r in nets.reformers).backward()
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    classifier = _linear_classifier()
    layer = DeTReformer(nets, num_samples=3, eps=0.3, reject=True)
    return LayerCase(layer=layer, classifier=classifier, image_shape=(1, 8, 8), num_classes=10)


#: Layer class -> a factory of a small, fast instance (seeded; random weights are fine).
CONTRACT_FACTORIES: dict[type[Layer], CaseFactory] = {
    SAECLayer: _saec_case,
    ContraNetLayer: _contranet_case,
    A2DLayer: _a2d_case,
    DeTReformer: _det_case,
}

LAYER_CLASSES = discover_layer_classes()

#: The floating dtypes other than float32 a guard or its inputs may have.
LOW_AND_HIGH_PRECISION = (torch.float16, torch.bfloat16, torch.float64)
#: How far, relative to a score's magnitude, a guard converted to a dtype may score from the
#: float32 guard on the same images (the tiny random networks compute in that dtype).
DTYPE_TOLERANCE = {torch.float16: 2e-2, torch.bfloat16: 6e-2, torch.float64: 1e-4}

pytestmark = pytest.mark.usefixtures("flush_denormals")


def _name(cls: type[Layer]) -> str:
    return cls.__name__


@pytest.fixture(params=LAYER_CLASSES, ids=_name)
def make_case(request: pytest.FixtureRequest) -> CaseFactory:
    cls = request.param
    if cls not in CONTRACT_FACTORIES:
        pytest.fail(f"{cls.__qualname__} has no factory in CONTRACT_FACTORIES")
    return CONTRACT_FACTORIES[cls]


@pytest.fixture
def case(make_case: CaseFactory) -> LayerCase:
    return make_case(0)


@pytest.fixture(params=LOW_AND_HIGH_PRECISION, ids=str)
def dtype(request: pytest.FixtureRequest) -> torch.dtype:
    """A floating dtype other than float32."""
    return request.param


def test_discovery_finds_the_shipped_layers() -> None:
    assert {SAECLayer, ContraNetLayer} <= set(LAYER_CLASSES)
    assert Layer not in LAYER_CLASSES
    assert all(cls.__module__.startswith("guardnet.") for cls in LAYER_CLASSES)


def test_every_layer_class_has_a_factory() -> None:
    missing = [cls.__qualname__ for cls in LAYER_CLASSES if cls not in CONTRACT_FACTORIES]
    assert not missing, f"add a factory to CONTRACT_FACTORIES for: {missing}"
    built = {cls: factory(0).layer for cls, factory in CONTRACT_FACTORIES.items()}
    assert all(type(layer) is cls for cls, layer in built.items())


def test_every_layer_class_is_exported() -> None:
    missing = [c.__name__ for c in LAYER_CLASSES if c.__name__ not in guardnet.layers.__all__]
    assert not missing, f"layer classes guardnet.layers does not export: {missing}"


class TestLayerContract(BaseLayerTester):
    # ------------------------------------------------------------------ declaration
    def test_class_attributes_and_threshold_buffers(self, case: LayerCase) -> None:
        layer = case.layer
        assert isinstance(layer.kind, LayerKind)
        assert layer.default_name.isidentifier()
        assert len(set(layer.score_names)) == len(layer.score_names)
        shape = (len(layer.score_names),) if layer.score_names else ()
        assert layer.threshold.shape == shape and layer.score_scale.shape == shape
        assert bool(layer.threshold.isnan().all()), "a new layer must start uncalibrated"
        assert {"threshold", "score_scale"} <= set(layer.state_dict())
        if layer.num_classes is not None:
            assert layer.num_classes == case.num_classes
        guard = case.guard()
        if layer.rejects:
            with pytest.raises(NotCalibratedError, match=guard.score_keys[0].split(".")[0]):
                guard(case.images(2))

    # ------------------------------------------------------------------ shapes
    @pytest.mark.parametrize("batch", [5, 1])
    def test_output_shapes(self, case: LayerCase, batch: int) -> None:
        guard = case.guard()
        x = case.images(batch)
        with torch.no_grad():
            out = case.layer(self.layer_input(guard, x))
        expected = (batch, len(case.layer.score_names)) if case.layer.score_names else (batch,)
        assert out.scores.shape == expected
        assert out.scores.is_floating_point() and bool(out.scores.isfinite().all())

        scores = guard.compute_scores(x)
        assert list(scores) == guard.score_keys
        assert all(s.shape == (batch,) for s in scores.values())
        self.calibrate_at_median(guard, case.images(20, seed=1))
        result = guard(x)
        assert result.labels.shape == result.rejected.shape == (batch,)
        assert result.logits.shape == (batch, case.num_classes)
        assert result.rejected.dtype == torch.bool
        assert list(result.scores) == list(result.layer_rejected) == guard.score_keys
        assert all(s.shape == (batch,) for s in result.scores.values())

    def test_batch_of_one_matches_its_row_in_a_batch(self, case: LayerCase) -> None:
        guard = case.guard()
        self.calibrate_at_median(guard, case.images(20, seed=1))
        x = case.images(6)
        whole = guard(x)
        for i in (0, 5):
            alone = guard(x[i : i + 1])
            self.assert_scores_close(
                alone.scores, {k: v[i : i + 1] for k, v in whole.scores.items()}, atol=1e-4
            )
            assert torch.equal(alone.labels, whole.labels[i : i + 1])

    def test_empty_batch(self, case: LayerCase) -> None:
        guard = case.guard()
        empty = case.images(0)
        scores = guard.compute_scores(empty)
        assert list(scores) == guard.score_keys
        assert all(s.shape == (0,) for s in scores.values())
        self.calibrate_at_median(guard, case.images(20, seed=1))
        result = guard(empty)
        assert len(result) == 0
        assert result.labels.shape == result.rejected.shape == (0,)
        assert result.logits.shape == (0, case.num_classes)
        assert list(result.scores) == guard.score_keys
        assert all(s.shape == (0,) for s in result.scores.values())
        assert all(m.shape == (0,) for m in result.layer_rejected.values())

    # ------------------------------------------------------------------ dtype and device
    def test_images_of_every_floating_dtype_are_scored_like_float32(
        self, case: LayerCase, dtype: torch.dtype
    ) -> None:
        guard = case.guard()
        x = case.images(4, dtype=dtype)  # the reference sees the same (rounded) values
        inputs = self.layer_input(guard, x.float())
        with torch.no_grad():
            want = case.layer(inputs).scores
            try:
                got = case.layer(
                    LayerInput(
                        images=x,
                        logits=inputs.logits,
                        labels=inputs.labels,
                        classifier=inputs.classifier,
                    )
                ).scores
            except InputDTypeError as error:  # refusing is allowed, with a clear error
                assert str(dtype).removeprefix("torch.") in str(error)
                return
        assert got.shape == want.shape and got.is_floating_point()
        torch.testing.assert_close(got.to(want.dtype), want, atol=1e-5, rtol=1e-5)

    def test_a_guard_converted_to_a_dtype_takes_images_of_that_dtype(
        self, case: LayerCase, dtype: torch.dtype
    ) -> None:
        reference = case.guard()
        self.calibrate_at_median(reference, case.images(20, seed=1))
        thresholds = case.layer.threshold.clone()
        guard = copy.deepcopy(reference).to(dtype)
        layer = next(iter(guard.layers.values()))
        # Thresholds never lose precision: float16/bfloat16 guards keep them in float32.
        assert layer.threshold.dtype == torch.promote_types(dtype, torch.float32)
        assert torch.equal(layer.threshold.float(), thresholds)
        x = case.images(6, dtype=dtype)
        try:
            got = guard(x)
        except InputDTypeError as error:  # PyTorch lacks a kernel for it on this device
            assert "guard.float()" in str(error)
            return
        want = reference(x.float())
        assert got.logits.dtype == dtype and got.logits.shape == want.logits.shape
        if case.layer.kind is not LayerKind.REFORM:  # a reformer's logits may show a tie
            assert torch.equal(got.labels, got.logits.argmax(1))
        assert all(s.is_floating_point() for s in got.scores.values())
        # Layers that read the label score another image where rounding flipped a label.
        same = got.labels == want.labels
        assert int(same.sum()) >= 4
        tolerance = DTYPE_TOLERANCE[dtype]  # relative to each score's magnitude
        assert list(got.scores) == list(want.scores)
        for key, expected in want.scores.items():
            torch.testing.assert_close(
                got.scores[key][same].float(),
                expected[same],
                rtol=tolerance,
                atol=tolerance * float(expected.abs().max()),
                msg=lambda m, k=key: f"{k}: {m}",
            )
        self.assert_masks_follow_scores(guard, got)
        # Scores and calibration work in that dtype too.
        self.assert_forward_matches_exact(guard, got, guard.compute_scores(x))
        guard.calibrate(case.images(40, seed=2, dtype=dtype), target_fpr=0.2, progress=False)
        assert bool(layer.threshold.isfinite().all())

    def test_a_float32_guard_converts_floating_images_exactly(
        self, case: LayerCase, dtype: torch.dtype
    ) -> None:
        guard = case.guard()
        self.calibrate_at_median(guard, case.images(20, seed=1))
        x = case.images(4, dtype=dtype)
        got, want = guard(x), guard(x.float())
        assert got.logits.dtype == torch.float32
        assert torch.equal(got.logits, want.logits) and torch.equal(got.labels, want.labels)
        assert torch.equal(got.rejected, want.rejected)
        self.assert_scores_close(got.scores, want.scores, atol=0)

    @pytest.mark.parametrize(
        ("refused", "fix"),
        [
            pytest.param(torch.uint8, r"images\.float\(\) / 255", id="uint8"),
            pytest.param(torch.int64, r"images\.float\(\) / 255", id="int64"),
            pytest.param(torch.bool, r"images\.float\(\)$", id="bool"),
            pytest.param(
                torch.float8_e4m3fn,
                r"images\.float\(\) \(accepted dtypes: float16, bfloat16",
                id="float8",
            ),
        ],
    )
    def test_a_guard_refuses_other_dtypes_naming_the_fix(
        self, case: LayerCase, refused: torch.dtype, fix: str
    ) -> None:
        guard = case.guard()
        self.calibrate_at_median(guard, case.images(20, seed=1))
        x = case.images(2)
        bad = x.to(refused) if refused.is_floating_point else (x * 255).to(refused)
        with pytest.raises(InputDTypeError, match=fix):
            guard(bad)
        with pytest.raises(InputDTypeError, match=fix):
            guard.compute_scores(bad)

    def test_to_moves_every_tensor_and_inputs_must_follow(self, case: LayerCase) -> None:
        guard = case.guard()
        self.calibrate_at_median(guard, case.images(20, seed=1))
        threshold = case.layer.threshold.clone()
        guard.to("meta")
        tensors = [*case.layer.parameters(), *case.layer.buffers()]
        assert tensors and all(t.device.type == "meta" for t in tensors)
        with pytest.raises(DeviceMismatchError, match="input is on cpu but the guard is on meta"):
            guard(case.images(2))
        assert case.layer.threshold.shape == threshold.shape

    @pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
    def test_cuda_results_match_cpu(self, case: LayerCase) -> None:
        guard = case.guard()
        self.calibrate_at_median(guard, case.images(20, seed=1))
        x = case.images(6)
        want = guard(x)
        guard.to("cuda")
        got = guard(x.cuda())
        assert got.labels.device.type == "cuda"
        assert all(s.device.type == "cuda" for s in got.scores.values())
        self.assert_scores_close(got.to("cpu").scores, want.scores, atol=1e-3)

    # ------------------------------------------------------------------ modes and state
    def test_runs_in_eval_mode_and_restores_the_callers_modes(self, case: LayerCase) -> None:
        guard = case.guard()
        self.calibrate_at_median(guard, case.images(20, seed=1))
        seen: list[bool] = []

        def record(module: torch.nn.Module, args: object) -> None:
            seen.append(module.training)

        # The guard's own forward starts before it switches modes: hook what it runs.
        hooks = [m.register_forward_pre_hook(record) for m in guard.modules() if m is not guard]
        guard.train()
        submodules = list(case.layer.children()) + list(case.classifier.children())
        submodules[0].eval()  # a mixed state must come back as it was, module by module
        before = self.training_flags(guard)
        assert any(before.values()) and not all(before.values())
        x = case.images(4)
        calls: dict[str, Callable[[], object]] = {
            "forward": lambda: guard(x),
            "compute_scores": lambda: guard.compute_scores(x),
            "attack_view": lambda: guard.attack_view()(x),
        }
        for name, call in calls.items():
            seen.clear()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # non-differentiable guard
                call()
            assert seen and not any(seen), f"{name}: a module ran in training mode"
            assert self.training_flags(guard) == before, f"{name} changed the modes"
        for hook in hooks:
            hook.remove()

    def test_state_dict_round_trip_keeps_thresholds_and_scales(
        self, make_case: CaseFactory, tmp_path
    ) -> None:
        case, twin = make_case(0), make_case(1)
        layer = case.layer
        n = max(1, len(layer.score_names))
        for i, score in enumerate(layer.score_names or (None,)):
            layer.set_threshold(0.1 + i / 7, score_scale=0.5 + i, score=score)
        path = tmp_path / "layer.safetensors"
        save_file({k: v.contiguous() for k, v in layer.state_dict().items()}, str(path))
        twin.layer.load_state_dict(load_file(str(path)), strict=True)
        torch.testing.assert_close(twin.layer.threshold, layer.threshold, rtol=0, atol=0)
        torch.testing.assert_close(twin.layer.score_scale, layer.score_scale, rtol=0, atol=0)
        assert twin.layer.threshold.numel() == n
        guard, twin_guard = case.guard(), GuardedModel(case.classifier, [twin.layer])
        x = case.images(6)
        self.assert_scores_close(twin_guard.compute_scores(x), guard.compute_scores(x))

    def test_no_gradient_leaks(self, case: LayerCase) -> None:
        guard = case.guard()
        guard.calibrate(case.images(40, seed=1), target_fpr=0.2, progress=False)
        requires = {n: p.requires_grad for n, p in guard.named_parameters()}
        x = case.images(4).requires_grad_(True)
        with torch.enable_grad():
            result = guard(x)
            scores = guard.compute_scores(x)
        outputs = [result.logits, *result.scores.values(), *scores.values()]
        assert not any(t.requires_grad for t in outputs)
        assert x.grad is None
        assert all(p.grad is None for p in guard.parameters()), "a guard call left gradients"
        assert {n: p.requires_grad for n, p in guard.named_parameters()} == requires

    def test_deterministic_in_eval_mode(self, case: LayerCase) -> None:
        guard = case.guard()
        self.calibrate_at_median(guard, case.images(20, seed=1))
        x = case.images(5)
        first, second = guard(x), guard(x)
        for key in guard.score_keys:
            assert torch.equal(first.scores[key], second.scores[key]), key
        assert torch.equal(first.rejected, second.rejected)
        self.assert_forward_matches_exact(guard, first, guard.compute_scores(x))
        inputs = self.layer_input(guard, x)
        with torch.no_grad():
            assert torch.equal(case.layer(inputs).scores, case.layer(inputs).scores)

    # ------------------------------------------------------------------ input errors
    @pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
    def test_nan_and_inf_inputs_are_refused(self, case: LayerCase, value: float) -> None:
        guard = case.guard()
        bad = case.images(3)
        bad[1, 0, 2, 2] = value
        with pytest.raises(InputValueError, match="1 NaN or Inf"):
            guard.compute_scores(bad)
        with pytest.raises(InputValueError, match="NaN or Inf"):
            guard.calibrate(torch.cat([case.images(20), bad]), target_fpr=0.1, progress=False)
        self.calibrate_at_median(guard, case.images(20, seed=1))
        with pytest.raises(InputValueError, match="1 NaN or Inf"):
            guard(bad)

    # ------------------------------------------------------------------ attack view
    def test_attack_view_rejects_exactly_where_the_guard_does(self, case: LayerCase) -> None:
        guard = case.guard()
        x = case.images(32)
        self.calibrate_at_median(guard, x)
        result = guard(x)
        assert bool(result.rejected.any()) and not bool(result.rejected.all())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # non-differentiable guard
            view = guard.attack_view()
            logits = view(x)
        k = case.num_classes
        assert view.num_classes == k + 1 and logits.shape == (32, k + 1)
        assert torch.equal(logits.argmax(1) == k, result.rejected)
        accepted = ~result.rejected
        assert torch.equal(logits[accepted].argmax(1), result.labels[accepted])

    def test_attack_view_gradients_reach_the_images(self, case: LayerCase) -> None:
        layer = case.layer
        differentiable = layer.differentiable or (
            type(layer).bpda_forward is not Layer.bpda_forward
        )
        if layer.kind is not LayerKind.REFORM:  # a reform layer's scores come from the classifier
            for parameter in case.classifier.parameters():  # constant logits: no classifier grad
                torch.nn.init.zeros_(parameter)
        guard = case.guard()
        x = case.images(8)
        self.calibrate_at_median(guard, x)
        if not differentiable:
            with pytest.warns(UserWarning, match="no rejecting layer of this guard is differ"):
                guard.attack_view()
            return
        x.requires_grad_(True)
        _, margins = guard.attack_view().logits_and_margins(x)
        assert margins.shape == (8, len(guard.rejectors)) and margins.requires_grad
        guard.attack_view()(x)[:, -1].sum().backward()
        assert x.grad is not None and bool(x.grad.isfinite().all())
        assert float(x.grad.abs().sum()) > 0, "no gradient from the layer reached the images"
