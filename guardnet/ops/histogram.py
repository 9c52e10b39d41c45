"""Batched per-image histograms and the histogram-variance score of the SAEC detector."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from guardnet.errors import InputDTypeError, InputShapeError

__all__ = [
    "BatchedHistogram",
    "batched_histogram",
    "histogram_variance",
    "soft_histogram",
    "straight_through_histogram",
]


def _check_hist_args(bins: int, value_range: tuple[float, float]) -> tuple[float, float]:
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be an integer >= 1, got {bins!r}")
    try:
        lo, hi = (float(v) for v in value_range)
    except (TypeError, ValueError):
        raise ValueError(f"value_range must be a pair (lo, hi), got {value_range!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"value_range must be finite with lo < hi, got ({lo}, {hi})")
    # The bin index is (v - lo) * bins / (hi - lo): both factors must be finite numbers.
    if not (math.isfinite(hi - lo) and math.isfinite(bins / (hi - lo))):
        raise ValueError(f"value_range ({lo}, {hi}) is too wide or too narrow for {bins} bins")
    return lo, hi


def _bin_counts(index: Tensor, size: int, *, use_bincount: bool) -> Tensor:
    """Count occurrences of each value of a flat integer ``index`` in ``[0, size)``, as float32."""
    if use_bincount:
        # bincount is one tight loop on the CPU; on CUDA it reads max() back to the host.
        return torch.bincount(index, minlength=size).to(torch.float32)
    # index_add_ with a broadcast source never syncs and uses atomics on accelerators.
    ones = torch.ones((), dtype=torch.float32, device=index.device).expand(index.numel())
    return torch.zeros(size, dtype=torch.float32, device=index.device).index_add_(0, index, ones)


def batched_histogram(
    values: Tensor,
    *,
    bins: int,
    value_range: tuple[float, float],
    normalize: bool = True,
) -> Tensor:
    r"""Histogram every sample of a batch in one pass.

    The ``bins`` bins are equally wide over ``[lo, hi]``; each bin is half-open except the last,
    which also holds ``hi`` (as in :func:`numpy.histogram`). Values outside ``[lo, hi]`` and NaN
    are not counted. Bin indices come from ``floor((v - lo) * bins / (hi - lo))`` (computed as
    ``v * s + (1 - lo * s)``, one fused pass), so a value
    within rounding error of an interior edge may land on either side of it.

    With ``normalize=True`` the counts are divided by the total number of values per sample,
    dropped ones included: the result does not depend on the resolution, and it sums to less
    than 1 when values were dropped.

    Args:
        values: a batch of any real dtype; everything after the batch dimension is flattened.
        bins: number of bins, ``>= 1``.
        value_range: ``(lo, hi)``, finite, ``lo < hi``.
        normalize: divide by the number of values per sample instead of returning counts.

    Returns:
        The histograms, float32 (counts stay exact up to 2**24 per bin).

    Raises:
        InputShapeError: if ``values`` is a 0-d tensor.
        InputDTypeError: if ``values`` is not a real tensor.
        ValueError: if ``bins < 1`` or ``value_range`` is not a finite pair with ``lo < hi``.

    Shape:
        - Input: :math:`(B, *)`
        - Output: :math:`(B, \text{bins})`

    Example:
        >>> v = torch.tensor([[0.1, 0.6, 1.0, 2.0]])
        >>> batched_histogram(v, bins=2, value_range=(0.0, 1.0))
        tensor([[0.2500, 0.5000]])
    """
    lo, hi = _check_hist_args(bins, value_range)
    if not isinstance(values, Tensor):
        raise InputDTypeError(f"values must be a torch.Tensor, got {type(values).__name__}")
    if values.ndim < 1:
        raise InputShapeError("values must have a batch dimension, got a 0-d tensor")
    if values.is_complex():
        raise InputDTypeError(f"values must be real, got dtype {values.dtype}")

    batch = values.shape[0]
    # float64 keeps its precision; everything else (half, bfloat16, integers) is binned in
    # float32 so that (v - lo) * scale is not rounded to a coarse grid.
    work_dtype = torch.float64 if values.dtype == torch.float64 else torch.float32
    per_sample = math.prod(values.shape[1:])
    flat = values.reshape(batch, per_sample).to(work_dtype)

    # Shifted bin index q = (v - lo) * bins / (hi - lo) + 1, so that after clamping to
    # [0, bins + 1] and truncating, 0 collects everything below lo and bins + 1 everything
    # above hi: two "trash" counters per sample and no select pass over the values (this op is
    # memory-bound, bincount aside, so each pass counts). NaN goes to the low trash counter;
    # v == hi is put in the last bin explicitly (numpy's closed last bin).
    scale = bins / (hi - lo)
    pos = flat.mul(scale).add_(1.0 - lo * scale).nan_to_num_(nan=0.0, posinf=bins + 1.0)
    pos = pos.clamp_(0.0, bins + 1.0).masked_fill_(flat == hi, float(bins))
    stride = bins + 2
    size = batch * stride
    # int32 indices halve the memory traffic of the int64 default and are accepted by bincount
    # and index_add_; int64 only when the counters would not fit.
    index_dtype = torch.int32 if size <= torch.iinfo(torch.int32).max else torch.int64
    offsets = torch.arange(0, size, stride, dtype=index_dtype, device=values.device)
    index = pos.to(index_dtype).add_(offsets.unsqueeze_(1)).view(-1)

    counts = _bin_counts(index, size, use_bincount=index.device.type == "cpu")
    hist = counts.view(batch, stride)[:, 1 : bins + 1]
    if normalize:
        # max(., 1) only matters for samples with no values at all: they give zeros, not NaN.
        return hist / max(per_sample, 1)
    return hist.contiguous()


def soft_histogram(
    values: Tensor,
    *,
    bins: int,
    value_range: tuple[float, float],
    normalize: bool = True,
) -> Tensor:
    r"""A differentiable histogram: each value is shared linearly between its two nearest bins.

    A value at the centre of a bin counts fully there; between two centres it is split in
    proportion to its distance, so the counts are piecewise linear in the values and have a
    gradient. Values outside ``[lo, hi]`` (and NaN) are not counted, as in
    :func:`batched_histogram`, and the half-bins at both ends lose the share that would fall
    outside. It is a smoothed version of the exact histogram, used as the backward pass of
    :func:`straight_through_histogram` (BPDA attacks on SAEC).

    Args:
        values: a real floating batch; everything after the batch dimension is flattened.
        bins: number of bins, ``>= 1``.
        value_range: ``(lo, hi)``, finite, ``lo < hi``.
        normalize: divide by the number of values per sample.

    Returns:
        The soft histograms in the dtype of ``values`` (float32 for half types).

    Shape:
        - Input: :math:`(B, *)`
        - Output: :math:`(B, \text{bins})`

    Example:
        >>> soft_histogram(torch.tensor([[0.25, 0.5]]), bins=2, value_range=(0.0, 1.0))
        tensor([[0.7500, 0.2500]])
    """
    lo, hi = _check_hist_args(bins, value_range)
    if not isinstance(values, Tensor) or not values.is_floating_point():
        raise InputDTypeError("soft_histogram needs a real floating-point tensor")
    if values.ndim < 1:
        raise InputShapeError("values must have a batch dimension, got a 0-d tensor")
    batch = values.shape[0]
    per_sample = math.prod(values.shape[1:])
    work_dtype = torch.float64 if values.dtype == torch.float64 else torch.float32
    flat = values.reshape(batch, per_sample).to(work_dtype)
    inside = (flat >= lo) & (flat <= hi)
    # Position in units of bins, bin centres at integers: value v lies between centre
    # floor(u) and floor(u) + 1 with weights (1 - frac, frac).
    u = (flat.nan_to_num(nan=lo - 1.0) - lo) * (bins / (hi - lo)) - 0.5
    left = u.detach().floor()
    frac = u - left
    zero = flat.new_zeros(())
    # Columns 0 and bins + 1 collect the shares that fall off the ends; they are dropped.
    left_col = left.clamp(-1, bins).to(torch.int64) + 1
    right_col = (left_col + 1).clamp(max=bins + 1)
    hist = flat.new_zeros(batch, bins + 2)
    hist = hist.scatter_add(1, left_col, torch.where(inside, 1.0 - frac, zero))
    hist = hist.scatter_add(1, right_col, torch.where(inside, frac, zero))
    hist = hist[:, 1 : bins + 1]
    return hist / max(per_sample, 1) if normalize else hist


def straight_through_histogram(
    values: Tensor,
    *,
    bins: int,
    value_range: tuple[float, float],
    normalize: bool = True,
) -> Tensor:
    """The exact histogram forward, the gradient of :func:`soft_histogram` backward.

    The straight-through / BPDA estimate (Athalye et al., "Obfuscated Gradients Give a False
    Sense of Security", ICML 2018) that lets gradient attacks see through the histogram of
    :class:`guardnet.SAECLayer`: values are those of :func:`batched_histogram`.

    Example:
        >>> v = torch.tensor([[0.1, 0.6]], requires_grad=True)
        >>> h = straight_through_histogram(v, bins=2, value_range=(0.0, 1.0))
        >>> h.detach().tolist(), h.requires_grad
        ([[0.5, 0.5]], True)
    """
    hard = batched_histogram(
        values.detach(), bins=bins, value_range=value_range, normalize=normalize
    )
    soft = soft_histogram(values, bins=bins, value_range=value_range, normalize=normalize)
    return hard.to(soft.dtype) + (soft - soft.detach())


def histogram_variance(hist: Tensor) -> Tensor:
    r"""Population variance across the bins of each histogram (the SAEC score).

    Args:
        hist: a batch of histograms, usually from :func:`batched_histogram` with
            ``normalize=True``.

    Returns:
        The variance over bins (``correction=0``), in the dtype of ``hist`` (float32 for integer
        counts).

    Raises:
        InputShapeError: if ``hist`` is not ``(B, bins)`` with ``bins >= 1``.

    Shape:
        - Input: :math:`(B, \text{bins})`
        - Output: :math:`(B,)`

    Example:
        >>> histogram_variance(torch.tensor([[0.5, 0.5], [1.0, 0.0]]))
        tensor([0.0000, 0.2500])
    """
    if not isinstance(hist, Tensor):
        raise InputDTypeError(f"hist must be a torch.Tensor, got {type(hist).__name__}")
    if hist.ndim != 2 or hist.shape[1] < 1:
        raise InputShapeError(
            f"hist must have shape (B, bins) with bins >= 1, got {tuple(hist.shape)}"
        )
    if not hist.is_floating_point():
        hist = hist.to(torch.float32)
    # The two-pass formula is exact enough for histograms and several times faster than
    # torch.var on the CPU for (B, bins) shapes; it also gives (0,) for an empty batch.
    return (hist - hist.mean(dim=1, keepdim=True)).square().mean(dim=1)


class BatchedHistogram(nn.Module):
    r"""Module form of :func:`batched_histogram`.

    Args:
        bins: number of bins, ``>= 1``.
        value_range: ``(lo, hi)``, finite, ``lo < hi``.
        normalize: divide by the number of values per sample.

    Shape:
        - Input: :math:`(B, *)`
        - Output: :math:`(B, \text{bins})`, float32

    Example:
        >>> hist = BatchedHistogram(bins=4, value_range=(-1.0, 1.0))
        >>> hist(torch.zeros(3, 1, 8, 8)).shape
        torch.Size([3, 4])
    """

    def __init__(
        self, bins: int, value_range: tuple[float, float], *, normalize: bool = True
    ) -> None:
        super().__init__()
        self.bins = bins
        self.value_range = _check_hist_args(bins, value_range)
        self.normalize = normalize

    def extra_repr(self) -> str:
        return f"bins={self.bins}, value_range={self.value_range}, normalize={self.normalize}"

    def forward(self, values: Tensor) -> Tensor:
        return batched_histogram(
            values, bins=self.bins, value_range=self.value_range, normalize=self.normalize
        )
