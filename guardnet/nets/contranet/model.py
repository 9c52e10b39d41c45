"""The inference part of ContraNet: encoder, generator, Dis and DMM in one module.

Yang et al., "What You See is Not What the Network Infers: Detecting Adversarial Examples
Based on Semantic Contradiction", NDSS 2022. The training-only discriminators (D_phi, D_aux)
are not part of it: :mod:`guardnet.train.contranet` trains them and keeps them in its
checkpoints only.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from guardnet.nets.contranet.config import ContraNetConfig
from guardnet.nets.contranet.discriminator import ContraNetDiscriminator
from guardnet.nets.contranet.dmm import ContraNetDMM
from guardnet.nets.contranet.encoder import ContraNetEncoder
from guardnet.nets.contranet.generator import ContraNetGenerator
from guardnet.weights.registry import register_architecture

__all__ = ["SCORE_NAMES", "ContraNet", "from_unit_range", "ssim_scores", "to_unit_range"]

#: The three rejector scores, in the order :meth:`ContraNet.scores` returns them.
SCORE_NAMES = ("dmm", "dis", "ssim")


def to_unit_range(images: Tensor, size: int = 32) -> Tensor:
    """Map [0, 1] images of any size to ContraNet's 32x32 input in [-1, 1].

    Smaller images (MNIST's 28x28) are zero-padded equally on each side, so the digit keeps its
    pixels; larger ones are resized with antialiased bilinear interpolation (the paper's
    workflow for high-resolution classifiers). Non-square inputs are resized.

    Args:
        images: (B, C, H, W) in [0, 1].
        size: ContraNet's input side.

    Returns:
        (B, C, size, size) in [-1, 1].
    """
    h, w = images.shape[-2:]
    if (h, w) != (size, size):
        if h == w and h < size and (size - h) % 2 == 0:
            pad = (size - h) // 2
            images = F.pad(images, (pad, pad, pad, pad))
        else:
            images = F.interpolate(
                images, size=(size, size), mode="bilinear", align_corners=False, antialias=True
            ).clamp(0, 1)
    return images * 2 - 1


def from_unit_range(images: Tensor) -> Tensor:
    """[-1, 1] to [0, 1] (clamped)."""
    return ((images + 1) / 2).clamp(0, 1)


def ssim_scores(x: Tensor, x_rebuilt: Tensor, *, window_size: int = 11) -> Tensor:
    """Mean SSIM per image between two [0, 1] batches (kornia, ``max_val=1``).

    Args:
        x: (B, C, H, W) in [0, 1].
        x_rebuilt: same shape.
        window_size: Gaussian window side.

    Returns:
        (B,) SSIM in [-1, 1]; 1 means identical. Computed in float32 for float16 and bfloat16
        inputs (its variances cancel badly in 8 or 11 bits of mantissa), else in their dtype.
    """
    from kornia.metrics import ssim

    dtype = torch.promote_types(x.dtype, torch.float32)
    return ssim(x.to(dtype), x_rebuilt.to(dtype), window_size, max_val=1.0).mean(dim=(1, 2, 3))


@register_architecture("ContraNet")
class ContraNet(nn.Module):
    """Encoder E, generator G (EMA weights after training), Dis and DMM.

    Keyword arguments are the fields of :class:`ContraNetConfig`, so
    ``guardnet.weights.build_model({"architecture": "ContraNet", "arch_args": asdict(config)})``
    rebuilds it.

    Shape:
        - :meth:`rebuild`: x (B, C, 32, 32) in [-1, 1], labels (B,) -> (B, C, 32, 32).
        - :meth:`scores`: x, x_rebuilt, labels -> (B, 3): DMM consistency probability, Dis
          logit, SSIM (all: higher means consistent).

    Example:
        >>> net = ContraNet(num_classes=10, in_channels=1, g_ch=2, d_ch=2, dmm_backbone="cnn")
        >>> x = to_unit_range(torch.rand(2, 1, 28, 28))
        >>> labels = torch.tensor([3, 7])
        >>> net.eval().scores(x, net.rebuild(x, labels), labels).shape
        torch.Size([2, 3])
    """

    def __init__(self, **config: Any) -> None:
        super().__init__()
        self.config = ContraNetConfig(**config)
        self.encoder = ContraNetEncoder(self.config)
        self.generator = ContraNetGenerator(self.config)
        self.dis = ContraNetDiscriminator(self.config)
        self.dmm = ContraNetDMM(self.config)

    @classmethod
    def from_config(cls, config: ContraNetConfig) -> ContraNet:
        return cls(**dataclasses.asdict(config))

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def rebuild(
        self,
        x: Tensor,
        labels: Tensor,
        *,
        sample: bool = False,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Rebuild ``x`` (in [-1, 1]) conditioned on ``labels``: ``G(E(x), labels)``.

        Args:
            x: (B, C, 32, 32) in [-1, 1].
            labels: (B,) int64 labels to condition on.
            sample: sample z from the encoder's posterior instead of using its mean.
            generator: random generator for the sample.
        """
        z = self.encoder.encode(x, sample=sample, generator=generator)
        return self.generator(z, labels)

    def scores(self, x: Tensor, x_rebuilt: Tensor, labels: Tensor) -> Tensor:
        """The three rejector scores (B, 3), in :data:`SCORE_NAMES` order; low = suspicious."""
        consistent = self.dmm(x, x_rebuilt, labels).softmax(dim=1)[:, 1]
        dis = self.dis(x_rebuilt, labels)
        ssim = ssim_scores(from_unit_range(x), from_unit_range(x_rebuilt))
        return torch.stack([consistent, dis, ssim], dim=1)

    def forward(self, x: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Rebuild and score: returns ``(x_rebuilt, scores)``."""
        rebuilt = self.rebuild(x, labels)
        return rebuilt, self.scores(x, rebuilt, labels)
