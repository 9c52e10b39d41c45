"""Counter-based random numbers keyed per sample, so a batch's draws do not depend on batching.

A layer that draws noise (A2D's boundary attack) must give every image the same draws whether it
arrives alone, in a batch of 256 or in a chunk of ``max_batch_size``. A ``torch.Generator``
cannot: its stream is consumed across the batch. Here each draw is a hash of (sample key,
counter, element index), computed with vectorised integer operations on any device, so sample
``i``'s noise depends only on its key and the counter. :func:`content_keys` derives the key from
the image itself and a seed.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["content_keys", "hash32", "stateless_normal", "stateless_uniform"]

_MASK32 = 0xFFFFFFFF
# Multiplier of a well-mixing 32-bit integer hash; below 2**31 so that a product with a 32-bit
# value fits in int64 without overflow.
_MIX = 0x45D9F3B


def hash32(values: Tensor) -> Tensor:
    """A bijective 32-bit integer hash, element-wise.

    Args:
        values: int64 tensor of values in [0, 2**32).

    Returns:
        int64 tensor of hashed values in [0, 2**32), same shape.
    """
    x = values & _MASK32
    x = ((x ^ (x >> 16)) * _MIX) & _MASK32
    x = ((x ^ (x >> 16)) * _MIX) & _MASK32
    return x ^ (x >> 16)


def content_keys(images: Tensor, seed: int) -> Tensor:
    """One 32-bit key per image, from its 8-bit quantised content and ``seed``.

    Args:
        images: (B, ...) images in [0, 1].
        seed: the caller's seed; another seed gives unrelated keys.

    Returns:
        (B,) int64 keys.
    """
    flat = images.detach().flatten(1)
    quantised = (flat.float().clamp(0, 1) * 255).round().long()
    position = torch.arange(flat.shape[1], device=flat.device)
    weights = hash32(position + 0x9E3779B9) & 0xFFFFF  # 20-bit weights: the sum fits in int64
    key = (quantised * weights).sum(1)
    return hash32(hash32(key) ^ (seed & _MASK32))


def _bits(keys: Tensor, counter: int, numel: int) -> Tensor:
    """(B, numel) hashed 32-bit values for ``counter``."""
    stream = hash32(keys ^ (counter & _MASK32))[:, None]
    index = torch.arange(numel, device=keys.device)[None, :]
    return hash32(hash32(stream ^ index) + index)


def stateless_uniform(
    keys: Tensor, counter: int, shape: tuple[int, ...], *, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Uniform values in (0, 1), one independent stream per key.

    Args:
        keys: (B,) int64 sample keys (e.g. from :func:`content_keys`).
        counter: which draw of the stream (a step number); another counter gives new values.
        shape: the per-sample shape.
        dtype: the floating dtype of the result.

    Returns:
        (B, *shape) values in (0, 1).

    Example:
        >>> keys = torch.tensor([1, 2, 3])
        >>> a = stateless_uniform(keys, 0, (4,))
        >>> torch.equal(a[1:], stateless_uniform(keys[1:], 0, (4,)))
        True
    """
    numel = math.prod(shape)
    bits = _bits(keys, counter, numel)
    return ((bits.double() + 0.5) / 2.0**32).to(dtype).view(keys.shape[0], *shape)


def stateless_normal(
    keys: Tensor, counter: int, shape: tuple[int, ...], *, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Standard normal values (Box-Muller over two uniform streams), one stream per key.

    Args:
        keys: (B,) int64 sample keys.
        counter: which draw; uses the uniform streams ``2 * counter`` and ``2 * counter + 1``.
        shape: the per-sample shape.
        dtype: the floating dtype of the result.

    Returns:
        (B, *shape) standard normal values.
    """
    u1 = stateless_uniform(keys, 2 * counter, shape, dtype=torch.float64)
    u2 = stateless_uniform(keys, 2 * counter + 1, shape, dtype=torch.float64)
    normal = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)
    return normal.to(dtype)
