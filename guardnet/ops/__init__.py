"""Batched, device-agnostic tensor kernels (pure functions plus thin ``nn.Module`` wrappers)."""

from __future__ import annotations

from guardnet.ops.highpass import SRM_KERNELS, HighPassFilter, highpass_filter, srm_kernel
from guardnet.ops.histogram import (
    BatchedHistogram,
    batched_histogram,
    histogram_variance,
    soft_histogram,
    straight_through_histogram,
)
from guardnet.ops.saturation import PseudoSaturationMap, pseudo_saturation_map

__all__ = [
    "SRM_KERNELS",
    "BatchedHistogram",
    "HighPassFilter",
    "PseudoSaturationMap",
    "batched_histogram",
    "highpass_filter",
    "histogram_variance",
    "pseudo_saturation_map",
    "soft_histogram",
    "srm_kernel",
    "straight_through_histogram",
]
