"""Pseudo-saturation map: how far each pixel's colour is from grey.

The SAEC detector of MixDefense looks for the high-frequency colour noise that large adversarial
perturbations leave behind. Its first stage maps an RGB image to a single "pseudo-saturation"
channel: the p-norm, across channels, of each pixel's deviation from its own channel mean.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from guardnet.errors import InputDTypeError, InputShapeError

__all__ = ["PseudoSaturationMap", "pseudo_saturation_map"]


def _check_images(images: Tensor) -> None:
    if not isinstance(images, Tensor):
        raise InputDTypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4:
        raise InputShapeError(
            f"images must have shape (B, C, H, W), got rank {images.ndim} shape "
            f"{tuple(images.shape)}"
        )
    if not images.is_floating_point():
        raise InputDTypeError(f"images must be a floating-point tensor, got dtype {images.dtype}")


def _check_p(p: float) -> None:
    # ``not p > 0`` also rejects NaN.
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not p > 0:
        raise ValueError(f"p must be a positive number, got {p!r}")


def pseudo_saturation_map(images: Tensor, *, p: float = 8.0) -> Tensor:
    r"""Compute the pseudo-saturation map of a batch of images.

    For every pixel with channel values :math:`x_c`, let :math:`d_c = x_c - \bar{x}` where
    :math:`\bar{x}` is the mean over channels at that pixel. The map is

    .. math::

        s = \Big(\sum_c |d_c|^p\Big)^{1/p}.

    The sum is evaluated as :math:`m (\sum_c (|d_c| / m)^p)^{1/p}` with :math:`m = \max_c |d_c|`,
    so small deviations do not underflow: at ``p = 8``, :math:`|d|^8` leaves the normal float32
    range for :math:`|d| < 1.8 \cdot 10^{-5}` (and would leave float16's below 0.3). Pixels with
    ``m == 0`` map to exactly 0, without NaN. Every input dtype is computed in float32; the
    detector does not need float64. The op is differentiable (when autograd records, an
    out-of-place twin of the in-place fast path runs).

    One-channel images have no colour, so the map would be identically zero; in that case the
    intensity image itself is returned (as a float32 copy), which keeps the downstream high-pass
    and histogram stages meaningful for grey-scale data sets.

    Args:
        images: batch of images in [0, 1], any floating dtype.
        p: order of the norm across channels, ``p > 0``. ``p = 8`` (the default) uses repeated
            squaring instead of ``pow``.

    Returns:
        The pseudo-saturation map, float32, on the device of ``images``.

    Raises:
        InputShapeError: if ``images`` is not rank 4.
        InputDTypeError: if ``images`` is not floating point.
        ValueError: if ``p`` is not a positive number.

    Shape:
        - Input: :math:`(B, C, H, W)`
        - Output: :math:`(B, 1, H, W)`

    Example:
        >>> x = torch.rand(2, 3, 8, 8)
        >>> pseudo_saturation_map(x).shape
        torch.Size([2, 1, 8, 8])
    """
    _check_images(images)
    _check_p(p)
    if images.shape[1] == 1:
        return images.to(dtype=torch.float32, copy=True)

    x = images.to(torch.float32)
    if torch.is_grad_enabled() and x.requires_grad:
        return _saturation_autograd(x, float(p))
    return _saturation_inplace(x, float(p))


# Both helpers first subtract channel 0: for nearby values that difference is exact (Sterbenz),
# so the channel mean is taken over small numbers and x_c - mean no longer cancels
# catastrophically (without it, deviations ~1e-3 around 0.5 lose up to 1e-3 relative accuracy).
# They then evaluate m * (sum_c (|d_c| / m)^p)^(1/p) with m = max_c |d_c|. The divisor is m
# clamped to the smallest normal float: a cheap guard for grey pixels (m == 0), where every ratio
# becomes 0 and so does the result. Wherever m is a normal number the largest ratio is exactly 1,
# so the sum is >= 1; the autograd twin clamps the sum at 1, which changes nothing there but keeps
# the root away from 0 on grey pixels (no inf slope, no NaN gradient). (For denormal m that twin
# returns m, not the up to C^(1/p) times larger exact value: an error below 1e-38.)
_TINY = torch.finfo(torch.float32).tiny


def _saturation_inplace(x: Tensor, p: float) -> Tensor:
    # Fresh full-size allocations dominate the CPU cost of this memory-bound op, so every step
    # after the first reuses its buffer. ``x`` may alias the caller's tensor and is only read.
    # The fewer kernels the better too: sub_ with alpha folds the 1/C of the mean, and without
    # autograd the clamp of the sum can go (a root of 0 is 0; it only has an infinite slope).
    shifted = x - x[:, :1]
    dev = shifted.sub_(shifted.sum(dim=1, keepdim=True), alpha=1.0 / x.shape[1]).abs_()
    peak = dev.amax(dim=1, keepdim=True)
    ratio = dev.div_(peak.clamp_min(_TINY))
    if p == 8:
        total = ratio.square_().square_().square_().sum(dim=1, keepdim=True)
        root = total.sqrt_().sqrt_().sqrt_()
    else:
        root = ratio.pow_(p).sum(dim=1, keepdim=True).pow_(1.0 / p)
    return root.mul_(peak)


def _saturation_autograd(x: Tensor, p: float) -> Tensor:
    # Same arithmetic without in-place ops, which would overwrite tensors autograd saved.
    shifted = x - x[:, :1]
    dev = torch.sub(shifted, shifted.sum(dim=1, keepdim=True), alpha=1.0 / x.shape[1]).abs()
    peak = dev.amax(dim=1, keepdim=True)
    ratio = dev / peak.clamp_min(_TINY)
    if p == 8:
        total = ratio.square().square().square().sum(dim=1, keepdim=True).clamp_min(1.0)
        root = total.sqrt().sqrt().sqrt()
    else:
        root = ratio.pow(p).sum(dim=1, keepdim=True).clamp_min(1.0).pow(1.0 / p)
    return root * peak


class PseudoSaturationMap(nn.Module):
    r"""Module form of :func:`pseudo_saturation_map`.

    Args:
        p: order of the norm across channels, ``p > 0``.

    Shape:
        - Input: :math:`(B, C, H, W)`
        - Output: :math:`(B, 1, H, W)`, float32

    Example:
        >>> op = PseudoSaturationMap(p=8.0)
        >>> op(torch.rand(2, 3, 8, 8)).shape
        torch.Size([2, 1, 8, 8])
    """

    def __init__(self, p: float = 8.0) -> None:
        super().__init__()
        _check_p(p)
        self.p = float(p)

    def extra_repr(self) -> str:
        return f"p={self.p}"

    def forward(self, images: Tensor) -> Tensor:
        return pseudo_saturation_map(images, p=self.p)
