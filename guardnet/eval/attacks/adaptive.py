"""Adaptive attacks: PGD against the classifier *and* the guard together (guardnet's own code).

All four attack a calibrated :class:`guardnet.GuardedModel` through
:meth:`~guardnet.GuardedModel.attack_view`: the classifier's logits ``z`` (B, K) and every
rejector's margin ``m`` (B, R), > 0 when that score rejects, in units of its clean spread.
Non-differentiable layers pass BPDA / straight-through gradients (SAEC's soft histogram); the
predicted label that ContraNet conditions on is an argmax and is held constant within a step.

Losses, minimised, per image (``kappa`` = ``confidence``):

- classifier: untargeted ``max(z_y - max_{k != y} z_k, -kappa)``; targeted
  ``max(max_{k != t} z_k - z_t, -kappa)``;
- detector: ``sum_r w_r max(m_r, -kappa)``: zero gradient once every score is ``kappa`` inside
  its threshold.

Selective and Orthogonal PGD take their gradients from the raw losses (no floor, all
rejectors summed): the orthogonal projection needs the direction in which the detector's scores
rise even where it does not reject yet.

Attacks (the step is the sign of the direction in L-inf, the normalised direction in L2, then a
projection onto the budget and [0, 1]):

- :class:`ViewPGD` (``"bpda"``): the combined objective ``max(classifier loss, max_r m_r)``, the
  Carlini-Wagner construction for a detector and a classifier (an attack on the K+1-logit view
  that stays out of the reject class);
- :class:`DetectorLossPGD` (``"detector"``): classifier loss + ``lambda`` x detector loss, the
  weighted-sum adaptive attack of the ContraNet paper (Sec. 6, one term per rejector: DMM, Dis,
  SSIM);
- :class:`SelectivePGD` (``"selective"``) and :class:`OrthogonalPGD` (``"orthogonal"``): Bryniarski
  et al., "Evading Adversarial Example Detection Defenses with Orthogonal Projected Gradient
  Descent" (ICLR 2022). Selective follows the classifier gradient until the label is wrong, then
  the detector gradient while detected; Orthogonal does the same with each gradient projected
  orthogonally to the other, so progress on one objective does not undo the other. The projection
  is applied (the ContraNet authors' released configuration switched it off).

Every attack returns, per image, the first iterate that fools the classifier and passes the
guard, or its last iterate when none did. ``eot_samples`` > 1 sums each step's direction over that
many forward passes (expectation over transformation, Athalye et al., ICML 2018), for layers that
draw random numbers at every call.

Further adaptive attacks live in their own modules and join the same registry
(:func:`register_adaptive_attack`): ``smooth`` (:mod:`~guardnet.eval.attacks.smooth`), ``square``
(:mod:`~guardnet.eval.attacks.square`) and ``hopskipjump``
(:mod:`~guardnet.eval.attacks.hopskipjump`). Thresholds are the guard's current ones: calibrate the
guard at the FPR you want to attack (5%, and Bryniarski et al.'s worst case 50%) first.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor

from guardnet.errors import ConfigError
from guardnet.eval.attacks import norms
from guardnet.eval.attacks.base import Attack
from guardnet.guard import GuardAttackView, GuardedModel

__all__ = [
    "ADAPTIVE_ATTACKS",
    "DetectorLossPGD",
    "GuardPGD",
    "OrthogonalPGD",
    "SelectivePGD",
    "ViewPGD",
    "check_guard",
    "make_adaptive_attack",
    "project_out",
    "register_adaptive_attack",
]


def _flat_dot(a: Tensor, b: Tensor) -> Tensor:
    return (a.flatten(1) * b.flatten(1)).sum(dim=1)


def _expand(v: Tensor, like: Tensor) -> Tensor:
    return v.view(-1, *([1] * (like.ndim - 1)))


def check_guard(attack: object, guard: object) -> None:
    """Raise ``TypeError`` unless ``guard`` is a :class:`guardnet.GuardedModel`."""
    if not isinstance(guard, GuardedModel):
        raise TypeError(
            f"{type(attack).__name__} attacks a guardnet.GuardedModel, got {type(guard).__name__}"
        )


def project_out(a: Tensor, b: Tensor) -> Tensor:
    """Per image, ``a`` minus its projection on ``b`` (``a`` itself where ``b`` is zero)."""
    coef = _flat_dot(a, b) / _flat_dot(b, b).clamp_min(1e-30)
    return a - _expand(coef, a) * b


class GuardPGD(Attack):
    """Base of the adaptive attacks: projected gradient descent on a guard's losses.

    Args:
        guard: a calibrated :class:`guardnet.GuardedModel`.
        eps: the budget (L-inf on [0, 1], or L2).
        steps: gradient steps (50, as the PGD of the seed papers).
        alpha: step size; default ``2.5 * eps / steps``.
        norm: ``"Linf"`` or ``"L2"``.
        random_start: start from a uniform point of the budget ball.
        confidence: ``kappa``: how far past each boundary the losses keep pushing.
        targeted: attack a random wrong label per image (seeded) instead of any wrong label.
        bpda: straight-through gradients for non-differentiable layers (see
            :meth:`guardnet.GuardedModel.attack_view`).
        eot_samples: forward passes whose directions are summed at each step (EOT), for
            layers with randomness; 1 for deterministic guards.
        batch_size, seed, progress: see :class:`Attack`.
    """

    name: ClassVar[str] = "guard_pgd"

    def __init__(
        self,
        guard: GuardedModel,
        *,
        eps: float,
        steps: int = 50,
        alpha: float | None = None,
        norm: str = "Linf",
        random_start: bool = True,
        confidence: float = 0.0,
        targeted: bool = False,
        bpda: bool = True,
        eot_samples: int = 1,
        batch_size: int = 256,
        seed: int = 0,
        progress: bool = False,
    ) -> None:
        check_guard(self, guard)
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if norm not in ("Linf", "L2"):
            raise ValueError(f"norm must be 'Linf' or 'L2', got {norm!r}")
        if confidence < 0:
            raise ValueError(f"confidence must be >= 0, got {confidence}")
        if eot_samples < 1:
            raise ConfigError(f"eot_samples must be >= 1, got {eot_samples}")
        if guard.num_classes is None and targeted:
            raise ValueError("a targeted attack needs the guard's num_classes")
        super().__init__(guard, batch_size=batch_size, seed=seed, progress=progress)
        self.guard = guard
        self.eps = float(eps)
        self.steps = steps
        self.alpha = float(alpha) if alpha is not None else 2.5 * self.eps / steps
        self.norm = norm
        self.random_start = random_start
        self.confidence = float(confidence)
        self.targeted = targeted
        self.bpda = bpda
        self.eot_samples = eot_samples
        self._view: GuardAttackView | None = None

    def params(self) -> dict[str, Any]:
        params = {
            "eps": self.eps,
            "steps": self.steps,
            "alpha": self.alpha,
            "norm": self.norm,
            "random_start": self.random_start,
            "confidence": self.confidence,
            "targeted": self.targeted,
            "bpda": self.bpda,
        }
        if self.eot_samples != 1:  # absent at 1, so cached examples of earlier runs stay valid
            params["eot_samples"] = self.eot_samples
        return params

    @property
    def view(self) -> GuardAttackView:
        if self._view is None:
            self._view = self.guard.attack_view(bpda=self.bpda)
        return self._view

    # ---------------------------------------------------------------- losses
    @staticmethod
    def classifier_margin(logits: Tensor, labels: Tensor, targets: Tensor | None) -> Tensor:
        """(B,) raw margin of the classifier, minimised; < 0 once the label is wrong."""
        goal = labels if targets is None else targets
        goal_logit = logits.gather(1, goal[:, None]).squeeze(1)
        others = logits.scatter(1, goal[:, None], float("-inf")).amax(dim=1)
        return goal_logit - others if targets is None else others - goal_logit

    def classifier_loss(self, logits: Tensor, labels: Tensor, targets: Tensor | None) -> Tensor:
        """:meth:`classifier_margin` floored at ``-confidence``."""
        return self.classifier_margin(logits, labels, targets).clamp_min(-self.confidence)

    def detector_loss(self, margins: Tensor) -> Tensor:
        """(B,) sum of the rejectors' margins, each floored at ``-confidence``."""
        return margins.clamp_min(-self.confidence).sum(dim=1)

    def fooled(self, logits: Tensor, labels: Tensor, targets: Tensor | None) -> Tensor:
        predicted = logits.argmax(dim=1)
        return predicted != labels if targets is None else predicted == targets

    # ---------------------------------------------------------------- for subclasses
    def direction(
        self,
        images: Tensor,
        logits: Tensor,
        margins: Tensor,
        labels: Tensor,
        targets: Tensor | None,
    ) -> Tensor:
        """The descent direction (shaped like ``images``) at the current iterate."""
        raise NotImplementedError

    @staticmethod
    def _grad(loss: Tensor, images: Tensor, *, retain: bool = False) -> Tensor:
        if not loss.requires_grad:  # e.g. no differentiable rejector and no BPDA
            return torch.zeros_like(images)
        (grad,) = torch.autograd.grad(loss.sum(), images, retain_graph=retain, allow_unused=True)
        return torch.zeros_like(images) if grad is None else grad

    # ---------------------------------------------------------------- the loop
    def _step(self, adv: Tensor, images: Tensor, direction: Tensor) -> Tensor:
        # ``direction`` is a descent direction: step against it.
        return norms.step(adv, images, -direction, alpha=self.alpha, eps=self.eps, norm=self.norm)

    def perturb(self, images: Tensor, labels: Tensor, generator: torch.Generator) -> Tensor:
        view = self.view
        targets: Tensor | None = None
        if self.targeted:
            k = int(self.guard.num_classes)  # type: ignore[arg-type]
            shift = torch.randint(1, k, labels.shape, generator=generator, device=labels.device)
            targets = (labels + shift) % k
        images = images.detach()
        if self.random_start:
            adv = norms.random_start(images, self.eps, self.norm, generator)
        else:
            adv = images.clone()
        best = images.clone()
        done = torch.zeros(images.shape[0], dtype=torch.bool, device=images.device)
        # No host syncs inside the loop: bookkeeping is masks and torch.where.
        for step in range(self.steps + 1):
            adv = adv.detach().requires_grad_(True)
            with torch.enable_grad():
                logits, margins = view.logits_and_margins(adv)
                fooled = self.fooled(logits.detach(), labels, targets)
                detected = (margins.detach() > 0).any(dim=1)
                success = fooled & ~detected
                best = torch.where(_expand(success & ~done, adv), adv.detach(), best)
                done = done | success
                if step == self.steps:
                    break
                direction = self.direction(adv, logits, margins, labels, targets)
                for _ in range(self.eot_samples - 1):  # EOT: fresh draws of random layers
                    logits, margins = view.logits_and_margins(adv)
                    direction = direction + self.direction(adv, logits, margins, labels, targets)
            direction = direction * _expand(~done, direction).to(direction.dtype)
            adv = self._step(adv.detach(), images, direction.detach())
        return torch.where(_expand(done, adv), best, adv.detach())


class ViewPGD(GuardPGD):
    """PGD on the combined objective ``max(classifier loss, max_r m_r)`` (BPDA where needed).

    The Carlini-Wagner construction for attacking a classifier with a detector ("Adversarial
    Examples Are Not Easily Detected", AISec 2017): the K+1-logit attack view, where the reject
    logit is ``max_k z_k + max_r m_r``, attacked so that neither the true class nor the reject
    class wins.

    Example:
        See ``tests/test_adaptive_attacks.py`` for a guard it defeats.
    """

    name: ClassVar[str] = "bpda"

    def direction(self, images, logits, margins, labels, targets):  # type: ignore[override]
        cls = self.classifier_loss(logits, labels, targets)
        if margins.shape[1] == 0:
            return self._grad(cls, images)
        combined = torch.maximum(cls, margins.amax(dim=1).clamp_min(-self.confidence))
        return self._grad(combined, images)


class DetectorLossPGD(GuardPGD):
    """PGD on classifier loss + ``detector_weight`` x the weighted sum of detector losses.

    The adaptive attack of the ContraNet paper (Yang et al., NDSS 2022, Sec. 6 and Eq. 10-19),
    which adds one loss per detector component (DMM, Dis, SSIM) to the classifier's, each with
    its weight, and a squared-L2 distance term. Here every rejector's loss is its margin, so the
    same attack applies to any guard.

    Args:
        detector_weight: ``lambda``, the weight of the detector terms.
        weights: per score key (e.g. ``{"contranet.ssim": 0.5}``), a relative weight; missing
            keys get 1.
        distance_weight: weight of ``||x_adv - x||_2^2`` (per image). 0 by default: the
            projection onto the ``eps`` ball already bounds the perturbation; a positive weight
            trades attack strength for smaller perturbations, as in the paper's objective.
        **kwargs: see :class:`GuardPGD`.
    """

    name: ClassVar[str] = "detector"

    def __init__(
        self,
        guard: GuardedModel,
        *,
        detector_weight: float = 1.0,
        weights: Mapping[str, float] | None = None,
        distance_weight: float = 0.0,
        **kwargs: Any,
    ) -> None:
        if distance_weight < 0:
            raise ValueError(f"distance_weight must be >= 0, got {distance_weight}")
        super().__init__(guard, **kwargs)
        unknown = set(weights or {}) - set(guard.rejectors)
        if unknown:
            raise ValueError(
                f"weights name unknown scores {sorted(unknown)}; "
                f"the guard has {list(guard.rejectors)}"
            )
        self.detector_weight = float(detector_weight)
        self.weights = {k: float((weights or {}).get(k, 1.0)) for k in guard.rejectors}
        self.distance_weight = float(distance_weight)
        self._clean: Tensor | None = None

    def params(self) -> dict[str, Any]:
        params = {
            **super().params(),
            "detector_weight": self.detector_weight,
            "weights": self.weights,
        }
        if self.distance_weight:  # absent at 0, so cached examples of earlier runs stay valid
            params["distance_weight"] = self.distance_weight
        return params

    def perturb(self, images: Tensor, labels: Tensor, generator: torch.Generator) -> Tensor:
        self._clean = images.detach()
        try:
            return super().perturb(images, labels, generator)
        finally:
            self._clean = None

    def direction(self, images, logits, margins, labels, targets):  # type: ignore[override]
        w = margins.new_tensor(list(self.weights.values()))
        detector = (margins.clamp_min(-self.confidence) * w).sum(dim=1)
        loss = self.classifier_loss(logits, labels, targets) + self.detector_weight * detector
        if self.distance_weight and self._clean is not None:
            loss = loss + self.distance_weight * (images - self._clean).flatten(1).square().sum(1)
        return self._grad(loss, images)


class SelectivePGD(GuardPGD):
    """Selective PGD (Bryniarski et al., ICLR 2022): one objective at a time, per image.

    While the classifier still gives the true label, step on the classifier loss; once it is
    fooled, step on the detector loss.

    Starts from the clean input by default (``random_start=False``): a random start can land
    where a detector already rejects, and the classifier steps (orthogonal to the detector's
    gradient in :class:`OrthogonalPGD`) never bring it back.
    """

    name: ClassVar[str] = "selective"

    def __init__(self, guard: GuardedModel, *, random_start: bool = False, **kwargs: Any) -> None:
        super().__init__(guard, random_start=random_start, **kwargs)

    def _both(self, images, logits, margins, labels, targets) -> tuple[Tensor, Tensor, Tensor]:
        # Raw (unfloored) losses: their gradients say where each objective moves even when it is
        # already satisfied, which the orthogonal projection needs.
        fooled = self.fooled(logits.detach(), labels, targets)
        g_cls = self._grad(self.classifier_margin(logits, labels, targets), images, retain=True)
        g_det = self._grad(margins.sum(dim=1), images)
        return fooled, g_cls, g_det

    def direction(self, images, logits, margins, labels, targets):  # type: ignore[override]
        fooled, g_cls, g_det = self._both(images, logits, margins, labels, targets)
        return torch.where(_expand(fooled, g_cls), g_det, g_cls)


class OrthogonalPGD(SelectivePGD):
    """Orthogonal PGD (Bryniarski et al., ICLR 2022).

    As :class:`SelectivePGD`, but the classifier step is projected orthogonally to the detector
    gradient, and the detector step orthogonally to the classifier gradient, so that moving one
    objective leaves the other (to first order) where it is.
    """

    name: ClassVar[str] = "orthogonal"

    def direction(self, images, logits, margins, labels, targets):  # type: ignore[override]
        fooled, g_cls, g_det = self._both(images, logits, margins, labels, targets)
        return torch.where(
            _expand(fooled, g_cls), project_out(g_det, g_cls), project_out(g_cls, g_det)
        )


ADAPTIVE_ATTACKS: dict[str, type[Attack]] = {
    cls.name: cls for cls in (ViewPGD, DetectorLossPGD, SelectivePGD, OrthogonalPGD)
}

_A = TypeVar("_A", bound=type[Attack])


def register_adaptive_attack(cls: _A) -> _A:
    """Class decorator: make an adaptive attack reachable by its ``name``.

    ``make_adaptive_attack(cls.name, guard, eps=..., ...)`` then builds it, and
    ``guardnet eval --adaptive NAME`` runs it. The constructor must take the guard, then
    keyword arguments including ``eps``, ``batch_size``, ``seed`` and ``progress``.

    Raises:
        ConfigError: another class is registered under the same name.
    """
    known = ADAPTIVE_ATTACKS.get(cls.name)
    if known is not None and known is not cls:
        raise ConfigError(f"adaptive attack {cls.name!r} is already registered ({known.__name__})")
    ADAPTIVE_ATTACKS[cls.name] = cls
    return cls


def make_adaptive_attack(name: str, guard: GuardedModel, **kwargs: Any) -> Attack:
    """Build an adaptive attack by name (see :data:`ADAPTIVE_ATTACKS` for the names)."""
    if name not in ADAPTIVE_ATTACKS:
        raise ValueError(
            f"unknown adaptive attack {name!r}; choose from {sorted(ADAPTIVE_ATTACKS)}"
        )
    return ADAPTIVE_ATTACKS[name](guard, **kwargs)
