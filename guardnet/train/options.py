"""The options of a training run: one object per trainer, built by the CLI or in Python.

:func:`~guardnet.train.run_classifier_training` takes a :class:`ClassifierTrainingOptions`,
:func:`~guardnet.train.run_contranet_training` a :class:`ContraNetTrainingOptions`. Both say
where the run lives (``out``), what it trains on and how the process runs; the
hyper-parameters that shape the weights are in their ``settings``
(:mod:`guardnet.train.settings`).

The training data is exactly one of:

* ``dataset``: a guardnet dataset name (``"mnist"``, ``"cifar10"``, ``"gtsrb"``; its seeded
  train / val splits and official test split, under ``root``);
* ``data_dir``: your own images as a torchvision ``ImageFolder`` tree,
  ``data_dir/train/<class>/<image>`` and ``data_dir/val/<class>/<image>`` (and optionally
  ``data_dir/test/``), every split with the same class folders;
* ``train_data`` and ``val_data`` (and optionally ``test_data``): any
  ``torch.utils.data.Dataset`` of ``(image, label)`` pairs, images as PIL images or tensors.

Your own images are resized to ``image_size`` x ``image_size`` and converted to ``channels``
channels (see :mod:`guardnet.train.data`).

Example:
    >>> options = ClassifierTrainingOptions(out="runs/mnist", dataset="mnist", arch="MnistCNN")
    >>> options.settings.epochs, options.data_kind
    (5, 'dataset')
    >>> ClassifierTrainingOptions(out="runs/x", arch="MnistCNN")
    Traceback (most recent call last):
    ...
    ValueError: give the training data: dataset (a guardnet dataset), data_dir ...
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from torch.utils.data import Dataset

from guardnet.train.settings import ContraNetTrainSettings, TrainSettings

__all__ = ["ClassifierTrainingOptions", "ContraNetTrainingOptions", "DataKind"]

DataKind = Literal["dataset", "data_dir", "datasets"]


@dataclass(frozen=True, kw_only=True)
class _RunOptions:
    """What both trainers' options share: the run folder, the data and the process.

    Attributes:
        out: The run folder: checkpoints, ``train_log.jsonl`` and ``model/`` (the result as a
            Hub folder with a model card).
        dataset: A guardnet dataset name (see :func:`guardnet.data.dataset_info`).
        data_dir: An ``ImageFolder`` tree with ``train/`` and ``val/`` (``test/`` optional).
        train_data: A Dataset of ``(image, label)`` pairs to train on.
        val_data: A Dataset of ``(image, label)`` pairs for validation (with ``train_data``).
        dataset_name: The name your data gets in the model's config and card (default: the
            ``data_dir`` folder's name, or ``"custom"``); ignored with ``dataset``.
        image_size: Height and width your images are resized to (default: the size of the
            pretrained model the run starts from or protects, else 32).
        channels: 1 (grey) or 3 (RGB) channels your images are converted to (default: as
            ``image_size``, else 3).
        root: Data root of the guardnet datasets (default ``$GUARDNET_DATA``).
        limit: Train on a seeded subset of this many images (smoke runs).
        threads: ``torch.set_num_threads`` (default: torch's choice).
        device: ``"auto"`` (CUDA if available, else CPU) or a torch device.
        progress: Show progress bars.
        command: The command line, recorded in the model card.
        log: Receives the progress lines.
    """

    out: str | os.PathLike[str]
    dataset: str | None = None
    data_dir: str | os.PathLike[str] | None = None
    train_data: Dataset | None = None
    val_data: Dataset | None = None
    dataset_name: str | None = None
    image_size: int | None = None
    channels: int | None = None
    root: str | os.PathLike[str] | None = None
    limit: int | None = None
    threads: int | None = None
    device: str = "auto"
    progress: bool = True
    command: str | None = None
    log: Callable[[str], None] = print

    def __post_init__(self) -> None:
        given = [
            name
            for name, value in (
                ("dataset", self.dataset),
                ("data_dir", self.data_dir),
                ("train_data", self.train_data),
            )
            if value is not None
        ]
        if not given:
            raise ValueError(
                "give the training data: dataset (a guardnet dataset), data_dir (an ImageFolder "
                "tree) or train_data and val_data (Datasets)"
            )
        if len(given) > 1:
            raise ValueError(f"give one source of training data, got {' and '.join(given)}")
        if (self.train_data is None) != (self.val_data is None):
            raise ValueError("train_data and val_data go together: give both or neither")
        if self.dataset is not None and (self.image_size or self.channels):
            raise ValueError(
                "image_size and channels size your own images; a guardnet dataset has its own"
            )
        if self.image_size is not None and self.image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {self.image_size}")
        if self.channels not in (None, 1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")

    @property
    def data_kind(self) -> DataKind:
        """Which data the run trains on: ``"dataset"``, ``"data_dir"`` or ``"datasets"``."""
        if self.dataset is not None:
            return "dataset"
        return "data_dir" if self.data_dir is not None else "datasets"


@dataclass(frozen=True, kw_only=True)
class ClassifierTrainingOptions(_RunOptions):
    """Everything :func:`~guardnet.train.run_classifier_training` needs, besides the data.

    The shared attributes (``out``, the data, ``image_size``, ``channels``, ``root``,
    ``limit``, ``threads``, ``device``, ``progress``, ``command``, ``log``) are described in
    the module docstring and :class:`_RunOptions`.

    Attributes:
        arch: A registered architecture (see :func:`guardnet.weights.list_architectures`); may be
            None with ``init`` (then the init's architecture).
        arch_args: Extra builder arguments (``num_classes`` and ``in_channels`` come from the
            data). Ignored with ``init``.
        init: A registered pretrained name, a weights folder or a Hub repo id to fine-tune.
        settings: Optimiser, schedule, epochs, batch size, seed.
        test_data: A Dataset of ``(image, label)`` pairs for the final test accuracy (with
            ``train_data``; without it no test accuracy is reported).
        eval_limit: Evaluate on seeded subsets of this many validation / test images.
        augment: Use the dataset's standard augmentation
            (:func:`~guardnet.train.default_augmentation`; your own data has none).
        resume: Continue the run in ``out`` from its newest checkpoint.
    """

    arch: str | None = None
    arch_args: Mapping[str, Any] | None = None
    init: str | None = None
    settings: TrainSettings = field(default_factory=TrainSettings)
    test_data: Dataset | None = None
    eval_limit: int | None = None
    augment: bool = True
    resume: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.arch is None and self.init is None:
            raise ValueError("give an architecture (arch) or weights to start from (init)")
        if self.test_data is not None and self.train_data is None:
            raise ValueError("test_data goes with train_data and val_data")


@dataclass(frozen=True, kw_only=True)
class ContraNetTrainingOptions(_RunOptions):
    """Everything :func:`~guardnet.train.run_contranet_training` needs, besides the data.

    The shared attributes (``out``, the data, ``image_size``, ``channels``, ``root``,
    ``limit``, ``threads``, ``device``, ``progress``, ``command``, ``log``) are described in
    the module docstring and :class:`_RunOptions`.

    Attributes:
        settings: Hyper-parameters; None: :class:`~guardnet.train.ContraNetTrainSettings`
            with the dataset's :data:`~guardnet.train.CONTRANET_DATASET_DEFAULTS` (none for
            your own data).
        preset: ``"small"`` or ``"authors"`` (:class:`~guardnet.nets.contranet.ContraNetConfig`
            presets).
        arch_args: Overrides of the preset's fields (e.g. ``{"g_ch": 8}``).
        classifier: Pretrained name, folder or Hub id of the protected classifier, for the
            adversarial examples of the ``dis`` and ``dmm`` stages (None: none).
        eval_limit: Validation images for the final sanity metrics.
        resume: Continue from the newest checkpoint in ``out``.
    """

    settings: ContraNetTrainSettings | None = None
    preset: str = "small"
    arch_args: Mapping[str, Any] | None = None
    classifier: str | None = None
    eval_limit: int | None = 2000
    resume: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.preset not in ("small", "authors"):
            raise ValueError(f"preset must be 'small' or 'authors', got {self.preset!r}")
