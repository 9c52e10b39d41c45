"""Denoising autoencoders ("reformers") for DeT, after MagNet's.

MagNet (Meng and Chen, CCS 2017) rebuilds inputs with small convolutional autoencoders trained
on noise-added images; DeT (the paper in ``docs/det.md``) uses three such reformers of
different architectures per dataset. :class:`Reformer` covers the three guardnet ships:

- ``"pooled"``: MagNet's MNIST autoencoder: 3x3 convolutions with 3 channels and sigmoids,
  average pooling after the first, mirrored by upsampling in the decoder;
- ``"plain"``: MagNet's CIFAR-10 autoencoder: three 3x3 convolutions with 3 channels;
- ``"wide"``: guardnet's third: 5x5 convolutions with 8 channels and leaky ReLUs that predict
  a correction added to the input (a different receptive field, non-linearity and form, for
  diversity; without the skip connection, most initialisations stayed at a constant image).

Two more for colour images, where the 3-channel sigmoid nets learn too slowly to rebuild
CIFAR-10 in a CPU-sized budget and the residual ``"wide"`` one passes perturbations through:

- ``"relu"``: five 3x3 convolutions with 16 channels and leaky ReLUs, sigmoid output;
- ``"relu-pooled"``: the same with 32 channels and average pooling after the first (the
  decoder upsamples), a coarser rebuild that keeps less of a small perturbation.

Every reformer maps [0, 1] images to [0, 1] images of the same shape.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from guardnet.errors import InputShapeError
from guardnet.weights.registry import register_architecture

__all__ = ["REFORMER_STYLES", "Reformer", "ReformerSet"]

#: Style -> constructor arguments of :class:`Reformer` (besides ``in_channels``).
REFORMER_STYLES: dict[str, dict[str, Any]] = {
    "pooled": {"channels": 3, "depth": 2, "pool": True, "kernel_size": 3, "activation": "sigmoid"},
    "plain": {"channels": 3, "depth": 1, "pool": False, "kernel_size": 3, "activation": "sigmoid"},
    "wide": {
        "channels": 8,
        "depth": 2,
        "pool": False,
        "kernel_size": 5,
        "activation": "leaky_relu",
        "residual": True,
    },
    "relu": {
        "channels": 16,
        "depth": 2,
        "pool": False,
        "kernel_size": 3,
        "activation": "leaky_relu",
    },
    "relu-pooled": {
        "channels": 32,
        "depth": 2,
        "pool": True,
        "kernel_size": 3,
        "activation": "leaky_relu",
    },
}


def _activation(name: str) -> nn.Module:
    if name == "sigmoid":
        return nn.Sigmoid()
    if name == "relu":
        return nn.ReLU()
    if name == "leaky_relu":  # plain ReLU units of a small autoencoder can all die at once
        return nn.LeakyReLU(0.1)
    raise ValueError(f"activation must be 'sigmoid', 'relu' or 'leaky_relu', got {name!r}")


@register_architecture("Reformer")
class Reformer(nn.Module):
    """A convolutional denoising autoencoder.

    Args:
        in_channels: image channels.
        channels: channels of every hidden convolution.
        depth: convolutions in the encoder (and as many in the decoder).
        pool: average-pool after the encoder's first convolution and upsample before the
            decoder's last (inputs need even height and width).
        kernel_size: odd kernel size of every convolution (same padding).
        activation: of the hidden convolutions, ``"sigmoid"``, ``"relu"`` or ``"leaky_relu"``.
        residual: the output is ``clamp(x + net(x), 0, 1)`` instead of ``sigmoid(net(x))``.

    Shape:
        - Input: (B, in_channels, H, W) in [0, 1].
        - Output: (B, in_channels, H, W) in [0, 1].

    Example:
        >>> import torch
        >>> Reformer(1, **REFORMER_STYLES["pooled"])(torch.rand(2, 1, 28, 28)).shape
        torch.Size([2, 1, 28, 28])
    """

    def __init__(
        self,
        in_channels: int = 1,
        *,
        channels: int = 3,
        depth: int = 1,
        pool: bool = False,
        kernel_size: int = 3,
        activation: str = "sigmoid",
        residual: bool = False,
    ) -> None:
        super().__init__()
        if depth < 1 or channels < 1 or in_channels < 1:
            raise ValueError("in_channels, channels and depth must be >= 1")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.config = {
            "in_channels": in_channels,
            "channels": channels,
            "depth": depth,
            "pool": pool,
            "kernel_size": kernel_size,
            "activation": activation,
            "residual": residual,
        }
        pad = kernel_size // 2
        layers: list[nn.Module] = []
        width = in_channels
        for i in range(depth):
            layers += [
                nn.Conv2d(width, channels, kernel_size, padding=pad),
                _activation(activation),
            ]
            width = channels
            if pool and i == 0:
                layers.append(nn.AvgPool2d(2))
        for i in range(depth):
            if pool and i == depth - 1:
                layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
            layers += [
                nn.Conv2d(channels, channels, kernel_size, padding=pad),
                _activation(activation),
            ]
        layers.append(nn.Conv2d(channels, in_channels, kernel_size, padding=pad))
        if not residual:
            layers.append(nn.Sigmoid())
        self.net = nn.Sequential(*layers)
        self.pool = pool
        self.residual = residual
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Fresh weights: PyTorch's default for sigmoid layers, He initialisation (for the
        slope of the activation) and zero biases for (leaky) ReLU ones; a residual reformer's
        last convolution starts at zero (the identity)."""
        activation = self.config["activation"]
        for module in self.net:
            if not isinstance(module, nn.Conv2d):
                continue
            module.reset_parameters()
            if (
                activation in ("relu", "leaky_relu")
                and module.out_channels != self.config["in_channels"]
            ):
                slope = 0.1 if activation == "leaky_relu" else 0.0
                nn.init.kaiming_normal_(module.weight, a=slope, nonlinearity="leaky_relu")
                nn.init.zeros_(module.bias)
        if self.config["residual"]:
            last = self.net[-1]
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def forward(self, x: Tensor) -> Tensor:
        if self.pool and (x.shape[-1] % 2 or x.shape[-2] % 2):
            raise InputShapeError(
                f"a pooled reformer needs even height and width, got {tuple(x.shape)}"
            )
        if self.residual:
            return (x + self.net(x)).clamp(0.0, 1.0)
        return self.net(x)


@register_architecture("ReformerSet")
class ReformerSet(nn.Module):
    """Several reformers in one module (one weights file), in a fixed order.

    Args:
        reformers: each reformer's :class:`Reformer` arguments (``in_channels`` included).
        names: a name per reformer (default ``r0``, ``r1``, ...).
    """

    def __init__(self, reformers: list[dict[str, Any]], *, names: list[str] | None = None) -> None:
        super().__init__()
        if not reformers:
            raise ValueError("a ReformerSet needs at least one reformer")
        self.names = list(names) if names is not None else [f"r{i}" for i in range(len(reformers))]
        if len(self.names) != len(reformers) or len(set(self.names)) != len(self.names):
            raise ValueError("names must be unique, one per reformer")
        self.reformers = nn.ModuleList(Reformer(**dict(c)) for c in reformers)
        channels = {r.config["in_channels"] for r in self.reformers}
        if len(channels) != 1:
            raise ValueError(f"reformers of one set must take the same channels, got {channels}")
        self.in_channels = channels.pop()

    def arch_args(self) -> dict[str, Any]:
        """The constructor arguments (a Hub folder's ``arch_args``)."""
        return {"reformers": [dict(r.config) for r in self.reformers], "names": self.names}

    def forward(self, x: Tensor) -> Tensor:
        """(R, B, C, H, W): every reformer's rebuild of ``x``."""
        return torch.stack([reformer(x) for reformer in self.reformers])

    def __len__(self) -> int:
        return len(self.reformers)

    def __getitem__(self, index: int) -> Reformer:
        return self.reformers[index]  # type: ignore[return-value]
