"""Small dataset samples shipped inside the package, for the offline demo and the tests.

Two kinds per dataset: a sample of the official **test** set (``"mnist"``, ``"gtsrb"``,
``"cifar10"``), for evaluation, and a sample of guardnet's own **validation** split
(``"mnist-val"``, ``"gtsrb-val"``, ``"cifar10-val"``; the seeded, stratified part of the official
training set held out by :func:`guardnet.data.load_split`), for calibrating thresholds. Thresholds
must be calibrated on the validation fixtures, never on the test fixtures.

The files live in ``guardnet/assets/fixtures/`` as safetensors with the keys ``images`` (uint8
``(N, C, H, W)``), ``labels`` (int64 ``(N,)``) and ``indices`` (int64 positions in the official
test set for test fixtures, in the official training set for validation fixtures), plus string
metadata stating their provenance. They are made by ``guardnet ship fixtures``;
``guardnet/assets/fixtures/README.md`` documents them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Literal

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor

from guardnet.errors import DataNotFoundError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

__all__ = [
    "FIXTURES",
    "FixtureSpec",
    "fixture_metadata",
    "fixture_names",
    "load_fixture",
]


@dataclass(frozen=True)
class FixtureSpec:
    """How a fixture was drawn from a dataset.

    Attributes:
        dataset: Dataset name in :data:`guardnet.data.DATASETS`.
        filename: File name under ``guardnet/assets/fixtures/``.
        count: Number of images.
        selection: ``"first"``: items ``0 .. count - 1`` of the split; ``"seeded"``: the sorted
            first ``count`` entries of ``torch.randperm(n)`` from a CPU generator seeded with
            ``seed``, where ``n`` is the number of images in the split. Positions count within
            the split: for ``"val"`` they pick from the validation positions (themselves sorted
            positions in the official training set).
        seed: Seed for ``"seeded"`` selection.
        split: ``"test"``: the official test set; stored ``indices`` are test-set positions.
            ``"val"``: guardnet's validation split (``load_split(dataset, "val")`` with its
            default ``val_fraction`` and ``seed``); stored ``indices`` are positions in the
            official training set.
    """

    dataset: str
    filename: str
    count: int
    selection: Literal["first", "seeded"]
    seed: int = 0
    split: Literal["test", "val"] = "test"


FIXTURES: dict[str, FixtureSpec] = {
    "mnist": FixtureSpec("mnist", "mnist_test_1000.safetensors", 1000, "first"),
    "gtsrb": FixtureSpec("gtsrb", "gtsrb_test_300.safetensors", 300, "seeded", seed=0),
    "cifar10": FixtureSpec("cifar10", "cifar10jpeg_test_300.safetensors", 300, "seeded", seed=0),
    "mnist-val": FixtureSpec(
        "mnist", "mnist_val_500.safetensors", 500, "seeded", seed=0, split="val"
    ),
    "gtsrb-val": FixtureSpec(
        "gtsrb", "gtsrb_val_300.safetensors", 300, "seeded", seed=0, split="val"
    ),
    "cifar10-val": FixtureSpec(
        "cifar10", "cifar10jpeg_val_300.safetensors", 300, "seeded", seed=0, split="val"
    ),
}
_ALIASES = {"cifar10-jpeg": "cifar10", "cifar10-jpeg-val": "cifar10-val"}


def fixture_names() -> tuple[str, ...]:
    """Names accepted by :func:`load_fixture` (besides aliases and file stems).

    Names ending in ``-val`` are validation-split samples (for calibration); the others are
    test-set samples (for evaluation).

    Returns:
        The fixture names, sorted.

    Example:
        >>> fixture_names()
        ('cifar10', 'cifar10-val', 'gtsrb', 'gtsrb-val', 'mnist', 'mnist-val')
    """
    return tuple(sorted(FIXTURES))


def _spec(name: str) -> FixtureSpec:
    key = name.strip().lower().removesuffix(".safetensors")
    key = _ALIASES.get(key, key)
    if key in FIXTURES:
        return FIXTURES[key]
    for spec in FIXTURES.values():
        if spec.filename.removesuffix(".safetensors") == key:
            return spec
    raise DataNotFoundError(
        f"No fixture {name!r}; available: {', '.join(fixture_names())} "
        f"(or a file stem such as {FIXTURES['mnist'].filename.removesuffix('.safetensors')!r})."
    )


def _resource(spec: FixtureSpec) -> Traversable:
    # importlib.resources finds package data in a source tree, an installed wheel or a zip.
    resource = resources.files("guardnet").joinpath("assets", "fixtures", spec.filename)
    if not resource.is_file():
        raise DataNotFoundError(
            f"Fixture file {spec.filename} is missing from guardnet/assets/fixtures/; "
            "regenerate it with `guardnet ship fixtures`."
        )
    return resource


def load_fixture(name: str) -> tuple[Tensor, Tensor]:
    """Load a shipped fixture as float images in [0, 1] and int64 labels.

    Calibrate thresholds on the ``-val`` fixtures (clean images of guardnet's validation split,
    held out of the training set) and evaluate on the test fixtures; never calibrate on test
    images.

    Args:
        name: A test-set sample: ``"mnist"`` (first 1000 test images), ``"gtsrb"`` or
            ``"cifar10"`` / ``"cifar10-jpeg"`` (300 seeded test images each); a validation-split
            sample: ``"mnist-val"`` (500 images), ``"gtsrb-val"`` or ``"cifar10-val"`` /
            ``"cifar10-jpeg-val"`` (300 each), all seeded; or a file stem such as
            ``"mnist_test_1000"`` or ``"mnist_val_500"``.

    Returns:
        ``(images, labels)``: float32 ``(N, C, H, W)`` in [0, 1] and int64 ``(N,)``.

    Raises:
        DataNotFoundError: Unknown name, or the file is missing from the package.

    Example:
        >>> images, labels = load_fixture("mnist")
        >>> images.shape, labels.dtype
        (torch.Size([1000, 1, 28, 28]), torch.int64)
        >>> load_fixture("mnist-val")[0].shape
        torch.Size([500, 1, 28, 28])
    """
    spec = _spec(name)
    with resources.as_file(_resource(spec)) as path:
        tensors = load_file(str(path))
    images = tensors["images"].to(torch.float32).div_(255.0)
    return images, tensors["labels"].to(torch.int64)


def fixture_metadata(name: str) -> dict[str, str]:
    """Provenance stored in a fixture file (source files and sha256, split, selection, ...).

    Args:
        name: As for :func:`load_fixture`.

    Returns:
        The provenance record (stored as one JSON string under the safetensors metadata key
        ``provenance``, so the file's bytes do not depend on metadata ordering).

    Example:
        >>> fixture_metadata("gtsrb")["split"], fixture_metadata("gtsrb-val")["split"]
        ('test', 'val')
    """
    spec = _spec(name)
    with resources.as_file(_resource(spec)) as path, safe_open(str(path), framework="pt") as f:
        raw = (f.metadata() or {}).get("provenance", "{}")
    return {str(k): str(v) for k, v in json.loads(raw).items()}
