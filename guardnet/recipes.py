"""Named guards: a classifier plus layers, buildable from one name or a JSON file.

A recipe says which pretrained classifier to protect and which layers to put around it;
thresholds are not part of it (they come from :meth:`guardnet.GuardedModel.calibrate` on clean
validation data, as ``guardnet eval`` does). Recipes let ``guardnet eval --guard NAME`` and
users rebuild exactly the guards whose numbers the README reports.

A JSON recipe file holds the same fields::

    {"dataset": "gtsrb", "classifier": "resnet20-gtsrb",
     "layers": [{"type": "saec"}, {"type": "contranet", "weights": "runs/contranet-gtsrb/model"}]}

Layer types are the registered ones (:data:`guardnet.layers.LAYER_TYPES`: ``saec``,
``contranet``). An entry with ``weights`` (a pretrained name, folder or Hub id) is loaded with the
class's ``from_pretrained(weights, **other_keys)``; one without is built with its
``from_config(other_keys)``.

A recipe builds an uncalibrated guard; :meth:`guardnet.GuardedModel.save_pretrained` writes a
calibrated one to a folder that :meth:`guardnet.GuardedModel.from_pretrained` reads back.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from guardnet.errors import ConfigError
from guardnet.layers import LAYER_TYPES, Layer
from guardnet.nets.normalize import Normalize

__all__ = [
    "GUARD_RECIPES",
    "LAYER_TYPES",
    "GuardRecipe",
    "build_classifier",
    "build_recipe_layer",
    "list_guards",
    "load_recipe",
    "register_guard",
]


@dataclass(frozen=True)
class GuardRecipe:
    """A guard, by parts.

    Args:
        name: the recipe's name (``"file"`` for a JSON recipe).
        dataset: the dataset the classifier and layers were trained for.
        classifier: a pretrained classifier name, folder or Hub id (its config gives mean/std).
        layers: per layer, ``{"type": ..., **kwargs}`` (see :func:`build_recipe_layer`).
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
                raise ConfigError(
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
            raise ConfigError(
                f"{text!r} is neither a registered guard ({', '.join(sorted(GUARD_RECIPES))}) "
                "nor a JSON recipe file"
            )
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ConfigError(f"guard recipe {path} is not valid JSON: {error}") from None
        data.setdefault("name", path.stem)
    missing = {"dataset", "classifier", "layers"} - set(data)
    if missing:
        raise ConfigError(f"guard recipe lacks {sorted(missing)}")
    return GuardRecipe(
        name=str(data.get("name", "custom")),
        dataset=str(data["dataset"]),
        classifier=str(data["classifier"]),
        layers=tuple(dict(entry) for entry in data["layers"]),
        description=str(data.get("description", "")),
    )


def build_classifier(name: str) -> nn.Module:
    """A pretrained classifier that takes [0, 1] images (its normalisation prepended), eval mode.

    The pretrained model keeps its config as ``pretrained_config``, so a guard around it is
    saved with the architecture and rebuilt without the user's help.
    """
    from guardnet.weights import from_pretrained

    model = from_pretrained(name)
    config = model.pretrained_config
    if "mean" not in config or "std" not in config:
        raise ConfigError(f"classifier {name!r} has no mean/std in its config")
    return nn.Sequential(Normalize(config["mean"], config["std"]), model).eval()


def build_recipe_layer(entry: Mapping[str, Any]) -> Layer:
    """One layer of a recipe: ``{"type": ..., "weights": ..., **kwargs}``.

    With ``weights``, the registered class's ``from_pretrained(weights, **kwargs)`` loads it;
    without, its ``from_config(kwargs)`` builds it.

    Example:
        >>> build_recipe_layer({"type": "saec", "bins": 128}).bins
        128
    """
    kind = entry.get("type")
    if kind not in LAYER_TYPES:
        raise ConfigError(f"unknown layer type {kind!r}; choose from {sorted(LAYER_TYPES)}")
    cls = LAYER_TYPES[kind]
    kwargs = {k: v for k, v in entry.items() if k not in ("type", "weights")}
    if "weights" not in entry:
        return cls.from_config(kwargs)
    loader = getattr(cls, "from_pretrained", None)
    if loader is None:
        raise ConfigError(f"layer type {kind!r} has no pretrained weights; drop 'weights'")
    return loader(entry["weights"], **kwargs)


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


register_guard(
    GuardRecipe(
        name="mnist-a2d",
        dataset="mnist",
        classifier="mnist-cnn",
        layers=({"type": "a2d", "weights": "a2d-mnist"},),
        description="A2D (a2d-mnist: BIM_d, JSMA_d) after mnist-cnn",
    )
)
for _dataset, _classifier in (("mnist", "mnist-cnn"), ("cifar10", "resnet20-cifar10jpeg-ft")):
    register_guard(
        GuardRecipe(
            name=f"{_dataset}-det",
            dataset=_dataset,
            classifier=_classifier,
            layers=({"type": "det", "weights": f"det-{_dataset}"},),
            description=f"DeT (det-{_dataset}) corrects {_classifier}'s labels",
        )
    )
register_guard(
    GuardRecipe(
        name="mnist-mixdefense-det",
        dataset="mnist",
        classifier="mnist-cnn",
        layers=(
            {"type": "saec"},
            {"type": "contranet", "weights": "contranet-mnist"},
            {"type": "det", "weights": "det-mnist"},
        ),
        description="SAEC and ContraNet reject, DeT (det-mnist) corrects the labels they accept",
    )
)
