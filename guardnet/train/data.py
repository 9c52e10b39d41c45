"""The labelled images a training run reads: a guardnet dataset, an ImageFolder tree or Datasets.

:func:`load_training_data` turns the data named by a run's options into a
:class:`TrainingData`, whose :meth:`~TrainingData.split` gives the ``train``, ``val`` and
``test`` images as float tensors in [0, 1], all of one size, in memory (the trainers draw
batches from them by index).

* A guardnet dataset (``dataset="mnist"``, ...) is read by :func:`guardnet.data.load_split`:
  seeded train / val splits of the official training set, the official test set.
* Your own images, an ``ImageFolder`` tree (``data_dir``) or ``Dataset`` objects of
  ``(image, label)`` pairs, are read once, image by image, and each image is converted to
  ``channels`` channels (grey <-> RGB, alpha dropped) and resized to ``image_size`` x
  ``image_size`` (bilinear, antialiased; the whole image, no crop). Images may be PIL images
  or tensors (``uint8``, or float in [0, 1]; ``(C, H, W)`` or ``(H, W)``). The class count is
  the length of the training Dataset's ``classes`` (as torchvision datasets have) or the
  largest label + 1; mean and std are measured on the training images.

Example:
    >>> import torch
    >>> from torch.utils.data import TensorDataset
    >>> train = TensorDataset(torch.rand(6, 3, 40, 40), torch.tensor([0, 1, 2, 0, 1, 2]))
    >>> data = dataset_training_data(train, train, image_size=32, channels=1, name="toy")
    >>> data.info.num_classes, data.split("train").images.shape
    (3, torch.Size([6, 1, 32, 32]))
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

import guardnet.data
from guardnet.data import DatasetInfo, Split, SplitDataset, dataset_info
from guardnet.data.datasets import _derived_seed
from guardnet.errors import DataNotFoundError, DatasetError
from guardnet.train.options import _RunOptions

__all__ = [
    "TrainingData",
    "dataset_training_data",
    "image_folder_training_data",
    "images_from_dataset",
    "load_training_data",
]

# ITU-R BT.601 luma weights, as PIL's "RGB" -> "L" conversion uses.
_LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class TrainingData:
    """The images of a training run and what the trained model's config says about them.

    Attributes:
        info: Name, class names, image size, channels, mean and std, and a note on the
            provenance; for a guardnet dataset its :class:`~guardnet.data.DatasetInfo`.
        builtin: True for a guardnet dataset (its seeded splits and standard augmentation).
        source: How model cards name where the images came from.
        root: Data root of a guardnet dataset.
        splits: Your own data's images by split, before any ``limit``.
    """

    info: DatasetInfo
    builtin: bool
    source: str
    root: str | os.PathLike[str] | None = None
    splits: Mapping[str, SplitDataset] | None = None

    @property
    def has_test(self) -> bool:
        """Whether there are test images (always for a guardnet dataset)."""
        return self.builtin or "test" in (self.splits or {})

    def split(self, split: Split, *, limit: int | None = None) -> SplitDataset:
        """The images of one split, optionally a seeded subset of ``limit`` of them.

        Args:
            split: ``"train"``, ``"val"`` or ``"test"``.
            limit: Keep a seeded uniform random subset of this many images (in their order),
                as :func:`guardnet.data.load_split` does.

        Returns:
            The split.

        Raises:
            DatasetError: Your own data has no such split (see :attr:`has_test`).
        """
        if self.builtin:
            # Looked up at call time, so tests can substitute guardnet.data.load_split.
            return guardnet.data.load_split(self.info.name, split, root=self.root, limit=limit)
        full = (self.splits or {}).get(split)
        if full is None:
            raise DatasetError(f"{self.source} has no {split} split")
        if limit is None or limit >= len(full):
            return full
        generator = torch.Generator().manual_seed(_derived_seed(0, f"limit-{split}"))
        keep = torch.randperm(len(full), generator=generator)[:limit].sort().values
        return SplitDataset(
            full.images[keep], full.labels[keep], info=self.info, split=split, indices=keep
        )


def load_training_data(options: _RunOptions, *, image_size: int, channels: int) -> TrainingData:
    """The training data a run's options name.

    Args:
        options: A :class:`~guardnet.train.ClassifierTrainingOptions` or
            :class:`~guardnet.train.ContraNetTrainingOptions`.
        image_size: Height and width your own images are resized to (unused for a guardnet
            dataset, whose images have their own size).
        channels: Channels your own images are converted to.

    Returns:
        The data.

    Raises:
        DatasetError: Unknown dataset name, or your data is malformed.
        DataNotFoundError: ``data_dir`` or one of its split folders is missing.
    """
    if options.dataset is not None:
        info = dataset_info(options.dataset)
        return TrainingData(info=info, builtin=True, source=info.display_name, root=options.root)
    if options.data_dir is not None:
        return image_folder_training_data(
            options.data_dir, image_size=image_size, channels=channels, name=options.dataset_name
        )
    assert options.train_data is not None and options.val_data is not None
    return dataset_training_data(
        options.train_data,
        options.val_data,
        getattr(options, "test_data", None),
        image_size=image_size,
        channels=channels,
        name=options.dataset_name,
    )


def image_folder_training_data(
    data_dir: str | os.PathLike[str],
    *,
    image_size: int,
    channels: int,
    name: str | None = None,
) -> TrainingData:
    """Your images in an ``ImageFolder`` tree: ``train/`` and ``val/``, ``test/`` optional.

    Each split folder holds one folder per class (``data_dir/train/cat/001.png``), read by
    ``torchvision.datasets.ImageFolder``; every split must have the same class folders.

    Args:
        data_dir: The tree's root.
        image_size: Height and width the images are resized to.
        channels: 1 or 3.
        name: The data's name in configs and cards (default: ``data_dir``'s folder name).

    Returns:
        The data.

    Raises:
        DataNotFoundError: ``data_dir``, ``train/`` or ``val/`` is missing.
        DatasetError: A split has no images, other class folders, or an unreadable image.
    """
    from torchvision.datasets import ImageFolder

    root = Path(data_dir)
    folders: dict[str, ImageFolder] = {}
    for split in ("train", "val", "test"):
        path = root / split
        if not path.is_dir():
            if split == "test":
                continue
            raise DataNotFoundError(
                f"{path} not found: an ImageFolder tree needs {root}/train/<class>/<image> and "
                f"{root}/val/<class>/<image> (and optionally {root}/test/)"
            )
        try:
            folders[split] = ImageFolder(str(path))
        except (FileNotFoundError, RuntimeError) as exc:
            raise DatasetError(f"{path} is not a readable ImageFolder split: {exc}") from exc
    classes = folders["train"].classes
    for split, folder in folders.items():
        if folder.classes != classes:
            raise DatasetError(
                f"{root / split} has class folders {folder.classes}, {root / 'train'} has "
                f"{classes}: every split needs the same ones"
            )
    counts = ", ".join(f"{split}/ {len(folder):,}" for split, folder in folders.items())
    return _user_data(
        folders,
        classes=classes,
        image_size=image_size,
        channels=channels,
        name=name or root.resolve().name,
        source=f"ImageFolder `{root}` ({counts} images)",
    )


def dataset_training_data(
    train: Dataset,
    val: Dataset,
    test: Dataset | None = None,
    *,
    image_size: int,
    channels: int,
    name: str | None = None,
) -> TrainingData:
    """Your images as Datasets of ``(image, label)`` pairs.

    Args:
        train: The training images.
        val: Validation images (per-epoch accuracy, sanity metrics).
        test: Test images, optional.
        image_size: Height and width the images are resized to.
        channels: 1 or 3.
        name: The data's name in configs and cards (default ``"custom"``).

    Returns:
        The data.

    Raises:
        DatasetError: A Dataset is empty or holds something other than ``(image, label)``
            pairs of a PIL image or an image tensor and an integer label.
    """
    given = {"train": train, "val": val} | ({"test": test} if test is not None else {})
    kind = type(train).__name__
    return _user_data(
        given,
        classes=getattr(train, "classes", None),
        image_size=image_size,
        channels=channels,
        name=name or "custom",
        source=f"a {kind} ({', '.join(f'{s} {len(d):,}' for s, d in given.items())} images)",
    )


def _user_data(
    datasets: Mapping[str, Dataset],
    *,
    classes: Sequence[str] | None,
    image_size: int,
    channels: int,
    name: str,
    source: str,
) -> TrainingData:
    """Read every split into memory and describe the data."""
    tensors = {
        split: images_from_dataset(dataset, image_size=image_size, channels=channels, what=split)
        for split, dataset in datasets.items()
    }
    largest = max(int(labels.max()) for _, labels in tensors.values())
    num_classes = len(classes) if classes is not None else largest + 1
    if largest >= num_classes:
        raise DatasetError(f"labels go up to {largest}, but the data has {num_classes} classes")
    if num_classes < 2:
        raise DatasetError(f"training needs at least 2 classes, the data has {num_classes}")
    train_images = tensors["train"][0]
    mean = train_images.mean(dim=(0, 2, 3))
    std = train_images.std(dim=(0, 2, 3))
    info = DatasetInfo(
        name=name,
        display_name=name,
        num_classes=num_classes,
        channels=channels,
        image_size=image_size,
        class_names=tuple(classes) if classes is not None else tuple(map(str, range(num_classes))),
        mean=tuple(round(v, 4) for v in mean.tolist()),
        std=tuple(round(v, 4) for v in std.tolist()),
        note=f"{source}, resized to {image_size}x{image_size} with {channels} channel(s).",
        train_size=len(train_images),
        test_size=len(tensors["test"][1]) if "test" in tensors else 0,
    )
    splits = {
        split: SplitDataset(
            images, labels, info=info, split=split, indices=torch.arange(len(labels))
        )
        for split, (images, labels) in tensors.items()
    }
    return TrainingData(info=info, builtin=False, source=source, splits=splits)


def images_from_dataset(
    dataset: Dataset, *, image_size: int, channels: int, what: str = "dataset"
) -> tuple[Tensor, Tensor]:
    """All images of a Dataset of ``(image, label)`` pairs, at one size, as two tensors.

    A ``TensorDataset`` of ``(images, labels)`` is converted as a whole; any other Dataset is
    read item by item (the images of a folder may each have their own size).

    Args:
        dataset: The Dataset; images are PIL images or tensors (``uint8``, or float in
            [0, 1]; ``(C, H, W)`` or ``(H, W)`` with 1, 3 or 4 channels).
        image_size: Height and width of the result.
        channels: 1 or 3 channels of the result.
        what: How errors name the Dataset.

    Returns:
        ``(images, labels)``: float32 ``(N, channels, image_size, image_size)`` in [0, 1] and
        int64 ``(N,)``.

    Raises:
        DatasetError: The Dataset is empty or an item is not an ``(image, label)`` pair of a
            supported image and a label >= 0.

    Example:
        >>> from PIL import Image
        >>> pairs = [(Image.new("RGB", (64, 48), (255, 0, 0)), 1)]
        >>> images, labels = images_from_dataset(pairs, image_size=32, channels=1)
        >>> images.shape, labels.tolist(), round(float(images.mean()), 3)
        (torch.Size([1, 1, 32, 32]), [1], 0.298)
    """
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
        raw, labels = dataset.tensors
        floats = _as_float(raw, what)
        extremes = torch.stack([floats.amin(), floats.amax()]) if floats.numel() else None
        images = _fit(floats, image_size, channels, what)
    else:
        try:
            count = len(dataset)  # type: ignore[arg-type]
        except TypeError as exc:
            raise DatasetError(f"the {what} data has no length (len(dataset))") from exc
        images = torch.empty(count, channels, image_size, image_size)
        lows, highs = torch.empty(count), torch.empty(count)
        label_list: list[int] = []
        for i in range(count):  # reading files: one item at a time is what a Dataset offers
            item = dataset[i]
            if not (isinstance(item, (tuple, list)) and len(item) == 2):
                raise DatasetError(f"item {i} of the {what} data is not an (image, label) pair")
            image, label = item
            where = f"item {i} of the {what} data"
            single = _as_float(_image_tensor(image, channels, where), where)[None]
            lows[i], highs[i] = single.amin(), single.amax()
            images[i] = _fit(single, image_size, channels, where)[0]
            label_list.append(int(label))
        labels = torch.tensor(label_list, dtype=torch.int64)
        extremes = torch.stack([lows.amin(), highs.amax()]) if count else None
    if labels.numel() == 0:
        raise DatasetError(f"the {what} data is empty")
    labels = labels.to(torch.int64).reshape(-1)
    if labels.numel() != images.shape[0]:
        raise DatasetError(f"the {what} data has {images.shape[0]} images, {labels.numel()} labels")
    if int(labels.min()) < 0:
        raise DatasetError(f"the {what} data has negative labels")
    assert extremes is not None
    low, high = extremes.tolist()  # one check of the input range for the whole split
    if low < 0 or high > 1:
        raise DatasetError(
            f"the {what} images lie in [{low:.3g}, {high:.3g}]; float images must be in [0, 1]"
        )
    return images, labels


def _image_tensor(image: object, channels: int, where: str) -> Tensor:
    """A PIL image or a tensor as a ``(C, H, W)`` tensor (PIL: in ``channels`` channels)."""
    from PIL import Image

    if isinstance(image, Image.Image):
        from torchvision.transforms.functional import pil_to_tensor

        return pil_to_tensor(image.convert("L" if channels == 1 else "RGB"))
    if isinstance(image, Tensor):
        return image.unsqueeze(0) if image.ndim == 2 else image
    raise DatasetError(f"{where} is a {type(image).__name__}; expected a PIL image or a tensor")


def _as_float(images: Tensor, where: str) -> Tensor:
    """``uint8`` -> float in [0, 1]; float images as they are."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    if not images.is_floating_point():
        raise DatasetError(f"{where} has {images.dtype} images; expected uint8 or float")
    return images.float()


def _fit(images: Tensor, image_size: int, channels: int, where: str) -> Tensor:
    """``(B, C, H, W)`` float images in ``channels`` channels and ``image_size`` squared."""
    if images.ndim != 4 or images.shape[1] not in (1, 3, 4):
        shape = tuple(images.shape[1:])
        raise DatasetError(f"{where} has images of shape {shape}; expected (C, H, W), C 1, 3 or 4")
    if images.shape[1] == 4:  # RGBA: drop the alpha channel
        images = images[:, :3]
    if images.shape[1] == 3 and channels == 1:
        luma = torch.tensor(_LUMA, dtype=images.dtype).view(1, 3, 1, 1)
        images = (images * luma).sum(dim=1, keepdim=True)
    elif images.shape[1] == 1 and channels == 3:
        images = images.expand(-1, 3, -1, -1)
    if images.shape[-2:] != (image_size, image_size):
        # Antialiased bilinear weights can overshoot [0, 1] by a rounding error: clamp.
        images = F.interpolate(
            images, size=(image_size, image_size), mode="bilinear", antialias=True
        ).clamp_(0, 1)
    return images.contiguous()
