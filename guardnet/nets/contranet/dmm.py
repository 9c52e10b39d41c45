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

from guardnet.nets.contranet.config import ContraNetConfig
from guardnet.nets.resnet_cifar import CifarResNet

__all__ = ["ClassConditionalLinear", "ContraNetDMM", "ResNetFeatures", "build_feature_extractor"]


def _mobilenet_features(
    in_channels: int, width_mult: float, *, last_conv: bool
) -> tuple[nn.Module, int]:
    """MobileNetV2 features for 32x32 inputs: first conv with stride 1 (final map 2x2)."""
    # torchvision.models is imported here, not at module level: it costs seconds at import time
    # and only this backbone needs it.
    from torchvision.models import mobilenet_v2

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


class ResNetFeatures(nn.Module):
    """CIFAR ResNet20 trunk, average pooled, on ContraNet's [-1, 1] images.

    The input is mapped to [0, 1] and normalised with ``mean`` and ``std`` (a fixed affine
    map, not a weight), so the trunk sees what a classifier trained with that normalisation
    sees, and :meth:`load_classifier_trunk` can start it from such a classifier.

    Args:
        in_channels: image channels.
        width: channels of the first stage (the later stages have 2x and 4x).
        mean: per-channel mean on [0, 1] images (``None``: 0.5, i.e. the [-1, 1] input as is).
        std: per-channel standard deviation (``None``: 0.5).

    Shape:
        - Input: (B, in_channels, 32, 32) in [-1, 1].
        - Output: (B, 4 * width).
    """

    def __init__(
        self,
        in_channels: int,
        width: int,
        *,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
    ) -> None:
        super().__init__()
        m = torch.tensor(mean if mean is not None else (0.5,) * in_channels)
        s = torch.tensor(std if std is not None else (0.5,) * in_channels)
        # ((x + 1) / 2 - m) / s as one multiply-add; derived from the config, so not saved.
        self.register_buffer("scale", (0.5 / s).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("shift", ((0.5 - m) / s).view(1, -1, 1, 1), persistent=False)
        self.net = CifarResNet(20, 1, in_channels=in_channels, width=width)
        self.net.linear = nn.Identity()  # the trunk's forward then returns the pooled features
        self.out_features = 4 * width

    def forward(self, x: Tensor) -> Tensor:
        return self.net(torch.addcmul(self.shift, x, self.scale))

    def load_classifier_trunk(self, classifier: nn.Module) -> None:
        """Copy a CIFAR ResNet20 classifier's weights up to its pooled features.

        Args:
            classifier: a :class:`~guardnet.nets.resnet_cifar.CifarResNet` of depth 20 and
                this trunk's width and input channels (its ``linear`` layer is not copied).

        Raises:
            ValueError: the classifier's weights do not match this trunk's, key for key.
        """
        state = {k: v for k, v in classifier.state_dict().items() if not k.startswith("linear.")}
        try:
            self.net.load_state_dict(state, strict=True)
        except RuntimeError as error:
            raise ValueError(
                "the classifier does not match the DMM's ResNet20 trunk (depth 20, first stage "
                f"width {self.out_features // 4}, {self.net.conv1.in_channels} input channels): "
                f"{error}"
            ) from None


def build_feature_extractor(
    backbone: str,
    *,
    in_channels: int,
    width: float,
    last_conv: bool = True,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> tuple[nn.Module, int]:
    """Build a DMM feature extractor.

    Args:
        backbone: ``"mobilenet_v2"`` (torchvision, random init, adapted to 32x32), ``"cnn"``
            or ``"resnet20"`` (:class:`ResNetFeatures`).
        in_channels: image channels.
        width: MobileNetV2 ``width_mult``, the CNN's width multiplier, or the multiplier of
            ResNet20's 16 first-stage channels.
        last_conv: keep MobileNetV2's final 1x1 conv (ignored by the others).
        mean: ``"resnet20"`` only: per-channel input mean on [0, 1] images.
        std: ``"resnet20"`` only: per-channel input standard deviation.

    Returns:
        The module mapping (B, in_channels, 32, 32) to (B, dim), and ``dim``.
    """
    if backbone == "resnet20":
        features = ResNetFeatures(in_channels, max(1, round(16 * width)), mean=mean, std=std)
        return features, features.out_features
    if mean is not None or std is not None:
        raise ValueError(f"input mean/std apply to the 'resnet20' backbone only, not {backbone!r}")
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
            ``dmm_last_conv``, ``dmm_input_mean``, ``dmm_input_std``, ``in_channels``,
            ``num_classes``).

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
                mean=config.dmm_input_mean,
                std=config.dmm_input_std,
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
