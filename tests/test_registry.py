"""Every shipped pretrained weight and every registered guard recipe, tested by being registered.

The tests are parametrised over :func:`guardnet.list_pretrained` and
:func:`guardnet.recipes.list_guards`: a new weight or recipe is covered as soon as it is
registered. Weights load offline (a socket use fails the test), strictly, with the metadata a
user needs, and give sensible outputs on the shipped fixture images of their dataset; recipes
build, agree with their classifier on the class count, calibrate and classify fixture images.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from safetensors import safe_open
from torch import Tensor, nn

import guardnet
from guardnet.data import fixture_names, load_fixture
from guardnet.errors import CalibrationError
from guardnet.guard import GuardedModel, build_guard
from guardnet.layers.a2d import A2DLayer
from guardnet.nets.contranet import ContraNet, to_unit_range
from guardnet.nets.reformer import ReformerSet
from guardnet.recipes import GuardRecipe, build_classifier, list_guards
from guardnet.weights import load_config, mirror_root

PRETRAINED = guardnet.list_pretrained()
GUARDS = list_guards()

#: Keys every shipped config.json has; classifiers also give their input normalisation.
REQUIRED_KEYS = {
    "architecture",
    "arch_args",
    "dataset",
    "num_classes",
    "input_size",
    "license",
    "source",
}
CLASSIFIER_KEYS = {"mean", "std"}
#: Weights of a layer rather than of a classifier (no normalisation of their own).
LAYER_WEIGHTS = (ContraNet, A2DLayer, ReformerSet)

pytestmark = pytest.mark.usefixtures("flush_denormals")


def _load(name: str) -> tuple[nn.Module, dict[str, Any]]:
    """A registered model and its config, through the public loader."""
    model = guardnet.from_pretrained(name)
    return model, model.pretrained_config


@pytest.fixture(scope="module")
def loaded() -> Iterator[Callable[[str], tuple[nn.Module, dict[str, Any]]]]:
    """:func:`_load`, each name loaded once for the module's tests (they do not modify it)."""
    cache: dict[str, tuple[nn.Module, dict[str, Any]]] = {}

    def load(name: str) -> tuple[nn.Module, dict[str, Any]]:
        if name not in cache:
            cache[name] = _load(name)
        return cache[name]

    yield load
    cache.clear()


def _build(name: str) -> GuardedModel:
    """A registered guard recipe, built (uncalibrated)."""
    return build_guard(name)


def _fixture(dataset: str, count: int, *, split: str = "test") -> tuple[Tensor, Tensor]:
    """The first ``count`` shipped fixture images of ``dataset`` (``"cifar10-exact"`` uses the
    CIFAR-10 fixture) and their labels."""
    name = dataset if dataset in fixture_names() else dataset.split("-")[0]
    images, labels = load_fixture(name if split == "test" else f"{name}-{split}")
    return images[:count], labels[:count]


# --------------------------------------------------------------------------------------------
# Pretrained weights
# --------------------------------------------------------------------------------------------


def test_the_registry_is_not_empty_and_sorted() -> None:
    names = [entry.name for entry in PRETRAINED]
    assert names == sorted(names) and len(set(names)) == len(names)
    assert {"mnist-cnn", "contranet-mnist"} <= set(names)
    assert {"mnist-saec", "mnist-contranet", "mnist-mixdefense"} <= {g.name for g in GUARDS}


@pytest.mark.parametrize("entry", PRETRAINED, ids=lambda e: e.name)
def test_weights_load_strictly_offline_with_their_metadata(
    entry: Any, no_network: list[str]
) -> None:
    model, config = _load(entry.name)  # not cached: this test is the one that loads offline
    assert not model.training
    required = REQUIRED_KEYS | (set() if isinstance(model, LAYER_WEIGHTS) else CLASSIFIER_KEYS)
    missing = required - set(config)
    assert not missing, f"{entry.name}: config.json lacks {sorted(missing)}"
    channels, height, width = config["input_size"]
    assert channels in (1, 3) and height > 0 and width > 0
    assert isinstance(config["num_classes"], int) and config["num_classes"] >= 2
    if not isinstance(model, LAYER_WEIGHTS):
        assert len(config["mean"]) == len(config["std"]) == channels
        assert all(s > 0 for s in config["std"])
    assert config["license"] and config["source"]
    # The registry's description of the weights agrees with their config.
    assert config["architecture"] == entry.architecture
    assert config["license"] == entry.license
    assert config["dataset"] == entry.dataset

    folder = mirror_root() / entry.name
    with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
        stored = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    state = model.state_dict()
    assert stored == {key: tuple(value.shape) for key, value in state.items()}
    # ContraNet ships four nets (encoder, generator, Dis, DMM): a larger budget.
    limit = 25_000_000 if isinstance(model, ContraNet) else 6_000_000
    assert (folder / "model.safetensors").stat().st_size < limit
    if config["license"] != "Apache-2.0":
        assert (folder / "LICENSE.txt").is_file()


@pytest.mark.parametrize("entry", PRETRAINED, ids=lambda e: e.name)
def test_weights_work_on_fixture_images(entry: Any, loaded: Callable) -> None:
    model, config = loaded(entry.name)
    images, labels = _fixture(config["dataset"], 16)
    assert tuple(images.shape[1:]) == tuple(config["input_size"])
    k = config["num_classes"]
    with torch.no_grad():
        if isinstance(model, ContraNet):
            x = to_unit_range(images)
            rebuilt, scores = model(x, labels)
            _, wrong = model(x, (labels + 1) % k)
            assert rebuilt.shape == (16, images.shape[1], 32, 32) and scores.shape == (16, 3)
            # A trained DMM calls an image consistent with its rebuild under the true label,
            # and inconsistent under another label.
            assert float(scores[:, 0].mean()) > 0.5 > float(wrong[:, 0].mean())
            return
        if isinstance(model, ReformerSet):
            # Trained denoisers: every rebuild of a noised image is close to the clean image.
            noisy = (images + 0.1 * torch.randn_like(images)).clamp(0, 1)
            for reformer in model.reformers:
                error = float(((reformer(noisy) - images) ** 2).mean())
                assert error < 0.02, f"{entry.name}: rebuild MSE {error:.4f}"
            return
    if isinstance(model, A2DLayer):
        # Fitted on the classifier it names: clean fixture images cost like clean images.
        classifier = build_classifier(config["classifier"])
        costs = model.costs(images[:4], classifier)
        scores = model.scores_from_costs(costs)
        assert costs.shape == (4, len(model.attacks)) and bool(scores.isfinite().all())
        assert float(scores.mean()) > -3, f"{entry.name}: clean images look adversarial"
        return
    with torch.no_grad():
        mean = torch.tensor(config["mean"]).view(1, -1, 1, 1)
        std = torch.tensor(config["std"]).view(1, -1, 1, 1)
        logits = model((images - mean) / std)
    assert logits.shape == (16, k)
    accuracy = float((logits.argmax(1) == labels).float().mean())
    assert accuracy >= 0.75, f"{entry.name}: {accuracy:.0%} on 16 fixture images"


@pytest.mark.parametrize(
    "entry",
    [e for e in PRETRAINED if "cifar10_jpeg_q75_test_accuracy" in load_config(e.name)["metrics"]],
    ids=lambda e: e.name,
)
def test_card_states_the_measured_cifar10_jpeg_accuracy(entry: Any, loaded: Callable) -> None:
    _, config = loaded(entry.name)
    folder = mirror_root() / entry.name
    measured = config["metrics"]["cifar10_jpeg_q75_test_accuracy"]
    card = (folder / "README.md").read_text()
    assert any(
        "CIFAR-10 (JPEG q75) test" in line and "10,000" in line and f"{measured:.2%}" in line
        for line in card.splitlines()
    ), "the model card must state the measured CIFAR-10 (JPEG q75) test accuracy"
    result = json.loads((folder / "eval_cifar10_jpeg_q75_test.json").read_text())
    assert result["accuracy"] == measured
    assert result["weights_sha256"] == config["weights_sha256"]


# --------------------------------------------------------------------------------------------
# Guard recipes
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("recipe", GUARDS, ids=lambda r: r.name)
def test_recipe_builds_calibrates_and_classifies(recipe: GuardRecipe) -> None:
    registered = {entry.name: entry for entry in PRETRAINED}
    assert recipe.classifier in registered, f"{recipe.name}: classifier is not registered"
    assert registered[recipe.classifier].dataset == recipe.dataset
    for entry in recipe.layers:
        if "weights" in entry:
            assert registered[entry["weights"]].dataset == recipe.dataset, entry

    guard = _build(recipe.name)
    assert not guard.training
    assert [layer.default_name for layer in guard.layers.values()] == [
        entry["type"] for entry in recipe.layers
    ]
    images, labels = _fixture(recipe.dataset, 8)
    with torch.no_grad():
        classes = guard.classify(images).shape[1]
    assert guard.num_classes == classes
    for name, layer in guard.layers.items():
        assert layer.num_classes in (None, classes), f"{name}: {layer.num_classes} classes"

    clean, _ = _fixture(recipe.dataset, 50, split="val")
    if guard.rejectors:
        report = guard.calibrate(clean, target_fpr=0.2, progress=False)
        assert set(report.layers) == set(guard.rejectors)
        assert report.overall_fpr <= 0.2
    else:  # a guard that only corrects labels (DeT) has nothing to calibrate, and says so
        with pytest.raises(CalibrationError, match="no layer with a threshold"):
            guard.calibrate(clean, target_fpr=0.2, progress=False)
    result = guard(images)
    assert result.labels.shape == result.rejected.shape == (8,)
    assert list(result.scores) == guard.score_keys
    assert all(bool(s.isfinite().all()) for s in result.scores.values())
    assert float((result.labels == labels).float().mean()) >= 0.75
    assert int(result.rejected.sum()) <= 4
