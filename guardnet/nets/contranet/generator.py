"""ContraNet's conditional generator G(z, y): a BigGAN-style residual generator.

Yang et al., "What You See is Not What the Network Infers", NDSS 2022: G rebuilds the input
from the encoder's latent z and the classifier's label y; a wrong label gives a rebuilt image
that contradicts the input. The architecture follows BigGAN's CIFAR generator (Brock et al.,
ICLR 2019): hierarchical latent chunks, a shared class embedding, conditional batch norm,
spectral norm and optional self-attention.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from guardnet.nets.contranet.config import ContraNetConfig

__all__ = ["ConditionalBatchNorm2d", "ContraNetGenerator", "GBlock", "SelfAttention"]


def sn_conv(cin: int, cout: int, kernel: int, *, padding: int = 0) -> nn.Module:
    """Spectrally normalised convolution."""
    return spectral_norm(nn.Conv2d(cin, cout, kernel, padding=padding))


def sn_linear(fin: int, fout: int, *, bias: bool = True) -> nn.Module:
    """Spectrally normalised linear layer."""
    return spectral_norm(nn.Linear(fin, fout, bias=bias))


class ConditionalBatchNorm2d(nn.Module):
    """Batch norm whose gain and bias come from a condition vector.

    ``out = bn(x) * (1 + gain(cond)) + bias(cond)`` with an affine-free BatchNorm2d.

    Args:
        num_features: channels of ``x``.
        cond_dim: size of the condition vector.
    """

    def __init__(self, num_features: int, cond_dim: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(num_features, affine=False)
        self.gain = sn_linear(cond_dim, num_features, bias=False)
        self.bias = sn_linear(cond_dim, num_features, bias=False)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        gain = (1 + self.gain(cond))[:, :, None, None]
        bias = self.bias(cond)[:, :, None, None]
        return self.bn(x) * gain + bias


class SelfAttention(nn.Module):
    """SAGAN self-attention block (Zhang et al., 2019) with spectral norm, as in BigGAN.

    Args:
        channels: input and output channels (at least 8).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.theta = spectral_norm(nn.Conv2d(channels, channels // 8, 1, bias=False))
        self.phi = spectral_norm(nn.Conv2d(channels, channels // 8, 1, bias=False))
        self.g = spectral_norm(nn.Conv2d(channels, channels // 2, 1, bias=False))
        self.o = spectral_norm(nn.Conv2d(channels // 2, channels, 1, bias=False))
        self.gamma = nn.Parameter(torch.zeros(()))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        theta = self.theta(x).flatten(2)  # (B, C/8, HW)
        phi = F.max_pool2d(self.phi(x), 2).flatten(2)  # (B, C/8, HW/4)
        g = F.max_pool2d(self.g(x), 2).flatten(2)  # (B, C/2, HW/4)
        attn = torch.softmax(torch.bmm(theta.transpose(1, 2), phi), dim=-1)  # (B, HW, HW/4)
        out = torch.bmm(g, attn.transpose(1, 2)).view(b, c // 2, h, w)
        return x + self.gamma * self.o(out)


class GBlock(nn.Module):
    """Up-sampling residual block: CBN-ReLU-up-conv3x3-CBN-ReLU-conv3x3 plus a 1x1 skip.

    Args:
        cin: input channels.
        cout: output channels.
        cond_dim: size of the CBN condition (latent chunk + shared embedding).
    """

    def __init__(self, cin: int, cout: int, cond_dim: int) -> None:
        super().__init__()
        self.bn1 = ConditionalBatchNorm2d(cin, cond_dim)
        self.conv1 = sn_conv(cin, cout, 3, padding=1)
        self.bn2 = ConditionalBatchNorm2d(cout, cond_dim)
        self.conv2 = sn_conv(cout, cout, 3, padding=1)
        self.skip = sn_conv(cin, cout, 1)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        h = F.interpolate(F.relu(self.bn1(x, cond)), scale_factor=2, mode="nearest")
        h = self.conv2(F.relu(self.bn2(self.conv1(h), cond)))
        return h + self.skip(F.interpolate(x, scale_factor=2, mode="nearest"))


class ContraNetGenerator(nn.Module):
    """Class-conditional residual generator 4x4 -> 8 -> 16 -> 32.

    ``z`` is split into ``config.num_latent_chunks`` equal chunks: the first goes through a
    linear layer to the 4x4 input map (with ``config.label_in_stem``, concatenated with the
    shared class embedding of ``y`` first), each later chunk is concatenated with that
    embedding and conditions one up-block's two CBN layers.

    Args:
        config: the ContraNet sizes (uses ``latent_dim``, ``num_latent_chunks``,
            ``shared_dim``, ``g_ch``, ``self_attention``, ``label_in_stem``, ``num_classes``,
            ``in_channels``).

    Shape:
        - Input: ``z`` (B, latent_dim), ``y`` (B,) int64 labels.
        - Output: (B, in_channels, 32, 32) images in (-1, 1).
    """

    def __init__(self, config: ContraNetConfig) -> None:
        super().__init__()
        ch = 4 * config.g_ch
        self.chunk_size = config.chunk_size
        self.num_blocks = config.num_latent_chunks - 1
        self.channels = ch
        cond_dim = self.chunk_size + config.shared_dim
        self.shared = nn.Embedding(config.num_classes, config.shared_dim)
        self.label_in_stem = config.label_in_stem
        stem_dim = self.chunk_size + (config.shared_dim if config.label_in_stem else 0)
        self.linear = sn_linear(stem_dim, ch * 4 * 4)
        self.blocks = nn.ModuleList(GBlock(ch, ch, cond_dim) for _ in range(self.num_blocks))
        # Block i outputs 8 * 2**i pixels; attention sits after the 16x16 block.
        self.attention = SelfAttention(ch) if config.self_attention else None
        self.out_bn = nn.BatchNorm2d(ch)
        self.out_conv = sn_conv(ch, config.in_channels, 3, padding=1)

    def forward(self, z: Tensor, y: Tensor) -> Tensor:
        chunks = torch.split(z, self.chunk_size, dim=1)
        if len(chunks) != self.num_blocks + 1 or chunks[-1].shape[1] != self.chunk_size:
            raise ValueError(
                f"z must have {(self.num_blocks + 1) * self.chunk_size} features, "
                f"got shape {tuple(z.shape)}"
            )
        shared = self.shared(y)
        stem = torch.cat([chunks[0], shared], dim=1) if self.label_in_stem else chunks[0]
        h = self.linear(stem).view(z.shape[0], self.channels, 4, 4)
        for i, block in enumerate(self.blocks):
            h = block(h, torch.cat([chunks[i + 1], shared], dim=1))
            if i == 1 and self.attention is not None:
                h = self.attention(h)
        return torch.tanh(self.out_conv(F.relu(self.out_bn(h))))
