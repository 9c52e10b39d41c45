"""ContraNet's Deep Metric Model (DMM): is the rebuilt image consistent with the input?

Yang et al., "What You See is Not What the Network Infers", NDSS 2022: the DMM embeds the
input (with F_real) and the image rebuilt from the input's latent and the classifier's label
(with F_syn), and classifies the pair as consistent or not with an MLP whose first layer is
chosen by the label.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torchvision.models import mobilenet_v2

from guardnet.nets.contranet.config import ContraNetConfig

__all__ = ["ClassConditionalLinear", "ContraNetDMM", "build_feature_extractor"]


def _mobilenet_features(
    in_channels: int, width_mult: float, *, last_conv: bool
) -> tuple[nn.Module, int]:
    """MobileNetV2 features for 32x32 inputs: first conv with stride 1 (final map 2x2)."""
    features = mobilenet_v2(weights=None, width_mult=width_mult).features
    if not last_conv:
        features = features[:-1]
    first = features[0][0]
    features[0][0] = nn.Conv2d(in_channels, first.out_channels, 3, stride=1, padding=1, bias=False)
    # The final 1x1 Conv2dNormActivation holds a conv at [0]; an InvertedResidual records
    # its output width as ``out_channels``.
    dim = features[-1][0].out_channels if last_conv else features[-1].out_channels
    return nn.Sequential(features, nn.AdaptiveAvgPool2d(1), nn.Flatten()), dim


def _cnn_features(in_channels: int, width: float) -> tuple[nn.Module, int]:
    """Small VGG-style CNN 32 -> 16 -> 8 -> 4, global average pooled."""
    c = max(8, round(32 * width))
    layers: list[nn.Module] = []
    cin = in_channels
    for cout in (c, 2 * c, 4 * c):
        layers += [
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        ]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers), cin


def build_feature_extractor(
    backbone: str, *, in_channels: int, width: float, last_conv: bool = True
) -> tuple[nn.Module, int]:
    """Build a DMM feature extractor.

    Args:
        backbone: ``"mobilenet_v2"`` (torchvision, random init, adapted to 32x32) or ``"cnn"``.
        in_channels: image channels.
        width: MobileNetV2 ``width_mult`` or the CNN's width multiplier.
        last_conv: keep MobileNetV2's final 1x1 conv (ignored by ``"cnn"``).

    Returns:
        The module mapping (B, in_channels, 32, 32) to (B, dim), and ``dim``.
    """
    if backbone == "mobilenet_v2":
        return _mobilenet_features(in_channels, width, last_conv=last_conv)
    if backbone == "cnn":
        return _cnn_features(in_channels, width)
    raise ValueError(f"unknown DMM backbone {backbone!r}")


class ClassConditionalLinear(nn.Module):
    """Linear layer with one weight matrix and bias per class, selected by the label.

    Computes ``out[b] = x[b] @ weight[y[b]] + bias[y[b]]`` as one batched matmul on the
    gathered weights (memory B * in_features * out_features for the gathered view).

    Args:
        num_classes: number of classes K.
        in_features: input size.
        out_features: output size.
    """

    def __init__(self, num_classes: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(num_classes, out_features))
        bound = 1 / math.sqrt(in_features)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return torch.bmm(x.unsqueeze(1), self.weight[y]).squeeze(1) + self.bias[y]


class ContraNetDMM(nn.Module):
    """Two feature extractors, then class-conditional ``in->512``, ``512->64``, ``64->2``.

    Args:
        config: the ContraNet sizes (uses ``dmm_backbone``, ``dmm_width``, ``dmm_hidden``,
            ``dmm_last_conv``, ``in_channels``, ``num_classes``).

    Shape:
        - Input: ``x`` and ``x_rebuilt`` (B, in_channels, 32, 32), ``y`` (B,) labels.
        - Output: (B, 2) logits; index 1 means "consistent".
    """

    def __init__(self, config: ContraNetConfig) -> None:
        super().__init__()

        def extractor() -> tuple[nn.Module, int]:
            return build_feature_extractor(
                config.dmm_backbone,
                in_channels=config.in_channels,
                width=config.dmm_width,
                last_conv=config.dmm_last_conv,
            )

        self.f_real, dim = extractor()
        self.f_syn, _ = extractor()
        self.feature_dim = dim
        self.fc1 = ClassConditionalLinear(config.num_classes, 2 * dim, config.dmm_hidden)
        self.head = nn.Sequential(
            nn.ReLU(inplace=True),
            nn.Linear(config.dmm_hidden, 64),
            nn.ReLU(inplace=True),
            nn.Linear(64, 2),
        )

    def forward(
        self, x: Tensor, x_rebuilt: Tensor, y: Tensor, *, x_index: Tensor | None = None
    ) -> Tensor:
        """Consistency logits of the pairs ``(x[x_index[i]], x_rebuilt[i])`` under ``y[i]``.

        ``x_index`` (B,) lets pairs share an input, which F_real then embeds once (training
        scores each input under a true and a wrong label); without it pair ``i`` is ``x[i]``.
        """
        real = self.f_real(x)
        if x_index is not None:
            real = real.index_select(0, x_index)
        f = torch.cat([real, self.f_syn(x_rebuilt)], dim=1)
        return self.head(self.fc1(f, y))
