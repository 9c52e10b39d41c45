"""Small reference classifiers that train in minutes on a CPU.

``MnistCNN`` is the two-convolution, two-fully-connected MNIST classifier used by the ContraNet
paper's MNIST experiments. ``SmallConvNet`` is a VGG-style net for 32x32 colour images, used
to attack colour data sets while the stronger reference classifiers are trained.
"""

from __future__ import annotations

from torch import Tensor, nn

from guardnet.weights.registry import register_architecture

__all__ = ["MnistCNN", "SmallConvNet"]


@register_architecture("MnistCNN")
class MnistCNN(nn.Module):
    """Two conv layers (32, 64 filters, 3x3), max-pool, two fully connected layers.

    Args:
        num_classes: output classes.
        in_channels: input channels (1 for MNIST).

    Shape:
        - Input: (B, in_channels, 28, 28), normalised by the caller.
        - Output: (B, num_classes) logits.
    """

    def __init__(self, num_classes: int = 10, *, in_channels: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 3),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Dropout(0.25),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * 12 * 12, 128),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


@register_architecture("SmallConvNet")
class SmallConvNet(nn.Module):
    """Three conv blocks (32, 64, 128 filters) with BatchNorm and a linear head.

    Args:
        num_classes: output classes.
        in_channels: input channels.

    Shape:
        - Input: (B, in_channels, 32, 32), normalised by the caller.
        - Output: (B, num_classes) logits.
    """

    def __init__(self, num_classes: int = 10, *, in_channels: int = 3) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            )

        self.features = nn.Sequential(block(in_channels, 32), block(32, 64), block(64, 128))
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, num_classes)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))
