"""SAEC: MixDefense's large-perturbation detector, a ``pre`` layer.

MixDefense (Zhang et al., "MixDefense: A Defense-in-Depth Framework for Adversarial Example
Detection Based on Statistical and Semantic Analysis", 2021) screens inputs for large
perturbations before the classifier runs, with a steganalysis-style noise estimate:

1. pseudo-saturation map: per pixel, the p-norm (p = 8) of the deviation of each channel from
   the pixel's channel mean. Natural colour images are locally smooth in it; added noise is not.
2. a high-pass steganalysis (SRM) filter on the map, which removes the image content and keeps
   the noise residual;
3. a per-image histogram of the residual over a fixed range, normalised by the pixel count;
4. the noise-level score: the variance of that histogram. A clean image's residual piles up
   around 0 (a peaked histogram, high variance); noise spreads it (a flat histogram, low
   variance). A *low* score is suspicious.

No public implementation exists; these are guardnet's stated design choices, each configurable:

- the map is computed stably in float32 by scaling with the per-pixel maximum before the 8th
  power; for one-channel images it is identically zero, so the intensity image itself is used;
- ``"valid"`` filtering (no border), so padding does not create residuals of its own;
- residuals outside ``value_range`` are not counted, but the histogram is still divided by the
  total pixel count: noise that pushes residuals out of range lowers the score further;
- several SRM kernels may be used at once; each gives a variance and ``reduction`` combines them
  (``"mean"``, or ``"min"``: the most noise-like view decides).

The defaults were chosen on *validation* data (``benchmarks/tune_saec.py``; the test split was not
used): a bank of KV plus the horizontal and vertical 2nd-order residuals, averaged, with 256 bins
over the narrow range [-0.01, 0.01]. A narrow, finely binned range measures how many residuals are
(nearly) zero, which small noise destroys; the paper-like single KV kernel with 64 bins over
[-0.25, 0.25] caught 12% of GTSRB validation images with 8/255 uniform noise at 5% FPR, this bank
97-100% (with and without rounding the noisy images to 8 bits). Test figures: docs/results.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from guardnet.errors import CalibrationError
from guardnet.layers.base import Layer, LayerInput, LayerKind, LayerOutput
from guardnet.layers.registry import register_layer
from guardnet.ops import (
    HighPassFilter,
    batched_histogram,
    histogram_variance,
    pseudo_saturation_map,
    straight_through_histogram,
)

__all__ = ["DEFAULT_KERNELS", "SAECLayer", "saec_score"]

#: The default filter bank: the KV kernel plus horizontal and vertical 2nd-order residuals.
DEFAULT_KERNELS: tuple[str, ...] = ("kv", "second_order", "second_order_v")


def saec_score(
    images: Tensor,
    *,
    p: float = 8.0,
    kernels: str | Sequence[str] = DEFAULT_KERNELS,
    bins: int = 256,
    value_range: tuple[float, float] = (-0.01, 0.01),
    padding: str = "valid",
    reduction: str = "mean",
) -> Tensor:
    """SAEC's noise-level score for a batch (low = noisy = suspicious).

    Args:
        images: (B, C, H, W) images in [0, 1].
        p: the norm of the pseudo-saturation map.
        kernels: SRM kernel name(s), see :data:`guardnet.ops.SRM_KERNELS`.
        bins: histogram bins.
        value_range: the histogram's range of residual values.
        padding: ``"valid"`` or ``"reflect"`` filtering.
        reduction: how several kernels' variances combine, ``"mean"`` or ``"min"``.

    Returns:
        (B,) float32 scores.

    Example:
        >>> clean = torch.full((2, 3, 32, 32), 0.5)
        >>> noisy = (clean + 0.1 * torch.rand_like(clean)).clamp(0, 1)
        >>> bool((saec_score(noisy) < saec_score(clean)).all())
        True
    """
    return (
        SAECLayer(
            p=p,
            kernels=kernels,
            bins=bins,
            value_range=value_range,
            padding=padding,
            reduction=reduction,
        )
        .to(images.device)
        .score_images(images)
    )


@register_layer("saec")
class SAECLayer(Layer):
    """MixDefense's large-perturbation detector as a guard layer (``pre``; low score = noisy).

    Args:
        p: norm of the pseudo-saturation map (8 in the paper).
        kernels: SRM kernel name(s) of the high-pass filter bank (default
            :data:`DEFAULT_KERNELS`: KV plus the two 2nd-order residuals).
        bins: histogram bins (256).
        value_range: range of residual values the histogram covers ((-0.01, 0.01)).
        padding: ``"valid"`` (default) or ``"reflect"`` filtering.
        reduction: ``"mean"`` (default) or ``"min"`` over kernels.

    Shape:
        - Input: (B, C, H, W) images in [0, 1], any C and size >= the kernel.
        - Output: :class:`LayerOutput` with (B,) scores.

    Example:
        >>> layer = SAECLayer()
        >>> layer(LayerInput(images=torch.rand(4, 3, 32, 32))).scores.shape
        torch.Size([4])
    """

    kind: ClassVar[LayerKind] = LayerKind.PRE
    higher_is_suspicious: ClassVar[bool] = False
    differentiable: ClassVar[bool] = False
    default_name: ClassVar[str] = "saec"

    def __init__(
        self,
        *,
        p: float = 8.0,
        kernels: str | Sequence[str] = DEFAULT_KERNELS,
        bins: int = 256,
        value_range: tuple[float, float] = (-0.01, 0.01),
        padding: str = "valid",
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        if reduction not in ("min", "mean"):
            raise ValueError(f"reduction must be 'min' or 'mean', got {reduction!r}")
        if padding not in ("valid", "reflect"):
            raise ValueError(f"padding must be 'valid' or 'reflect', got {padding!r}")
        if bins < 2:
            raise ValueError(f"bins must be >= 2, got {bins}")
        low, high = float(value_range[0]), float(value_range[1])
        if not low < high:
            raise ValueError(f"value_range must be (low, high) with low < high, got {value_range}")
        kernel_names = (kernels,) if isinstance(kernels, str) else tuple(kernels)
        self.p = float(p)
        self.kernels = kernel_names
        self.bins = int(bins)
        self.value_range = (low, high)
        self.padding = padding
        self.reduction = reduction
        self.highpass = HighPassFilter(list(kernel_names), padding=padding)

    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments, JSON-serialisable (for ``config.json``)."""
        return self.get_config()

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments, JSON-serialisable (see :meth:`Layer.get_config`)."""
        return {
            "p": self.p,
            "kernels": list(self.kernels),
            "bins": self.bins,
            "value_range": list(self.value_range),
            "padding": self.padding,
            "reduction": self.reduction,
        }

    def score_images(self, images: Tensor, *, straight_through: bool = False) -> Tensor:
        """(B,) noise-level scores of (B, C, H, W) images in [0, 1]; low = noisy.

        With ``straight_through=True`` the values are the same, and the histogram's backward
        pass is that of a linearly interpolated histogram (the BPDA estimate used by
        :meth:`bpda_forward`).
        """
        saturation = pseudo_saturation_map(images, p=self.p)
        residual = self.highpass(saturation)  # (B, K, H', W')
        batch, n_kernels, height, width = residual.shape
        histogram = straight_through_histogram if straight_through else batched_histogram
        hist = histogram(
            residual.reshape(batch * n_kernels, height * width),  # (no -1: batch may be 0)
            bins=self.bins,
            value_range=self.value_range,
        )
        variances = histogram_variance(hist).view(batch, n_kernels)
        return variances.amin(dim=1) if self.reduction == "min" else variances.mean(dim=1)

    def forward(self, inputs: LayerInput) -> LayerOutput:
        return LayerOutput(scores=self.score_images(inputs.images))

    def bpda_forward(self, inputs: LayerInput) -> LayerOutput:
        """Exact scores; gradients through a soft histogram (the only non-differentiable step)."""
        return LayerOutput(scores=self.score_images(inputs.images, straight_through=True))

    @torch.no_grad()
    def calibrate_with_noise(
        self,
        clean_images: Tensor,
        *,
        amplitude: float = 8 / 255,
        seed: int = 0,
        batch_size: int = 1024,
    ) -> dict[str, float]:
        """The paper's calibration: separate clean training images from noisy copies of them.

        Adds uniform noise in [-amplitude, amplitude] to each clean image (clipped to [0, 1]),
        and sets the threshold that best separates the two score sets (maximum of
        TPR - FPR, Youden's J). Use it on *training* images; then report the rate on clean
        validation data, or use :meth:`GuardedModel.calibrate` for a threshold at a target FPR.

        Args:
            clean_images: (N, C, H, W) clean images in [0, 1].
            amplitude: noise amplitude (on the [0, 1] scale).
            seed: seed of the noise.
            batch_size: images per scoring batch.

        Returns:
            ``{"threshold", "clean_fpr", "noisy_tpr"}`` on these images.
        """
        if clean_images.ndim != 4 or clean_images.shape[0] < 2:
            raise CalibrationError(
                f"need at least 2 clean images (N, C, H, W), got {tuple(clean_images.shape)}"
            )
        generator = torch.Generator(device="cpu").manual_seed(seed)
        clean_scores, noisy_scores = [], []
        for chunk in clean_images.split(batch_size):
            noise = torch.rand(chunk.shape, generator=generator).to(chunk.device, chunk.dtype)
            noisy = (chunk + (2 * noise - 1) * amplitude).clamp(0, 1)
            clean_scores.append(self.score_images(chunk))
            noisy_scores.append(self.score_images(noisy))
        clean = torch.cat(clean_scores)
        noisy = torch.cat(noisy_scores)
        # Candidate thresholds: every observed score; reject score < t.
        candidates = torch.cat([clean, noisy]).unique()
        # searchsorted(left) counts the scores strictly below each candidate, in O(N log N).
        fpr = torch.searchsorted(clean.sort().values, candidates).float() / clean.numel()
        tpr = torch.searchsorted(noisy.sort().values, candidates).float() / noisy.numel()
        best = int(torch.argmax(tpr - fpr))
        self.set_threshold(candidates[best], score_scale=float(clean.std()) or 1.0)
        return {
            "threshold": float(candidates[best]),
            "clean_fpr": float(fpr[best]),
            "noisy_tpr": float(tpr[best]),
        }

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config.items())
