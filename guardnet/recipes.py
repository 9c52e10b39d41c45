"""Named guards: a classifier plus layers, buildable from one name or a JSON file.

A recipe says which pretrained classifier to protect and which layers to put around it;
thresholds are not part of it (they come from :meth:`guardnet.GuardedModel.calibrate` on clean
validation data, as ``guardnet eval`` does). Recipes let ``guardnet eval --guard NAME`` and
users rebuild exactly the guards whose numbers the README reports.

A JSON recipe file holds the same fields::

    {"dataset": "gtsrb", "classifier": "resnet20-gtsrb",
     "layers": [{"type": "saec"}, {"type": "contranet", "weights": "runs/contranet-gtsrb/model"}]}

Layer types: ``saec`` (keyword arguments of :class:`guardnet.SAECLayer`) and ``contranet``
(``weights``: a pretrained name, folder or Hub id; other keys go to
:class:`guardnet.ContraNetLayer`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from guardnet.guard import GuardedModel, Normalize
from guardnet.layers import ContraNetLayer, Layer, SAECLayer

__all__ = [
    "GUARD_RECIPES",
    "LAYER_TYPES",
    "GuardRecipe",
    "build_guard",
    "list_guards",
    "load_recipe",
    "register_guard",
]


def _contranet(weights: str, **kwargs: Any) -> Layer:
    return ContraNetLayer.from_pretrained(weights, **kwargs)


#: Layer type -> builder taking the recipe entry's keyword arguments.
LAYER_TYPES: dict[str, Callable[..., Layer]] = {"saec": SAECLayer, "contranet": _contranet}


@dataclass(frozen=True)
class GuardRecipe:
    """A guard, by parts.

    Args:
        name: the recipe's name (``"file"`` for a JSON recipe).
        dataset: the dataset the classifier and layers were trained for.
        classifier: a pretrained classifier name, folder or Hub id (its config gives mean/std).
        layers: per layer, ``{"type": ..., **kwargs}`` (see :data:`LAYER_TYPES`).
        description: one line for listings.
    """

    name: str
    dataset: str
    classifier: str
    layers: tuple[Mapping[str, Any], ...] = field(default_factory=tuple)
    description: str = ""

    def __post_init__(self) -> None:
        for entry in self.layers:
            kind = entry.get("type")
            if kind not in LAYER_TYPES:
                raise ValueError(
                    f"guard recipe {self.name!r}: unknown layer type {kind!r}; "
                    f"choose from {sorted(LAYER_TYPES)}"
                )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dataset": self.dataset,
            "classifier": self.classifier,
            "layers": [dict(entry) for entry in self.layers],
            "description": self.description,
        }


GUARD_RECIPES: dict[str, GuardRecipe] = {}


def register_guard(recipe: GuardRecipe) -> GuardRecipe:
    """Add a recipe to :data:`GUARD_RECIPES` (names are unique)."""
    if recipe.name in GUARD_RECIPES:
        raise ValueError(f"guard recipe {recipe.name!r} is already registered")
    GUARD_RECIPES[recipe.name] = recipe
    return recipe


def list_guards() -> list[GuardRecipe]:
    """The registered recipes, sorted by name."""
    return [GUARD_RECIPES[name] for name in sorted(GUARD_RECIPES)]


def load_recipe(spec: str | os.PathLike[str] | Mapping[str, Any] | GuardRecipe) -> GuardRecipe:
    """A recipe from a registered name, a JSON file or a mapping."""
    if isinstance(spec, GuardRecipe):
        return spec
    if isinstance(spec, Mapping):
        data = dict(spec)
    else:
        text = os.fspath(spec)
        if text in GUARD_RECIPES:
            return GUARD_RECIPES[text]
        path = Path(text)
        if not path.is_file():
            raise ValueError(
                f"{text!r} is neither a registered guard ({', '.join(sorted(GUARD_RECIPES))}) "
                "nor a JSON recipe file"
            )
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"guard recipe {path} is not valid JSON: {error}") from None
        data.setdefault("name", path.stem)
    missing = {"dataset", "classifier", "layers"} - set(data)
    if missing:
        raise ValueError(f"guard recipe lacks {sorted(missing)}")
    return GuardRecipe(
        name=str(data.get("name", "custom")),
        dataset=str(data["dataset"]),
        classifier=str(data["classifier"]),
        layers=tuple(dict(entry) for entry in data["layers"]),
        description=str(data.get("description", "")),
    )


def _classifier_and_classes(name: str) -> tuple[nn.Module, int | None]:
    """:func:`build_classifier`'s model and the class count its config states."""
    from guardnet.hub import load_model

    model, config = load_model(name)
    if "mean" not in config or "std" not in config:
        raise ValueError(f"classifier {name!r} has no mean/std in its config")
    classifier = nn.Sequential(Normalize(config["mean"], config["std"]), model).eval()
    return classifier, config.get("num_classes")


def build_classifier(name: str) -> nn.Module:
    """A pretrained classifier that takes [0, 1] images (its normalisation prepended), eval mode."""
    return _classifier_and_classes(name)[0]


def build_guard(
    spec: str | os.PathLike[str] | Mapping[str, Any] | GuardRecipe,
    *,
    device: str | torch.device = "cpu",
    max_batch_size: int | None = 500,
) -> tuple[GuardedModel, GuardRecipe]:
    """Build an uncalibrated guard from a recipe.

    Args:
        spec: a registered name (``guardnet eval --list-guards``), a JSON file or a mapping.
        device: where the guard lives.
        max_batch_size: the guard's chunk size.

    Returns:
        The guard (calibrate it before use) and its recipe.

    Example:
        >>> guard, recipe = build_guard("mnist-mixdefense")
        >>> list(guard.layers)
        ['saec', 'contranet']
    """
    recipe = load_recipe(spec)
    classifier, num_classes = _classifier_and_classes(recipe.classifier)
    layers = []
    for entry in recipe.layers:
        kwargs = {k: v for k, v in entry.items() if k != "type"}
        layers.append(LAYER_TYPES[entry["type"]](**kwargs))
    guard = GuardedModel(classifier, layers, num_classes=num_classes, max_batch_size=max_batch_size)
    return guard.to(device).eval(), recipe


for _dataset, _classifier, _contranet_weights in (
    ("mnist", "mnist-cnn", "contranet-mnist"),
    ("gtsrb", "resnet20-gtsrb", "contranet-gtsrb"),
    ("cifar10", "resnet20-cifar10jpeg-ft", "contranet-cifar10"),
):
    register_guard(
        GuardRecipe(
            name=f"{_dataset}-saec",
            dataset=_dataset,
            classifier=_classifier,
            layers=({"type": "saec"},),
            description=f"SAEC before {_classifier}",
        )
    )
    register_guard(
        GuardRecipe(
            name=f"{_dataset}-contranet",
            dataset=_dataset,
            classifier=_classifier,
            layers=({"type": "contranet", "weights": _contranet_weights},),
            description=f"ContraNet ({_contranet_weights}) after {_classifier}",
        )
    )
    register_guard(
        GuardRecipe(
            name=f"{_dataset}-mixdefense",
            dataset=_dataset,
            classifier=_classifier,
            layers=({"type": "saec"}, {"type": "contranet", "weights": _contranet_weights}),
            description=f"MixDefense: SAEC -> {_classifier} -> ContraNet ({_contranet_weights})",
        )
    )
