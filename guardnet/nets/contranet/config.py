"""Hyper-parameters of the ContraNet architecture.

ContraNet: Yang et al., "What You See is Not What the Network Infers: Detecting Adversarial
Examples Based on Semantic Contradiction", NDSS 2022.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["DMM_BACKBONES", "ContraNetConfig"]

DMM_BACKBONES = ("mobilenet_v2", "cnn", "resnet20")


@dataclass(frozen=True)
class ContraNetConfig:
    """Sizes of every ContraNet sub-network (encoder, generator, discriminators, DMM).

    All nets take 32x32 images in [-1, 1]-like scale chosen by the caller; MNIST's 28x28 images
    must be padded (2 pixels each side) or resized to 32x32 by the caller.

    Args:
        num_classes: number of classifier classes (the label conditions G, the discriminators
            and the DMM's first layer).
        in_channels: image channels (1 for MNIST, 3 for colour data sets).
        image_size: input side; only 32 is supported (the paper's setting).
        latent_dim: size of the VAE latent z (the paper uses 80).
        num_latent_chunks: z is split into this many equal chunks: the first feeds G's input
            linear, each later one conditions one of G's three up-blocks, so it must be 4.
        shared_dim: size of G's shared class embedding.
        g_ch: generator base width; every G block has ``4 * g_ch`` channels (BigGAN
            convention; the authors' CIFAR model uses 96, i.e. 384 channels).
        d_ch: discriminator base width; every D block has ``4 * d_ch`` channels.
        self_attention: add a self-attention block at 16x16 in G and D.
        label_in_stem: also feed G's shared class embedding to its input linear (the 4x4 map
            that sets the layout), not only to the up-blocks' CBN gains and biases, so the
            label can shape the layout too. Off in the paper's design and the shipped weights.
        dmm_backbone: DMM feature extractor, ``"mobilenet_v2"``, ``"cnn"`` or ``"resnet20"``
            (the CIFAR ResNet20 trunk, whose weights can start from a ResNet20 classifier's:
            ``ContraNetTrainSettings.dmm_init_from_classifier``).
        dmm_width: MobileNetV2 ``width_mult``, or for ``"cnn"`` the multiplier of its base
            width of 32 channels, or for ``"resnet20"`` of its first stage's 16 channels.
        dmm_last_conv: keep MobileNetV2's final 1x1 conv (to ``1280 * max(1, dmm_width)``
            channels, as in torchvision). Without it the pooled feature is the last inverted
            residual block's output (``320 * dmm_width`` rounded to 8), which shrinks the
            class-conditional first layer (``num_classes * 2 * dim * dmm_hidden`` weights)
            about 16x at width 0.25. Ignored by ``"cnn"``.
        dmm_hidden: output width of the DMM's class-conditional first layer (paper: 512).
        dmm_input_mean: per-channel mean that the ``"resnet20"`` extractors subtract from
            their [0, 1] input (they map ContraNet's [-1, 1] images to [0, 1] first), so that
            they see images as a classifier trained with this normalisation does. ``None``
            with ``dmm_input_std`` ``None``: mean 0.5, std 0.5 (the [-1, 1] images as given).
        dmm_input_std: the matching per-channel standard deviation.
        encoder_features: channels of the encoder's last (4x4 valid) convolution.

    Raises:
        ValueError: on any inconsistent value.
    """

    num_classes: int
    in_channels: int
    image_size: int = 32
    latent_dim: int = 80
    num_latent_chunks: int = 4
    shared_dim: int = 128
    g_ch: int = 16
    d_ch: int = 16
    self_attention: bool = False
    label_in_stem: bool = False
    dmm_backbone: str = "mobilenet_v2"
    dmm_width: float = 0.25
    dmm_last_conv: bool = False
    dmm_hidden: int = 512
    encoder_features: int = 512
    dmm_input_mean: tuple[float, ...] | None = None
    dmm_input_std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        def positive(name: str) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"ContraNetConfig.{name} must be a positive int, got {value!r}")

        for name in (
            "num_classes",
            "in_channels",
            "image_size",
            "latent_dim",
            "num_latent_chunks",
            "shared_dim",
            "g_ch",
            "d_ch",
            "dmm_hidden",
            "encoder_features",
        ):
            positive(name)
        if self.num_classes < 2:
            raise ValueError(f"ContraNetConfig.num_classes must be >= 2, got {self.num_classes}")
        if self.image_size != 32:
            raise ValueError(
                f"ContraNetConfig.image_size must be 32 (pad or resize MNIST's 28x28 to 32), "
                f"got {self.image_size}"
            )
        if self.num_latent_chunks != 4:
            raise ValueError(
                "ContraNetConfig.num_latent_chunks must be 4 (one chunk for G's input linear and "
                f"one per up-block 4->8->16->32), got {self.num_latent_chunks}"
            )
        if self.latent_dim % self.num_latent_chunks:
            raise ValueError(
                f"ContraNetConfig.latent_dim ({self.latent_dim}) must be divisible by "
                f"num_latent_chunks ({self.num_latent_chunks})"
            )
        for name in ("self_attention", "label_in_stem", "dmm_last_conv"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(
                    f"ContraNetConfig.{name} must be a bool, got {getattr(self, name)!r}"
                )
        if self.self_attention and min(self.g_ch, self.d_ch) < 2:
            raise ValueError(
                "ContraNetConfig.self_attention needs g_ch and d_ch >= 2 (at least 8 channels), "
                f"got g_ch={self.g_ch}, d_ch={self.d_ch}"
            )
        if self.dmm_backbone not in DMM_BACKBONES:
            raise ValueError(
                f"ContraNetConfig.dmm_backbone must be one of {DMM_BACKBONES}, "
                f"got {self.dmm_backbone!r}"
            )
        if not isinstance(self.dmm_width, (int, float)) or not self.dmm_width > 0:
            raise ValueError(f"ContraNetConfig.dmm_width must be > 0, got {self.dmm_width!r}")
        self._check_dmm_normalisation()

    def _check_dmm_normalisation(self) -> None:
        mean, std = self.dmm_input_mean, self.dmm_input_std
        if (mean is None) != (std is None):
            raise ValueError(
                "ContraNetConfig.dmm_input_mean and dmm_input_std go together, got "
                f"mean={mean!r}, std={std!r}"
            )
        if mean is None:
            return
        if self.dmm_backbone != "resnet20":
            raise ValueError(
                "ContraNetConfig.dmm_input_mean/dmm_input_std apply to the 'resnet20' DMM "
                f"backbone only, got dmm_backbone={self.dmm_backbone!r}"
            )
        for name, values in (("dmm_input_mean", mean), ("dmm_input_std", std)):
            if (
                not isinstance(values, (list, tuple))
                or len(values) != self.in_channels
                or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)
            ):
                raise ValueError(
                    f"ContraNetConfig.{name} must hold {self.in_channels} finite numbers (one "
                    f"per channel), got {values!r}"
                )
            # JSON configs give lists: store tuples so that configs compare equal.
            object.__setattr__(self, name, tuple(float(v) for v in values))
        if not all(v > 0 for v in std):
            raise ValueError(f"ContraNetConfig.dmm_input_std must be > 0, got {std!r}")

    @property
    def chunk_size(self) -> int:
        """Size of one latent chunk (``latent_dim // num_latent_chunks``)."""
        return self.latent_dim // self.num_latent_chunks

    @classmethod
    def small(cls, num_classes: int, in_channels: int) -> ContraNetConfig:
        """guardnet's cheap default: 64-channel G and Ds, no attention, MobileNetV2 x0.25.

        The DMM's MobileNetV2 drops its final 1x1 conv (80-dim features per image).
        """
        return cls(num_classes=num_classes, in_channels=in_channels)

    @classmethod
    def authors(cls, num_classes: int, in_channels: int) -> ContraNetConfig:
        """A same-size build of the paper's CIFAR architecture, for benchmarking.

        384-channel BigGAN generator with self-attention, 192-channel discriminators and
        full-width MobileNetV2 feature extractors in the DMM.
        """
        return cls(
            num_classes=num_classes,
            in_channels=in_channels,
            g_ch=96,
            d_ch=48,
            self_attention=True,
            dmm_backbone="mobilenet_v2",
            dmm_width=1.0,
            dmm_last_conv=True,
        )
