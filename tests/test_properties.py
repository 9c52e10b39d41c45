"""Property-based tests (hypothesis) of ``GuardedModel`` and of every layer class.

Inputs vary in rank, channel count, image size, dtype, content, NaN/Inf and out-of-range values
at drawn positions, and batch size; guards vary in chunk size (``max_batch_size``), cascade and
fail-closed. Every outcome must be a correct result (shapes, dtypes, labels in range, boolean
masks that follow the scores and thresholds, scores as a plain float32 guard computes them) or
the :class:`~guardnet.errors.GuardnetError` the input calls for, never another exception.

The layer classes and their small instances come from the contract suite
(``test_layer_contract.CONTRACT_FACTORIES``), so a new layer is covered once it has a factory
there. The default profile runs a few examples, the same on every run; ``HYPOTHESIS_PROFILE=
thorough pytest tests/test_properties.py`` draws many fresh ones (see ``conftest.py``).
"""

from __future__ import annotations

import pytest
import torch
from contract import BaseLayerTester, LayerCase
from helpers import FailingLayer
from hypothesis import event, given
from hypothesis import strategies as st
from test_layer_contract import CONTRACT_FACTORIES, LAYER_CLASSES
from torch import Tensor

from guardnet import GuardedModel, GuardResult
from guardnet.errors import (
    GuardnetError,
    InputDTypeError,
    InputRangeError,
    InputShapeError,
    InputValueError,
)
from guardnet.layers.base import LayerInput, LayerKind, score_keys
from guardnet.validation import FLOAT_DTYPES, RANGE_TOLERANCE

#: Values planted at drawn positions: not finite or out of range...
PLANTED = (float("nan"), float("inf"), float("-inf"), -0.5, 1.5, 255.0)
#: ... or off [0, 1] by less than the tolerance (valid).
TOLERATED = (-1e-7, 1 + 1e-7)
#: Dtypes guardnet refuses for images.
REFUSED_DTYPES = (torch.uint8, torch.int64, torch.bool, torch.complex64, torch.float8_e4m3fn)
#: What can be wrong with a batch; a drawn batch has none (about a third of them), one or two.
FAULTS = ("rank", "dtype", "channels", "values")


@pytest.fixture(scope="module", params=LAYER_CLASSES, ids=lambda cls: cls.__name__)
def calibrated(request: pytest.FixtureRequest) -> LayerCase:
    """A small instance of the layer class (eval mode), thresholds at the median of its scores."""
    case = CONTRACT_FACTORIES[request.param](0)
    case.classifier.eval()
    case.layer.eval()
    guard = case.guard(in_channels=case.image_shape[0])
    BaseLayerTester.calibrate_at_median(guard, case.images(20, seed=1))
    return case


def guard_of(case: LayerCase, **options: object) -> GuardedModel:
    """The case's guard, with the channel check at the boundary."""
    return case.guard(in_channels=case.image_shape[0], **options)


@st.composite
def unit_images(draw: st.DrawFn, shape: tuple[int, ...]) -> Tensor:
    """float64 images of ``shape`` in [0, 1]: uniform noise, black and white, or one grey."""
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    kind = draw(st.sampled_from(["uniform", "binary", "constant"]))
    x = torch.rand(shape, generator=generator, dtype=torch.float64)
    if kind == "binary":
        return (x > 0.5).double()
    if kind == "constant":
        return torch.full(shape, draw(st.sampled_from([0.0, 0.5, 1.0])), dtype=torch.float64)
    return x


def batch_sizes() -> st.SearchStrategy[int]:
    """1 to 5 images, or none."""
    return st.one_of(st.integers(1, 5), st.just(0))


def sides(own: int) -> st.SearchStrategy[int]:
    """An image side: mostly the layer's own, else anything from 1 to 36 pixels."""
    return st.one_of(st.just(own), st.integers(1, 36))


@st.composite
def image_batches(draw: st.DrawFn, image_shape: tuple[int, int, int]) -> Tensor:
    """Anything a caller might pass as images, valid or not."""
    faults = {
        draw(st.sampled_from((None, None, None, *FAULTS))),
        draw(st.sampled_from((None, None, None, None, None, *FAULTS))),
    }
    event(f"faults: {sorted(f for f in faults if f)}")
    channels, height, width = image_shape
    if "channels" in faults:
        channels = draw(st.sampled_from([c for c in (1, 2, 3, 4) if c != channels]))
    shape: tuple[int, ...] = (
        draw(batch_sizes()),
        channels,
        draw(sides(height)),
        draw(sides(width)),
    )
    if "rank" in faults:
        shape = draw(st.sampled_from([shape[1:], (*shape[:1], 1, *shape[1:])]))
    x = draw(unit_images(shape))
    planted = draw(st.lists(st.sampled_from(TOLERATED), max_size=2))
    if "values" in faults:
        planted += draw(st.lists(st.sampled_from(PLANTED), min_size=1, max_size=2))
    positions = draw(st.lists(st.integers(0, 2**20), min_size=len(planted), max_size=len(planted)))
    for position, value in zip(positions, planted, strict=True) if x.numel() else ():
        x.view(-1)[position % x.numel()] = value
    dtype = draw(st.sampled_from(REFUSED_DTYPES if "dtype" in faults else FLOAT_DTYPES))
    if dtype == torch.bool:
        return x > 0.5
    if not (dtype.is_floating_point or dtype.is_complex):
        return (x.nan_to_num(0.0, 1.0, 0.0).clamp(0, 1) * 255).to(dtype)
    return x.to(dtype)


def expected_error(x: Tensor, channels: int) -> type[GuardnetError] | None:
    """The error the guard's boundary checks owe ``x``, in their order; ``None``: valid."""
    if x.ndim != 4:
        return InputShapeError
    if x.dtype not in FLOAT_DTYPES:
        return InputDTypeError
    if x.shape[1] != channels:
        return InputShapeError
    values = x.double()
    if not bool(values.isfinite().all()):
        return InputValueError
    if bool(((values < -RANGE_TOLERANCE) | (values > 1 + RANGE_TOLERANCE)).any()):
        return InputRangeError
    return None


def assert_correct_result(
    guard: GuardedModel, result: GuardResult, batch: int, num_classes: int
) -> None:
    """Shapes, dtypes, ranges and the consistency of masks, scores and errors."""
    assert len(result) == batch
    for labels in (result.labels, result.classifier_labels):
        assert labels.shape == (batch,) and labels.dtype == torch.long
        assert bool(((labels >= 0) & (labels < num_classes)).all())
    assert result.logits.shape == (batch, num_classes)
    assert result.logits.dtype == torch.float32 and bool(result.logits.isfinite().all())
    if not any(layer.kind is LayerKind.REFORM for layer in guard.layers.values()):
        assert torch.equal(result.labels, result.logits.argmax(1))
    assert result.rejected.shape == (batch,) and result.rejected.dtype == torch.bool
    keys = guard.score_keys
    assert list(result.scores) == list(result.layer_rejected) == list(result.computed) == keys
    for key in keys:
        score, mask, ran = result.scores[key], result.layer_rejected[key], result.computed[key]
        assert score.shape == mask.shape == ran.shape == (batch,)
        assert score.is_floating_point() and mask.dtype == ran.dtype == torch.bool
        assert bool(score[ran].isfinite().all()), f"{key}: a score that ran is not finite"
        assert bool(score[~ran].isnan().all()), f"{key}: a score that did not run is not NaN"
    assert keys, "every guard here has a rejecting layer"
    assert torch.equal(
        result.rejected, torch.stack([result.layer_rejected[k] for k in keys]).any(0)
    )
    assert set(result.errors) <= set(guard.layers)
    if not guard.fail_closed:
        assert result.errors == {}
    for name, layer in guard.layers.items():
        for key in score_keys(name, layer):  # type: ignore[arg-type]
            refused = result.layer_rejected[key] & ~result.computed[key]
            # Only rows a failed layer did not score are rejected without a score.
            assert not bool(refused.any()) or name in result.errors, key
            if not guard.cascade and name not in result.errors:
                assert bool(result.computed[key].all()), key
    BaseLayerTester.assert_masks_follow_scores(guard, result, skip=result.errors)


@given(data=st.data())
def test_a_guard_gives_a_correct_result_or_the_right_error(
    calibrated: LayerCase, data: st.DataObject
) -> None:
    case = calibrated
    channels = case.image_shape[0]
    x = data.draw(image_batches(case.image_shape), label="images")
    options = data.draw(
        st.fixed_dictionaries(
            {
                "max_batch_size": st.sampled_from([None, 1, 2, 3]),
                "cascade": st.booleans(),
                "fail_closed": st.booleans(),
            }
        ),
        label="options",
    )
    guard = guard_of(case, **options)
    expected = expected_error(x, channels)
    own_size = x.ndim == 4 and tuple(x.shape[2:]) == case.image_shape[1:]
    try:
        result = guard(x)
    except GuardnetError as error:
        event(f"raised {type(error).__name__}")  # --hypothesis-show-statistics
        if expected is not None:
            assert isinstance(error, expected), f"expected {expected.__name__}, got {error!r}"
            return
        # A layer may refuse a valid input it cannot score (smaller than SAEC's kernel), but
        # not at its own image size, and a fail-closed guard reports it instead.
        assert not own_size, f"refused an image of the layer's own size: {error!r}"
        assert not options["fail_closed"], f"a fail-closed guard raised {error!r}"
        return
    assert expected is None, f"{expected.__name__} expected, got a result"
    event("result with errors" if result.errors else "result")
    assert_correct_result(guard, result, x.shape[0], case.num_classes)
    if own_size:
        assert result.errors == {}
    if result.errors:
        return
    # The same images through a plain guard, converted by hand: the same labels and scores.
    want = guard_of(case)(x.float())
    assert torch.equal(result.labels, want.labels)
    for key, score in want.scores.items():
        ran = result.computed[key]
        torch.testing.assert_close(score[ran], result.scores[key][ran], atol=1e-5, rtol=1e-4)


@given(data=st.data())
def test_a_layer_scores_every_batch_and_dtype_or_refuses_clearly(
    calibrated: LayerCase, data: st.DataObject
) -> None:
    case, layer = calibrated, calibrated.layer
    channels, height, width = case.image_shape
    shape = (
        data.draw(batch_sizes()),
        channels,
        data.draw(sides(height)),
        data.draw(sides(width)),
    )
    images = data.draw(unit_images(shape), label="images")
    dtype = data.draw(st.sampled_from(FLOAT_DTYPES), label="dtype")
    x = images.to(dtype)
    labels = torch.tensor(
        data.draw(
            st.lists(st.integers(0, case.num_classes - 1), min_size=shape[0], max_size=shape[0])
        ),
        dtype=torch.long,
    )

    def layer_input(images: Tensor) -> LayerInput:
        if layer.kind is LayerKind.PRE:
            return LayerInput(images=images)
        with torch.no_grad():
            logits = case.classifier(x.float())
        return LayerInput(images=images, logits=logits, labels=labels, classifier=case.classifier)

    try:
        with torch.no_grad():
            scores = layer(layer_input(x)).scores
    except GuardnetError as error:
        assert shape[2:] != case.image_shape[1:], f"refused its own image size: {error!r}"
        return
    expected = (shape[0], len(layer.score_names)) if layer.score_names else (shape[0],)
    assert scores.shape == expected and scores.is_floating_point()
    assert bool(scores.isfinite().all())
    with torch.no_grad():
        want = layer(layer_input(x.float())).scores
    torch.testing.assert_close(scores.to(want.dtype), want, atol=1e-5, rtol=1e-5)


@given(data=st.data())
def test_fail_closed_rejects_exactly_the_chunks_a_layer_failed_on(
    calibrated: LayerCase, data: st.DataObject
) -> None:
    case, layer = calibrated, calibrated.layer
    batch = data.draw(st.integers(1, 7), label="batch")
    failing_rows = data.draw(st.sets(st.integers(0, batch - 1)), label="failing rows")
    chunk = data.draw(st.sampled_from([None, 1, 2, 3]), label="max_batch_size")
    cascade = data.draw(st.booleans(), label="cascade")
    x = case.images(batch, seed=data.draw(st.integers(0, 2**16)))
    x[:, 0, 0, 0] = 0.2
    x[sorted(failing_rows), 0, 0, 0] = 0.95  # FailingLayer raises on a chunk holding one

    failing = FailingLayer()
    failing.set_threshold(0.5)
    guard = GuardedModel(
        case.classifier,
        {"failing": failing, "layer": layer},
        num_classes=case.num_classes,
        max_batch_size=chunk,
        cascade=cascade,
        fail_closed=True,
    )
    result = guard(x)
    size = chunk or batch
    in_failed_chunk = torch.tensor(
        [any(r // size == i // size for r in failing_rows) for i in range(batch)]
    )
    assert torch.equal(result.layer_rejected["failing"], in_failed_chunk)
    assert torch.equal(result.computed["failing"], ~in_failed_chunk)
    assert bool(result.rejected[in_failed_chunk].all())
    assert list(result.errors) == (["failing"] if failing_rows else [])
    assert_correct_result(guard, result, batch, case.num_classes)
    for key in score_keys("layer", layer):
        # A cascade skips the rows the failed layer rejected; without one, the layer scores all.
        ran = result.computed[key]
        assert torch.equal(ran, ~in_failed_chunk) if cascade else bool(ran.all())
    keep = (~in_failed_chunk).nonzero().squeeze(1)
    if keep.numel() == 0:
        return
    # The other rows get what the layer's guard alone gives them.
    want = guard_of(case)(x[keep])
    for key in score_keys("layer", layer):
        torch.testing.assert_close(
            result.scores[key][keep],
            want.scores[key.replace("layer", layer.default_name, 1)],
            atol=1e-5,
            rtol=1e-4,
        )
    assert torch.equal(result.labels[keep], want.labels)
