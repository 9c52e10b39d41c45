"""Small internal helpers shared across the package (tensor batching, eval mode, hashing)."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterable, Iterator
from typing import ClassVar

import torch
from torch import Tensor, nn

__all__ = [
    "Float32Buffers",
    "eval_mode",
    "iter_image_batches",
    "module_device",
    "module_dtype",
    "sha256_file",
]


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode for the duration, then restore each one's own mode.

    Restoring per submodule (not ``module.train(previous)``) keeps mixed states intact, e.g. a
    classifier a user is fine-tuning while the guard is queried between steps.
    """
    training = [m for m in module.modules() if m.training]
    for m in training:
        m.training = False
    try:
        yield
    finally:
        for m in training:
            m.training = True


class Float32Buffers(nn.Module):
    """A module whose buffers named in ``float32_buffers`` keep float32 under ``.half()``.

    ``.half()``, ``.bfloat16()`` and ``.to(torch.float16)`` round every floating buffer to 11 or 8
    bits of mantissa. For constants that decide a result (a threshold, a filter kernel whose
    entries must sum to 0), that rounding would silently change the result, so these buffers
    keep their value at float32 instead; other conversions (``.double()``, devices) apply as
    usual. Code that uses them casts where it needs to (comparisons promote by themselves).
    """

    float32_buffers: ClassVar[tuple[str, ...]] = ()

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> Float32Buffers:
        before = {name: self._buffers.get(name) for name in self.float32_buffers}
        super()._apply(fn, recurse)
        for name, old in before.items():
            new = self._buffers.get(name)
            if old is not None and new is not None and new.dtype in _LOW_PRECISION:
                self._buffers[name] = old.to(device=new.device, dtype=torch.float32)
        return self


_LOW_PRECISION = (torch.float16, torch.bfloat16)


def module_device(module: nn.Module) -> torch.device | None:
    """The device of the first parameter or buffer, ``None`` for a stateless module."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return None


def module_dtype(module: nn.Module) -> torch.dtype | None:
    """The dtype of the first floating-point parameter or buffer, ``None`` when there is none."""
    for tensor in (*module.parameters(), *module.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return None


def iter_image_batches(data: Tensor | Iterable, *, batch_size: int) -> Iterator[Tensor]:
    """Yield image batches from a tensor or from an iterable of batches.

    An iterable may yield tensors, or tuples/lists/dicts whose first element (or ``"images"``/
    ``"pixel_values"`` key) holds the images, as DataLoaders over labelled datasets do.
    """
    if isinstance(data, Tensor):
        if data.ndim == 3:
            raise ValueError(
                f"expected a batch (N, C, H, W), got shape {tuple(data.shape)}; use "
                "x.unsqueeze(0) for a single image"
            )
        yield from data.split(batch_size)
        return
    for batch in data:
        if isinstance(batch, Tensor):
            yield batch
        elif isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
            yield batch[0]
        elif isinstance(batch, dict):
            for key in ("images", "pixel_values", "image"):
                if key in batch:
                    yield batch[key]
                    break
            else:
                raise ValueError(
                    f"cannot find images in a batch dict with keys {sorted(batch)}; use "
                    "'images' or 'pixel_values'"
                )
        else:
            raise ValueError(
                "calibration data must be a tensor or an iterable of tensors / (images, labels) "
                f"batches, got a batch of type {type(batch).__name__}"
            )


def num_batches(data: Tensor | Iterable, *, batch_size: int) -> int | None:
    """How many batches :func:`iter_image_batches` will yield, when it can be known."""
    if isinstance(data, Tensor):
        return -(-data.shape[0] // batch_size)
    try:
        return len(data)  # type: ignore[arg-type]
    except TypeError:
        return None


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (weights files can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
