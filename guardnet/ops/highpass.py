"""Steganalysis (SRM) high-pass residual filters.

These are the fixed linear predictors of the Spatial Rich Model (Fridrich & Kodovsky, 2012):
each kernel predicts a pixel from its neighbours and returns the prediction error, which removes
image content and keeps the high-frequency noise that adversarial perturbations add.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from guardnet._utils import Float32Buffers
from guardnet.errors import InputDTypeError, InputShapeError

__all__ = ["SRM_KERNELS", "HighPassFilter", "highpass_filter", "srm_kernel"]

_Kernel = tuple[tuple[float, ...], ...]


def _scaled(rows: Sequence[Sequence[int]], scale: int) -> _Kernel:
    return tuple(tuple(v / scale for v in row) for row in rows)


#: Named SRM residual kernels (2-D, entries sum to 0). Stored as nested tuples so the module-level
#: table cannot be modified in place by accident; use :func:`srm_kernel` to get a tensor.
SRM_KERNELS: dict[str, _Kernel] = {
    # "KV": 5x5 square residual, the classic steganalysis pre-filter.
    "kv": _scaled(
        [
            [-1, 2, -2, 2, -1],
            [2, -6, 8, -6, 2],
            [-2, 8, -12, 8, -2],
            [2, -6, 8, -6, 2],
            [-1, 2, -2, 2, -1],
        ],
        12,
    ),
    # "KB": 3x3 square residual.
    "kb": _scaled([[-1, 2, -1], [2, -4, 2], [-1, 2, -1]], 4),
    # Horizontal first-order residual x[i, j+1] - x[i, j].
    "first_order": _scaled([[0, 0, 0], [0, -1, 1], [0, 0, 0]], 1),
    # Horizontal second-order residual (x[i, j-1] - 2 x[i, j] + x[i, j+1]) / 2.
    "second_order": _scaled([[0, 0, 0], [1, -2, 1], [0, 0, 0]], 2),
    # Vertical second-order residual (transpose of the above).
    "second_order_v": _scaled([[0, 1, 0], [0, -2, 0], [0, 1, 0]], 2),
}

_PADDINGS = ("valid", "reflect")

KernelSpec = str | Tensor | Sequence[str | Tensor]


def srm_kernel(name_or_tensor: str | Tensor) -> Tensor:
    """Return an SRM kernel as a 2-D float32 tensor.

    Args:
        name_or_tensor: a key of :data:`SRM_KERNELS`, or a 2-D tensor with odd height and width
            (returned as a float32 CPU copy, so callers can not alias the kernel they passed).

    Returns:
        The kernel, float32, on the CPU.

    Raises:
        ValueError: for an unknown name or a kernel that is not 2-D with odd sides.
        TypeError: for anything that is neither a string nor a tensor.

    Shape:
        - Output: :math:`(k_h, k_w)`

    Example:
        >>> srm_kernel("kb").shape
        torch.Size([3, 3])
    """
    return _kernel_f64(name_or_tensor).to(torch.float32)


def _kernel_f64(name_or_tensor: str | Tensor) -> Tensor:
    """Validated kernel in float64 on the CPU, so that float64 inputs get exact-ish entries."""
    if isinstance(name_or_tensor, str):
        try:
            rows = SRM_KERNELS[name_or_tensor]
        except KeyError:
            valid = ", ".join(repr(k) for k in sorted(SRM_KERNELS))
            raise ValueError(
                f"unknown SRM kernel {name_or_tensor!r}; valid names are {valid}"
            ) from None
        return torch.tensor(rows, dtype=torch.float64)
    if not isinstance(name_or_tensor, Tensor):
        raise TypeError(
            f"a kernel must be a name or a 2-D tensor, got {type(name_or_tensor).__name__}"
        )
    kernel = name_or_tensor.detach().to(device="cpu", dtype=torch.float64, copy=True)
    # Odd sides keep the residual centred on the pixel and let kernels of different sizes be
    # zero-padded to a common size without shifting them.
    if kernel.ndim != 2 or kernel.shape[0] % 2 == 0 or kernel.shape[1] % 2 == 0:
        raise ValueError(
            f"a kernel must be 2-D with odd height and width, got shape {tuple(kernel.shape)}"
        )
    return kernel


def _stack_kernels(kernels: KernelSpec) -> Tensor:
    """Stack kernels into a conv2d weight of shape (K, 1, kh, kw), float64 on the CPU."""
    items = [kernels] if isinstance(kernels, (str, Tensor)) else list(kernels)
    if not items:
        raise ValueError("at least one kernel is required")
    mats = [_kernel_f64(k) for k in items]
    kh = max(m.shape[0] for m in mats)
    kw = max(m.shape[1] for m in mats)
    weight = torch.zeros(len(mats), 1, kh, kw, dtype=torch.float64)
    for i, m in enumerate(mats):
        top = (kh - m.shape[0]) // 2
        left = (kw - m.shape[1]) // 2
        weight[i, 0, top : top + m.shape[0], left : left + m.shape[1]] = m
    return weight


@functools.lru_cache(maxsize=64)
def _stack_named(names: tuple[str, ...]) -> Tensor:
    # Building the weight from the table costs more than the conv itself on small batches.
    # Callers only read the cached tensor (casts and reshapes make copies or views).
    return _stack_kernels(names)


def _weight_for(kernels: KernelSpec) -> Tensor:
    if isinstance(kernels, str):
        return _stack_named((kernels,))
    items = [kernels] if isinstance(kernels, Tensor) else list(kernels)
    if all(isinstance(k, str) for k in items):
        return _stack_named(tuple(items))
    return _stack_kernels(items)


def _check_padding(padding: str) -> None:
    if padding not in _PADDINGS:
        raise ValueError(f"padding must be one of {_PADDINGS}, got {padding!r}")


#: Below this batch size one plain conv2d beats the per-kernel depthwise convs on the CPU
#: (measured at 32x32, 3 kernels, 1 thread: 89 vs 175 us at batch 1; about even at 16).
_DEPTHWISE_MIN_BATCH = 16


def _apply_weight(x: Tensor, weight: Tensor, padding: str) -> Tensor:
    """Correlate ``x`` with a stacked (K, 1, kh, kw) weight; validates ``x``."""
    if not isinstance(x, Tensor):
        raise InputDTypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4 or x.shape[1] != 1:
        raise InputShapeError(f"x must have shape (B, 1, H, W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise InputDTypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    kh, kw = weight.shape[-2:]
    if x.shape[2] < kh or x.shape[3] < kw:
        raise InputShapeError(
            f"x of spatial size {tuple(x.shape[2:])} is smaller than the {kh}x{kw} kernel"
        )
    if padding == "reflect":
        ph, pw = kh // 2, kw // 2
        x = F.pad(x, (pw, pw, ph, ph), mode="reflect")
    # Cast on the CPU first (float64 may not exist on the target device); the copy of a few
    # hundred bytes to an accelerator is non-blocking, so it costs no host sync.
    weight = weight.to(dtype=x.dtype).to(device=x.device, non_blocking=True)
    depthwise = x.device.type == "cpu" and x.shape[0] >= _DEPTHWISE_MIN_BATCH
    return _correlate(x, weight, depthwise=depthwise)


def _correlate(x: Tensor, weight: Tensor, *, depthwise: bool) -> Tensor:
    """One conv2d of (B, 1, H, W) with (K, 1, kh, kw); conv2d is a cross-correlation, the SRM
    convention (kernels are written as they are applied)."""
    batch, k = x.shape[0], weight.shape[0]
    if not depthwise or batch == 0:
        return F.conv2d(x, weight)
    # oneDNN runs a one-channel conv with few filters 5-30x slower on the CPU than its
    # depthwise kernel, so fold the batch into the channels of a single image, (1, B, H, W)
    # with groups=B, once per kernel. Per kernel beats folding (batch, kernel) pairs into
    # B*K channels, which copies the input K times (measured 0.6 vs 2.4 ms for 3 kernels at
    # batch 256, 32x32); K is a handful of kernels, never the batch.
    h, w = x.shape[-2:]
    kh, kw = weight.shape[-2:]
    folded = x.reshape(1, batch, h, w)
    outs = [
        F.conv2d(folded, weight[i : i + 1].expand(batch, 1, kh, kw), groups=batch) for i in range(k)
    ]
    out = outs[0] if k == 1 else torch.cat(outs, dim=0)
    # (K, B, H', W') -> (B, K, H', W')
    return out.view(k, batch, out.shape[-2], out.shape[-1]).transpose(0, 1)


def highpass_filter(x: Tensor, kernels: KernelSpec = "kv", *, padding: str = "valid") -> Tensor:
    """Apply one or more SRM high-pass kernels to a one-channel batch.

    All kernels are zero-padded (centred) to the largest kernel size and applied in a single
    ``conv2d`` call, one output channel per kernel in the given order. With ``padding="valid"``
    every output channel therefore has the size of the largest kernel's valid region.

    Args:
        x: one-channel images, floating point (e.g. a pseudo-saturation map).
        kernels: a kernel name from :data:`SRM_KERNELS`, a 2-D tensor, or a sequence of them.
        padding: ``"valid"`` (no border, output shrinks by ``k - 1``) or ``"reflect"``
            (reflect-pad the input, output has the input size).

    Returns:
        The residuals, on the device and in the dtype of ``x``.

    Raises:
        InputShapeError: if ``x`` is not ``(B, 1, H, W)`` or is smaller than the kernel.
        InputDTypeError: if ``x`` is not floating point.
        ValueError: for an unknown kernel name or padding mode.

    Shape:
        - Input: :math:`(B, 1, H, W)`
        - Output: :math:`(B, K, H - k_h + 1, W - k_w + 1)` for ``"valid"``,
          :math:`(B, K, H, W)` for ``"reflect"``, with :math:`K` the number of kernels.

    Example:
        >>> x = torch.rand(2, 1, 16, 16)
        >>> highpass_filter(x, ["kv", "kb"]).shape
        torch.Size([2, 2, 12, 12])
    """
    _check_padding(padding)
    return _apply_weight(x, _weight_for(kernels), padding)


class HighPassFilter(Float32Buffers):
    """Module form of :func:`highpass_filter`.

    The stacked kernels live in a float32, non-persistent buffer: ``.to(device)`` moves them,
    and they do not appear in ``state_dict`` (they are constants, not learned weights). They are
    cast to the input's dtype at every call; for float64 inputs the functional form, which builds
    the kernels in float64, is the more exact one. ``.half()`` and ``.bfloat16()`` leave them in
    float32, since rounded entries would no longer sum to 0.

    Args:
        kernels: a kernel name from :data:`SRM_KERNELS`, a 2-D tensor, or a sequence of them.
        padding: ``"valid"`` or ``"reflect"``.

    Shape:
        - Input: :math:`(B, 1, H, W)`
        - Output: :math:`(B, K, H', W')`, see :func:`highpass_filter`.

    Example:
        >>> hpf = HighPassFilter(["kv", "second_order"], padding="reflect")
        >>> hpf(torch.rand(2, 1, 16, 16)).shape
        torch.Size([2, 2, 16, 16])
    """

    weight: Tensor
    float32_buffers: ClassVar[tuple[str, ...]] = ("weight",)

    def __init__(self, kernels: KernelSpec = "kv", *, padding: str = "valid") -> None:
        super().__init__()
        _check_padding(padding)
        items = [kernels] if isinstance(kernels, (str, Tensor)) else list(kernels)
        self.kernel_names = tuple(k if isinstance(k, str) else "<tensor>" for k in items)
        self.padding = padding
        weight = _stack_kernels(items).to(torch.float32)
        self.register_buffer("weight", weight, persistent=False)

    def extra_repr(self) -> str:
        names = ", ".join(self.kernel_names)
        size = "x".join(str(s) for s in self.weight.shape[-2:])
        return f"kernels=({names}), size={size}, padding={self.padding!r}"

    def forward(self, x: Tensor) -> Tensor:
        return _apply_weight(x, self.weight, self.padding)
