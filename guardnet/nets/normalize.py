"""``Normalize``: per-channel ``(x - mean) / std`` as a module, for classifiers that expect
normalised input."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["Normalize"]


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, with mean and std held in buffers.

    Args:
        mean: per-channel means (length C).
        std: per-channel standard deviations (length C), all > 0.

    Shape:
        - Input: (B, C, H, W)
        - Output: (B, C, H, W)

    Example:
        >>> norm = Normalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
        >>> norm(torch.full((1, 3, 2, 2), 0.75))[0, :, 0, 0]
        tensor([1., 1., 1.])
    """

    mean: Tensor
    std: Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        mean_t = torch.as_tensor(mean, dtype=torch.float32).flatten()
        std_t = torch.as_tensor(std, dtype=torch.float32).flatten()
        if mean_t.shape != std_t.shape or mean_t.numel() == 0:
            raise ValueError(
                f"mean and std need one value per channel, got {mean_t.numel()} and {std_t.numel()}"
            )
        if not bool((std_t > 0).all()):
            raise ValueError(f"std must be > 0, got {std_t.tolist()}")
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1))
        self.register_buffer("std", std_t.view(1, -1, 1, 1))

    @property
    def channels(self) -> int:
        return self.mean.shape[1]

    def forward(self, images: Tensor) -> Tensor:
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"
