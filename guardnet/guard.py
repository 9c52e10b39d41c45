"""``GuardedModel``: a classifier wrapped in an ordered pipeline of defense layers."""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from guardnet._utils import eval_mode, module_device, module_dtype
from guardnet.calibration import CalibrationReport, calibrate_guard
from guardnet.errors import GuardnetError, InputDTypeError, NotCalibratedError
from guardnet.layers.base import (
    Layer,
    LayerInput,
    LayerKind,
    LayerOutput,
    exact_scores,
    score_keys,
)
from guardnet.nets.normalize import Normalize
from guardnet.validation import check_images, check_logits, check_same_device, to_model_dtype

if TYPE_CHECKING:
    from pathlib import Path

    from guardnet.recipes import GuardRecipe

__all__ = ["GuardAttackView", "GuardResult", "GuardedModel", "Normalize", "build_guard"]


@dataclass
class GuardResult:
    """What :class:`GuardedModel` returns for a batch.

    Attributes:
        labels: (B,) final labels (after any ``reform`` layer).
        rejected: (B,) ``True`` where any layer rejected the input.
        logits: (B, K) final logits.
        classifier_labels: (B,) the bare classifier's labels.
        scores: per score, (B,) scores; NaN where the layer did not run (cascade). A layer with
            one score is keyed by its name, one with several ``score_names`` by
            ``"name.score"`` (e.g. ``"contranet.dmm"``).
        layer_rejected: per score (same keys), (B,) reject masks.
        computed: per score (same keys), (B,) ``True`` where the layer ran.
        errors: with ``fail_closed=True``, per layer name, the exception a layer raised
            (``"TypeName: message"``); the rows it ran on are rejected, with NaN scores and
            ``computed`` ``False``. Empty when every layer ran.
    """

    labels: Tensor
    rejected: Tensor
    logits: Tensor
    classifier_labels: Tensor
    scores: dict[str, Tensor] = field(default_factory=dict)
    layer_rejected: dict[str, Tensor] = field(default_factory=dict)
    computed: dict[str, Tensor] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.labels.shape[0]

    @property
    def accepted(self) -> Tensor:
        """(B,) ``True`` where no layer rejected the input."""
        return ~self.rejected

    @property
    def layer_names(self) -> list[str]:
        return list(self.scores)

    def rejected_by(self) -> Tensor:
        """(B,) index into :attr:`layer_names` of the first layer that rejected, -1 for none."""
        if not self.layer_rejected:
            return torch.full_like(self.labels, -1)
        masks = torch.stack(list(self.layer_rejected.values()), dim=1)
        first = masks.to(torch.uint8).argmax(dim=1)
        return torch.where(masks.any(dim=1), first, torch.full_like(first, -1))

    def to(self, device: torch.device | str) -> GuardResult:
        def move(d: dict[str, Tensor]) -> dict[str, Tensor]:
            return {k: v.to(device) for k, v in d.items()}

        return GuardResult(
            labels=self.labels.to(device),
            rejected=self.rejected.to(device),
            logits=self.logits.to(device),
            classifier_labels=self.classifier_labels.to(device),
            scores=move(self.scores),
            layer_rejected=move(self.layer_rejected),
            computed=move(self.computed),
            errors=dict(self.errors),
        )

    @staticmethod
    def cat(results: Sequence[GuardResult]) -> GuardResult:
        """Concatenate results of consecutive chunks along the batch (a layer that failed on
        several chunks keeps its first error)."""
        if not results:
            raise ValueError("nothing to concatenate")
        first = results[0]
        errors: dict[str, str] = {}
        for result in results:
            for name, error in result.errors.items():
                errors.setdefault(name, error)

        def cat_dict(key: str) -> dict[str, Tensor]:
            return {
                name: torch.cat([getattr(r, key)[name] for r in results])
                for name in getattr(first, key)
            }

        return GuardResult(
            labels=torch.cat([r.labels for r in results]),
            rejected=torch.cat([r.rejected for r in results]),
            logits=torch.cat([r.logits for r in results]),
            classifier_labels=torch.cat([r.classifier_labels for r in results]),
            scores=cat_dict("scores"),
            layer_rejected=cat_dict("layer_rejected"),
            computed=cat_dict("computed"),
            errors=errors,
        )

    def summary(self) -> str:
        """A short human-readable account: counts per layer and overall."""
        n = len(self)
        lines = [f"{n} inputs, {int(self.rejected.sum())} rejected"]
        for name, mask in self.layer_rejected.items():
            ran = int(self.computed[name].sum())
            lines.append(f"  {name:<16} ran on {ran:>6}, rejected {int(mask.sum()):>6}")
        lines.extend(f"  {name} failed: {error}" for name, error in self.errors.items())
        return "\n".join(lines)


#: How PyTorch says it lacks a kernel for a dtype on a device (e.g. float16 on older CPU builds).
_UNSUPPORTED_DTYPE = re.compile(r"not implemented for '(Half|BFloat16)'")


def _unique_names(layers: Iterable[Layer]) -> dict[str, Layer]:
    named: dict[str, Layer] = {}
    for layer in layers:
        base = layer.default_name
        name, i = base, 1
        while name in named:
            i += 1
            name = f"{base}_{i}"
        named[name] = layer
    return named


class GuardedModel(nn.Module):
    """A classifier guarded by an ordered list of defense layers.

    The guard validates the input, runs the ``pre`` layers, the classifier, then the other layers
    in order, and returns a :class:`GuardResult`: labels, a reject mask, and every layer's scores
    and decisions. Classifier and layers always run in eval mode and without autograd (``probe``
    layers get autograd inside); the caller's own modes are restored afterwards.

    Images of any floating dtype guardnet accepts (float16, bfloat16, float32, float64) are
    converted to the guard's dtype (that of its first floating parameter or buffer) with one
    ``.to()`` at the boundary, after the checks, so logits and most scores come in the guard's
    dtype.
    From float16/bfloat16 to a float32 guard the conversion is exact; float64 is rounded to
    float32 (6e-8 relative). Integer images are refused with :class:`InputDTypeError` (convert
    8-bit images with ``images.float() / 255``). A guard converted with ``.half()``,
    ``.bfloat16()`` or ``.double()`` computes in that dtype, except that thresholds and SAEC's
    statistic stay in at least float32; where PyTorch lacks an operation for that dtype on the
    guard's device, calls raise :class:`InputDTypeError` naming the fix (``guard.float()``).

    Args:
        classifier: any ``nn.Module`` mapping images to (B, K) logits.
        layers: the defense layers, in pipeline order (``pre`` layers first); a mapping gives
            them names, otherwise each takes its ``default_name``.
        mean: per-channel mean the classifier expects its input normalised with. Give ``mean`` and
            ``std`` when the classifier takes normalised images; leave both ``None`` when it takes
            [0, 1] images (e.g. normalisation is its first module). Layers always see [0, 1].
        std: per-channel standard deviation, see ``mean``.
        num_classes: the classifier's class count; checked against its logits and the layers.
            Taken from the layers when ``None`` and a layer declares one.
        in_channels: the channel count inputs must have (``None``: any).
        cascade: skip later layers for inputs an earlier layer already rejected; their scores are
            NaN and ``computed`` is ``False``. The final reject mask is the same either way.
        max_batch_size: split larger batches into chunks of this size to bound memory.
        validate_inputs: check dtype, shape, NaN/Inf and the [0, 1] range of every input (one
            host sync per call).
        fail_closed: in :meth:`forward`, an exception raised by a layer rejects the inputs of the
            chunk (``max_batch_size``) the layer was running on instead of propagating: the
            result reports it in :attr:`GuardResult.errors`, those rows get
            ``layer_rejected`` ``True`` for each of the layer's scores and NaN scores, and the
            other layers and chunks run as usual; a NaN or infinite score from a layer that ran
            is rejected too. Input checks at the boundary, :class:`NotCalibratedError` and the
            classifier's own exceptions still raise; :meth:`compute_scores`,
            :meth:`calibrate` and the attack view always raise. Off by default.

    Example:
        >>> from guardnet import GuardedModel, SAECLayer
        >>> classifier = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
        >>> guard = GuardedModel(classifier, [SAECLayer()], num_classes=10)
        >>> report = guard.calibrate(torch.rand(200, 3, 32, 32), target_fpr=0.05, progress=False)
        >>> result = guard(torch.rand(4, 3, 32, 32))
        >>> result.labels.shape, result.rejected.dtype
        (torch.Size([4]), torch.bool)
    """

    def __init__(
        self,
        classifier: nn.Module,
        layers: Sequence[Layer] | Mapping[str, Layer] | nn.ModuleDict = (),
        *,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        num_classes: int | None = None,
        in_channels: int | None = None,
        cascade: bool = False,
        max_batch_size: int | None = None,
        validate_inputs: bool = True,
        fail_closed: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(classifier, nn.Module):
            raise TypeError(f"classifier must be an nn.Module, got {type(classifier).__name__}")
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither")
        if isinstance(layers, (Mapping, nn.ModuleDict)):
            named = dict(layers.items())
        else:
            layers = list(layers)
            for i, layer in enumerate(layers):
                if not isinstance(layer, Layer):
                    raise TypeError(
                        f"layer {i} must be a guardnet Layer, got {type(layer).__name__}"
                    )
            named = _unique_names(layers)
        for name, layer in named.items():
            if not isinstance(layer, Layer):
                raise TypeError(
                    f"layer {name!r} must be a guardnet Layer, got {type(layer).__name__}"
                )
        kinds = [layer.kind for layer in named.values()]
        first_non_pre = next((i for i, k in enumerate(kinds) if k is not LayerKind.PRE), None)
        if first_non_pre is not None and LayerKind.PRE in kinds[first_non_pre:]:
            order = ", ".join(f"{n} ({k.value})" for n, k in zip(named, kinds, strict=True))
            raise ValueError(
                f"'pre' layers see the input before the classifier and must come first; got {order}"
            )
        declared = {n: layer.num_classes for n, layer in named.items() if layer.num_classes}
        for name, count in declared.items():
            if num_classes is None:
                num_classes = count
            elif count != num_classes:
                raise ValueError(
                    f"layer {name!r} was built for {count} classes but the guard has {num_classes}"
                )
        if max_batch_size is not None and max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")

        self.classifier = classifier
        self.normalize: nn.Module = nn.Identity() if mean is None else Normalize(mean, std)  # type: ignore[arg-type]
        if isinstance(self.normalize, Normalize):
            if in_channels is not None and in_channels != self.normalize.channels:
                raise ValueError(
                    f"mean/std have {self.normalize.channels} channels but in_channels is "
                    f"{in_channels}"
                )
            in_channels = self.normalize.channels
        self.layers = nn.ModuleDict(named)
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.cascade = cascade
        self.max_batch_size = max_batch_size
        self.validate_inputs = validate_inputs
        self.fail_closed = fail_closed
        #: The recipe the guard was built from (:func:`guardnet.build_guard`), if any.
        self.recipe: GuardRecipe | None = None
        #: What the last :meth:`calibrate` did (restored by :meth:`from_pretrained`).
        self.calibration_report: CalibrationReport | None = None

    # ------------------------------------------------------------------ helpers
    @property
    def rejecting_layers(self) -> dict[str, Layer]:
        """The layers that own a threshold, by name."""
        return {n: layer for n, layer in self.layers.items() if layer.rejects}  # type: ignore[misc]

    @property
    def score_keys(self) -> list[str]:
        """Every key of :attr:`GuardResult.scores`, in pipeline order."""
        return [k for n, layer in self.layers.items() for k in score_keys(n, layer)]  # type: ignore[arg-type]

    @property
    def rejectors(self) -> dict[str, tuple[Layer, str | None]]:
        """Per score key of a rejecting layer: the layer and its score name (``None`` if single)."""
        out: dict[str, tuple[Layer, str | None]] = {}
        for name, layer in self.rejecting_layers.items():
            keys = score_keys(name, layer)
            names: list[str | None] = list(layer.score_names) or [None]
            out.update(zip(keys, ((layer, n) for n in names), strict=True))
        return out

    def classify(self, images: Tensor) -> Tensor:
        """The bare classifier on [0, 1] images (normalisation applied), with no checks."""
        return self.classifier(self.normalize(images))

    def _check_input(self, images: Tensor, *, check_values: bool) -> Tensor:
        """Check ``images`` and return them in the guard's dtype."""
        check_images(images, channels=self.in_channels, check_values=check_values)
        check_same_device(images, module_device(self), what="guard")
        return to_model_dtype(images, module_dtype(self))

    @contextlib.contextmanager
    def _dtype_support(self, images: Tensor) -> Iterator[None]:
        """Turn PyTorch's "not implemented for 'Half'" into an error naming the fix."""
        try:
            yield
        except RuntimeError as error:
            if isinstance(error, GuardnetError) or not _UNSUPPORTED_DTYPE.search(str(error)):
                raise
            dtype = str(images.dtype).removeprefix("torch.")
            raise InputDTypeError(
                f"the guard computes in {dtype}, which PyTorch {torch.__version__} does not "
                f"support on {images.device.type} for an operation it runs ({error}); convert the "
                "guard with guard.float() (inputs follow the guard's dtype)"
            ) from error

    def _check_calibrated(self) -> None:
        rejecting = self.rejecting_layers
        if not rejecting:
            return
        missing = torch.stack(
            [layer.threshold.isnan().any() for layer in rejecting.values()]
        ).tolist()
        names = [n for n, m in zip(rejecting, missing, strict=True) if m]
        if names:
            raise NotCalibratedError(
                f"layer(s) {names} have no threshold: call guard.calibrate(clean_val_images) or "
                "load calibrated weights (use guard.compute_scores(x) for raw scores)"
            )

    def _call_layer(
        self, layer: Layer, inputs: LayerInput, *, grad: bool, bpda: bool = False
    ) -> LayerOutput:
        if layer.kind is LayerKind.PROBE:
            # Probe layers query the classifier with gradients even inside no_grad or
            # inference_mode; inference tensors must be cloned outside inference mode first.
            with torch.inference_mode(False), torch.enable_grad():
                cloned = LayerInput(
                    images=inputs.images.clone(),
                    logits=None if inputs.logits is None else inputs.logits.clone(),
                    labels=None if inputs.labels is None else inputs.labels.clone(),
                    classifier=inputs.classifier,
                )
                out = layer(cloned)
            return LayerOutput(
                scores=out.scores.detach(),
                images=None if out.images is None else out.images.detach(),
                logits=None if out.logits is None else out.logits.detach(),
                labels=out.labels,
            )
        if grad and not layer.differentiable:
            estimate = layer.bpda_forward(inputs) if bpda else None
            if estimate is not None:
                return estimate
            with torch.no_grad():
                return layer(inputs)
        return layer(inputs)

    def _pipeline(
        self,
        images: Tensor,
        *,
        cascade: bool,
        grad: bool,
        apply_thresholds: bool = True,
        bpda: bool = False,
        runner_up: bool = False,
        fail_closed: bool = False,
    ) -> GuardResult:
        """Run layers and classifier on one (already validated) chunk.

        ``runner_up``: the layers after the classifier see its second most likely class as the
        predicted label (see :meth:`compute_scores`). ``fail_closed``: a layer that raises
        rejects the rows it ran on (see the class docstring).
        """
        batch = images.shape[0]
        inputs = LayerInput(images=images)
        classifier_labels: Tensor | None = None
        scores: dict[str, Tensor] = {}
        rejected_by_layer: dict[str, Tensor] = {}
        computed: dict[str, Tensor] = {}
        errors: dict[str, str] = {}
        rejected = torch.zeros(batch, dtype=torch.bool, device=images.device)

        def run_classifier(current: LayerInput) -> LayerInput:
            logits = check_logits(
                self.classify(current.images), batch_size=batch, num_classes=self.num_classes
            )
            if runner_up and logits.shape[1] < 2:
                raise ValueError(f"runner-up labels need >= 2 classes, got {logits.shape[1]}")
            labels = logits.topk(2, dim=1).indices[:, 1] if runner_up else logits.argmax(dim=1)
            return LayerInput(
                images=current.images, logits=logits, labels=labels, classifier=self.classify
            )

        for name, layer in self.layers.items():
            if layer.kind is not LayerKind.PRE and inputs.logits is None:
                inputs = run_classifier(inputs)
                classifier_labels = inputs.labels
            index: Tensor | None = None
            if cascade and rejected.any():  # one host sync per layer, not per sample
                index = (~rejected).nonzero().squeeze(1)
            keys = score_keys(name, layer)  # type: ignore[arg-type]
            if index is None:
                ran = torch.ones_like(rejected)
            else:
                ran = torch.zeros_like(rejected).index_fill(0, index, True)
            if index is not None and index.numel() == 0:
                columns: Sequence[Tensor] = [images.new_full((batch,), float("nan"))] * len(keys)
                masks: Sequence[Tensor] = [torch.zeros_like(rejected)] * len(keys)
                ran = torch.zeros_like(rejected)
            else:
                try:
                    layer_scores, layer_mask, inputs = self._run_layer(
                        name,
                        layer,  # type: ignore[arg-type]
                        inputs,
                        index,
                        ran,
                        grad=grad,
                        bpda=bpda,
                        apply_thresholds=apply_thresholds,
                        fail_closed=fail_closed,
                    )
                except Exception as error:
                    if not fail_closed:
                        raise
                    errors[name] = f"{type(error).__name__}: {error}"
                    layer_scores = images.new_full((batch, len(keys)), float("nan"))
                    layer_mask = ran[:, None].expand(batch, len(keys))
                    ran = torch.zeros_like(rejected)
                columns = layer_scores.unbind(1) if layer_scores.ndim == 2 else (layer_scores,)
                masks = layer_mask.unbind(1) if layer_mask.ndim == 2 else (layer_mask,)
            for key, column, mask in zip(keys, columns, masks, strict=True):
                scores[key] = column
                computed[key] = ran
                rejected_by_layer[key] = mask
                rejected = rejected | mask

        if inputs.logits is None:
            inputs = run_classifier(inputs)
            classifier_labels = inputs.labels
        assert inputs.logits is not None and inputs.labels is not None
        assert classifier_labels is not None
        return GuardResult(
            labels=inputs.labels,
            rejected=rejected,
            logits=inputs.logits,
            classifier_labels=classifier_labels,
            scores=scores,
            layer_rejected=rejected_by_layer,
            computed=computed,
            errors=errors,
        )

    def _run_layer(
        self,
        name: str,
        layer: Layer,
        inputs: LayerInput,
        index: Tensor | None,
        ran: Tensor,
        *,
        grad: bool,
        bpda: bool,
        apply_thresholds: bool,
        fail_closed: bool,
    ) -> tuple[Tensor, Tensor, LayerInput]:
        """One layer on the rows at ``index`` (``None``: all): its full-batch scores, reject
        mask (both (B,) or (B, S)) and the inputs later layers see."""
        batch = inputs.batch_size
        sub_inputs = inputs if index is None else inputs.select(index)
        out = self._call_layer(layer, sub_inputs, grad=grad, bpda=bpda)
        layer_scores = out.scores
        expected = (
            (sub_inputs.batch_size, len(layer.score_names))
            if layer.score_names
            else (sub_inputs.batch_size,)
        )
        if layer_scores.shape != expected:
            raise RuntimeError(
                f"layer {name!r} returned scores of shape {tuple(layer_scores.shape)}, "
                f"expected {expected}"
            )
        if index is not None:
            full = layer_scores.new_full((batch, *expected[1:]), float("nan"))
            layer_scores = full.index_copy(0, index, layer_scores)
        if not apply_thresholds:
            layer_mask = torch.zeros(layer_scores.shape, dtype=torch.bool, device=ran.device)
        else:
            layer_mask = layer.reject(layer_scores)
            if fail_closed:  # a score that is not a number where the layer ran is a failure
                broken = ~layer_scores.isfinite()
                layer_mask = layer_mask | (broken & (ran if broken.ndim == 1 else ran[:, None]))
        if layer.kind is LayerKind.REFORM:
            inputs = self._apply_reform(name, inputs, out, index)
        return layer_scores, layer_mask, inputs

    @staticmethod
    def _apply_reform(
        name: str, inputs: LayerInput, out: LayerOutput, index: Tensor | None
    ) -> LayerInput:
        def merge(old: Tensor | None, new: Tensor | None) -> Tensor | None:
            if new is None:
                return old
            if old is not None and new.shape[1:] != old.shape[1:]:
                raise RuntimeError(
                    f"reform layer {name!r} returned shape {tuple(new.shape)}, incompatible "
                    f"with {tuple(old.shape)}"
                )
            if index is None:
                return new
            assert old is not None
            return old.index_copy(0, index, new.to(old.dtype))

        labels = out.labels
        if labels is None and out.logits is not None:
            labels = out.logits.argmax(dim=1)
        return LayerInput(
            images=merge(inputs.images, out.images),  # type: ignore[arg-type]
            logits=merge(inputs.logits, out.logits),
            labels=merge(inputs.labels, labels),
            classifier=inputs.classifier,
        )

    def _empty_result(self, images: Tensor) -> GuardResult:
        empty_bool = torch.zeros(0, dtype=torch.bool, device=images.device)
        names = self.score_keys
        return GuardResult(
            labels=torch.zeros(0, dtype=torch.long, device=images.device),
            rejected=empty_bool,
            logits=images.new_zeros(0, self.num_classes or 0),
            classifier_labels=torch.zeros(0, dtype=torch.long, device=images.device),
            scores={n: images.new_zeros(0) for n in names},
            layer_rejected={n: empty_bool for n in names},
            computed={n: empty_bool for n in names},
        )

    def _chunks(self, images: Tensor) -> list[Tensor]:
        if self.max_batch_size is None or images.shape[0] <= self.max_batch_size:
            return [images]
        return list(images.split(self.max_batch_size))

    # ------------------------------------------------------------------ public API
    def forward(self, images: Tensor) -> GuardResult:
        """Classify and screen a batch.

        Args:
            images: (B, C, H, W) float images in [0, 1], on the guard's device; converted to the
                guard's dtype.

        Returns:
            A :class:`GuardResult`.

        Raises:
            InputShapeError, InputDTypeError, InputValueError, InputRangeError: bad input.
            DeviceMismatchError: input and guard on different devices.
            InputDTypeError: PyTorch cannot run the guard's dtype on its device.
            NotCalibratedError: a rejecting layer has no threshold.
        """
        images = self._check_input(images, check_values=self.validate_inputs)
        self._check_calibrated()
        if images.shape[0] == 0:
            return self._empty_result(images)
        with eval_mode(self), torch.no_grad(), self._dtype_support(images):
            results = [
                self._pipeline(
                    chunk, cascade=self.cascade, grad=False, fail_closed=self.fail_closed
                )
                for chunk in self._chunks(images)
            ]
        return results[0] if len(results) == 1 else GuardResult.cat(results)

    def compute_scores(self, images: Tensor, *, labels: str = "predicted") -> dict[str, Tensor]:
        """Every layer's scores for every input (no thresholds, no cascade).

        Works before calibration; :meth:`calibrate` is built on it. Scores are exact (see
        :func:`guardnet.layers.base.exact_scores`): a layer that stops early in :meth:`forward`
        once a decision is settled computes them in full here.

        Args:
            images: (B, C, H, W) float images in [0, 1].
            labels: what the layers after the classifier take as its label: ``"predicted"``
                (its argmax, as in :meth:`forward`) or ``"runner_up"`` (its second most likely
                class: a clean image with the label a small attack would most likely force,
                which is how ``calibrate(budget="runner_up")`` splits the budget).
        """
        if labels not in ("predicted", "runner_up"):
            raise ValueError(f"labels must be 'predicted' or 'runner_up', got {labels!r}")
        runner_up = labels == "runner_up"
        images = self._check_input(images, check_values=self.validate_inputs)
        if images.shape[0] == 0:
            return {n: images.new_zeros(0) for n in self.score_keys}
        with eval_mode(self), torch.no_grad(), self._dtype_support(images), exact_scores():
            results = [
                self._pipeline(
                    chunk, cascade=False, grad=False, apply_thresholds=False, runner_up=runner_up
                )
                for chunk in self._chunks(images)
            ]
        return {n: torch.cat([r.scores[n] for r in results]) for n in self.score_keys}

    def calibrate(
        self,
        clean_data: Tensor | Iterable,
        target_fpr: float = 0.05,
        *,
        mode: str = "joint",
        budget: Mapping[str, float] | str | None = None,
        batch_size: int = 256,
        progress: bool = True,
    ) -> CalibrationReport:
        """Set every rejecting layer's threshold from clean validation images.

        Args:
            clean_data: clean *validation* images, (N, C, H, W) in [0, 1], or an iterable of
                batches (a DataLoader yielding images or (images, labels)). Batches are moved to
                the guard's device.
            target_fpr: the false-positive rate to aim for, in [0, 1).
            mode: ``"joint"``: the whole guard rejects ``target_fpr`` of the clean data, the
                budget split across layers; ``"per_layer"``: every layer rejects ``target_fpr``
                on its own (the guard's total rate is then higher).
            budget: joint mode only: relative share of the budget per score key (default
                equal), or ``"runner_up"``: each rejecting layer gets an equal part, and the
                part of a layer that reads the label (ContraNet) is split over its scores so as
                to reject the most clean images under their runner-up labels (the label a small
                attack most likely forces); clean data only, no attacks. The shares are in the
                report.
            batch_size: batch size when ``clean_data`` is a tensor.
            progress: show a progress bar.

        Returns:
            A :class:`~guardnet.calibration.CalibrationReport` with the achieved rates.
        """
        report = calibrate_guard(
            self,
            clean_data,
            target_fpr=target_fpr,
            mode=mode,
            budget=budget,
            batch_size=batch_size,
            progress=progress,
        )
        self.calibration_report = report
        return report

    def save_pretrained(
        self,
        path: str | os.PathLike[str],
        *,
        include_classifier: bool | None = None,
        model_card: str | None = None,
    ) -> Path:
        """Write the guard, thresholds included, to a folder :meth:`from_pretrained` reads.

        The folder (Hub layout) holds ``config.json`` (the recipe that rebuilds the guard without
        weights, and the calibration report), ``model.safetensors`` (every layer's weights and
        thresholds, and the classifier's) and ``README.md`` (a card). See
        :mod:`guardnet.guard_io`.

        Args:
            path: the folder (created; files of the same names are replaced).
            include_classifier: store the classifier's weights. ``None`` (default): when the
                classifier can be rebuilt from a config (a pretrained guardnet model, e.g. from a
                guard recipe); otherwise loading takes it from the user (``classifier=``).
            model_card: README.md text instead of the generated card.

        Returns:
            The folder.

        Raises:
            ConfigError: a layer cannot describe itself (unregistered class or no
                ``get_config``), or the config does not rebuild the guard.

        Example:
            >>> import tempfile
            >>> from guardnet import SAECLayer
            >>> classifier = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10))
            >>> guard = GuardedModel(classifier, [SAECLayer()], num_classes=10)
            >>> _ = guard.calibrate(torch.rand(100, 3, 8, 8), target_fpr=0.1, progress=False)
            >>> with tempfile.TemporaryDirectory() as folder:
            ...     _ = guard.save_pretrained(folder)
            ...     loaded = GuardedModel.from_pretrained(folder, classifier=classifier)
            >>> bool(loaded.layers["saec"].threshold == guard.layers["saec"].threshold)
            True
        """
        from guardnet.guard_io import save_guard

        return save_guard(self, path, include_classifier=include_classifier, model_card=model_card)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike[str],
        *,
        classifier: nn.Module | None = None,
        device: str | torch.device = "cpu",
        revision: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        local_files_only: bool | None = None,
    ) -> GuardedModel:
        """A guard from a saved folder, a Hub repo id or a guard recipe name.

        A folder written by :meth:`save_pretrained` (or a Hub repo holding one) gives the
        calibrated guard: every part is built from its config (nothing is downloaded), then the
        weights and thresholds are loaded strictly. A recipe name (``guardnet eval
        --list-guards``) or a JSON recipe file gives an uncalibrated guard
        (:func:`guardnet.build_guard`).

        Args:
            name_or_path: a folder, a Hub repo id (``"org/name"``), or a recipe name or file.
            classifier: the classifier to use, required when the folder cannot rebuild it (a
                classifier that is not a registered guardnet architecture, or saved without its
                weights). When the folder holds classifier weights they are loaded into it.
            device: where the guard goes.
            revision: Hub branch, tag or commit (Hub repos only).
            cache_dir: Hugging Face cache folder (Hub repos only).
            local_files_only: never use the network (Hub repos only).

        Returns:
            The guard in eval mode; ``guard.calibration_report`` and ``guard.recipe`` restored.

        Raises:
            WeightsError: the folder is not a saved guard, lacks or damages a file, its weights
                do not match its config (the message names the keys), or it needs
                ``classifier=``.
            ConfigError: its config cannot rebuild a layer or the guard.

        Example:
            >>> guard = GuardedModel.from_pretrained("mnist-mixdefense")  # a recipe: uncalibrated
            >>> list(guard.layers)
            ['saec', 'contranet']
        """
        from guardnet.guard_io import load_guard

        return load_guard(
            name_or_path,
            classifier=classifier,
            device=device,
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            guard_class=cls,
        )

    def attack_view(self, *, bpda: bool = True) -> GuardAttackView:
        """An ``nn.Module`` with K+1 logits so attack libraries can attack classifier and guard.

        Args:
            bpda: layers that are not differentiable but offer a surrogate gradient
                (:meth:`Layer.bpda_forward`, e.g. SAEC's histogram) use it; ``False``: they
                contribute no gradient.

        See :class:`GuardAttackView`.
        """
        self._check_calibrated()
        return GuardAttackView(self, bpda=bpda)

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, cascade={self.cascade}, "
            f"max_batch_size={self.max_batch_size}, fail_closed={self.fail_closed}"
        )


def build_guard(
    spec: str | os.PathLike[str] | Mapping[str, Any] | GuardRecipe,
    *,
    device: str | torch.device = "cpu",
    max_batch_size: int | None = 500,
) -> GuardedModel:
    """Build an uncalibrated guard from a recipe (what ``GuardedModel.from_pretrained`` does for
    a recipe name, with the chunk size as an option).

    Args:
        spec: a registered recipe name (``guardnet eval --list-guards``), a JSON recipe file or a
            mapping (see :mod:`guardnet.recipes`).
        device: where the guard lives.
        max_batch_size: the guard's chunk size.

    Returns:
        The guard in eval mode (calibrate it before use), its recipe at ``guard.recipe``.

    Example:
        >>> guard = build_guard("mnist-mixdefense")
        >>> list(guard.layers), guard.recipe.classifier
        (['saec', 'contranet'], 'mnist-cnn')
    """
    from guardnet.guard_io import guard_from_recipe

    return guard_from_recipe(
        spec, guard_class=GuardedModel, device=device, max_batch_size=max_batch_size
    )


class GuardAttackView(nn.Module):
    """Classifier and guard as one differentiable model with K+1 outputs.

    Outputs ``[z_1 .. z_K, z_reject]`` with ``z_reject = max_k z_k + max_l m_l``, where ``m_l`` is
    layer ``l``'s margin (signed distance to its threshold in units of its clean score scale, > 0
    when it rejects). So ``argmax == K`` exactly when the guard rejects, and an attack that wants
    to fool classifier *and* guard must push every margin below 0 and the true class below
    another one — the standard construction for attacking a detector and a classifier together.

    Gradients flow through the classifier and through layers with ``differentiable = True``.
    Non-differentiable layers (e.g. SAEC's histogram, A2D's attack counts) still decide the
    argmax exactly; with ``bpda=True`` those that define :meth:`Layer.bpda_forward` (SAEC: a
    straight-through soft histogram) pass a surrogate gradient, the others none. The predicted
    label that post layers condition on (ContraNet) is an argmax: it is treated as a constant,
    the straight-through choice.

    The view runs in eval mode and ignores the cascade. It is an attack surface, not a faster
    guard: it checks shapes but not the [0, 1] range, since attacks keep inputs in range
    themselves.
    """

    def __init__(self, guard: GuardedModel, *, bpda: bool = True) -> None:
        super().__init__()
        self.guard = guard
        self.bpda = bpda
        layers = guard.rejecting_layers.values()
        if not any(
            layer.differentiable or (bpda and type(layer).bpda_forward is not Layer.bpda_forward)
            for layer in layers
        ):
            warnings.warn(
                "no rejecting layer of this guard is differentiable: gradients of the reject "
                "logit come from the classifier only",
                stacklevel=3,
            )

    @property
    def num_classes(self) -> int | None:
        k = self.guard.num_classes
        return None if k is None else k + 1

    @property
    def margin_keys(self) -> list[str]:
        """The score keys of the columns of :meth:`logits_and_margins`' margins."""
        return list(self.guard.rejectors)

    def logits_and_margins(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """The classifier's logits (B, K) and every rejector's margin (B, R), differentiably.

        Margins are in units of each score's clean spread, > 0 when that score rejects; columns
        follow :attr:`margin_keys`. Adaptive attacks (``guardnet.eval``) build their losses
        from these two tensors.
        """
        guard = self.guard
        images = guard._check_input(images, check_values=False)
        with eval_mode(guard), guard._dtype_support(images):
            result = guard._pipeline(images, cascade=False, grad=True, bpda=self.bpda)
        rejecting = guard.rejecting_layers
        if not rejecting:
            return result.logits, result.logits.new_zeros(result.logits.shape[0], 0)
        # (B, S) per layer (S = 1 for single-score layers) against its S thresholds.
        margins = torch.cat(
            [
                layer.margin(
                    torch.stack([result.scores[k] for k in score_keys(name, layer)], dim=1)
                )
                for name, layer in rejecting.items()
            ],
            dim=1,
        )
        return result.logits, margins.to(result.logits.dtype)

    def forward(self, images: Tensor) -> Tensor:
        logits, margins = self.logits_and_margins(images)
        if margins.shape[1] == 0:
            reject = logits.new_full((logits.shape[0], 1), float("-inf"))
        else:
            reject = logits.amax(dim=1, keepdim=True) + margins.amax(dim=1, keepdim=True)
        return torch.cat([logits, reject], dim=1)
