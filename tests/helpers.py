"""Small models, a tiny ContraNet and one test layer of each kind, to exercise the layer
protocol."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from guardnet.layers.base import Layer, LayerInput, LayerKind, LayerOutput
from guardnet.nets.contranet import ContraNet

#: A ContraNet small enough for fast tests (random weights; scores are not meaningful).
TINY_CONTRANET = dict(
    g_ch=2, d_ch=2, dmm_backbone="cnn", dmm_width=0.25, encoder_features=16, dmm_hidden=16
)


def tiny_contranet(num_classes: int = 10, channels: int = 1, seed: int = 0) -> ContraNet:
    """A randomly initialised tiny ContraNet in eval mode, seeded."""
    torch.manual_seed(seed)
    return ContraNet(num_classes=num_classes, in_channels=channels, **TINY_CONTRANET).eval()


class TinyClassifier(nn.Module):
    """A small conv net taking [0, 1] images (or normalised ones, the test decides)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, *, bn: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8) if bn else nn.Identity()
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.bn(self.conv(x)))
        return self.fc(self.drop(h.mean(dim=(2, 3))))


class PixelScoreLayer(Layer):
    """``pre``: the score is one pixel's value, so tests can set scores exactly."""

    kind = LayerKind.PRE
    default_name = "pixel"

    def __init__(self, *, channel: int = 0, higher_is_suspicious: bool = True) -> None:
        super().__init__()
        self.channel = channel
        self.higher_is_suspicious = higher_is_suspicious  # type: ignore[misc]
        self.seen: list[Tensor] = []

    def forward(self, inputs: LayerInput) -> LayerOutput:
        self.seen.append(inputs.images.detach().clone())
        return LayerOutput(scores=inputs.images[:, self.channel, 0, 0].float())


class LowConfidenceLayer(Layer):
    """``post``: 1 - softmax probability of the predicted label (differentiable)."""

    kind = LayerKind.POST
    differentiable = True
    default_name = "confidence"

    def __init__(self) -> None:
        super().__init__()
        self.batch_sizes: list[int] = []

    def forward(self, inputs: LayerInput) -> LayerOutput:
        assert inputs.logits is not None and inputs.labels is not None
        self.batch_sizes.append(inputs.batch_size)
        probs = inputs.logits.softmax(dim=1)
        return LayerOutput(scores=1 - probs.gather(1, inputs.labels[:, None]).squeeze(1))


class GradientNormLayer(Layer):
    """``probe``: norm of the input gradient of the loss at the predicted label."""

    kind = LayerKind.PROBE
    default_name = "gradnorm"

    def forward(self, inputs: LayerInput) -> LayerOutput:
        assert inputs.classifier is not None and inputs.labels is not None
        x = inputs.images.detach().requires_grad_(True)
        loss = F.cross_entropy(inputs.classifier(x), inputs.labels, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
        return LayerOutput(scores=grad.flatten(1).norm(dim=1))


class ShiftLabelsLayer(Layer):
    """``reform``: replaces the images by their negatives and re-classifies them; never rejects."""

    kind = LayerKind.REFORM
    rejects = False
    default_name = "negate"

    def forward(self, inputs: LayerInput) -> LayerOutput:
        assert inputs.classifier is not None
        reformed = 1 - inputs.images
        logits = inputs.classifier(reformed)
        return LayerOutput(scores=logits.amax(dim=1), images=reformed, logits=logits)


class SumClassifier(nn.Module):
    """Two classes on any input: class 1 iff the pixels sum to more than 1."""

    def forward(self, x: Tensor) -> Tensor:
        s = x.flatten(1).sum(dim=1) - 1.0
        return torch.stack([-s, s], dim=1) * 10


class SecondPixelDetector(Layer):
    """``pre``, differentiable: the distance of the second pixel from 0.5."""

    kind = LayerKind.PRE
    differentiable = True
    default_name = "pixel"

    def forward(self, inputs: LayerInput) -> LayerOutput:
        return LayerOutput(scores=(inputs.images.flatten(1)[:, 1] - 0.5).abs())


class FailingLayer(Layer):
    """A layer (``pre`` unless told) that breaks on a batch holding an image whose first pixel
    is above ``trigger``, else scores that pixel (high = suspicious).

    ``failure`` says how it breaks: ``"raise"`` a ``RuntimeError``, return ``"nan"`` scores for
    the triggering images, or return scores of the wrong ``"shape"``.
    """

    kind = LayerKind.PRE
    default_name = "failing"

    def __init__(
        self, *, kind: LayerKind = LayerKind.PRE, trigger: float = 0.9, failure: str = "raise"
    ) -> None:
        super().__init__()
        self.kind = kind  # type: ignore[misc]
        self.trigger = trigger
        self.failure = failure
        self.batch_sizes: list[int] = []

    def forward(self, inputs: LayerInput) -> LayerOutput:
        self.batch_sizes.append(inputs.batch_size)
        pixel = inputs.images[:, 0, 0, 0].float()
        hit = pixel > self.trigger
        if bool(hit.any()):
            if self.failure == "raise":
                raise RuntimeError(f"first pixel above {self.trigger}")
            if self.failure == "shape":
                return LayerOutput(scores=pixel[:, None])
            pixel = pixel.masked_fill(hit, float("nan"))
        return LayerOutput(scores=pixel)
