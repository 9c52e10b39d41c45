"""ContraNet: reject inputs whose rebuild under the predicted label contradicts them.

Yang et al., "What You See is Not What the Network Infers: Detecting Adversarial Examples
Based on Semantic Contradiction", NDSS 2022; the small-perturbation layer of MixDefense
(Yang et al., 2021, Sec. 4).

The encoder maps the input to a latent code, the class-conditional generator rebuilds the
input from that code *under the classifier's predicted label*. A clean input looks like its
rebuild; an adversarial one does not, because its predicted label is wrong and the rebuild
follows the label. Three rejectors judge the pair, each with its own threshold, OR-combined:

- ``dmm``: the Deep Metric Model's probability that input and rebuild are consistent;
- ``dis``: the Dis discriminator's logit on the rebuild (is it a good image of that class?);
- ``ssim``: SSIM between input and rebuild on [0, 1] images.

All three are low for suspicious inputs. Only the predicted label is rebuilt (the authors' code
rebuilt every class and kept one). Inputs of another size are mapped to ContraNet's 32x32 inside
the layer: smaller ones (MNIST's 28x28) are zero-padded, larger ones resized (the paper's
workflow for high-resolution classifiers).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from guardnet.errors import ConfigError, InputShapeError
from guardnet.layers._loading import load_layer_module
from guardnet.layers.base import Layer, LayerInput, LayerKind, LayerOutput
from guardnet.layers.registry import register_layer
from guardnet.nets.contranet import SCORE_NAMES, ContraNet, from_unit_range, to_unit_range

__all__ = ["ContraNetLayer"]


@register_layer("contranet")
class ContraNetLayer(Layer):
    """The ContraNet detector as a guard layer (``post``: after the classifier's argmax).

    Args:
        net: trained :class:`~guardnet.nets.contranet.ContraNet` networks.
        sample: rebuild from a latent sampled from the encoder's posterior instead of its mean
            (the authors' choice; the default is deterministic).
        seed: seed of that sample, so repeated calls give the same scores.
        channels_last: run the networks in channels-last memory format (the default: 25% less
            time per image on CPU, measured in ``benchmarks/bench_contranet.py``). The networks
            are converted in place; scores equal the contiguous layout's up to float rounding.

    Shape:
        - Input: images (B, C, H, W) in [0, 1] with C = ``net.config.in_channels``, any H, W;
          labels (B,).
        - Output scores: (B, 3), columns ``dmm``, ``dis``, ``ssim`` (low = suspicious).

    Example:
        >>> from guardnet import GuardedModel
        >>> net = ContraNet(num_classes=10, in_channels=1, g_ch=2, d_ch=2, dmm_backbone="cnn")
        >>> classifier = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10))
        >>> guard = GuardedModel(classifier, [ContraNetLayer(net)])
        >>> sorted(guard.compute_scores(torch.rand(4, 1, 28, 28)))
        ['contranet.dis', 'contranet.dmm', 'contranet.ssim']
    """

    kind: ClassVar[LayerKind] = LayerKind.POST
    higher_is_suspicious: ClassVar[bool] = False
    differentiable: ClassVar[bool] = True
    default_name: ClassVar[str] = "contranet"
    score_names: ClassVar[tuple[str, ...]] = SCORE_NAMES

    def __init__(
        self, net: ContraNet, *, sample: bool = False, seed: int = 0, channels_last: bool = True
    ) -> None:
        super().__init__()
        if not isinstance(net, ContraNet):
            raise TypeError(f"net must be a ContraNet, got {type(net).__name__}")
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.net = net.eval().to(memory_format=self.memory_format)
        self.num_classes = net.num_classes
        self.sample = sample
        self.seed = seed

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike[str],
        *,
        revision: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        local_files_only: bool | None = None,
        device: str | torch.device = "cpu",
        **kwargs: Any,
    ) -> ContraNetLayer:
        """Load trained ContraNet networks: a registered name, a Hub folder or a repo id.

        Args:
            name_or_path: e.g. ``"contranet-mnist"`` (see ``guardnet models``), a folder
                written by ``guardnet train contranet`` (``RUN_DIR/model``) or a Hub repo id.
            revision, cache_dir, local_files_only, device: as for
                :func:`guardnet.from_pretrained`.
            **kwargs: passed to :class:`ContraNetLayer`.

        Raises:
            WeightsError: the weights are missing, damaged, or not a ContraNet.
        """
        model = load_layer_module(
            name_or_path,
            ContraNet,
            "a ContraNet",
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            device=device,
        )
        return cls(model, **kwargs)

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments, with ``net`` as its architecture config (no weights).

        ``net`` is ``{"architecture": "ContraNet", "arch_args": ...}``, the form of a
        pretrained folder's ``config.json``, so :meth:`from_config` builds the networks empty.
        """
        arch_args = {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in dataclasses.asdict(self.net.config).items()
        }
        return {
            "net": {"architecture": "ContraNet", "arch_args": arch_args},
            "sample": self.sample,
            "seed": self.seed,
            "channels_last": self.memory_format is torch.channels_last,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ContraNetLayer:
        """A layer with untrained networks built from :meth:`get_config`'s output."""
        options = dict(config)
        net = options.pop("net", None)
        if not isinstance(net, Mapping) or net.get("architecture") != "ContraNet":
            raise ConfigError(
                "a contranet layer config needs 'net': {'architecture': 'ContraNet', "
                f"'arch_args': ...}}, got {net!r}"
            )
        return cls(ContraNet(**(net.get("arch_args") or {})), **options)

    def _check(self, images: Tensor) -> None:
        channels = self.net.config.in_channels
        if images.shape[1] != channels:
            raise InputShapeError(
                f"this ContraNet was trained on {channels}-channel images, got "
                f"{images.shape[1]} channels (shape {tuple(images.shape)})"
            )

    def _generator(self, device: torch.device) -> torch.Generator | None:
        if not self.sample:
            return None
        return torch.Generator(device=device).manual_seed(self.seed)

    def _rebuild(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """ContraNet's input (32x32, [-1, 1]) and its rebuild under ``labels``."""
        self._check(images)
        dtype = next(self.net.parameters()).dtype  # float64 images into float32 nets and back
        x = to_unit_range(images.to(dtype), self.net.config.image_size)
        x = x.contiguous(memory_format=self.memory_format)
        rebuilt = self.net.rebuild(
            x, labels, sample=self.sample, generator=self._generator(x.device)
        )
        return x, rebuilt

    def forward(self, inputs: LayerInput) -> LayerOutput:
        if inputs.labels is None:
            raise RuntimeError("ContraNetLayer is a post layer: it needs the predicted labels")
        x, rebuilt = self._rebuild(inputs.images, inputs.labels)
        return LayerOutput(scores=self.net.scores(x, rebuilt, inputs.labels))

    @torch.no_grad()
    def rebuild(self, images: Tensor, labels: Tensor) -> Tensor:
        """Rebuild [0, 1] images under ``labels``; returns (B, C, 32, 32) images in [0, 1]."""
        return from_unit_range(self._rebuild(images, labels)[1])

    @torch.no_grad()
    def reconstruction_grid(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        other_labels: int = 9,
        path: str | os.PathLike[str] | None = None,
        padding: int = 2,
    ) -> Tensor:
        """The paper's Fig. 2: each input next to its rebuilds under its label and others.

        Row ``i``: the input (at 32x32), its rebuild under ``labels[i]``, then its rebuilds
        under the next ``other_labels`` classes (``labels[i] + 1``, ``+ 2``, ... modulo K). A
        working ContraNet copies the input in the second column and draws other classes in the
        rest, in the input's style.

        Args:
            images: (B, C, H, W) in [0, 1].
            labels: (B,) labels to rebuild under first (true or predicted).
            other_labels: how many other classes per row (at most K - 1).
            path: write the grid as a PNG here as well.
            padding: pixels between tiles.

        Returns:
            The grid, (C', H', W') in [0, 1] (torchvision ``make_grid``).
        """
        from torchvision.utils import make_grid, save_image

        k = self.net.num_classes
        other_labels = max(0, min(other_labels, k - 1))
        was_training = self.training
        self.eval()
        try:
            device = next(self.net.parameters()).device
            images, labels = images.to(device), labels.to(device)
            shifts = torch.arange(other_labels + 1, device=device)
            grid_labels = (labels[:, None] + shifts[None, :]) % k  # (B, 1 + other)
            repeated = images.repeat_interleave(other_labels + 1, dim=0)
            rebuilt = self.rebuild(repeated, grid_labels.flatten())
            rebuilt = rebuilt.view(images.shape[0], other_labels + 1, *rebuilt.shape[1:])
            shown = from_unit_range(to_unit_range(images, self.net.config.image_size))
            tiles = torch.cat([shown[:, None], rebuilt], dim=1).flatten(0, 1)
            grid = make_grid(tiles.cpu(), nrow=other_labels + 2, padding=padding, pad_value=1.0)
        finally:
            self.train(was_training)
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            save_image(grid, os.fspath(path))
        return grid

    def extra_repr(self) -> str:
        c = self.net.config
        return (
            f"num_classes={c.num_classes}, in_channels={c.in_channels}, g_ch={c.g_ch}, "
            f"sample={self.sample}"
        )
