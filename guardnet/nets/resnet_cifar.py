"""CIFAR ResNets (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, sec. 4.2).

The 6n+2 family for 32x32 inputs: a 3x3 convolution with 16 filters, three stages of ``n`` basic
blocks with 16, 32 and 64 filters (the first block of stages 2 and 3 halves the resolution), global
average pooling and a linear layer. ResNet20 has n = 3, ResNet56 has n = 9.

Shortcuts use the paper's option A: the identity, and where a block changes shape the shortcut
subsamples with the block's stride and zero-pads the new channels (half of them before the input
channels, half after), so shortcuts add no parameters.

Module names (``conv1``, ``bn1``, ``layer1..3.{i}.conv1/bn1/conv2/bn2``, ``linear``) match the
widely used checkpoints of Yerlan Idelbayev's ``pytorch_resnet_cifar10`` once their ``module.``
prefix is stripped (see :func:`guardnet.ship.convert_akamaster`).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from guardnet.weights.registry import register_architecture

__all__ = ["BasicBlock", "CifarResNet", "PadShortcut", "resnet20", "resnet56"]


class PadShortcut(nn.Module):
    """Option-A shortcut: spatial subsampling by ``stride`` and zero-padding of new channels.

    Args:
        in_channels: channels of the input.
        out_channels: channels of the output (>= ``in_channels``).
        stride: spatial subsampling factor.

    Shape:
        - Input: (B, in_channels, H, W)
        - Output: (B, out_channels, ceil(H / stride), ceil(W / stride)); the input channels sit at
          positions ``[pad_before, pad_before + in_channels)`` with
          ``pad_before = (out_channels - in_channels) // 2``, the rest are zero.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(
                f"option-A shortcuts cannot reduce channels ({in_channels} -> {out_channels})"
            )
        self.stride = stride
        self.pad_before = (out_channels - in_channels) // 2
        self.pad_after = out_channels - in_channels - self.pad_before

    def forward(self, x: Tensor) -> Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_before, self.pad_after))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad=({self.pad_before}, {self.pad_after})"


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm and an option-A shortcut.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        stride: stride of the first convolution (and of the shortcut's subsampling).

    Shape:
        - Input: (B, in_channels, H, W)
        - Output: (B, out_channels, H / stride, W / stride)
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = (
            PadShortcut(in_channels, out_channels, stride)
            if stride != 1 or in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


@register_architecture("CifarResNet")
class CifarResNet(nn.Module):
    """ResNet of depth 6n+2 for 32x32 images, with option-A shortcuts.

    Args:
        depth: 6n+2 layers (20, 32, 44, 56, 110, ...).
        num_classes: output classes.
        in_channels: input channels.
        width: filters of the first stage (16 in the paper; stages 2 and 3 use 2x and 4x).

    Shape:
        - Input: (B, in_channels, H, W), normalised by the caller (32x32 for CIFAR).
        - Output: (B, num_classes) logits.

    Example:
        >>> import torch
        >>> net = CifarResNet(20).eval()
        >>> net(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self, depth: int = 20, num_classes: int = 10, *, in_channels: int = 3, width: int = 16
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"depth must be 6n+2 with n >= 1 (20, 32, 44, 56, ...), got {depth}")
        blocks = (depth - 2) // 6
        self.depth = depth
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = self._stage(width, width, blocks, stride=1)
        self.layer2 = self._stage(width, 2 * width, blocks, stride=2)
        self.layer3 = self._stage(2 * width, 4 * width, blocks, stride=2)
        self.linear = nn.Linear(4 * width, num_classes)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight)

    @staticmethod
    def _stage(in_channels: int, out_channels: int, blocks: int, *, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_channels, out_channels, stride)]
        layers += [BasicBlock(out_channels, out_channels, 1) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(out.mean(dim=(2, 3)))


@register_architecture("resnet20")
def resnet20(num_classes: int = 10, *, in_channels: int = 3) -> CifarResNet:
    """ResNet20 (n = 3, 0.27 M parameters for 10 classes).

    Args:
        num_classes: output classes.
        in_channels: input channels.

    Returns:
        A randomly initialised :class:`CifarResNet` of depth 20.
    """
    return CifarResNet(20, num_classes, in_channels=in_channels)


@register_architecture("resnet56")
def resnet56(num_classes: int = 10, *, in_channels: int = 3) -> CifarResNet:
    """ResNet56 (n = 9, 0.85 M parameters for 10 classes).

    Args:
        num_classes: output classes.
        in_channels: input channels.

    Returns:
        A randomly initialised :class:`CifarResNet` of depth 56.
    """
    return CifarResNet(56, num_classes, in_channels=in_channels)
