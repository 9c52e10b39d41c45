"""Minimum-norm attacks from foolbox 3 (Rauber et al., JOSS 2020): C&W-L2, EAD-L1 and DeepFool.

foolbox is optional (``pip install guardnet[eval]``) and imported when an attack runs. Each class
builds the foolbox attack from its own parameters and runs it on a ``foolbox.PyTorchModel`` on the
images' device.
"""

from __future__ import annotations

import importlib
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from guardnet.eval.attacks.base import Attack
from guardnet.eval.attacks.targets import TARGET_RULES, choose_targets

__all__ = ["CW", "EADL1", "DeepFool", "FoolboxAttack"]


def _foolbox() -> Any:
    try:
        return importlib.import_module("foolbox")
    except ImportError as error:
        raise ImportError(
            "this attack needs foolbox: pip install 'guardnet[eval]' (or pip install foolbox)"
        ) from error


def _own_arguments(arguments: dict[str, Any]) -> dict[str, Any]:
    """An attack's own parameters among the ``locals()`` of its ``__init__``."""
    common = {"self", "model", "batch_size", "seed", "progress", "__class__"}
    return {k: v for k, v in arguments.items() if k not in common}


class FoolboxAttack(Attack):
    """Base of the foolbox attacks: subclasses say which foolbox attack to build.

    foolbox's C&W and EAD return an all-zero image where they found no adversarial example (and
    judge success on that image); :attr:`keeps_input_on_failure` attacks put the input back there.
    """

    library: ClassVar[str] = "foolbox"
    keeps_input_on_failure: ClassVar[bool] = False
    _params: dict[str, Any]

    def build(self, fb: Any) -> Any:
        """The foolbox attack object."""
        raise NotImplementedError

    def criterion(self, fb: Any, images: Tensor, labels: Tensor, generator: torch.Generator) -> Any:
        """What counts as success: leaving ``labels`` (untargeted; subclasses may target)."""
        return labels

    def params(self) -> dict[str, Any]:
        return {**self._params, "library": self.library}

    def perturb(self, images: Tensor, labels: Tensor, generator: torch.Generator) -> Tensor:
        fb = _foolbox()
        fmodel = fb.PyTorchModel(self.model, bounds=(0.0, 1.0), device=images.device)
        criterion = self.criterion(fb, images, labels, generator)
        _, clipped, _ = self.build(fb)(fmodel, images, criterion, epsilons=None)
        if not self.keeps_input_on_failure:
            return clipped
        failed = (clipped.flatten(1) == 0).all(dim=1) & (images.flatten(1) != 0).any(dim=1)
        return torch.where(failed.view(-1, *([1] * (images.ndim - 1))), images, clipped)


class CW(FoolboxAttack):
    """Carlini & Wagner, "Towards Evaluating the Robustness of Neural Networks", IEEE S&P 2017:
    the L2 attack, untargeted or targeted, with a binary search over the constant ``c``.

    Args:
        model: the classifier: [0, 1] images -> logits (normalisation inside).
        binary_search_steps: rounds of the search over ``c`` (9).
        steps: Adam steps per round (1000).
        lr: Adam's step size (0.01).
        confidence: the margin ``kappa`` past the decision boundary (0).
        initial_const: the first ``c`` (1e-3).
        target: ``None`` (untargeted), or the rule that picks one target class per image:
            ``"second"`` (the second most likely class) or ``"random"`` (seeded, uniform over
            the other classes); success then means reaching the target.
        batch_size, seed, progress: see :class:`~guardnet.eval.attacks.Attack`.

    Early abort is on. Where no adversarial example is found the input comes back.
    """

    name: ClassVar[str] = "cw"
    keeps_input_on_failure: ClassVar[bool] = True

    def __init__(
        self,
        model: nn.Module,
        *,
        binary_search_steps: int = 9,
        steps: int = 1000,
        lr: float = 0.01,
        confidence: float = 0.0,
        initial_const: float = 1e-3,
        target: str | None = None,
        batch_size: int = 256,
        seed: int = 0,
        progress: bool = False,
    ) -> None:
        if target is not None and target not in TARGET_RULES:
            raise ValueError(f"target must be None or one of {TARGET_RULES}, got {target!r}")
        self._params = _own_arguments(locals())
        super().__init__(model, batch_size=batch_size, seed=seed, progress=progress)

    def criterion(self, fb: Any, images: Tensor, labels: Tensor, generator: torch.Generator) -> Any:
        rule = self._params["target"]
        if rule is None:
            return labels
        with torch.no_grad():
            logits = self.model(images)
        targets = choose_targets(logits, labels, rule, generator=generator)
        return fb.criteria.TargetedMisclassification(targets)

    def build(self, fb: Any) -> Any:
        p = self._params
        return fb.attacks.L2CarliniWagnerAttack(
            binary_search_steps=p["binary_search_steps"],
            steps=p["steps"],
            stepsize=p["lr"],
            confidence=p["confidence"],
            initial_const=p["initial_const"],
            abort_early=True,
        )


class EADL1(FoolboxAttack):
    """Chen et al., "EAD: Elastic-Net Attacks to Deep Neural Networks via Adversarial Examples",
    AAAI 2018: untargeted, with the L1 decision rule (of the examples found, keep the one of
    least L1 distance).

    Takes the arguments of :class:`CW`, with ``steps`` ISTA iterations per round (100) and a step
    ``lr`` that decays with the square root of the remaining share, and ``beta``: the L1 weight
    of the elastic net (1e-3). Early abort is on. Where no adversarial example is found the
    input comes back.
    """

    name: ClassVar[str] = "ead"
    keeps_input_on_failure: ClassVar[bool] = True

    def __init__(
        self,
        model: nn.Module,
        *,
        binary_search_steps: int = 9,
        steps: int = 100,
        lr: float = 0.01,
        confidence: float = 0.0,
        initial_const: float = 1e-3,
        beta: float = 1e-3,
        batch_size: int = 256,
        seed: int = 0,
        progress: bool = False,
    ) -> None:
        self._params = _own_arguments(locals())
        super().__init__(model, batch_size=batch_size, seed=seed, progress=progress)

    def build(self, fb: Any) -> Any:
        p = self._params
        return fb.attacks.EADAttack(
            binary_search_steps=p["binary_search_steps"],
            steps=p["steps"],
            initial_stepsize=p["lr"],
            confidence=p["confidence"],
            initial_const=p["initial_const"],
            regularization=p["beta"],
            decision_rule="L1",
            abort_early=True,
        )


class DeepFool(FoolboxAttack):
    """Moosavi-Dezfooli, Fawzi & Frossard, "DeepFool: a simple and accurate method to fool deep
    neural networks", CVPR 2016: the L2 attack.

    Args:
        model: the classifier: [0, 1] images -> logits (normalisation inside).
        steps: linearisation steps (50).
        overshoot: how far past the boundary the last step goes, relative (0.02).
        candidates: the most likely classes considered (10, as the authors' code; batched, so
            43-class GTSRB stays affordable).
        batch_size, seed, progress: see :class:`~guardnet.eval.attacks.Attack`.
    """

    name: ClassVar[str] = "deepfool"

    def __init__(
        self,
        model: nn.Module,
        *,
        steps: int = 50,
        overshoot: float = 0.02,
        candidates: int = 10,
        batch_size: int = 256,
        seed: int = 0,
        progress: bool = False,
    ) -> None:
        self._params = _own_arguments(locals())
        super().__init__(model, batch_size=batch_size, seed=seed, progress=progress)

    def build(self, fb: Any) -> Any:
        p = self._params
        return fb.attacks.L2DeepFoolAttack(
            steps=p["steps"], candidates=p["candidates"], overshoot=p["overshoot"]
        )
