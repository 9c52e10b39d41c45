"""Batched data augmentation of the trainers, built from ``kornia.augmentation``.

kornia draws independent parameters for every image of a batch (``torchvision.transforms.v2``
applied to a batch tensor would draw one set for the whole batch). Randomness comes from
torch's global generator, which the training checkpoints save and restore.

* :func:`default_augmentation`: the standard augmentation of a guardnet dataset, used by the
  classifier trainer and by ContraNet's DMM stages (``dmm_augment``).
* :func:`diff_augmentation`: the DiffAugment-style policy on everything ContraNet's GAN
  discriminator sees.
"""

from __future__ import annotations

from torch import nn

from guardnet.data import dataset_info

__all__ = ["AUGMENTED_DATASETS", "augmentation_note", "default_augmentation", "diff_augmentation"]

_AUGMENTATION_NOTES = {
    "mnist": "kornia RandomAffine(degrees=10, translate=0.1, scale=0.9-1.1, p=0.5)",
    "cifar10": "kornia RandomCrop(32, padding=4) + RandomHorizontalFlip(p=0.5)",
    "cifar10-exact": "kornia RandomCrop(32, padding=4) + RandomHorizontalFlip(p=0.5)",
    "gtsrb": (
        "kornia RandomAffine(degrees=10, translate=0.1, scale=0.9-1.1, border padding, p=0.8) + "
        "ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, p=0.8); no flips"
    ),
}


# The dataset names with a standard augmentation (:func:`default_augmentation`).
AUGMENTED_DATASETS = tuple(_AUGMENTATION_NOTES)


def augmentation_note(dataset: str) -> str:
    """One line describing :func:`default_augmentation` of ``dataset`` for model cards.

    Example:
        >>> augmentation_note("cifar10")
        'kornia RandomCrop(32, padding=4) + RandomHorizontalFlip(p=0.5)'
        >>> augmentation_note("my-photos")
        'none'
    """
    return _AUGMENTATION_NOTES.get(dataset, "none")


def default_augmentation(dataset: str) -> nn.Module | None:
    """The standard batched augmentation of a dataset, for float images in [0, 1].

    On 2 CPU cores each costs 2-8 ms per 128-image batch, 1-2% of a classifier training step.

    * MNIST: a small random affine (rotation up to 10 degrees, shift up to 10%, scale 0.9-1.1)
      on half of the images.
    * CIFAR-10: random 32x32 crop of the zero-padded (4 pixels) image and horizontal flips.
    * GTSRB: small affine (border padding) and colour jitter, **no flips**: mirrored signs
      change meaning (turn left / turn right are different classes).

    Args:
        dataset: A dataset name (see :func:`guardnet.data.dataset_info`).

    Returns:
        A module mapping ``(B, C, H, W)`` to augmented images of the same shape, or None for a
        dataset without a standard augmentation.

    Raises:
        DatasetError: ``dataset`` is not a guardnet dataset.

    Example:
        >>> import torch
        >>> augment = default_augmentation("cifar10")
        >>> augment(torch.rand(4, 3, 32, 32)).shape
        torch.Size([4, 3, 32, 32])
    """
    import kornia.augmentation as K

    name = dataset_info(dataset).name
    if name == "mnist":
        return K.RandomAffine(degrees=10.0, translate=(0.1, 0.1), scale=(0.9, 1.1), p=0.5)
    if name in ("cifar10", "cifar10-exact"):
        return K.AugmentationSequential(
            K.RandomCrop((32, 32), padding=4), K.RandomHorizontalFlip(p=0.5)
        )
    if name == "gtsrb":
        return K.AugmentationSequential(
            K.RandomAffine(
                degrees=10.0,
                translate=(0.1, 0.1),
                scale=(0.9, 1.1),
                padding_mode="border",
                p=0.8,
            ),
            K.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.0, p=0.8),
        )
    return None


def diff_augmentation(channels: int) -> nn.Module:
    """DiffAugment-style policy with kornia: colour, translation (1/8), cutout (1/4 side).

    ContraNet's GAN stage applies it to every image its discriminator D_phi sees, real and
    generated alike (images in [0, 1]).

    Args:
        channels: 3 (colour jitter with saturation) or 1 (brightness and contrast only).

    Returns:
        A module mapping ``(B, C, H, W)`` to augmented images of the same shape.

    Example:
        >>> import torch
        >>> diff_augmentation(1)(torch.rand(2, 1, 32, 32)).shape
        torch.Size([2, 1, 32, 32])
    """
    import kornia.augmentation as K

    ops: list[nn.Module] = []
    if channels == 3:
        ops.append(K.ColorJiggle(brightness=0.2, contrast=0.3, saturation=0.5, p=0.8))
    else:
        ops.append(K.ColorJiggle(brightness=0.2, contrast=0.3, p=0.8))
    ops += [
        K.RandomAffine(degrees=0.0, translate=(0.125, 0.125), padding_mode="zeros", p=1.0),
        K.RandomErasing(scale=(0.0625, 0.0625), ratio=(1.0, 1.0), value=0.5, p=1.0),
    ]
    return K.AugmentationSequential(*ops)
