"""Tests of guardnet.ops against plain per-image NumPy references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor

from guardnet.errors import InputDTypeError, InputShapeError
from guardnet.ops import (
    SRM_KERNELS,
    BatchedHistogram,
    HighPassFilter,
    PseudoSaturationMap,
    batched_histogram,
    highpass_filter,
    histogram_variance,
    pseudo_saturation_map,
    soft_histogram,
    srm_kernel,
    straight_through_histogram,
)
from guardnet.ops.highpass import _correlate, _stack_kernels
from guardnet.ops.histogram import _bin_counts

# --------------------------------------------------------------------------- NumPy references


def np_saturation(x: np.ndarray, p: float = 8.0) -> np.ndarray:
    """Per-pixel p-norm of the deviation from the channel mean, in float64."""
    x = x.astype(np.float64)
    if x.shape[1] == 1:
        return x
    d = x - x.mean(axis=1, keepdims=True)
    return (np.abs(d) ** p).sum(axis=1, keepdims=True) ** (1.0 / p)


def np_correlate_valid(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """2-D cross-correlation of one image, 'valid' border, with explicit loops over the kernel."""
    kh, kw = kernel.shape
    out_h, out_w = img.shape[0] - kh + 1, img.shape[1] - kw + 1
    out = np.zeros((out_h, out_w), dtype=np.float64)
    for i in range(kh):
        for j in range(kw):
            out += kernel[i, j] * img[i : i + out_h, j : j + out_w]
    return out


def np_highpass(x: np.ndarray, kernel: np.ndarray, padding: str) -> np.ndarray:
    """Reference for a (B, 1, H, W) batch and one kernel: (B, H', W')."""
    kh, kw = kernel.shape
    outs = []
    for img in x[:, 0].astype(np.float64):
        if padding == "reflect":
            img = np.pad(img, ((kh // 2, kh // 2), (kw // 2, kw // 2)), mode="reflect")
        outs.append(np_correlate_valid(img, kernel))
    return np.stack(outs)


def np_histograms(
    values: np.ndarray, bins: int, lo: float, hi: float, normalize: bool
) -> np.ndarray:
    """numpy.histogram per image; NaN removed explicitly, normalized by the full count."""
    rows = values.reshape(values.shape[0], -1).astype(np.float64)
    out = []
    for row in rows:
        counts, _ = np.histogram(row[~np.isnan(row)], bins=bins, range=(lo, hi))
        counts = counts.astype(np.float64)
        out.append(counts / max(row.size, 1) if normalize else counts)
    return np.stack(out) if out else np.zeros((0, bins))


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


# --------------------------------------------------------------------------- saturation


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (1, 3, 5, 7), (4, 4, 3, 3), (3, 2, 1, 1)])
@pytest.mark.parametrize("p", [8.0, 2.0, 3.5])
def test_saturation_matches_numpy(shape: tuple[int, ...], p: float, gen: torch.Generator) -> None:
    x = torch.rand(shape, generator=gen)
    out = pseudo_saturation_map(x, p=p)
    assert out.shape == (shape[0], 1, *shape[2:])
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), np_saturation(x.numpy(), p), rtol=1e-5, atol=1e-7)


def test_saturation_p8_tiny_deviations_float32(gen: torch.Generator) -> None:
    # Grey base plus deviations of 1e-3 .. 1e-2: |d|^8 is 1e-24 .. 1e-16, and x_c - mean
    # cancels against ~0.5, so both the scaling and the mean must be done carefully.
    base = torch.rand(4, 1, 16, 16, generator=gen) * 0.6 + 0.2
    magnitude = 10 ** (-2.0 - torch.rand(4, 3, 16, 16, generator=gen))
    sign = torch.randint(0, 2, (4, 3, 16, 16), generator=gen) * 2 - 1
    x = (base + sign * magnitude).float()
    out = pseudo_saturation_map(x).double().numpy()
    ref = np_saturation(x.numpy())
    assert np.all(ref > 0)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_saturation_half_precision_input(dtype: torch.dtype, gen: torch.Generator) -> None:
    base = torch.full((2, 1, 8, 8), 0.5)
    x = (base + (torch.rand(2, 3, 8, 8, generator=gen) - 0.5) * 0.02).to(dtype)
    out = pseudo_saturation_map(x)
    assert out.dtype == torch.float32
    ref = np_saturation(x.float().numpy())  # the exact half values, in float64
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-5, atol=1e-12)
    # Deviations are ~1e-2, far below what (d)^8 in half precision could represent.
    assert torch.all((out > 0) == torch.from_numpy(ref > 0))


def test_saturation_zero_deviation_pixels_no_nan(gen: torch.Generator) -> None:
    x = torch.rand(3, 3, 6, 6, generator=gen)
    x[0] = 0.25  # a grey image
    x[1, :, :3] = x[1, :1, :3]  # grey rows in a colour image
    x[2] = 0.0  # black
    out = pseudo_saturation_map(x)
    assert torch.isfinite(out).all()
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    assert torch.equal(out[1, :, :3], torch.zeros_like(out[1, :, :3]))
    assert torch.equal(out[2], torch.zeros_like(out[2]))
    np.testing.assert_allclose(out.numpy(), np_saturation(x.numpy()), rtol=1e-5, atol=1e-7)


def test_saturation_autograd_matches_fast_path_and_is_finite(gen: torch.Generator) -> None:
    x = torch.rand(2, 3, 5, 5, generator=gen)
    x[0, :, 0, 0] = 0.5  # grey pixel: the root must not see 0 in the backward pass
    fast = pseudo_saturation_map(x)
    leaf = x.clone().requires_grad_(True)
    tracked = pseudo_saturation_map(leaf)
    torch.testing.assert_close(tracked.detach(), fast, rtol=1e-6, atol=1e-7)
    tracked.sum().backward()
    assert leaf.grad is not None and torch.isfinite(leaf.grad).all()
    # The input is never modified by the in-place fast path.
    assert torch.equal(leaf.detach(), x)


def test_saturation_one_channel_returns_intensity(gen: torch.Generator) -> None:
    x = torch.rand(2, 1, 4, 4, generator=gen, dtype=torch.float64)
    out = pseudo_saturation_map(x)
    assert out.dtype == torch.float32 and out.shape == (2, 1, 4, 4)
    torch.testing.assert_close(out, x.float())
    x32 = x.float()
    out32 = pseudo_saturation_map(x32)
    assert out32.data_ptr() != x32.data_ptr()  # a copy, not an alias


def test_saturation_float64_input(gen: torch.Generator) -> None:
    x = torch.rand(2, 3, 4, 4, generator=gen, dtype=torch.float64)
    out = pseudo_saturation_map(x, p=8)
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), np_saturation(x.numpy()), rtol=1e-5, atol=1e-7)


def test_saturation_empty_batch() -> None:
    assert pseudo_saturation_map(torch.rand(0, 3, 8, 8)).shape == (0, 1, 8, 8)


def test_saturation_validation() -> None:
    with pytest.raises(InputShapeError, match="rank 3"):
        pseudo_saturation_map(torch.rand(3, 4, 4))
    with pytest.raises(InputDTypeError, match="floating"):
        pseudo_saturation_map(torch.zeros(1, 3, 4, 4, dtype=torch.uint8))
    for bad in (0, -1.0, float("nan"), True):
        with pytest.raises(ValueError, match="positive"):
            pseudo_saturation_map(torch.rand(1, 3, 4, 4), p=bad)
    with pytest.raises(ValueError, match="positive"):
        PseudoSaturationMap(p=0)


def test_saturation_module(gen: torch.Generator) -> None:
    op = PseudoSaturationMap(p=4)
    assert "p=4.0" in repr(op)
    x = torch.rand(2, 3, 4, 4, generator=gen)
    torch.testing.assert_close(op(x), pseudo_saturation_map(x, p=4))
    assert op.state_dict() == {}


# --------------------------------------------------------------------------- high-pass


def test_srm_kernels_sum_to_zero_and_values() -> None:
    assert {"kv", "kb", "second_order", "second_order_v", "first_order"} <= set(SRM_KERNELS)
    for name in SRM_KERNELS:
        k = srm_kernel(name)
        assert k.dtype == torch.float32 and k.ndim == 2
        assert abs(float(k.double().sum())) < 1e-6, name
        assert sum(sum(row) for row in SRM_KERNELS[name]) == pytest.approx(0.0, abs=1e-12)
    kv = srm_kernel("kv")
    assert kv.shape == (5, 5) and kv[2, 2] == pytest.approx(-1.0) and kv[0, 0] == -1 / 12
    assert srm_kernel("kb")[1, 1] == pytest.approx(-1.0)
    torch.testing.assert_close(srm_kernel("second_order_v"), srm_kernel("second_order").T)
    # Callers get a fresh tensor: modifying it does not change the table.
    srm_kernel("kb").zero_()
    assert srm_kernel("kb")[1, 1] == pytest.approx(-1.0)


def test_srm_kernel_errors() -> None:
    with pytest.raises(ValueError, match=r"unknown SRM kernel 'nope'.*'kb'.*'kv'"):
        srm_kernel("nope")
    with pytest.raises(ValueError, match="odd"):
        srm_kernel(torch.zeros(4, 4))
    with pytest.raises(ValueError, match="odd"):
        srm_kernel(torch.zeros(3, 3, 3))
    custom = torch.arange(9.0).view(3, 3)
    torch.testing.assert_close(srm_kernel(custom), custom)


@pytest.mark.parametrize("name", sorted(SRM_KERNELS))
@pytest.mark.parametrize("shape", [(3, 1, 9, 9), (1, 1, 5, 12), (2, 1, 16, 7)])
@pytest.mark.parametrize("padding", ["valid", "reflect"])
def test_highpass_matches_numpy(
    name: str, shape: tuple[int, ...], padding: str, gen: torch.Generator
) -> None:
    x = torch.rand(shape, generator=gen)
    out = highpass_filter(x, name, padding=padding)
    k = np.asarray(SRM_KERNELS[name], dtype=np.float64)
    if padding == "valid":
        assert out.shape == (shape[0], 1, shape[2] - k.shape[0] + 1, shape[3] - k.shape[1] + 1)
    else:
        assert out.shape == shape
    np.testing.assert_allclose(out[:, 0].numpy(), np_highpass(x.numpy(), k, padding), atol=1e-5)


def test_highpass_multi_kernel_equals_single_calls(gen: torch.Generator) -> None:
    x = torch.rand(3, 1, 12, 10, generator=gen)
    names = ["kv", "kb", "second_order", "second_order_v", "first_order"]
    multi = highpass_filter(x, names)
    assert multi.shape == (3, 5, 8, 6)  # every channel has the 5x5 kernel's valid size
    for i, name in enumerate(names):
        single = highpass_filter(x, name)
        crop = (single.shape[-2] - 8) // 2
        torch.testing.assert_close(
            multi[:, i : i + 1], single[..., crop : crop + 8, crop : crop + 6]
        )
    multi = highpass_filter(x, names, padding="reflect")
    assert multi.shape == (3, 5, 12, 10)
    for i, name in enumerate(names):
        single = highpass_filter(x, name, padding="reflect")
        torch.testing.assert_close(multi[:, i : i + 1], single)


def test_highpass_depthwise_and_plain_paths_agree(gen: torch.Generator) -> None:
    x = torch.rand(4, 1, 11, 9, generator=gen)
    weight = _stack_kernels(["kv", "kb", "second_order"]).float()
    torch.testing.assert_close(
        _correlate(x, weight, depthwise=True), _correlate(x, weight, depthwise=False)
    )


def test_highpass_keeps_dtype_float64(gen: torch.Generator) -> None:
    x = torch.rand(2, 1, 8, 8, generator=gen, dtype=torch.float64)
    out = highpass_filter(x, "kv", padding="reflect")
    assert out.dtype == torch.float64
    k = np.asarray(SRM_KERNELS["kv"])
    np.testing.assert_allclose(out[:, 0].numpy(), np_highpass(x.numpy(), k, "reflect"), atol=1e-12)


def test_highpass_empty_batch() -> None:
    out = highpass_filter(torch.rand(0, 1, 8, 8), ["kv", "kb"])
    assert out.shape == (0, 2, 4, 4)


def test_highpass_validation() -> None:
    with pytest.raises(InputShapeError, match=r"\(B, 1, H, W\)"):
        highpass_filter(torch.rand(2, 3, 8, 8))
    with pytest.raises(InputShapeError, match=r"\(B, 1, H, W\)"):
        highpass_filter(torch.rand(8, 8))
    with pytest.raises(InputShapeError, match="smaller than the 5x5 kernel"):
        highpass_filter(torch.rand(2, 1, 4, 8))
    with pytest.raises(InputShapeError, match="smaller"):
        highpass_filter(torch.rand(2, 1, 8, 4), padding="reflect")
    with pytest.raises(InputDTypeError):
        highpass_filter(torch.zeros(2, 1, 8, 8, dtype=torch.int64))
    with pytest.raises(ValueError, match="padding"):
        highpass_filter(torch.rand(2, 1, 8, 8), padding="same")
    with pytest.raises(ValueError, match="at least one"):
        highpass_filter(torch.rand(2, 1, 8, 8), [])


def test_highpass_module(gen: torch.Generator) -> None:
    hpf = HighPassFilter(["kv", "second_order"], padding="reflect")
    assert hpf.state_dict() == {}  # constants, not weights
    assert "kernels=(kv, second_order)" in repr(hpf) and "reflect" in repr(hpf)
    x = torch.rand(2, 1, 9, 9, generator=gen)
    torch.testing.assert_close(
        hpf(x), highpass_filter(x, ["kv", "second_order"], padding="reflect")
    )
    hpf = hpf.to(torch.float64)
    assert hpf.weight.dtype == torch.float64
    assert hpf(x.double()).dtype == torch.float64


# --------------------------------------------------------------------------- histogram


@pytest.mark.parametrize("shape", [(1, 50), (4, 1, 7, 9), (3, 2, 5, 5), (6, 1000)])
@pytest.mark.parametrize("normalize", [True, False])
def test_histogram_matches_numpy(
    shape: tuple[int, ...], normalize: bool, gen: torch.Generator
) -> None:
    # Continuous random values: hitting a bin edge exactly is practically impossible, but up to
    # one count of disagreement is allowed for values within rounding error of an edge.
    values = torch.randn(shape, generator=gen) * 0.8
    bins, lo, hi = 16, -1.5, 2.0
    out = batched_histogram(values, bins=bins, value_range=(lo, hi), normalize=normalize)
    assert out.shape == (shape[0], bins) and out.dtype == torch.float32
    ref = np_histograms(values.numpy(), bins, lo, hi, normalize)
    per_sample = values[0].numel()
    count = out.double().numpy() * (per_sample if normalize else 1)
    ref_count = ref * (per_sample if normalize else 1)
    assert np.abs(count - ref_count).max() <= 1 + 1e-6
    np.testing.assert_allclose(count.sum(axis=1), ref_count.sum(axis=1), atol=1e-4)


def test_histogram_drops_out_of_range_and_nan() -> None:
    nan, inf = float("nan"), float("inf")
    values = torch.tensor(
        [
            [0.05, 0.15, 0.15, 0.95, -0.1, 1.1, nan, inf, -inf, 0.55],
            [nan, nan, nan, nan, nan, nan, nan, nan, nan, nan],
        ]
    )
    counts = batched_histogram(values, bins=10, value_range=(0.0, 1.0), normalize=False)
    expected = torch.zeros(2, 10)
    expected[0, 0], expected[0, 1], expected[0, 5], expected[0, 9] = 1, 2, 1, 1
    torch.testing.assert_close(counts, expected)
    hist = batched_histogram(values, bins=10, value_range=(0.0, 1.0))
    torch.testing.assert_close(hist, expected / 10)  # divided by all 10 values, dropped included
    assert hist[0].sum() == pytest.approx(0.5)


def test_histogram_range_ends() -> None:
    values = torch.tensor([[0.0, 1.0, 1.0, 0.5, 0.4999], [-2.0, 3.0, 3.0, 3.0, -1.0]])
    counts = batched_histogram(values, bins=4, value_range=(0.0, 1.0), normalize=False)
    torch.testing.assert_close(counts[0], torch.tensor([1.0, 1.0, 1.0, 2.0]))  # hi -> last bin
    counts = batched_histogram(values, bins=5, value_range=(-2.0, 3.0), normalize=False)
    torch.testing.assert_close(counts[1], torch.tensor([1.0, 1.0, 0.0, 0.0, 3.0]))


def test_histogram_trailing_shape_is_flattened(gen: torch.Generator) -> None:
    values = torch.rand(3, 2, 4, 5, generator=gen)
    a = batched_histogram(values, bins=7, value_range=(0.0, 1.0))
    b = batched_histogram(values.reshape(3, -1), bins=7, value_range=(0.0, 1.0))
    torch.testing.assert_close(a, b)
    # Normalizing by the count makes the histogram resolution independent.
    big = values.repeat_interleave(2, dim=-1)
    torch.testing.assert_close(batched_histogram(big, bins=7, value_range=(0.0, 1.0)), a)


def test_histogram_float64_and_other_dtypes(gen: torch.Generator) -> None:
    values = torch.rand(4, 300, generator=gen, dtype=torch.float64) * 3 - 1
    values[0, :3] = torch.tensor([2.0, -1.0, 0.0], dtype=torch.float64)  # ends, interior edge
    out = batched_histogram(values, bins=12, value_range=(-1.0, 2.0), normalize=False)
    assert out.dtype == torch.float32
    ref = np_histograms(values.numpy(), 12, -1.0, 2.0, normalize=False)
    np.testing.assert_array_equal(out.numpy(), ref)
    half = values.half()
    out = batched_histogram(half, bins=12, value_range=(-1.0, 2.0), normalize=False)
    ref = np_histograms(half.float().numpy(), 12, -1.0, 2.0, normalize=False)
    assert np.abs(out.numpy() - ref).max() <= 1
    ints = torch.tensor([[0, 1, 2, 3, 4, 9]])
    out = batched_histogram(ints, bins=4, value_range=(0, 4), normalize=False)
    torch.testing.assert_close(out, torch.tensor([[1.0, 1.0, 1.0, 2.0]]))


def test_histogram_empty_inputs() -> None:
    out = batched_histogram(torch.rand(0, 3, 8, 8), bins=5, value_range=(0.0, 1.0))
    assert out.shape == (0, 5) and out.dtype == torch.float32
    out = batched_histogram(torch.rand(2, 0), bins=5, value_range=(0.0, 1.0))
    torch.testing.assert_close(out, torch.zeros(2, 5))  # no values: zeros, not NaN
    out = batched_histogram(torch.rand(4), bins=3, value_range=(0.0, 1.0))  # rank 1: scalars
    assert out.shape == (4, 3) and torch.equal(out.sum(dim=1), torch.ones(4))


def test_histogram_validation() -> None:
    x = torch.rand(2, 10)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="bins must be an integer >= 1"):
            batched_histogram(x, bins=bad, value_range=(0.0, 1.0))
    for bad_range in ((1.0, 1.0), (1.0, 0.0), (0.0, float("inf")), (float("nan"), 1.0)):
        with pytest.raises(ValueError, match="lo < hi"):
            batched_histogram(x, bins=4, value_range=bad_range)
    with pytest.raises(ValueError, match="too wide or too narrow"):
        batched_histogram(x, bins=4, value_range=(0.0, 1e-320))
    with pytest.raises(ValueError, match="too wide or too narrow"):
        batched_histogram(x, bins=4, value_range=(-1e308, 1e308))
    with pytest.raises(InputDTypeError, match="real"):
        batched_histogram(torch.zeros(2, 3, dtype=torch.complex64), bins=4, value_range=(0, 1))
    with pytest.raises(ValueError, match="pair"):
        batched_histogram(x, bins=4, value_range=(0.0,))  # type: ignore[arg-type]
    with pytest.raises(InputShapeError, match="0-d"):
        batched_histogram(torch.tensor(0.5), bins=4, value_range=(0.0, 1.0))
    with pytest.raises(ValueError, match="bins"):
        BatchedHistogram(bins=0, value_range=(0.0, 1.0))


def test_bin_counts_paths_agree(gen: torch.Generator) -> None:
    index = torch.randint(0, 37, (5000,), generator=gen)
    for dtype in (torch.int32, torch.int64):
        a = _bin_counts(index.to(dtype), 40, use_bincount=True)
        b = _bin_counts(index.to(dtype), 40, use_bincount=False)
        assert a.dtype == b.dtype == torch.float32
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(a, torch.bincount(index, minlength=40).float())


def test_histogram_variance(gen: torch.Generator) -> None:
    hist = torch.rand(5, 9, generator=gen)
    np.testing.assert_allclose(
        histogram_variance(hist).numpy(), hist.numpy().var(axis=1), rtol=1e-5
    )
    torch.testing.assert_close(
        histogram_variance(torch.tensor([[0.5, 0.5], [1.0, 0.0]])), torch.tensor([0.0, 0.25])
    )
    assert histogram_variance(torch.zeros(0, 4)).shape == (0,)
    with pytest.raises(InputShapeError):
        histogram_variance(torch.rand(4))
    with pytest.raises(InputShapeError):
        histogram_variance(torch.rand(4, 0))


def test_histogram_module(gen: torch.Generator) -> None:
    op = BatchedHistogram(bins=6, value_range=(-1, 1), normalize=False)
    assert "bins=6" in repr(op) and "(-1.0, 1.0)" in repr(op)
    x = torch.randn(3, 1, 5, 5, generator=gen)
    torch.testing.assert_close(
        op(x), batched_histogram(x, bins=6, value_range=(-1.0, 1.0), normalize=False)
    )


# --------------------------------------------------------------------------- pipeline


def test_soft_histogram_hand_computed_and_mass() -> None:
    values = torch.tensor([[0.25, 0.5, 0.75, 0.0, 2.0, float("nan")]])
    # Centres at 0.25 and 0.75: 0.25 and 0.75 are whole, 0.5 splits in half, 0.0 keeps only
    # its inner half (the other half falls off the end), 2.0 and NaN are outside.
    soft = soft_histogram(values, bins=2, value_range=(0.0, 1.0), normalize=False)
    torch.testing.assert_close(soft, torch.tensor([[2.0, 1.5]]))


def test_soft_histogram_gradient_matches_finite_differences(gen: torch.Generator) -> None:
    values = (torch.rand(2, 50, generator=gen, dtype=torch.float64) * 0.8 + 0.1).requires_grad_()
    weights = torch.rand(2, 8, generator=gen, dtype=torch.float64)

    def objective(v: Tensor) -> Tensor:
        return (soft_histogram(v, bins=8, value_range=(0.0, 1.0)) * weights).sum()

    assert torch.autograd.gradcheck(objective, (values,))


def test_straight_through_histogram_values_exact_gradient_soft(gen: torch.Generator) -> None:
    values = torch.randn(3, 200, generator=gen).mul(0.01).requires_grad_()
    kwargs = {"bins": 32, "value_range": (-0.02, 0.02)}
    st = straight_through_histogram(values, **kwargs)
    torch.testing.assert_close(st.detach(), batched_histogram(values.detach(), **kwargs))
    weights = torch.rand(3, 32, generator=gen)  # a linear read-out: same backward for both
    (st * weights).sum().backward()
    grad_st = values.grad.clone()
    values.grad = None
    (soft_histogram(values, **kwargs) * weights).sum().backward()
    torch.testing.assert_close(grad_st, values.grad)
    assert bool(grad_st.abs().sum() > 0)


def test_soft_histogram_rejects_integers() -> None:
    with pytest.raises(InputDTypeError, match="floating"):
        soft_histogram(torch.zeros(2, 3, dtype=torch.long), bins=2, value_range=(0.0, 1.0))


def test_saec_pipeline_empty_batch() -> None:
    sat = pseudo_saturation_map(torch.rand(0, 3, 8, 8))
    hist = batched_histogram(highpass_filter(sat), bins=8, value_range=(-1.0, 1.0))
    assert hist.shape == (0, 8) and histogram_variance(hist).shape == (0,)


def test_saec_pipeline_matches_numpy(gen: torch.Generator) -> None:
    x = torch.rand(3, 3, 12, 12, generator=gen)
    bins, lo, hi = 20, -0.5, 0.5
    sat = pseudo_saturation_map(x)
    residual = highpass_filter(sat, "kv")
    score = histogram_variance(batched_histogram(residual, bins=bins, value_range=(lo, hi)))
    assert score.shape == (3,)

    ref_res = np_highpass(np_saturation(x.numpy()), np.asarray(SRM_KERNELS["kv"]), "valid")
    np.testing.assert_allclose(residual[:, 0].numpy(), ref_res, atol=1e-5)
    ref_score = np_histograms(residual.numpy(), bins, lo, hi, normalize=True).var(axis=1)
    np.testing.assert_allclose(score.numpy(), ref_score, rtol=1e-5, atol=1e-9)
