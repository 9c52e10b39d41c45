"""A2D: attack every input and read how cheap it was to flip its label.

Zhao et al., "Attack as Defense: Characterizing Adversarial Examples using Robustness",
ISSTA 2021. An adversarial example sits just across a decision boundary, so attacking it again
flips its label in a few steps, while a benign input needs many. The layer runs attacks *as
defense* on every input (batched, per-sample early stopping: :mod:`guardnet.ops.attack_cost`)
and turns each attack's cost (steps or queries until the label changes) into a score:

- ``detector="zscore"`` (default): per attack, the Z-score of the Box-Cox-transformed cost
  (section 4.2), the transform fitted on clean validation costs with :meth:`A2DLayer.fit`;
  one score per attack, each with its own threshold from :meth:`GuardedModel.calibrate
  <guardnet.GuardedModel.calibrate>`.
- ``detector="vote"``: the paper's Z-score ensemble as one score. An input is benign when at
  least ``min_benign_votes`` detectors say so; with the per-attack Z-scores sorted ascending,
  that is "the ``(n - min_benign_votes + 1)``-th smallest is not below ``h``", so that order
  statistic is the score and ``h`` its calibrated threshold.
- ``detector="knn"``: the share of benign costs among the ``knn_k`` nearest reference cost
  vectors (section 4.1; Z-scored costs, so no attack dominates the distance), fitted with
  :meth:`A2DLayer.fit_knn` on benign *and* adversarial costs.

Every score is low for suspicious inputs. Attacks (settings per dataset in :data:`A2D_PRESETS`,
the authors' public code):

- ``bim`` (BIM_d): untargeted L-inf BIM away from the predicted label, cost = steps;
- ``bim2`` (BIM2_d): the L2 version;
- ``jsma`` (JSMA_d): saliency-map attack towards the second most likely label, cost =
  iterations;
- ``dba`` (DBA_d): label-only boundary attack, cost = queries until the mean squared distance
  of its adversarial image to the input is below 0.02. The only one for classifiers without
  a gradient.

**Stop at the threshold.** Once calibrated, an input whose cost has passed its threshold is
accepted by that detector whatever happens later, so :meth:`forward` stops attacking it there
and reports the cost at which it stopped: decisions are exactly those of the full attack, and
scores on the accepted side are lower bounds. :meth:`GuardedModel.compute_scores
<guardnet.GuardedModel.compute_scores>` (calibration, evaluation) computes full costs.

The layer never changes the classifier's parameters or their gradients, and never the images
later layers see. Its scores are counts and offer no gradient: gradient attacks through the
guard's attack view see A2D as a constant (see ``docs/a2d.md`` for what that means).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from guardnet.errors import (
    CalibrationError,
    CalibrationWarning,
    ConfigError,
    InputDTypeError,
    NotCalibratedError,
)
from guardnet.layers._loading import load_layer_module
from guardnet.layers.base import Layer, LayerInput, LayerKind, LayerOutput, exact_scores_requested
from guardnet.layers.registry import register_layer
from guardnet.ops.attack_cost import bim_cost, boundary_cost, jsma_cost
from guardnet.ops.boxcox import boxcox, fit_boxcox
from guardnet.weights.registry import register_architecture

__all__ = ["A2D_ATTACKS", "A2D_DETECTORS", "A2D_PRESETS", "A2DLayer"]

#: The attacks used as defense, in the paper's order.
A2D_ATTACKS: tuple[str, ...] = ("bim", "bim2", "jsma", "dba")
#: The detectors built on the costs.
A2D_DETECTORS: tuple[str, ...] = ("zscore", "vote", "knn")

#: Per dataset, every attack's settings: ``eps`` and ``step`` of the BIMs, ``limit`` (the most
#: steps, iterations or queries; also the cost of an input that never flips), JSMA's ``theta``,
#: DBA's ``mse_target``. MNIST and CIFAR-10 are the authors' public settings; GTSRB (32x32
#: colour, no paper figures) takes CIFAR-10's.
A2D_PRESETS: dict[str, dict[str, dict[str, float]]] = {
    "mnist": {
        "bim": {"eps": 0.3, "step": 0.0006, "limit": 500},
        "bim2": {"eps": 0.1, "step": 0.0002, "limit": 500},
        "jsma": {"theta": 0.1, "limit": 2000},
        "dba": {"mse_target": 0.02, "limit": 5000},
    },
    "cifar10": {
        "bim": {"eps": 0.03, "step": 0.00006, "limit": 500},
        "bim2": {"eps": 0.01, "step": 0.00002, "limit": 500},
        "jsma": {"theta": 0.1, "limit": 2000},
        "dba": {"mse_target": 0.02, "limit": 5000},
    },
}
A2D_PRESETS["gtsrb"] = {k: dict(v) for k, v in A2D_PRESETS["cifar10"].items()}

_ALLOWED_KEYS = {
    "bim": {"eps", "step", "limit"},
    "bim2": {"eps", "step", "limit"},
    "jsma": {"theta", "limit", "max_changes_per_feature"},
    "dba": {"mse_target", "limit"},
}

# Costs are shifted by one before the Box-Cox transform, so a cost of 0 (the label already
# differs from the one given, e.g. under runner-up labels) stays in its domain.
_COST_SHIFT = 1.0


def _check_settings(attack: str, values: Mapping[str, float]) -> dict[str, float]:
    unknown = set(values) - _ALLOWED_KEYS[attack]
    if unknown:
        raise ConfigError(
            f"unknown setting(s) {sorted(unknown)} for A2D attack {attack!r}; it takes "
            f"{sorted(_ALLOWED_KEYS[attack])}"
        )
    out = dict(values)
    for key in ("eps", "step", "theta", "mse_target"):
        if key in out and not (isinstance(out[key], (int, float)) and out[key] > 0):
            raise ConfigError(f"A2D attack {attack!r}: {key} must be > 0, got {out[key]!r}")
    for key in ("limit", "max_changes_per_feature"):
        if key in out:
            value = out[key]
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(
                    f"A2D attack {attack!r}: {key} must be an integer >= 1, got {out[key]!r}"
                )
            out[key] = value
    return out


@register_layer("a2d")
class A2DLayer(Layer):
    """Attack as Defense as a guard layer (``probe``: attacks the classifier; low = suspicious).

    Args:
        attacks: which attacks to run, from :data:`A2D_ATTACKS`.
        preset: the dataset whose settings to start from (a key of :data:`A2D_PRESETS`).
        settings: per attack, settings that replace the preset's (e.g.
            ``{"bim": {"limit": 200}}``).
        detector: ``"zscore"``, ``"vote"`` or ``"knn"`` (see the module docstring).
        min_benign_votes: ``"vote"``: how many detectors must say benign (default 2, the
            paper's k, or 1 for one attack).
        knn_k: ``"knn"``: neighbours consulted (the paper's K = 100).
        knn_size: ``"knn"``: reference cost vectors held (set by :meth:`fit_knn`; part of the
            config so a saved layer rebuilds with the right buffer shapes).
        stop_at_threshold: once calibrated, stop attacking an input whose decision is settled
            (identical decisions, less work; see the module docstring).
        seed: keys the boundary attack's noise (per image content, so batching does not matter).

    Shape:
        - Input: images (B, C, H, W) in [0, 1], labels (B,), logits (B, K), the classifier.
        - Output scores: ``"zscore"``: (B, len(attacks)), one column per attack; otherwise (B,).

    Example:
        >>> from guardnet import GuardedModel
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <...>
        >>> classifier = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
        >>> layer = A2DLayer(["bim"], settings={"bim": {"eps": 0.5, "step": 0.01, "limit": 50}})
        >>> guard = GuardedModel(classifier, [layer])
        >>> _ = layer.fit(torch.rand(32, 1, 8, 8), guard.classify)
        >>> guard.compute_scores(torch.rand(3, 1, 8, 8))["a2d.bim"].shape
        torch.Size([3])
    """

    float32_buffers: ClassVar[tuple[str, ...]] = (
        "threshold",
        "score_scale",
        "boxcox_lambda",
        "cost_mean",
        "cost_std",
        "knn_costs",
        "knn_adversarial",
    )
    kind: ClassVar[LayerKind] = LayerKind.PROBE
    higher_is_suspicious: ClassVar[bool] = False
    differentiable: ClassVar[bool] = False
    default_name: ClassVar[str] = "a2d"

    boxcox_lambda: Tensor
    cost_mean: Tensor
    cost_std: Tensor
    knn_costs: Tensor
    knn_adversarial: Tensor

    def __init__(
        self,
        attacks: Sequence[str] = ("bim",),
        *,
        preset: str = "cifar10",
        settings: Mapping[str, Mapping[str, float]] | None = None,
        detector: str = "zscore",
        min_benign_votes: int | None = None,
        knn_k: int = 100,
        knn_size: int = 0,
        stop_at_threshold: bool = True,
        seed: int = 0,
    ) -> None:
        if isinstance(attacks, str):
            attacks = (attacks,)
        attacks = tuple(attacks)
        if not attacks:
            raise ConfigError("A2DLayer needs at least one attack")
        unknown = [a for a in attacks if a not in A2D_ATTACKS]
        if unknown:
            raise ConfigError(f"unknown A2D attack(s) {unknown}; choose from {list(A2D_ATTACKS)}")
        if len(set(attacks)) != len(attacks):
            raise ConfigError(f"A2D attacks must not repeat, got {list(attacks)}")
        if preset not in A2D_PRESETS:
            raise ConfigError(f"unknown A2D preset {preset!r}; choose from {sorted(A2D_PRESETS)}")
        if detector not in A2D_DETECTORS:
            raise ConfigError(f"detector must be one of {list(A2D_DETECTORS)}, got {detector!r}")
        if min_benign_votes is None:
            min_benign_votes = min(2, len(attacks))
        if not 1 <= min_benign_votes <= len(attacks):
            raise ConfigError(
                f"min_benign_votes must be in [1, {len(attacks)}] for {len(attacks)} attacks, "
                f"got {min_benign_votes}"
            )
        if knn_k < 1 or knn_size < 0:
            raise ConfigError(f"knn_k must be >= 1 and knn_size >= 0, got {knn_k}, {knn_size}")
        extra = set(settings or {}) - set(attacks)
        if extra:
            raise ConfigError(f"settings name attacks {sorted(extra)} the layer does not run")
        self.attacks = attacks
        self.preset = preset
        self.settings = {
            a: _check_settings(a, {**A2D_PRESETS[preset][a], **dict((settings or {}).get(a, {}))})
            for a in attacks
        }
        self.custom_settings = {a: dict(v) for a, v in (settings or {}).items()}
        self.detector = detector
        self.min_benign_votes = min_benign_votes
        self.knn_k = knn_k
        self.stop_at_threshold = stop_at_threshold
        self.seed = seed
        self.exact_forward_scores = not stop_at_threshold
        # One threshold per attack in "zscore" mode; one in the others.
        self.score_names = attacks if detector == "zscore" else ()
        super().__init__()
        nan = torch.full((len(attacks),), float("nan"))
        self.register_buffer("boxcox_lambda", nan.clone())
        self.register_buffer("cost_mean", nan.clone())
        self.register_buffer("cost_std", nan.clone())
        self.register_buffer("knn_costs", torch.zeros(knn_size, len(attacks)))
        self.register_buffer("knn_adversarial", torch.zeros(knn_size))

    # ------------------------------------------------------------------ config
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike[str],
        *,
        revision: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        local_files_only: bool | None = None,
        device: str | torch.device = "cpu",
        **overrides: Any,
    ) -> A2DLayer:
        """Load a fitted A2D layer: a registered name (``"a2d-mnist"``), a folder written by
        ``guardnet ship a2d`` or a Hub repo id.

        Args:
            name_or_path: what to load.
            revision, cache_dir, local_files_only, device: as for
                :func:`guardnet.from_pretrained`.
            **overrides: constructor arguments that replace the saved ones and do not change
                the state's shapes (``stop_at_threshold``, ``seed``).

        Raises:
            WeightsError: the folder is missing, damaged, or not an A2D layer.
        """
        layer = load_layer_module(
            name_or_path,
            A2DLayer,
            "an A2D layer",
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            device=device,
        )
        allowed = {"stop_at_threshold", "seed"}
        if set(overrides) - allowed:
            raise ConfigError(
                f"A2DLayer.from_pretrained can override {sorted(allowed)}, not "
                f"{sorted(set(overrides) - allowed)}"
            )
        for key, value in overrides.items():
            setattr(layer, key, value)
        if "stop_at_threshold" in overrides:
            layer.exact_forward_scores = not layer.stop_at_threshold
        return layer

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments, JSON-serialisable (see :meth:`Layer.get_config`)."""
        return {
            "attacks": list(self.attacks),
            "preset": self.preset,
            "settings": self.custom_settings,
            "detector": self.detector,
            "min_benign_votes": self.min_benign_votes,
            "knn_k": self.knn_k,
            "knn_size": int(self.knn_costs.shape[0]),
            "stop_at_threshold": self.stop_at_threshold,
            "seed": self.seed,
        }

    def extra_repr(self) -> str:
        return f"attacks={list(self.attacks)}, detector={self.detector!r}, preset={self.preset!r}"

    @property
    def is_fitted(self) -> bool:
        """Whether the Box-Cox transform of every attack's costs has been fitted."""
        return bool(torch.isfinite(self.cost_std).all())

    # ------------------------------------------------------------------ costs
    def costs(
        self,
        images: Tensor,
        classifier: Callable[[Tensor], Tensor],
        *,
        labels: Tensor | None = None,
        logits: Tensor | None = None,
        limits: Mapping[str, int] | None = None,
    ) -> Tensor:
        """Every attack's cost on ``images``, batched with per-sample early stopping.

        Args:
            images: (B, C, H, W) images in [0, 1].
            classifier: [0, 1] images -> logits (normalisation included).
            labels: the labels to move away from (default: the classifier's prediction).
            logits: the classifier's logits on ``images`` (computed when ``None``); JSMA
                targets their second most likely class.
            limits: per attack, a cap below the attack's own ``limit`` (stop at the threshold).

        Returns:
            (B, len(attacks)) float costs, in the order of ``attacks``.
        """
        if logits is None:
            with torch.no_grad():
                logits = classifier(images)
        if labels is None:
            labels = logits.argmax(1)
        columns = []
        for attack in self.attacks:
            s = self.settings[attack]
            limit = int(min(s["limit"], (limits or {}).get(attack, s["limit"])))
            if attack in ("bim", "bim2"):
                cost = bim_cost(
                    classifier,
                    images,
                    labels,
                    eps=s["eps"],
                    step=s["step"],
                    limit=limit,
                    norm="linf" if attack == "bim" else "l2",
                )
            elif attack == "jsma":
                if logits.shape[1] < 2:
                    raise ValueError("the jsma attack needs a classifier with >= 2 classes")
                targets = logits.topk(2, dim=1).indices[:, 1]
                cost = jsma_cost(
                    classifier,
                    images,
                    labels,
                    targets,
                    limit=limit,
                    theta=s["theta"],
                    max_changes_per_feature=int(s.get("max_changes_per_feature", 7)),
                )
            else:
                cost = boundary_cost(
                    classifier,
                    images,
                    labels,
                    limit=limit,
                    mse_target=s["mse_target"],
                    seed=self.seed,
                )
            columns.append(cost.float())
        return torch.stack(columns, dim=1)

    def _cost_batches(
        self, images: Tensor, classifier: Callable[[Tensor], Tensor], batch_size: int
    ) -> Tensor:
        with torch.inference_mode(False), torch.enable_grad():
            return torch.cat(
                [self.costs(chunk.clone(), classifier) for chunk in images.split(batch_size)]
            )

    # ------------------------------------------------------------------ fitting
    def fit(
        self,
        images: Tensor,
        classifier: Callable[[Tensor], Tensor],
        *,
        batch_size: int = 256,
    ) -> Tensor:
        """Fit every attack's Box-Cox transform and Z-score on clean *validation* images.

        Call it before :meth:`GuardedModel.calibrate <guardnet.GuardedModel.calibrate>`,
        ideally on validation images other than those that set the thresholds.

        Args:
            images: (N, C, H, W) clean validation images in [0, 1].
            classifier: [0, 1] images -> logits (e.g. ``guard.classify``).
            batch_size: images per batch.

        Returns:
            The (N, len(attacks)) clean costs the fit used.
        """
        costs = self._cost_batches(images, classifier, batch_size)
        self.fit_costs(costs)
        return costs

    def fit_costs(self, costs: Tensor) -> None:
        """Fit the Box-Cox transforms and Z-scores on clean costs from :meth:`costs`.

        An attack whose clean costs are all equal (e.g. none flips within its limit) cannot be
        fitted: it gets the identity transform with unit spread, and a
        :class:`~guardnet.errors.CalibrationWarning` says so.

        Args:
            costs: (N, len(attacks)) clean costs, N >= 2.
        """
        if costs.ndim != 2 or costs.shape[1] != len(self.attacks) or costs.shape[0] < 2:
            raise CalibrationError(
                f"costs must be (N >= 2, {len(self.attacks)}), got {tuple(costs.shape)}"
            )
        if not bool(torch.isfinite(costs).all()) or bool((costs < 0).any()):
            raise CalibrationError("costs must be finite and >= 0")
        shifted = costs.double().cpu() + _COST_SHIFT
        for i, attack in enumerate(self.attacks):
            column = shifted[:, i]
            if bool((column == column[0]).all()):
                warnings.warn(
                    f"A2D attack {attack!r}: every clean cost is {float(column[0]) - 1:g}, so "
                    "its Z-score cannot separate anything; change its settings",
                    CalibrationWarning,
                    stacklevel=2,
                )
                lam, transformed = 1.0, column
            else:
                lam = fit_boxcox(column)
                transformed = boxcox(column, lam)
            self.boxcox_lambda[i] = lam
            self.cost_mean[i] = float(transformed.mean())
            spread = float(transformed.std())
            self.cost_std[i] = spread if spread > 0 and math.isfinite(spread) else 1.0

    def fit_knn(self, benign_costs: Tensor, adversarial_costs: Tensor) -> None:
        """Hold reference cost vectors for ``detector="knn"`` (paper section 4.1).

        The paper uses 1,000 benign and 1,000 adversarial inputs (250 each from FGSM, BIM,
        JSMA and DeepFool). Needs :meth:`fit` (or :meth:`fit_costs`) first: distances are
        taken between Z-scored cost vectors.

        Args:
            benign_costs: (N_b, len(attacks)) costs of clean inputs.
            adversarial_costs: (N_a, len(attacks)) costs of adversarial inputs.
        """
        for name, costs in (("benign", benign_costs), ("adversarial", adversarial_costs)):
            if costs.ndim != 2 or costs.shape[1] != len(self.attacks) or costs.shape[0] < 1:
                raise CalibrationError(
                    f"{name}_costs must be (N >= 1, {len(self.attacks)}), got {tuple(costs.shape)}"
                )
        self._require_fitted()
        reference = torch.cat([benign_costs, adversarial_costs]).to(self.cost_mean)
        is_adversarial = torch.cat(
            [
                benign_costs.new_zeros(len(benign_costs)),
                adversarial_costs.new_ones(len(adversarial_costs)),
            ]
        ).to(self.cost_mean)
        self.knn_costs = self.z_scores(reference)
        self.knn_adversarial = is_adversarial

    def _require_fitted(self) -> None:
        if not self.is_fitted:
            raise NotCalibratedError(
                "A2DLayer's cost transform is not fitted: call layer.fit(clean_val_images, "
                "guard.classify) before guard.calibrate(...) (or load fitted weights)"
            )

    # ------------------------------------------------------------------ scores
    def z_scores(self, costs: Tensor) -> Tensor:
        """(B, A) Z-scores of Box-Cox-transformed (B, A) costs (low = cheap = suspicious)."""
        self._require_fitted()
        lam = self.boxcox_lambda.to(costs.device, torch.float64)
        transformed = boxcox(costs.double() + _COST_SHIFT, lam)
        mean = self.cost_mean.to(costs.device, torch.float64)
        std = self.cost_std.to(costs.device, torch.float64)
        return ((transformed - mean) / std).float()

    def scores_from_costs(self, costs: Tensor) -> Tensor:
        """The layer's scores for (B, A) costs: (B, A) for ``"zscore"``, else (B,)."""
        z = self.z_scores(costs)
        if self.detector == "zscore":
            return z
        if self.detector == "vote":
            rank = len(self.attacks) - self.min_benign_votes  # 0-based order statistic
            return z.sort(dim=1).values[:, rank]
        if self.knn_costs.shape[0] == 0:
            raise NotCalibratedError(
                "A2DLayer(detector='knn') has no reference costs: call layer.fit_knn("
                "benign_costs, adversarial_costs) with costs of clean and of adversarial inputs"
            )
        reference = self.knn_costs.to(z.device)
        k = min(self.knn_k, reference.shape[0])
        nearest = torch.cdist(z, reference).topk(k, dim=1, largest=False).indices
        adversarial_share = self.knn_adversarial.to(z.device)[nearest].mean(1)
        return 1.0 - adversarial_share

    def stop_limits(self) -> dict[str, int]:
        """Per attack, the smallest cost the calibrated thresholds accept (its own ``limit``
        when none does, or before calibration): :meth:`forward` stops attacking there."""
        limits = {a: int(self.settings[a]["limit"]) for a in self.attacks}
        if self.detector == "knn" or not bool(torch.isfinite(self.threshold).all()):
            return limits
        for i, attack in enumerate(self.attacks):
            grid = torch.arange(limits[attack] + 1, device=self.cost_mean.device)
            costs = grid.double()[:, None].expand(-1, len(self.attacks))
            z = self.z_scores(costs)[:, i]
            threshold = self.threshold[i] if self.threshold.ndim else self.threshold
            accepted = (z >= threshold).nonzero()
            if accepted.numel():
                limits[attack] = int(accepted[0, 0])
        return limits

    def forward(self, inputs: LayerInput) -> LayerOutput:
        if inputs.classifier is None or inputs.labels is None:
            raise ValueError("A2DLayer runs after the classifier and needs its handle and labels")
        self._require_fitted()
        # The attacks run in the classifier's dtype: images are converted to it (a GuardedModel
        # has already done so), and a half-precision classifier is refused.
        if inputs.logits is not None:
            dtype = inputs.logits.dtype
        else:
            dtype = next(
                (p.dtype for p in inputs.classifier.parameters() if p.is_floating_point()),
                inputs.images.dtype,
            )
        if dtype in (torch.float16, torch.bfloat16):
            raise InputDTypeError(
                f"A2DLayer counts attack steps, which {str(dtype).removeprefix('torch.')} "
                "rounding changes: run the guard in float32 or float64 (guard.float())"
            )
        images = inputs.images.to(dtype)
        limits = None
        if self.stop_at_threshold and not exact_scores_requested():
            limits = self.stop_limits()
        # The attacks need autograd even inside the caller's no_grad() or inference_mode();
        # inference tensors are cloned into normal ones first.
        with torch.inference_mode(False), torch.enable_grad():
            costs = self.costs(
                images.clone(),
                inputs.classifier,
                labels=inputs.labels.clone(),
                logits=None if inputs.logits is None else inputs.logits.clone(),
                limits=limits,
            )
        return LayerOutput(scores=self.scores_from_costs(costs).to(dtype))


@register_architecture("A2D")
def _a2d_architecture(**arch_args: Any) -> A2DLayer:
    """Builds an unfitted layer from a shipped folder's ``arch_args`` (its :meth:`get_config`)."""
    return A2DLayer.from_config(arch_args)
