"""ContraNet's encoder E: a convolutional VAE encoder for 32x32 images.

Yang et al., "What You See is Not What the Network Infers", NDSS 2022: E maps the input image
to the latent z that the conditional generator decodes with the classifier's label.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from guardnet.nets.contranet.config import ContraNetConfig

__all__ = ["ContraNetEncoder"]


class _WholeMapConv(nn.Conv2d):
    """A valid conv whose kernel covers the whole input map, run as one matmul.

    Same parameters and result as ``nn.Conv2d`` (checkpoints are interchangeable). oneDNN
    reorders the weight on every call, which made this 2 MMAC conv cost milliseconds at batch 1
    (torch.profiler); as a matmul it reads the weight in place.
    """

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2:] != self.weight.shape[-2:] or self.padding != (0, 0):
            return super().forward(x)
        if self.weight.is_contiguous():
            weight, flat = self.weight.flatten(1), x.flatten(1)
        else:  # channels-last weight: sum over (h, w, c) in memory order, no copy of it
            weight = self.weight.permute(0, 2, 3, 1).flatten(1)
            flat = x.permute(0, 2, 3, 1).flatten(1)
        return F.linear(flat, weight, self.bias)[:, :, None, None]


class ContraNetEncoder(nn.Module):
    """Conv stack 32->16->8->4 (4x4 kernels, stride 2), a 4x4 valid conv, then a VAE head.

    Args:
        config: the ContraNet sizes (uses ``in_channels``, ``latent_dim``,
            ``encoder_features``).

    Shape:
        - Input: (B, in_channels, 32, 32).
        - Output of ``forward``: ``(mu, logvar)``, each (B, latent_dim).
    """

    def __init__(self, config: ContraNetConfig) -> None:
        super().__init__()
        self.latent_dim = config.latent_dim
        self.features = nn.Sequential(
            nn.Conv2d(config.in_channels, 64, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(64, 128, 4, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(128),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(128, 256, 4, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(256),
            nn.LeakyReLU(0.2, inplace=True),
            _WholeMapConv(256, config.encoder_features, 4),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Flatten(),
        )
        self.mu = nn.Linear(config.encoder_features, config.latent_dim)
        self.logvar = nn.Linear(config.encoder_features, config.latent_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.features(x)
        return self.mu(h), self.logvar(h)

    def encode(
        self, x: Tensor, *, sample: bool = False, generator: torch.Generator | None = None
    ) -> Tensor:
        """Latent code of ``x``: ``mu`` by default, a reparameterised sample if ``sample``.

        Args:
            x: images (B, in_channels, 32, 32).
            sample: draw ``mu + exp(logvar / 2) * eps`` instead of returning ``mu``.
            generator: random generator for ``eps`` (reproducible sampling).

        Returns:
            (B, latent_dim) latent codes.
        """
        mu, logvar = self(x)
        if not sample:
            return mu
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + torch.exp(0.5 * logvar) * eps
