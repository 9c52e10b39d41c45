"""ContraNet's networks (architecture only).

Yang et al., "What You See is Not What the Network Infers: Detecting Adversarial Examples
Based on Semantic Contradiction", NDSS 2022. All nets take 32x32 images: MNIST's 28x28 images
must be padded or resized to 32x32 by the caller.
"""

from __future__ import annotations

from torch import nn

from guardnet.nets.contranet.config import ContraNetConfig
from guardnet.nets.contranet.discriminator import ContraNetDiscriminator
from guardnet.nets.contranet.dmm import ClassConditionalLinear, ContraNetDMM, ResNetFeatures
from guardnet.nets.contranet.encoder import ContraNetEncoder
from guardnet.nets.contranet.generator import ContraNetGenerator
from guardnet.nets.contranet.model import (
    SCORE_NAMES,
    ContraNet,
    from_unit_range,
    ssim_scores,
    to_unit_range,
)

__all__ = [
    "SCORE_NAMES",
    "ClassConditionalLinear",
    "ContraNet",
    "ContraNetConfig",
    "ContraNetDMM",
    "ContraNetDiscriminator",
    "ContraNetEncoder",
    "ContraNetGenerator",
    "ResNetFeatures",
    "build_contranet",
    "from_unit_range",
    "ssim_scores",
    "to_unit_range",
]


def build_contranet(config: ContraNetConfig) -> nn.ModuleDict:
    """Build every ContraNet sub-network with fresh (random) weights.

    Args:
        config: the sizes.

    Returns:
        A ``ModuleDict`` with keys ``encoder``, ``generator``, ``dis`` (the Dis rejector),
        ``d_phi`` and ``d_aux`` (the two training discriminators; same class, separate
        weights) and ``dmm``.
    """
    return nn.ModuleDict(
        {
            "encoder": ContraNetEncoder(config),
            "generator": ContraNetGenerator(config),
            "dis": ContraNetDiscriminator(config),
            "d_phi": ContraNetDiscriminator(config),
            "d_aux": ContraNetDiscriminator(config),
            "dmm": ContraNetDMM(config),
        }
    )
