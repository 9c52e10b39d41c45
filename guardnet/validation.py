"""Boundary checks for images and logits.

guardnet works on float images in [0, 1] with shape (B, C, H, W). Every public entry point checks
its input here once, so the hot paths behind it can trust their tensors. The value checks (NaN/Inf
and range) are fused into a single host synchronisation. Images of any of the
:data:`FLOAT_DTYPES` are accepted; :func:`to_model_dtype` then converts them to the model's dtype
once, at the boundary.
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

__all__ = [
    "FLOAT_DTYPES",
    "check_images",
    "check_logits",
    "check_same_device",
    "to_model_dtype",
]

#: The floating dtypes guardnet accepts images in (others, e.g. float8, are refused).
FLOAT_DTYPES: tuple[torch.dtype, ...] = (
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
)

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

    The dtype must be one of :data:`FLOAT_DTYPES`; integer images are refused with the
    conversion that fixes them (``images.float() / 255`` for 8-bit images).

    Args:
        images: the tensor to check.
        channels: the allowed channel count(s); ``None`` allows any.
        name: how the tensor is called in error messages.
        check_values: also check for NaN/Inf and the [0, 1] range (one host sync).

    Raises:
        InputShapeError: not a 4-D tensor, or a channel count that is not allowed.
        InputDTypeError: not a tensor, or not of a dtype in :data:`FLOAT_DTYPES`.
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
        if images.dtype == torch.bool or images.is_complex():
            fix = f"{name}.float()" if images.dtype == torch.bool else f"{name}.real.float()"
        else:
            fix = f"{name}.float() / 255 for 8-bit images (divide by 255 to reach [0, 1])"
        raise InputDTypeError(
            f"{name} must be a floating-point tensor with values in [0, 1], got dtype "
            f"{str(images.dtype).removeprefix('torch.')}; convert it with {fix}"
        )
    if images.dtype not in FLOAT_DTYPES:
        allowed = ", ".join(str(d).removeprefix("torch.") for d in FLOAT_DTYPES)
        raise InputDTypeError(
            f"{name} has dtype {str(images.dtype).removeprefix('torch.')}, which guardnet does "
            f"not compute in; convert it with {name}.float() (accepted dtypes: {allowed})"
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


def to_model_dtype(images: Tensor, dtype: torch.dtype | None) -> Tensor:
    """``images`` in the model's floating ``dtype``: one ``.to(dtype)``, or ``images`` itself.

    The conversion is exact from float16 and bfloat16 to float32 or float64, and rounds
    float64 to float32's 24-bit mantissa (6e-8 relative, far below the 1/255 steps of an 8-bit
    image). Images in [0, 1] never overflow a floating dtype.

    Args:
        images: checked floating images (:func:`check_images`).
        dtype: the model's dtype (``None``: a model without floating tensors; no conversion).

    Returns:
        The images in ``dtype``.

    Example:
        >>> to_model_dtype(torch.rand(1, 3, 4, 4, dtype=torch.float64), torch.float32).dtype
        torch.float32
    """
    if dtype is None or images.dtype == dtype:
        return images
    return images.to(dtype)
