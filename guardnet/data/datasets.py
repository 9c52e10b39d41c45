"""Dataset loading with fixed, seeded train/validation splits.

Three datasets are read from local files under the data root (see :mod:`guardnet.data.paths`):

* ``"mnist"``: the four original MNIST IDX files, parsed directly (the root may be read-only).
* ``"cifar10"`` (alias ``"cifar10-jpeg"``): CIFAR-10 stored as JPEG quality 75. This is a
  distribution shift from exact CIFAR-10; numbers measured on it must be labelled
  ``"CIFAR-10 (JPEG q75)"`` (see :attr:`DatasetInfo.display_name`). The JPEGs are decoded once per
  process (in-memory LRU) and, optionally, once per machine (``.npy`` cache on disk).
* ``"gtsrb"``: the official GTSRB Final_Training / Final_Test split, whole images resized to 32x32.

With ``download=True`` and the local files absent, torchvision's downloaders fetch the standard
datasets instead: MNIST (the same files), GTSRB (resized here to 32x32) and ``"cifar10-exact"``
(lossless CIFAR-10, which has its own name so its numbers are never confused with the JPEG variant).

Splits: ``"test"`` is the official test set, for reported numbers only. ``"train"`` and ``"val"``
partition the official training set: the validation part is a stratified, seeded random
``val_fraction`` of each class (:func:`split_indices`), identical in every process and on every
machine for a given seed. For GTSRB, whole tracks (runs of 30 consecutive frames of the same
physical sign) go to one side, so near-duplicate frames do not leak from train into validation.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import math
import os
import struct
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from guardnet.data.paths import missing_data_message, resolve_cache_dir, resolve_data_root
from guardnet.errors import DataNotFoundError, DatasetError

__all__ = [
    "DATASETS",
    "DatasetError",
    "DatasetInfo",
    "Split",
    "SplitDataset",
    "clear_memory_cache",
    "dataset_info",
    "decode_jpeg_batch",
    "load_arrays",
    "load_split",
    "split_indices",
]

Split = Literal["train", "val", "test"]


@dataclass(frozen=True)
class DatasetInfo:
    """Static description of a dataset.

    Attributes:
        name: Canonical key in :data:`DATASETS`.
        display_name: How results on this data must be labelled in reports.
        num_classes: Number of classes; labels are ``0 .. num_classes - 1``.
        channels: Image channels (1 for MNIST, 3 otherwise).
        image_size: Height and width in pixels (images are square).
        class_names: One name per class index.
        mean: Per-channel mean of the full official training set, images in [0, 1].
        std: Per-channel standard deviation of the full official training set.
        note: Provenance and caveats.
        train_size: Number of images in the official training set.
        test_size: Number of images in the official test set.
        split_group_size: Runs of this many consecutive same-class training images are kept
            together when the validation part is drawn (30 = one GTSRB track; 1 = no grouping).
    """

    name: str
    display_name: str
    num_classes: int
    channels: int
    image_size: int
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    note: str
    train_size: int
    test_size: int
    split_group_size: int = 1


_CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

# GTSRB itself only numbers its classes; these are the sign names in common use (the
# "signnames.csv" list), checked against the per-class training counts of the data.
_GTSRB_CLASSES = (
    "Speed limit (20km/h)",
    "Speed limit (30km/h)",
    "Speed limit (50km/h)",
    "Speed limit (60km/h)",
    "Speed limit (70km/h)",
    "Speed limit (80km/h)",
    "End of speed limit (80km/h)",
    "Speed limit (100km/h)",
    "Speed limit (120km/h)",
    "No passing",
    "No passing for vehicles over 3.5 metric tons",
    "Right-of-way at the next intersection",
    "Priority road",
    "Yield",
    "Stop",
    "No vehicles",
    "Vehicles over 3.5 metric tons prohibited",
    "No entry",
    "General caution",
    "Dangerous curve to the left",
    "Dangerous curve to the right",
    "Double curve",
    "Bumpy road",
    "Slippery road",
    "Road narrows on the right",
    "Road work",
    "Traffic signals",
    "Pedestrians",
    "Children crossing",
    "Bicycles crossing",
    "Beware of ice/snow",
    "Wild animals crossing",
    "End of all speed and passing limits",
    "Turn right ahead",
    "Turn left ahead",
    "Ahead only",
    "Go straight or right",
    "Go straight or left",
    "Keep right",
    "Keep left",
    "Roundabout mandatory",
    "End of no passing",
    "End of no passing by vehicles over 3.5 metric tons",
)

_CIFAR10_JPEG = DatasetInfo(
    name="cifar10",
    display_name="CIFAR-10 (JPEG q75)",
    num_classes=10,
    channels=3,
    image_size=32,
    class_names=_CIFAR10_CLASSES,
    # Measured on the decoded JPEG training set (exact CIFAR-10 std is 0.2470/0.2435/0.2616).
    mean=(0.4913, 0.4821, 0.4465),
    std=(0.2452, 0.2428, 0.2606),
    note=(
        "CIFAR-10 (JPEG q75) — not standard CIFAR-10 numbers. All 60000 images in the original "
        "order, stored as JPEG quality 75; the compression is a measured distribution shift "
        "(exact-CIFAR ResNet20: 91.78% -> 81.0%)."
    ),
    train_size=50000,
    test_size=10000,
)

DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        name="mnist",
        display_name="MNIST",
        num_classes=10,
        channels=1,
        image_size=28,
        class_names=tuple(str(d) for d in range(10)),
        mean=(0.1307,),
        std=(0.3081,),
        note="MNIST, exact: the four original IDX files (LeCun, Cortes and Burges).",
        train_size=60000,
        test_size=10000,
    ),
    "cifar10": _CIFAR10_JPEG,
    "cifar10-jpeg": _CIFAR10_JPEG,
    "cifar10-exact": DatasetInfo(
        name="cifar10-exact",
        display_name="CIFAR-10",
        num_classes=10,
        channels=3,
        image_size=32,
        class_names=_CIFAR10_CLASSES,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        note="CIFAR-10, exact (lossless), through torchvision's CIFAR10 loader/downloader.",
        train_size=50000,
        test_size=10000,
    ),
    "gtsrb": DatasetInfo(
        name="gtsrb",
        display_name="GTSRB (32x32)",
        num_classes=43,
        channels=3,
        image_size=32,
        class_names=_GTSRB_CLASSES,
        mean=(0.3398, 0.3117, 0.3210),
        std=(0.2755, 0.2647, 0.2712),
        note=(
            "GTSRB official Final_Training / Final_Test split; whole images (not the sign's region "
            "of interest) resized to 32x32. Research use; cite Stallkamp et al., Neural Networks "
            "2012."
        ),
        train_size=39209,
        test_size=12630,
        split_group_size=30,
    ),
}

# Bump when the layout of the on-disk cache files changes, so stale files are ignored.
_DISK_CACHE_VERSION = 1
_MEMORY_CACHE_SIZE = 6
_memory_cache: OrderedDict[tuple[str, str, bool], tuple[Tensor, Tensor]] = OrderedDict()
_memory_lock = threading.Lock()


class SplitDataset(TensorDataset):
    """A :class:`~torch.utils.data.TensorDataset` of ``(image, label)`` that knows its origin.

    Images are float32 in [0, 1] with shape ``(C, H, W)``; labels are int64 scalars.

    Attributes:
        info: The dataset's :class:`DatasetInfo`.
        split: ``"train"``, ``"val"`` or ``"test"``.
        indices: int64 positions of the items in the official train (for train/val) or test set.
    """

    def __init__(
        self, images: Tensor, labels: Tensor, *, info: DatasetInfo, split: Split, indices: Tensor
    ) -> None:
        super().__init__(images, labels)
        self.info = info
        self.split = split
        self.indices = indices

    @property
    def images(self) -> Tensor:
        """All images, float32 ``(N, C, H, W)`` in [0, 1]."""
        return self.tensors[0]

    @property
    def labels(self) -> Tensor:
        """All labels, int64 ``(N,)``."""
        return self.tensors[1]


def dataset_info(name: str) -> DatasetInfo:
    """Look up a dataset by name or alias.

    Args:
        name: ``"mnist"``, ``"cifar10"`` / ``"cifar10-jpeg"``, ``"cifar10-exact"`` or ``"gtsrb"``
            (case-insensitive).

    Returns:
        The dataset's :class:`DatasetInfo`.

    Raises:
        DatasetError: Unknown name.

    Example:
        >>> dataset_info("CIFAR10-JPEG").display_name
        'CIFAR-10 (JPEG q75)'
    """
    key = name.strip().lower()
    if key not in DATASETS:
        raise DatasetError(f"Unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}.")
    return DATASETS[key]


def clear_memory_cache() -> None:
    """Drop the decoded datasets this process keeps in memory (the disk cache is kept).

    Example:
        >>> clear_memory_cache()
    """
    with _memory_lock:
        _memory_cache.clear()


def split_indices(
    labels: Tensor, *, val_fraction: float = 0.1, seed: int = 0, group_size: int = 1
) -> tuple[Tensor, Tensor]:
    """Partition a training set into train and validation positions, stratified by class.

    For each class (in increasing label order), its images are cut into runs of ``group_size``
    consecutive images; ``round(val_fraction * number_of_runs)`` runs, drawn with
    ``torch.randperm`` from a CPU ``torch.Generator`` seeded with ``seed``, go to validation. The
    result depends only on the labels, ``val_fraction``, ``seed`` and ``group_size``, so it is the
    same in every process and on every machine.

    Args:
        labels: int64 labels ``(N,)`` of the official training set, in its official order.
        val_fraction: Share of each class held out, in ``[0, 1)``.
        seed: Seed of the generator.
        group_size: Length of runs kept whole (30 for GTSRB tracks).

    Returns:
        ``(train_indices, val_indices)``: disjoint, sorted int64 tensors covering ``range(N)``.

    Raises:
        DatasetError: ``val_fraction`` outside ``[0, 1)``, ``group_size < 1`` or labels not 1-D.

    Example:
        >>> train_idx, val_idx = split_indices(torch.arange(100) % 10, val_fraction=0.2)
        >>> len(train_idx), len(val_idx)
        (80, 20)
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DatasetError(f"val_fraction must be in [0, 1), got {val_fraction}.")
    if group_size < 1:
        raise DatasetError(f"group_size must be >= 1, got {group_size}.")
    if labels.ndim != 1:
        raise DatasetError(f"labels must be 1-D, got shape {tuple(labels.shape)}.")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    # Index bookkeeping in NumPy: single-threaded and instant, whereas small multi-threaded torch
    # ops (unique, argsort) can take 0.3 s each on an oversubscribed CPU. Randomness stays torch's.
    label_array = labels.detach().cpu().numpy()
    _, counts = np.unique(label_array, return_counts=True)  # classes in increasing order
    # One stable sort instead of a scan per class: members of each class, in official order.
    by_class = np.split(np.argsort(label_array, kind="stable"), np.cumsum(counts)[:-1])
    is_val = np.zeros(label_array.shape[0], dtype=bool)
    for members in by_class:
        n_groups = math.ceil(members.size / group_size)
        # floor(x + 0.5) instead of round(): no banker's rounding surprises at exact halves.
        n_val = math.floor(val_fraction * n_groups + 0.5)
        chosen = np.zeros(n_groups, dtype=bool)
        chosen[torch.randperm(n_groups, generator=generator)[:n_val].numpy()] = True
        is_val[members[chosen[np.arange(members.size) // group_size]]] = True
    train_idx = np.flatnonzero(~is_val).astype(np.int64)
    return torch.from_numpy(train_idx), torch.from_numpy(np.flatnonzero(is_val).astype(np.int64))


def load_arrays(
    name: str,
    *,
    train: bool,
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    disk_cache: bool = True,
) -> tuple[Tensor, Tensor]:
    """Load a whole official split as uint8 images and int64 labels.

    Args:
        name: Dataset name (see :func:`dataset_info`).
        train: True for the official training set, False for the official test set.
        root: Data root; default from :func:`~guardnet.data.paths.resolve_data_root`.
        download: If the local files are missing, fetch the standard dataset with torchvision into
            the root (MNIST, GTSRB, ``"cifar10-exact"``; the JPEG CIFAR-10 cannot be downloaded).
        disk_cache: Keep decoded arrays of slow sources (JPEG CIFAR-10, the compressed GTSRB npz,
            torchvision's GTSRB folders) as ``.npy`` files under ``$GUARDNET_CACHE`` (default
            ``~/.cache/guardnet``), keyed by the source's path, size and mtime.

    Returns:
        ``(images, labels)``: uint8 ``(N, C, H, W)`` and int64 ``(N,)``, fresh copies the caller
        may modify.

    Raises:
        DataNotFoundError: The data root or the dataset's files are missing.
        DatasetError: Unknown name or malformed file.

    Example:
        >>> images, labels = load_arrays("gtsrb", train=False)  # doctest: +SKIP
        >>> images.shape, labels.dtype  # doctest: +SKIP
        (torch.Size([12630, 3, 32, 32]), torch.int64)
    """
    info = dataset_info(name)
    images, labels = _load_cached(
        info, resolve_data_root(root, must_exist=not download), train, download, disk_cache
    )
    return images.clone(), labels.clone()


def load_split(
    name: str,
    split: Split,
    *,
    root: str | os.PathLike[str] | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    limit: int | None = None,
    download: bool = False,
    disk_cache: bool = True,
) -> SplitDataset:
    """Load the train, validation or test split as float images in [0, 1].

    ``"train"`` and ``"val"`` partition the official training set with :func:`split_indices`
    (stratified, seeded; whole GTSRB tracks). ``"test"`` is the official test set.

    Args:
        name: Dataset name (see :func:`dataset_info`).
        split: ``"train"``, ``"val"`` or ``"test"``.
        root: Data root; default from :func:`~guardnet.data.paths.resolve_data_root`.
        val_fraction: Share of each class of the official training set held out for validation.
        seed: Seed of the validation split and of the ``limit`` subset.
        limit: Keep at most this many items: a seeded uniform random subset of the split (kept in
            official order), so a small limit still covers all classes of class-sorted data.
        download: See :func:`load_arrays`.
        disk_cache: See :func:`load_arrays`.

    Returns:
        A :class:`SplitDataset` of float32 ``(C, H, W)`` images in [0, 1] and int64 labels.

    Raises:
        DataNotFoundError: The data root or the dataset's files are missing.
        DatasetError: Unknown name or split, ``val_fraction`` outside ``[0, 1)``, negative limit.

    Example:
        >>> val = load_split("mnist", "val")  # doctest: +SKIP
        >>> len(val), val[0][0].shape  # doctest: +SKIP
        (6000, torch.Size([1, 28, 28]))
    """
    info = dataset_info(name)
    if split not in ("train", "val", "test"):
        raise DatasetError(f"split must be 'train', 'val' or 'test', got {split!r}.")
    if not 0.0 <= val_fraction < 1.0:
        raise DatasetError(f"val_fraction must be in [0, 1), got {val_fraction}.")
    if limit is not None and limit < 0:
        raise DatasetError(f"limit must be >= 0 or None, got {limit}.")
    data_root = resolve_data_root(root, must_exist=not download)
    images, labels = _load_cached(info, data_root, split != "test", download, disk_cache)
    if split == "test":
        indices = torch.arange(labels.shape[0])
    else:
        train_idx, val_idx = split_indices(
            labels, val_fraction=val_fraction, seed=seed, group_size=info.split_group_size
        )
        indices = train_idx if split == "train" else val_idx
    if limit is not None and limit < indices.numel():
        generator = torch.Generator(device="cpu").manual_seed(_derived_seed(seed, f"limit-{split}"))
        keep = torch.randperm(indices.numel(), generator=generator)[:limit]
        indices = indices[torch.sort(keep).values]
    x = images.index_select(0, indices).to(torch.float32).div_(255.0)
    y = labels.index_select(0, indices)
    return SplitDataset(x, y, info=info, split=split, indices=indices)


def _derived_seed(seed: int, purpose: str) -> int:
    """A seed for ``purpose`` that does not share a random stream with the split itself."""
    digest = hashlib.sha256(f"{seed}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _load_cached(
    info: DatasetInfo, root: Path, train: bool, download: bool, disk_cache: bool
) -> tuple[Tensor, Tensor]:
    """In-memory LRU around :func:`_load_uint8`; callers must not modify the returned tensors."""
    key = (info.name, str(root), train)
    with _memory_lock:
        hit = _memory_cache.get(key)
        if hit is not None:
            _memory_cache.move_to_end(key)
            return hit
    value = _load_uint8(info, root, train=train, download=download, disk_cache=disk_cache)
    with _memory_lock:
        _memory_cache[key] = value
        while len(_memory_cache) > _MEMORY_CACHE_SIZE:
            _memory_cache.popitem(last=False)
    return value


def _load_uint8(
    info: DatasetInfo, root: Path, *, train: bool, download: bool, disk_cache: bool
) -> tuple[Tensor, Tensor]:
    split = "train" if train else "test"
    if info.name == "mnist":
        return _load_mnist(root, train=train, download=download)
    if info.name == "cifar10":
        path = root / "cifar10-jpeg" / "cifar10_jpeg_q75.npz"
        if not path.is_file():
            hint = (
                " (the JPEG variant cannot be downloaded; use 'cifar10-exact')" if download else ""
            )
            raise DataNotFoundError(
                missing_data_message(f"CIFAR-10 JPEG file {path} not found{hint}.")
            )
        return _disk_cached(
            lambda: _load_cifar10_jpeg(path, split),
            tag=f"cifar10jpeg-{split}",
            source=path,
            enabled=disk_cache,
        )
    if info.name == "cifar10-exact":
        return _load_cifar10_exact(root, train=train, download=download)
    if info.name == "gtsrb":
        path = root / "gtsrb32" / "gtsrb_32x32.npz"
        if path.is_file():
            # The npz is deflate-compressed (about 1 s to inflate the training set): cache it too.
            return _disk_cached(
                lambda: _load_gtsrb_npz(path, split),
                tag=f"gtsrb32-{split}",
                source=path,
                enabled=disk_cache,
            )
        folder = root / "gtsrb" / "GTSRB" / ("Training" if train else "Final_Test/Images")
        if download or folder.is_dir():
            images, labels = _disk_cached(
                lambda: _load_gtsrb_torchvision(root, train=train, download=download),
                tag=f"gtsrb-torchvision-{split}",
                source=root / "gtsrb",
                enabled=disk_cache,
            )
            expected = info.train_size if train else info.test_size
            if labels.numel() != expected:
                # torchvision's training archive need not be the 39209-image Final_Training set.
                warnings.warn(
                    f"torchvision's GTSRB {split} split has {labels.numel()} images, not the "
                    f"{expected} of the official Final_{'Training' if train else 'Test'} set.",
                    stacklevel=3,
                )
            return images, labels
        raise DataNotFoundError(missing_data_message(f"GTSRB file {path} not found."))
    raise DatasetError(f"No loader for dataset {info.name!r}.")  # pragma: no cover


def _read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (optionally gzipped) holding unsigned bytes, as MNIST's four files do.

    Format: two zero bytes, a type code (0x08 = uint8), the number of dimensions, then one
    big-endian uint32 per dimension, then the data in C order.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DatasetError(f"{path} is not an IDX file of unsigned bytes.")
    ndim = data[3]
    header = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", data[4:header])
    if len(data) - header != math.prod(dims):
        raise DatasetError(f"{path}: header says {dims}, but holds {len(data) - header} bytes.")
    # bytearray -> writable array, so torch.from_numpy does not warn about read-only memory.
    return np.frombuffer(bytearray(data[header:]), dtype=np.uint8).reshape(dims)


def _load_mnist(root: Path, *, train: bool, download: bool) -> tuple[Tensor, Tensor]:
    raw = root / "mnist" / "MNIST" / "raw"
    prefix = "train" if train else "t10k"

    def find(stem: str) -> Path | None:
        # torchvision leaves an uncompressed copy next to the .gz after its own first use.
        for candidate in (raw / f"{stem}.gz", raw / stem):
            if candidate.is_file():
                return candidate
        return None

    stems = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
    found = [find(stem) for stem in stems]
    if None in found and download:
        # Only used here to fetch the files (torchvision checks their md5); parsing stays ours.
        from torchvision.datasets import MNIST

        MNIST(str(root / "mnist"), train=train, download=True)
        found = [find(stem) for stem in stems]
    image_path, label_path = found
    if image_path is None or label_path is None:
        raise DataNotFoundError(missing_data_message(f"MNIST files not found in {raw}."))
    images = _read_idx(image_path)
    labels = _read_idx(label_path)
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise DatasetError(f"MNIST files in {raw} do not match: {images.shape}, {labels.shape}.")
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


def _load_cifar10_jpeg(path: Path, split: str) -> tuple[Tensor, Tensor]:
    with np.load(path) as npz:
        jpeg = npz[f"{split}_jpeg"]
        offsets = npz[f"{split}_offsets"]
        labels = npz[f"{split}_labels"]
    if offsets.shape[0] != labels.shape[0] + 1:
        raise DatasetError(f"{path}: {split}_offsets does not match {split}_labels.")
    return decode_jpeg_batch(jpeg, offsets), torch.from_numpy(labels.astype(np.int64))


def decode_jpeg_batch(data: np.ndarray, offsets: np.ndarray) -> Tensor:
    """Decode concatenated JPEG files into one uint8 RGB tensor.

    Uses torchvision's batched ``decode_jpeg`` (a list of byte tensors, torchvision >= 0.19), else
    one call per image, else PIL if torchvision has no JPEG decoder (PIL gave identical pixels
    on all 10000 CIFAR-10 JPEG test images with torchvision 0.29 / Pillow 13).

    Args:
        data: uint8 ``(total_bytes,)``; image ``i`` is ``data[offsets[i]:offsets[i + 1]]``.
        offsets: int64 ``(n + 1,)``.

    Returns:
        uint8 ``(n, 3, H, W)``; all images must have the same size.

    Example:
        >>> import io
        >>> from PIL import Image
        >>> buf = io.BytesIO()
        >>> Image.new("RGB", (4, 4), (255, 0, 0)).save(buf, format="JPEG")
        >>> data = np.frombuffer(buf.getvalue(), dtype=np.uint8)
        >>> decode_jpeg_batch(data, np.array([0, data.size])).shape
        torch.Size([1, 3, 4, 4])
    """
    sizes = np.diff(offsets).tolist()
    buffer = torch.from_numpy(np.array(data[offsets[0] : offsets[-1]], dtype=np.uint8))
    chunks = list(torch.split(buffer, sizes))
    try:
        # torchvision 0.29 deprecates its image codecs in favour of TorchCodec; the PIL fallback
        # below covers their removal, so the warning is noise here.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from torchvision.io import ImageReadMode, decode_jpeg

            try:
                decoded = decode_jpeg(chunks, mode=ImageReadMode.RGB)
            except TypeError:  # torchvision < 0.19 takes one tensor at a time
                decoded = [decode_jpeg(chunk, mode=ImageReadMode.RGB) for chunk in chunks]
    except (ImportError, RuntimeError):
        decoded = [_decode_with_pil(chunk) for chunk in chunks]
    return torch.stack(decoded)


def _decode_with_pil(chunk: Tensor) -> Tensor:
    from PIL import Image

    with Image.open(io.BytesIO(chunk.numpy().tobytes())) as image:
        array = np.array(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def _load_cifar10_exact(root: Path, *, train: bool, download: bool) -> tuple[Tensor, Tensor]:
    from torchvision.datasets import CIFAR10

    folder = root / "cifar10"
    try:
        dataset = CIFAR10(str(folder), train=train, download=download)
    except RuntimeError as exc:  # torchvision's "Dataset not found or corrupted"
        raise DataNotFoundError(
            missing_data_message(
                f"Exact CIFAR-10 not found in {folder} (torchvision: {exc}); pass download=True."
            )
        ) from exc
    images = torch.from_numpy(np.asarray(dataset.data, dtype=np.uint8)).permute(0, 3, 1, 2)
    return images.contiguous(), torch.as_tensor(dataset.targets, dtype=torch.int64)


def _load_gtsrb_npz(path: Path, split: str) -> tuple[Tensor, Tensor]:
    with np.load(path) as npz:
        x, y = npz[f"x_{split}"], npz[f"y_{split}"]
    # (N, H, W, C) -> (N, C, H, W); contiguous so later indexing is fast.
    images = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    return images, torch.from_numpy(y.astype(np.int64))


def _load_gtsrb_torchvision(root: Path, *, train: bool, download: bool) -> tuple[Tensor, Tensor]:
    """Read torchvision's GTSRB (variable-size PPM files) and resize every image to 32x32."""
    from torchvision.datasets import GTSRB
    from torchvision.transforms.functional import pil_to_tensor, resize

    dataset = GTSRB(str(root), split="train" if train else "test", download=download)
    n = len(dataset)
    images = torch.empty((n, 3, 32, 32), dtype=torch.uint8)
    labels = torch.empty(n, dtype=torch.int64)
    for i in range(n):
        image, label = dataset[i]
        # Whole image to 32x32 (as the local npz was made), antialiased to avoid aliasing.
        images[i] = resize(pil_to_tensor(image), [32, 32], antialias=True)
        labels[i] = label
    return images, labels


def _disk_cached(
    build: Callable[[], tuple[Tensor, Tensor]], *, tag: str, source: Path, enabled: bool
) -> tuple[Tensor, Tensor]:
    """Return ``build()``, stored as ``.npy`` files keyed by the source's path, size and mtime."""
    if not enabled:
        return build()
    # A download creates the source, so build first when it does not exist yet.
    built = None if source.exists() else build()
    stat = source.stat()
    identity = f"{_DISK_CACHE_VERSION}|{tag}|{source.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    key = hashlib.sha256(identity.encode()).hexdigest()[:16]
    folder = resolve_cache_dir() / "datasets"
    image_path = folder / f"{tag}-{key}.images.npy"
    label_path = folder / f"{tag}-{key}.labels.npy"
    if built is None and image_path.is_file() and label_path.is_file():
        try:
            images = np.load(image_path, allow_pickle=False)
            labels = np.load(label_path, allow_pickle=False)
            if images.ndim == 4 and labels.ndim == 1 and images.shape[0] == labels.shape[0]:
                return torch.from_numpy(images), torch.from_numpy(labels)
        except (OSError, ValueError):
            pass  # unreadable or truncated: rebuild below
    images_t, labels_t = build() if built is None else built
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # Labels first, images last: a reader needs both, so a half-written pair is never used.
        _save_npy_atomic(label_path, labels_t.numpy())
        _save_npy_atomic(image_path, images_t.numpy())
    except OSError as exc:
        warnings.warn(f"Could not write dataset cache in {folder}: {exc}", stacklevel=3)
    return images_t, labels_t


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    # Write then rename, so concurrent processes never read a partial file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
