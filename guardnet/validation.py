"""Boundary checks for images and logits.

guardnet works on float images in [0, 1] with shape (B, C, H, W). Every public entry point checks
its input here once, so the hot paths behind it can trust their tensors. The value checks (NaN/Inf
and range) are fused into a single host synchronisation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from guardnet.errors import (
    DeviceMismatchError,
    InputDTypeError,
    InputRangeError,
    InputShapeError,
    InputValueError,
)

__all__ = ["check_images", "check_logits", "check_same_device", "check_same_dtype"]

# Slack for values that left [0, 1] only through float rounding (e.g. an un-normalisation).
RANGE_TOLERANCE = 1e-6


def check_images(
    images: Tensor,
    *,
    channels: int | Sequence[int] | None = None,
    name: str = "images",
    check_values: bool = True,
) -> None:
    """Check that ``images`` is a float (B, C, H, W) batch with finite values in [0, 1].

    Args:
        images: the tensor to check.
        channels: the allowed channel count(s); ``None`` allows any.
        name: how the tensor is called in error messages.
        check_values: also check for NaN/Inf and the [0, 1] range (one host sync).

    Raises:
        InputShapeError: not a 4-D tensor, or a channel count that is not allowed.
        InputDTypeError: not a tensor, or not floating point.
        InputValueError: NaN or Inf values.
        InputRangeError: values below 0 or above 1.

    Example:
        >>> check_images(torch.rand(2, 3, 32, 32), channels=3)
    """
    if not isinstance(images, Tensor):
        raise InputDTypeError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4:
        hint = " (add a batch dimension with x.unsqueeze(0))" if images.ndim == 3 else ""
        raise InputShapeError(
            f"{name} must have shape (B, C, H, W), got {tuple(images.shape)}{hint}"
        )
    if not images.is_floating_point():
        hint = " (uint8 images: divide by 255)" if images.dtype == torch.uint8 else ""
        raise InputDTypeError(
            f"{name} must be a floating-point tensor with values in [0, 1], got dtype "
            f"{images.dtype}{hint}"
        )
    if channels is not None:
        allowed = (channels,) if isinstance(channels, int) else tuple(channels)
        if images.shape[1] not in allowed:
            raise InputShapeError(
                f"{name} must have {' or '.join(map(str, allowed))} channel(s), got "
                f"{images.shape[1]} (shape {tuple(images.shape)}; channels come first: "
                "(B, C, H, W))"
            )
    if not check_values or images.numel() == 0:
        return
    finite = torch.isfinite(images)
    flags = torch.stack(
        [
            ~finite.all(),
            (images < -RANGE_TOLERANCE).any(),
            (images > 1 + RANGE_TOLERANCE).any(),
        ]
    ).tolist()
    if flags[0]:
        count = int((~finite).sum())
        raise InputValueError(f"{name} contains {count} NaN or Inf value(s)")
    if flags[1] or flags[2]:
        low, high = images.aminmax()
        raise InputRangeError(
            f"{name} must have values in [0, 1], got min {float(low):.4g} and max "
            f"{float(high):.4g}; pass un-normalised images (the guard applies the classifier's "
            "mean/std itself when given them)"
        )


def check_logits(logits: object, *, batch_size: int, num_classes: int | None) -> Tensor:
    """Check a classifier's output: a (B, K) floating tensor with K == ``num_classes``.

    Raises:
        InputShapeError: wrong type, rank, batch size or class count.
    """
    if not isinstance(logits, Tensor):
        raise InputShapeError(
            f"the classifier must return a logits tensor, got {type(logits).__name__}"
        )
    if logits.ndim != 2 or logits.shape[0] != batch_size:
        raise InputShapeError(
            f"the classifier must return logits of shape (B, num_classes) = ({batch_size}, K), "
            f"got {tuple(logits.shape)}"
        )
    if num_classes is not None and logits.shape[1] != num_classes:
        raise InputShapeError(
            f"the classifier returned {logits.shape[1]} classes but the guard expects {num_classes}"
        )
    if not logits.is_floating_point():
        raise InputShapeError(f"the classifier must return float logits, got {logits.dtype}")
    return logits


def check_same_device(images: Tensor, device: torch.device | None, *, what: str) -> None:
    """Raise :class:`DeviceMismatchError` when ``images`` is not on ``device``."""
    if device is None or images.device == device:
        return
    # cuda and cuda:0 name the same device when the current device is 0.
    if images.device.type == device.type and (images.device.index is None or device.index is None):
        return
    raise DeviceMismatchError(
        f"the input is on {images.device} but the {what} is on {device}; move the input with "
        f"x.to({str(device)!r}) (guardnet never copies inputs between devices behind your back)"
    )


def check_same_dtype(images: Tensor, dtype: torch.dtype | None, *, what: str) -> None:
    """Raise :class:`InputDTypeError` when floating ``images`` do not have the model's ``dtype``."""
    if dtype is None or images.dtype == dtype:
        return
    raise InputDTypeError(
        f"the input is {str(images.dtype).removeprefix('torch.')} but the {what}'s weights are "
        f"{str(dtype).removeprefix('torch.')}; convert the input with x.to({dtype}) or the "
        f"{what} with .to({images.dtype})"
    )
