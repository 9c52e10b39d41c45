"""SAECLayer: the score against a step-by-step reference, its direction, config and calibration."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import TinyClassifier

from guardnet import GuardedModel, LayerInput, SAECLayer, saec_score
from guardnet.layers.base import LayerKind


def smooth_images(n: int, channels: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Low-frequency random images: a stand-in for natural images (smooth, coloured)."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, channels, 4, 4, generator=gen)
    return torch.nn.functional.interpolate(coarse, size=size, mode="bilinear", align_corners=False)


def reference_score(image: np.ndarray, bins: int, lo: float, hi: float) -> float:
    """One image, plain NumPy: saturation map (p = 8), KV filter (valid), histogram variance."""
    x = image.astype(np.float64)
    dev = np.abs(x - x.mean(axis=0, keepdims=True))
    sat = (dev**8).sum(axis=0) ** (1 / 8)
    kv = (
        np.array(
            [
                [-1, 2, -2, 2, -1],
                [2, -6, 8, -6, 2],
                [-2, 8, -12, 8, -2],
                [2, -6, 8, -6, 2],
                [-1, 2, -2, 2, -1],
            ]
        )
        / 12.0
    )
    h, w = sat.shape
    out = np.zeros((h - 4, w - 4))
    for i in range(5):
        for j in range(5):
            out += kv[i, j] * sat[i : i + h - 4, j : j + w - 4]
    counts, _ = np.histogram(out, bins=bins, range=(lo, hi))
    return float((counts / out.size).var())


def test_matches_numpy_reference() -> None:
    images = (smooth_images(6) + 0.03 * torch.rand(6, 3, 32, 32)).clamp(0, 1)
    layer = SAECLayer(kernels="kv", bins=32, value_range=(-0.2, 0.2))
    got = layer.score_images(images)
    expected = [reference_score(img.numpy(), 32, -0.2, 0.2) for img in images]
    np.testing.assert_allclose(got.numpy(), expected, rtol=0.05, atol=1e-6)


def test_noise_lowers_the_score() -> None:
    clean = smooth_images(32)
    noisy = (clean + (torch.rand_like(clean) * 2 - 1) * 16 / 255).clamp(0, 1)
    layer = SAECLayer()
    assert bool((layer.score_images(noisy) < layer.score_images(clean)).all())
    assert SAECLayer.higher_is_suspicious is False and SAECLayer.kind is LayerKind.PRE


def test_resolution_independent_for_flat_images() -> None:
    # A constant image has an all-zero residual: all mass in the centre bin, whatever the size.
    small = saec_score(torch.full((1, 3, 16, 16), 0.3))
    large = saec_score(torch.full((1, 3, 64, 64), 0.3))
    torch.testing.assert_close(small, large)


def test_one_channel_uses_intensity() -> None:
    gray = smooth_images(4, channels=1, size=28)
    noisy = (gray + (torch.rand_like(gray) * 2 - 1) * 0.3).clamp(0, 1)
    layer = SAECLayer()
    assert bool((layer.score_images(noisy) < layer.score_images(gray)).all())


def test_multiple_kernels_and_reductions() -> None:
    # Same-size outputs ("reflect"), so each kernel's histogram covers the same pixels.
    images = smooth_images(5) + 0.01 * torch.rand(5, 3, 32, 32)
    kv = SAECLayer(kernels="kv", padding="reflect").score_images(images)
    kb = SAECLayer(kernels="kb", padding="reflect").score_images(images)
    both_min = SAECLayer(kernels=("kv", "kb"), padding="reflect").score_images(images)
    both_mean = SAECLayer(kernels=("kv", "kb"), padding="reflect", reduction="mean")
    both_mean = both_mean.score_images(images)
    torch.testing.assert_close(both_min, torch.minimum(kv, kb))
    torch.testing.assert_close(both_mean, (kv + kb) / 2)


def test_layer_protocol_and_batch_invariance() -> None:
    layer = SAECLayer()
    images = smooth_images(8)
    out = layer(LayerInput(images=images))
    assert out.scores.shape == (8,) and out.scores.dtype == torch.float32
    torch.testing.assert_close(layer.score_images(images[3:4]), out.scores[3:4])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_a_low_precision_layer_scores_exactly_like_float32(dtype: torch.dtype) -> None:
    images = smooth_images(6).to(dtype)
    want = SAECLayer().score_images(images.float())
    layer = SAECLayer().to(dtype)
    # Its kernels keep float32: rounded to float16, the KV kernel would no longer sum to 0.
    assert layer.highpass.weight.dtype == torch.float32
    assert float(layer.highpass.weight.to(dtype).double().sum(dim=(1, 2, 3)).abs().max()) > 0
    got = layer(LayerInput(images=images)).scores
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"reduction": "max"}, "reduction must be"),
        ({"padding": "zeros"}, "padding must be"),
        ({"bins": 1}, "bins must be >= 2"),
        ({"value_range": (0.5, -0.5)}, "low < high"),
        ({"kernels": "nope"}, "nope"),
    ],
)
def test_bad_config(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SAECLayer(**kwargs)


def test_config_round_trip() -> None:
    layer = SAECLayer(kernels=("kv", "kb"), bins=48, value_range=(-0.1, 0.1))
    clone = SAECLayer(**{**layer.config, "value_range": tuple(layer.config["value_range"])})
    assert clone.config == layer.config


def test_calibrate_with_noise_separates() -> None:
    layer = SAECLayer()
    stats = layer.calibrate_with_noise(smooth_images(200), amplitude=16 / 255, seed=0)
    assert stats["noisy_tpr"] - stats["clean_fpr"] > 0.9
    assert float(layer.threshold) == pytest.approx(stats["threshold"])


def test_in_a_guard_catches_noise_at_calibrated_fpr() -> None:
    guard = GuardedModel(TinyClassifier(), [SAECLayer()], num_classes=10)
    report = guard.calibrate(smooth_images(500, seed=1), target_fpr=0.05, progress=False)
    assert report.overall_fpr <= 0.05
    clean = smooth_images(200, seed=2)
    noisy = (clean + (torch.rand_like(clean) * 2 - 1) * 16 / 255).clamp(0, 1)
    assert float(guard(noisy).rejected.float().mean()) > 0.95
    assert float(guard(clean).rejected.float().mean()) < 0.12
