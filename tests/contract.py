"""The base of the layer contract suite (``test_layer_contract.py``), in the style of kornia's
``BaseTester``: what a contract case is, how guardnet's ``Layer`` classes are found, and the
assertions the contract tests share.

A layer class is covered by being defined in a ``guardnet`` module (every module under
``guardnet.layers`` is imported to find them) and having a factory in the suite's
``CONTRACT_FACTORIES``; a class without one fails the suite instead of skipping it.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

import guardnet.layers
from guardnet import GuardedModel, GuardResult
from guardnet.layers.base import Layer, LayerInput, LayerKind, score_keys

__all__ = ["BaseLayerTester", "LayerCase", "discover_layer_classes"]


def _subclasses(cls: type) -> Iterator[type]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def discover_layer_classes() -> list[type[Layer]]:
    """Every concrete ``Layer`` subclass defined in guardnet, sorted by name.

    Imports every module of :mod:`guardnet.layers` first, so a layer is found even before it is
    exported. Test doubles (defined outside the ``guardnet`` package) are left out.
    """
    prefix = guardnet.layers.__name__ + "."
    for module in pkgutil.walk_packages(guardnet.layers.__path__, prefix):
        importlib.import_module(module.name)
    found = {
        cls
        for cls in _subclasses(Layer)
        if cls.__module__.split(".")[0] == "guardnet"
        and isinstance(getattr(cls, "kind", None), LayerKind)
    }
    return sorted(found, key=lambda cls: f"{cls.__module__}.{cls.__qualname__}")


@dataclass
class LayerCase:
    """A small instance of a layer class, with a classifier and inputs it fits.

    Attributes:
        layer: the layer under test (uncalibrated).
        classifier: a small classifier taking [0, 1] images of ``image_shape``.
        image_shape: (C, H, W) of the inputs.
        num_classes: the classifier's class count.
    """

    layer: Layer
    classifier: nn.Module
    image_shape: tuple[int, int, int]
    num_classes: int

    def images(self, batch: int, *, seed: int = 0, dtype: torch.dtype = torch.float32) -> Tensor:
        """(batch, C, H, W) seeded images in [0, 1]."""
        generator = torch.Generator().manual_seed(seed)
        return torch.rand(batch, *self.image_shape, generator=generator).to(dtype)

    def guard(self, **kwargs: object) -> GuardedModel:
        """A guard of the case's classifier and layer (``kwargs`` go to :class:`GuardedModel`)."""
        return GuardedModel(
            self.classifier,
            [self.layer],
            num_classes=self.num_classes,
            **kwargs,  # type: ignore[arg-type]
        )


#: Builds a case; the argument seeds the random weights, so two seeds give two different twins.
CaseFactory = Callable[[int], LayerCase]


class BaseLayerTester:
    """Shared helpers of the contract tests (no tests of its own)."""

    @staticmethod
    def layer_input(guard: GuardedModel, images: Tensor) -> LayerInput:
        """What the guard hands its single layer for ``images``: classifier outputs included
        for layers that run after the classifier."""
        (layer,) = guard.layers.values()
        if layer.kind is LayerKind.PRE:
            return LayerInput(images=images)
        with torch.no_grad():
            logits = guard.classify(images)
        return LayerInput(
            images=images, logits=logits, labels=logits.argmax(1), classifier=guard.classify
        )

    @staticmethod
    def calibrate_at_median(guard: GuardedModel, images: Tensor) -> None:
        """Set every threshold at the median of its score on ``images``, so about half of them
        are rejected by each score, and the score scale at the scores' spread."""
        scores = guard.compute_scores(images)
        for key, (layer, score_name) in guard.rejectors.items():
            values = scores[key].double()
            scale = float(values.std()) or 1.0
            layer.set_threshold(float(values.median()), score_scale=scale, score=score_name)

    @staticmethod
    def training_flags(module: nn.Module) -> dict[str, bool]:
        """Every submodule's ``training`` flag, by name."""
        return {name: m.training for name, m in module.named_modules()}

    @staticmethod
    def assert_scores_close(
        got: dict[str, Tensor], want: dict[str, Tensor], *, atol: float = 1e-5
    ) -> None:
        assert list(got) == list(want)
        for key in want:
            torch.testing.assert_close(
                got[key], want[key], atol=atol, rtol=1e-4, msg=lambda m, k=key: f"{k}: {m}"
            )

    @classmethod
    def assert_forward_matches_exact(
        cls, guard: GuardedModel, result: GuardResult, exact: dict[str, Tensor]
    ) -> None:
        """``result`` (from ``guard(x)``) has the scores of ``exact`` (``compute_scores(x)``);
        for a layer whose forward may stop at its threshold (``exact_forward_scores`` false),
        the same decisions and the exact score wherever it rejects."""
        exact_layers = {
            k for k, (layer, _) in guard.rejectors.items() if layer.exact_forward_scores
        }
        cls.assert_scores_close(
            {
                k: v
                for k, v in result.scores.items()
                if k in exact_layers or k not in guard.rejectors
            },
            {k: v for k, v in exact.items() if k in exact_layers or k not in guard.rejectors},
            atol=0,
        )
        for key, (layer, score_name) in guard.rejectors.items():
            if key in exact_layers:
                continue
            if score_name is None:
                rejected = layer.reject(exact[key])
            else:
                column = torch.zeros(
                    len(exact[key]), len(layer.score_names), dtype=exact[key].dtype
                )
                column[:, layer.score_names.index(score_name)] = exact[key]
                rejected = layer.reject(column)[:, layer.score_names.index(score_name)]
            assert torch.equal(result.layer_rejected[key], rejected), key
            assert torch.equal(result.scores[key][rejected], exact[key][rejected]), key

    @staticmethod
    def assert_masks_follow_scores(
        guard: GuardedModel, result: GuardResult, *, skip: Collection[str] = ()
    ) -> None:
        """Every rejecting layer's masks in ``result`` are its thresholds applied to its scores
        (layers named in ``skip`` are left out)."""
        for name, layer in guard.rejecting_layers.items():
            if name in skip:
                continue
            keys = score_keys(name, layer)
            scores = torch.stack([result.scores[k] for k in keys], dim=1)
            masks = torch.stack([result.layer_rejected[k] for k in keys], dim=1)
            want = layer.reject(scores if layer.score_names else scores[:, 0])
            assert torch.equal(masks, want.view_as(masks)), f"{name}: masks do not follow scores"
