"""Smooth-perturbation PGD: a low-resolution perturbation that noise statistics do not see.

Detectors of adversarial noise such as SAEC measure high-frequency energy; a perturbation that
varies slowly across the image leaves such a statistic at clean levels. This attack optimises a
low-resolution perturbation ``w`` of ``resolution`` x ``resolution`` pixels per channel, inside
the L-inf ball, and bilinearly upsamples it to the image size: an upsampled value is a convex
combination of values in ``[-eps, eps]``, so the image perturbation stays in the ball (the "low
frequency" parameterisation of Guo et al., "Low Frequency Adversarial Perturbation", UAI 2019;
the layer-aware evaluation of Tramer, Carlini, Brendel and Madry, "On Adaptive Attacks to
Adversarial Example Defenses", NeurIPS 2020). ``resolution=None`` optimises every pixel (the
plain parameterisation).

Each step is a signed-gradient step on ``w`` of a loss that pushes the classifier's margin and
every rejector's margin below 0 (:meth:`guardnet.GuardAttackView.logits_and_margins`):

- ``loss="max"``: ``max(classifier loss, max_r m_r)``, the K+1-logit construction of
  :class:`~guardnet.eval.attacks.adaptive.ViewPGD` (Carlini & Wagner, AISec 2017);
- ``loss="sum"``: ``classifier loss + sum_r max(m_r, -kappa)``, a hinge sum.

Layers that condition on the predicted label (ContraNet) are attacked with the label chosen by
the attacker: ``num_targets=n`` runs the attack targeted at each of the ``n`` classes the clean
image's logits rank highest after the true one (``"all"``: every other class), and keeps, per
image, the best run. ``restarts`` repeats every run from a fresh random start. ``eot_samples``
sums the gradient of that many forward passes per step (expectation over transformation,
Athalye, Carlini and Wagner, ICML 2018) for layers that draw random numbers at every call.

Per image, the result is the first iterate of any run that fools the classifier (any wrong
label, also in targeted runs) and passes the guard; where none did, the iterate whose loss
``max(untargeted margin, max_r m_r)`` was lowest.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from guardnet.errors import ConfigError
from guardnet.eval.attacks.adaptive import GuardPGD, register_adaptive_attack
from guardnet.eval.attacks.query import fooled_and_passed
from guardnet.guard import GuardedModel

__all__ = ["SmoothPGD", "upsample_perturbation"]


def upsample_perturbation(low: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear upsampling of a (B, C, h, w) perturbation to (B, C, H, W).

    Every output value is a convex combination of input values, so ``|out| <= max |low|``.
    """
    if tuple(low.shape[-2:]) == tuple(size):
        return low
    return F.interpolate(low, size=size, mode="bilinear", align_corners=False)


def _floor(value: Tensor, kappa: float) -> Tensor:
    """``max(value, -kappa)`` whose gradient still flows where ``value == -kappa`` (a margin of
    exactly 0, a tie of two logits, would otherwise stall the attack)."""
    return torch.where(value >= -kappa, value, torch.full_like(value, -kappa))


def _expand(v: Tensor, like: Tensor) -> Tensor:
    return v.view(-1, *([1] * (like.ndim - 1)))


@register_adaptive_attack
class SmoothPGD(GuardPGD):
    """L-inf PGD on a low-resolution, bilinearly upsampled perturbation, with restarts,
    attacker-chosen target labels and EOT.

    Args:
        guard: a calibrated :class:`guardnet.GuardedModel`.
        eps: the L-inf budget.
        resolution: side of the optimised perturbation (per channel, capped at the image's
            height and width); ``None``: every pixel.
        restarts: runs per target; the first starts as ``random_start`` says, the others from
            a uniform point of the ball.
        num_targets: ``None``: untargeted (or one random target with ``targeted=True``); an
            int ``n`` or ``"all"``: one targeted run per class among the ``n`` (all) most
            likely wrong classes of the clean image.
        loss: ``"max"`` or ``"sum"`` (see the module docstring).
        **kwargs: ``steps``, ``alpha``, ``random_start``, ``confidence``, ``targeted``,
            ``bpda``, ``eot_samples``, ``batch_size``, ``seed``, ``progress``: see
            :class:`~guardnet.eval.attacks.adaptive.GuardPGD` (``norm`` must be ``"Linf"``).

    Shape:
        Images (B, C, H, W) in [0, 1]; returns the same shape, within ``eps`` in L-inf.

    Example:
        >>> import torch
        >>> from guardnet import GuardedModel, SAECLayer
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 4))
        >>> guard = GuardedModel(net, [SAECLayer()], num_classes=4)
        >>> _ = guard.calibrate(torch.rand(100, 3, 16, 16), target_fpr=0.1, progress=False)
        >>> attack = SmoothPGD(guard, eps=8 / 255, resolution=4, steps=5, num_targets=2)
        >>> attack(torch.rand(2, 3, 16, 16), torch.tensor([0, 1])).shape
        torch.Size([2, 3, 16, 16])
    """

    name: ClassVar[str] = "smooth"

    def __init__(
        self,
        guard: GuardedModel,
        *,
        eps: float,
        resolution: int | None = 8,
        restarts: int = 1,
        num_targets: int | str | None = None,
        loss: str = "max",
        **kwargs: Any,
    ) -> None:
        if kwargs.get("norm", "Linf") != "Linf":
            raise ConfigError(f"{self.name!r} is an L-inf attack, got norm={kwargs['norm']!r}")
        super().__init__(guard, eps=eps, **kwargs)
        if resolution is not None and resolution < 1:
            raise ConfigError(f"resolution must be >= 1 or None, got {resolution}")
        if restarts < 1:
            raise ConfigError(f"restarts must be >= 1, got {restarts}")
        if loss not in ("max", "sum"):
            raise ConfigError(f"loss must be 'max' or 'sum', got {loss!r}")
        if num_targets is not None:
            if guard.num_classes is None:
                raise ConfigError("num_targets needs the guard's num_classes")
            if self.targeted:
                raise ConfigError("num_targets chooses the targets: leave targeted=False")
            if num_targets != "all" and not (isinstance(num_targets, int) and num_targets >= 1):
                raise ConfigError(f"num_targets must be an int >= 1 or 'all', got {num_targets!r}")
        self.resolution = resolution
        self.restarts = restarts
        self.num_targets = num_targets
        self.loss = loss

    def params(self) -> dict[str, Any]:
        return {
            **super().params(),
            "resolution": self.resolution,
            "restarts": self.restarts,
            "num_targets": self.num_targets,
            "loss": self.loss,
            "eot_samples": self.eot_samples,
        }

    # ---------------------------------------------------------------- pieces
    def _targets(
        self, images: Tensor, labels: Tensor, generator: torch.Generator
    ) -> list[Tensor | None]:
        """One (B,) target per run, or ``[None]`` for the untargeted attack."""
        if self.num_targets is None:
            if not self.targeted:
                return [None]
            k = int(self.guard.num_classes)  # type: ignore[arg-type]
            shift = torch.randint(1, k, labels.shape, generator=generator, device=labels.device)
            return [(labels + shift) % k]
        k = int(self.guard.num_classes)  # type: ignore[arg-type]
        n = k - 1 if self.num_targets == "all" else min(int(self.num_targets), k - 1)
        with torch.no_grad():
            logits, _ = self.view.logits_and_margins(images)
        ranked = logits.scatter(1, labels[:, None], float("-inf")).argsort(dim=1, descending=True)
        return [ranked[:, i] for i in range(n)]

    def _objective(
        self, logits: Tensor, margins: Tensor, labels: Tensor, targets: Tensor | None
    ) -> Tensor:
        cls = _floor(self.classifier_margin(logits, labels, targets), self.confidence)
        if margins.shape[1] == 0:
            return cls
        if self.loss == "max":
            return torch.maximum(cls, _floor(margins.amax(dim=1), self.confidence))
        return cls + _floor(margins, self.confidence).sum(dim=1)

    def _start(self, images: Tensor, random: bool, generator: torch.Generator) -> Tensor:
        b, c, h, w = images.shape
        shape = (b, c, h, w)
        if self.resolution is not None:
            shape = (b, c, min(self.resolution, h), min(self.resolution, w))
        if not random:
            return images.new_zeros(shape)
        noise = torch.rand(shape, generator=generator, device=images.device)
        return ((noise * 2 - 1) * self.eps).to(images.dtype)

    def _run(
        self,
        images: Tensor,
        labels: Tensor,
        targets: Tensor | None,
        param: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One PGD run from ``param``: (best images, success, best loss) per image."""
        view = self.view
        size = (images.shape[2], images.shape[3])
        best = images.clone()
        best_loss = images.new_full((images.shape[0],), float("inf"))
        done = torch.zeros(images.shape[0], dtype=torch.bool, device=images.device)
        # No host syncs inside the loop: bookkeeping is masks and torch.where.
        for step in range(self.steps + 1):
            param = param.detach().requires_grad_(True)
            grad = torch.zeros_like(param)
            for sample in range(self.eot_samples if step < self.steps else 1):
                with torch.enable_grad():
                    adv = (images + upsample_perturbation(param, size)).clamp(0.0, 1.0)
                    logits, margins = view.logits_and_margins(adv)
                    objective = self._objective(logits, margins, labels, targets)
                if sample == 0:
                    z, m, x = logits.detach(), margins.detach(), adv.detach()
                    success = fooled_and_passed(z, m, labels)
                    loss = self.classifier_margin(z, labels, None)
                    if m.shape[1]:
                        loss = torch.maximum(loss, m.amax(dim=1))
                    closer = ~done & ~success & (loss < best_loss)
                    best = torch.where(_expand((success & ~done) | closer, x), x, best)
                    best_loss = torch.where(closer, loss, best_loss)
                    done = done | success
                    if step == self.steps:
                        break
                if objective.requires_grad:  # no differentiable path: no gradient
                    (g,) = torch.autograd.grad(objective.sum(), param, allow_unused=True)
                    if g is not None:
                        grad = grad + g
            if step == self.steps:
                break
            moving = _expand(~done, grad).to(grad.dtype)
            param = (param.detach() - self.alpha * grad.sign() * moving).clamp(-self.eps, self.eps)
        return best, done, best_loss.masked_fill(done, float("-inf"))

    # ---------------------------------------------------------------- the attack
    def perturb(self, images: Tensor, labels: Tensor, generator: torch.Generator) -> Tensor:
        images = images.detach()
        best = images.clone()
        best_loss = images.new_full((images.shape[0],), float("inf"))
        for targets in self._targets(images, labels, generator):
            for restart in range(self.restarts):
                random = self.random_start or restart > 0
                param = self._start(images, random, generator)
                adv, _, loss = self._run(images, labels, targets, param)
                better = loss < best_loss
                best = torch.where(_expand(better, adv), adv, best)
                best_loss = torch.where(better, loss, best_loss)
                if bool(torch.isneginf(best_loss).all()):  # one host sync per run
                    return best
        return best
