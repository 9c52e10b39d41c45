"""ContraNet's projection discriminator (used three times: Dis, D_phi and D_aux).

Yang et al., "What You See is Not What the Network Infers", NDSS 2022, train the generator
adversarially against class-conditional discriminators and reuse one as the "Dis" rejector.
The architecture is BigGAN's CIFAR discriminator with the projection head of Miyato & Koyama
("cGANs with Projection Discriminator", ICLR 2018).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from guardnet.nets.contranet.config import ContraNetConfig
from guardnet.nets.contranet.generator import SelfAttention, sn_conv, sn_linear

__all__ = ["ContraNetDiscriminator", "DBlock"]


class DBlock(nn.Module):
    """Residual block (ReLU-conv3x3-ReLU-conv3x3, optional 2x2 average-pool down-sampling).

    Args:
        cin: input channels.
        cout: output channels.
        downsample: halve the resolution.
        preactivation: apply ReLU before the first conv (False for the first block, which
            sees the raw image).
    """

    def __init__(self, cin: int, cout: int, *, downsample: bool, preactivation: bool) -> None:
        super().__init__()
        self.downsample = downsample
        self.preactivation = preactivation
        self.conv1 = sn_conv(cin, cout, 3, padding=1)
        self.conv2 = sn_conv(cout, cout, 3, padding=1)
        self.skip = sn_conv(cin, cout, 1) if cin != cout or downsample else None

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(x) if self.preactivation else x
        h = self.conv2(F.relu(self.conv1(h)))
        if self.downsample:
            h = F.avg_pool2d(h, 2)
        s = x
        if self.skip is not None:
            if self.preactivation:
                s = self.skip(s)
                if self.downsample:
                    s = F.avg_pool2d(s, 2)
            else:
                if self.downsample:
                    s = F.avg_pool2d(s, 2)
                s = self.skip(s)
        return h + s


class ContraNetDiscriminator(nn.Module):
    """Projection discriminator: 32 -> 16 -> 8 -> 8, sum pooling, ``linear(h) + <e(y), h>``.

    Args:
        config: the ContraNet sizes (uses ``in_channels``, ``d_ch``, ``self_attention``,
            ``num_classes``).

    Shape:
        - Input: ``x`` (B, in_channels, 32, 32), ``y`` (B,) int64 labels.
        - Output: (B,) logits (higher = real and consistent with ``y``).
    """

    def __init__(self, config: ContraNetConfig) -> None:
        super().__init__()
        ch = 4 * config.d_ch
        self.blocks = nn.ModuleList(
            [
                DBlock(config.in_channels, ch, downsample=True, preactivation=False),
                DBlock(ch, ch, downsample=True, preactivation=True),
                DBlock(ch, ch, downsample=False, preactivation=True),
                DBlock(ch, ch, downsample=False, preactivation=True),
            ]
        )
        # Attention after the first block, at 16x16.
        self.attention = SelfAttention(ch) if config.self_attention else None
        self.linear = sn_linear(ch, 1)
        self.embed = spectral_norm(nn.Embedding(config.num_classes, ch))

    def features(self, x: Tensor) -> Tensor:
        """Sum-pooled features (B, 4 * d_ch)."""
        h = x
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i == 0 and self.attention is not None:
                h = self.attention(h)
        return F.relu(h).sum(dim=(2, 3))

    def projection(self, h: Tensor, y: Tensor) -> Tensor:
        """Class projection term ``<embed(y), h>`` (B,)."""
        return (self.embed(y) * h).sum(dim=1)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        h = self.features(x)
        return self.linear(h).squeeze(1) + self.projection(h, y)
