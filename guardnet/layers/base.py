"""The layer protocol every guardnet defense implements.

A layer is an ``nn.Module`` that turns a :class:`LayerInput` (the current images, and, after the
classifier has run, its logits and labels plus a handle to call it) into a :class:`LayerOutput`
(one score per image, and for ``reform`` layers optionally new images, logits or labels).

The :class:`LayerKind` says where in the pipeline the guard runs the layer and what it may see:

========  =====================================  =================================  ==============
kind      runs                                    sees                               example
========  =====================================  =================================  ==============
pre       before the classifier                   the images only                    SAEC
post      after the classifier                    images + predicted labels          ContraNet
probe     after the classifier, autograd enabled  images + labels + the classifier   A2D
reform    after the classifier                    everything; may replace images,    DeT
                                                  logits and labels
========  =====================================  =================================  ==============

A layer that rejects (``rejects = True``) owns a threshold held in a buffer, so ``state_dict`` and
``save_pretrained`` keep it, and knows which side of it is suspicious
(``higher_is_suspicious``). A layer with several rejectors that share one expensive computation
(ContraNet's DMM, Dis and SSIM all judge one rebuilt image) names them in ``score_names``,
returns (B, S) scores and holds S thresholds; the guard reports each as ``"layer.score"`` and
rejects when any of them does. Thresholds are set by :meth:`guardnet.GuardedModel.calibrate` from
clean validation data.
"""

from __future__ import annotations

import contextlib
import contextvars
import enum
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
from torch import Tensor

from guardnet._utils import Float32Buffers

__all__ = [
    "Layer",
    "LayerInput",
    "LayerKind",
    "LayerOutput",
    "exact_scores",
    "exact_scores_requested",
    "score_keys",
]

_EXACT_SCORES: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "guardnet_exact_scores", default=False
)


@contextlib.contextmanager
def exact_scores() -> Iterator[None]:
    """Ask layers for their exact scores inside the block.

    A layer may stop computing a score once its decision against a calibrated threshold is
    settled (A2D stops attacking an input whose cost has passed its threshold) and then return
    a score that is only known to lie on the accepted side. Calibration and evaluation need
    the exact values: :meth:`guardnet.GuardedModel.compute_scores` runs inside this block.
    """
    token = _EXACT_SCORES.set(True)
    try:
        yield
    finally:
        _EXACT_SCORES.reset(token)


def exact_scores_requested() -> bool:
    """Whether the caller is inside :func:`exact_scores`."""
    return _EXACT_SCORES.get()


class LayerKind(str, enum.Enum):
    """Where a layer sits in the guard's pipeline (see the module docstring)."""

    PRE = "pre"
    POST = "post"
    PROBE = "probe"
    REFORM = "reform"


@dataclass(frozen=True)
class LayerInput:
    """What a layer sees.

    Attributes:
        images: (B, C, H, W) images in [0, 1] (after any earlier ``reform`` layer).
        logits: (B, K) classifier logits, ``None`` for ``pre`` layers.
        labels: (B,) predicted labels, ``None`` for ``pre`` layers.
        classifier: callable taking [0, 1] images and returning logits (normalisation included);
            ``None`` for ``pre`` layers.
    """

    images: Tensor
    logits: Tensor | None = None
    labels: Tensor | None = None
    classifier: Callable[[Tensor], Tensor] | None = None

    @property
    def batch_size(self) -> int:
        return self.images.shape[0]

    def select(self, index: Tensor) -> LayerInput:
        """The same input restricted to the samples at ``index`` (a 1-D long tensor)."""
        return replace(
            self,
            images=self.images.index_select(0, index),
            logits=None if self.logits is None else self.logits.index_select(0, index),
            labels=None if self.labels is None else self.labels.index_select(0, index),
        )


@dataclass(frozen=True)
class LayerOutput:
    """What a layer returns.

    Attributes:
        scores: (B,) float scores, or (B, S) for a layer with S ``score_names``; which side
            is suspicious is the layer's ``higher_is_suspicious``.
        images: ``reform`` layers only: purified images that later layers see.
        logits: ``reform`` layers only: logits that replace the classifier's.
        labels: ``reform`` layers only: corrected labels (default: ``logits.argmax(1)`` when
            logits are given).
    """

    scores: Tensor
    images: Tensor | None = None
    logits: Tensor | None = None
    labels: Tensor | None = None


class Layer(Float32Buffers):
    """Base class of guardnet's defense layers.

    Subclasses set the class attributes and implement :meth:`forward`. They never need to deal
    with train/eval mode, gradients or rejected samples: the guard handles those.

    Class attributes:
        kind: the :class:`LayerKind`.
        higher_is_suspicious: ``True`` when a high score means adversarial.
        rejects: ``False`` for layers that only correct labels and have no threshold.
        differentiable: ``True`` when the score is differentiable w.r.t. the images, so gradient
            attacks through :meth:`guardnet.GuardedModel.attack_view` see it.
        default_name: the name a guard gives the layer unless told otherwise.
        score_names: empty for a layer with one score; otherwise the names of the S columns of
            its (B, S) scores, each with its own threshold (same suspicious side for all).

    The ``threshold`` and ``score_scale`` buffers stay float32 when the layer is converted with
    ``.half()`` or ``.bfloat16()`` (see :class:`guardnet._utils.Float32Buffers`), so a
    low-precision guard compares its scores with the calibrated thresholds, not rounded ones.
    """

    float32_buffers: ClassVar[tuple[str, ...]] = ("threshold", "score_scale")

    kind: ClassVar[LayerKind]
    higher_is_suspicious: ClassVar[bool] = True
    rejects: ClassVar[bool] = True
    differentiable: ClassVar[bool] = False
    default_name: ClassVar[str] = "layer"
    score_names: ClassVar[tuple[str, ...]] = ()
    #: ``False`` when :meth:`forward` may stop computing a score once its decision against a
    #: calibrated threshold is settled (scores on the accepted side are then bounds; decisions
    #: are exact). :meth:`GuardedModel.compute_scores` always gets exact scores (see
    #: :func:`exact_scores`).
    exact_forward_scores: bool = True
    #: Classes the layer was built for (``None``: any). The guard checks it against the
    #: classifier.
    num_classes: int | None = None

    threshold: Tensor
    score_scale: Tensor

    def __init__(self) -> None:
        super().__init__()
        if not isinstance(getattr(type(self), "kind", None), LayerKind):
            raise TypeError(f"{type(self).__name__} must set the class attribute `kind`")
        shape = (len(self.score_names),) if self.score_names else ()
        # NaN = not calibrated. Buffers, so state_dict() and .to(device) carry them.
        self.register_buffer("threshold", torch.full(shape, float("nan")))
        # Typical size of a clean score deviation; normalises margins in the attack view.
        self.register_buffer("score_scale", torch.ones(shape))

    def forward(self, inputs: LayerInput) -> LayerOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        """The layer's constructor arguments, JSON-serialisable, without weights or thresholds.

        :meth:`from_config` on the result builds an untrained, uncalibrated layer whose
        ``state_dict`` has the same keys and shapes, so a saved guard
        (:meth:`guardnet.GuardedModel.save_pretrained`) rebuilds its layers without fetching
        weights and then fills them. Layers that can be saved override it and register their
        class with :func:`guardnet.layers.register_layer`.

        Raises:
            NotImplementedError: the layer does not describe itself (the default).
        """
        raise NotImplementedError(
            f"{type(self).__name__} does not define get_config(), so a guard holding it cannot "
            "be saved: return its constructor arguments as a JSON-serialisable dict"
        )

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Layer:
        """An untrained, uncalibrated layer from :meth:`get_config`'s output (default:
        ``cls(**config)``)."""
        return cls(**config)

    def bpda_forward(self, inputs: LayerInput) -> LayerOutput | None:
        """Exact scores with a surrogate gradient, for a layer whose scores are not differentiable.

        Gradient attacks through :meth:`guardnet.GuardedModel.attack_view` (``bpda=True``) call
        this instead of :meth:`forward` on layers with ``differentiable = False``: the values
        must equal :meth:`forward`'s, the gradient is an estimate (BPDA / straight-through,
        Athalye et al., ICML 2018). ``None`` (the default): the layer has no estimate and
        contributes no gradient.
        """
        return None

    def reject(self, scores: Tensor) -> Tensor:
        """Boolean mask, shaped like ``scores``, of scores on the suspicious side of the threshold.

        NaN scores (not computed) are never rejected. (B, S) scores are compared column-wise
        with the S thresholds.
        """
        if not self.rejects:
            return torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
        return scores > self.threshold if self.higher_is_suspicious else scores < self.threshold

    def margin(self, scores: Tensor) -> Tensor:
        """Signed distance to the threshold in units of ``score_scale``; > 0 means rejected."""
        signed = scores - self.threshold if self.higher_is_suspicious else self.threshold - scores
        return signed / self.score_scale

    def set_threshold(
        self,
        threshold: float | Tensor,
        *,
        score_scale: float | None = None,
        score: str | None = None,
    ) -> None:
        """Set the threshold by hand (normally :meth:`GuardedModel.calibrate` does it).

        Args:
            threshold: the new threshold.
            score_scale: the typical clean spread of the score (> 0), for attack-view margins.
            score: for a layer with ``score_names``, which score's threshold to set (``None``:
                all of them).
        """
        if score_scale is not None and not score_scale > 0:
            raise ValueError(f"score_scale must be > 0, got {score_scale}")
        if score is not None and score not in self.score_names:
            raise ValueError(
                f"{type(self).__name__} has scores {list(self.score_names)}, not {score!r}"
            )
        where = ... if score is None else self.score_names.index(score)
        self.threshold[where] = float(threshold)
        if score_scale is not None:
            self.score_scale[where] = float(score_scale)


def score_keys(name: str, layer: Layer) -> list[str]:
    """The keys a layer's scores get in a guard's results: ``name``, or ``name.score`` per score.

    Args:
        name: the layer's name in the guard.
        layer: the layer.

    Returns:
        One key per column of the layer's scores.
    """
    return [f"{name}.{s}" for s in layer.score_names] if layer.score_names else [name]
