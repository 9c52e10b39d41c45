"""Tests of guardnet.data: fixtures, seeded splits, loaders and error messages.

The fixture and synthetic-data tests always run. The real-data tests read the data root
(``$GUARDNET_DATA`` or ``../shared/data``) and skip cleanly when it is absent; they use the normal
on-disk cache (``$GUARDNET_CACHE`` or ``~/.cache/guardnet``), so the one full CIFAR-10 JPEG decode
(about 3 s) happens once per machine.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import struct
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from guardnet.data import (
    DATASETS,
    FIXTURES,
    DatasetError,
    clear_memory_cache,
    dataset_info,
    decode_jpeg_batch,
    fixture_metadata,
    fixture_names,
    load_arrays,
    load_fixture,
    load_split,
    resolve_cache_dir,
    resolve_data_root,
    split_indices,
)
from guardnet.data import datasets as datasets_module
from guardnet.data.paths import EXPECTED_FILES
from guardnet.errors import DataNotFoundError, GuardnetError

# --------------------------------------------------------------------------------------------
# Fixtures shipped in the package (always run)
# --------------------------------------------------------------------------------------------

FIXTURE_SHAPES = {
    "mnist": (1000, 1, 28, 28),
    "gtsrb": (300, 3, 32, 32),
    "cifar10": (300, 3, 32, 32),
    "mnist-val": (500, 1, 28, 28),
    "gtsrb-val": (300, 3, 32, 32),
    "cifar10-val": (300, 3, 32, 32),
}


def _stored(name: str) -> dict[str, torch.Tensor]:
    """The raw tensors of a fixture file (uint8 images, labels, indices)."""
    resource = resources.files("guardnet").joinpath("assets", "fixtures", FIXTURES[name].filename)
    with resources.as_file(resource) as path:
        return load_file(str(path))


@pytest.mark.parametrize("name", sorted(FIXTURE_SHAPES))
def test_fixture_loads(name: str) -> None:
    images, labels = load_fixture(name)
    info = dataset_info(FIXTURES[name].dataset)
    assert tuple(images.shape) == FIXTURE_SHAPES[name]
    assert images.dtype == torch.float32
    assert labels.dtype == torch.int64
    assert labels.shape == (FIXTURE_SHAPES[name][0],)
    assert 0.0 <= images.min().item() and images.max().item() <= 1.0
    assert images.std().item() > 0.05  # real pictures, not a blank tensor
    assert 0 <= labels.min().item() and labels.max().item() < info.num_classes
    assert labels.unique().numel() >= min(10, info.num_classes)  # a spread of classes
    # Pixel values are k/255 exactly: the files hold uint8 images.
    assert torch.equal(images * 255, (images * 255).round())


@pytest.mark.parametrize("name", sorted(FIXTURE_SHAPES))
def test_fixture_indices(name: str) -> None:
    spec = FIXTURES[name]
    info = dataset_info(spec.dataset)
    stored = _stored(name)
    indices = stored["indices"]
    assert stored["images"].dtype == torch.uint8 and indices.dtype == torch.int64
    assert indices.shape == (spec.count,)
    # Sorted, no repeats, inside the official set the split is drawn from.
    assert torch.all(indices[1:] > indices[:-1])
    size = info.test_size if spec.split == "test" else info.train_size
    assert 0 <= indices.min().item() and indices.max().item() < size


@pytest.mark.parametrize("name", sorted(FIXTURE_SHAPES))
def test_fixture_metadata(name: str) -> None:
    meta = fixture_metadata(name)
    spec = FIXTURES[name]
    assert meta["split"] == spec.split == ("val" if name.endswith("-val") else "test")
    assert meta["dataset"] == FIXTURES[name].dataset
    assert int(meta["count"]) == FIXTURE_SHAPES[name][0]
    for digest in meta["source_sha256"].split(", "):
        assert len(digest) == 64 and int(digest, 16) >= 0
    if spec.dataset == "cifar10":
        assert meta["display_name"] == "CIFAR-10 (JPEG q75)"
    if spec.split == "val":
        # The split the sample was drawn from is stated exactly, and is load_split's default.
        info = dataset_info(spec.dataset)
        assert float(meta["val_fraction"]) == 0.1 and int(meta["split_seed"]) == 0
        assert int(meta["split_group_size"]) == info.split_group_size
        assert "official training set" in meta["indices"]
        assert "validation split" in meta["selection"]
        assert all("t10k" not in source for source in meta["source_files"].split(", "))
    else:
        assert "val_fraction" not in meta


def test_fixture_names_and_aliases() -> None:
    assert fixture_names() == ("cifar10", "cifar10-val", "gtsrb", "gtsrb-val", "mnist", "mnist-val")
    a_images, a_labels = load_fixture("cifar10-jpeg")
    b_images, b_labels = load_fixture("cifar10jpeg_test_300")
    assert torch.equal(a_images, b_images) and torch.equal(a_labels, b_labels)
    c_images, c_labels = load_fixture("CIFAR10-JPEG-VAL")
    d_images, d_labels = load_fixture("cifar10jpeg_val_300.safetensors")
    assert torch.equal(c_images, d_images) and torch.equal(c_labels, d_labels)
    assert not torch.equal(a_images, c_images)
    assert load_fixture("mnist_val_500")[0].shape == (500, 1, 28, 28)
    with pytest.raises(DataNotFoundError, match="available"):
        load_fixture("imagenet")
    with pytest.raises(DataNotFoundError, match="available"):
        load_fixture("mnist-train")


def test_fixture_files_are_small() -> None:
    folder = resources.files("guardnet").joinpath("assets", "fixtures")
    total = sum(len(folder.joinpath(spec.filename).read_bytes()) for spec in FIXTURES.values())
    assert total < 6 * 1024 * 1024
    assert len({spec.filename for spec in FIXTURES.values()}) == len(FIXTURES)
    assert folder.joinpath("README.md").is_file()


# --------------------------------------------------------------------------------------------
# Dataset registry and splits (always run)
# --------------------------------------------------------------------------------------------


def test_dataset_info_registry() -> None:
    assert dataset_info("CIFAR10-JPEG") is DATASETS["cifar10"]
    assert "not standard CIFAR-10" in DATASETS["cifar10"].note
    for info in DATASETS.values():
        assert len(info.class_names) == info.num_classes
        assert len(info.mean) == len(info.std) == info.channels
    assert DATASETS["gtsrb"].num_classes == 43
    with pytest.raises(DatasetError, match="known"):
        dataset_info("svhn")
    with pytest.raises(ValueError):  # DatasetError is also a ValueError
        dataset_info("svhn")


def test_split_indices_golden() -> None:
    # Pinned values: if torch's generator ever changes, every saved split would silently change.
    _, val = split_indices(torch.arange(100) % 10, val_fraction=0.2, seed=0)
    expected = [2, 8, 10, 16, 24, 31, 40, 42, 47, 55, 57, 66, 69, 73, 75, 88, 91, 93, 94, 99]
    assert val.tolist() == expected


def test_split_indices_partition_and_stratification() -> None:
    labels = torch.randint(0, 7, (5000,), generator=torch.Generator().manual_seed(1))
    train, val = split_indices(labels, val_fraction=0.1, seed=3)
    assert torch.equal(torch.sort(torch.cat([train, val])).values, torch.arange(5000))
    assert not set(train.tolist()) & set(val.tolist())
    for cls in range(7):
        n_cls = int((labels == cls).sum())
        assert abs(int((labels[val] == cls).sum()) - 0.1 * n_cls) <= 0.5
    again_train, again_val = split_indices(labels, val_fraction=0.1, seed=3)
    assert torch.equal(train, again_train) and torch.equal(val, again_val)
    _, other_val = split_indices(labels, val_fraction=0.1, seed=4)
    assert not torch.equal(val, other_val)
    _, empty = split_indices(labels, val_fraction=0.0)
    assert empty.numel() == 0


def test_split_indices_keeps_groups_whole() -> None:
    labels = torch.arange(60) % 3  # 20 per class -> 4 runs of 5 per class
    train, val = split_indices(labels, val_fraction=0.5, seed=0, group_size=5)
    assert val.numel() == 30
    for cls in range(3):
        members = torch.nonzero(labels == cls).flatten()
        position = {int(m): i // 5 for i, m in enumerate(members)}
        val_groups = {position[int(i)] for i in val if int(i) in position}
        train_groups = {position[int(i)] for i in train if int(i) in position}
        assert not val_groups & train_groups


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"val_fraction": -0.1}, "val_fraction"),
        ({"group_size": 0}, "group_size"),
    ],
)
def test_split_indices_rejects_bad_options(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(DatasetError, match=match):
        split_indices(torch.zeros(10, dtype=torch.int64), **kwargs)


def test_load_split_rejects_bad_options(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="split"):
        load_split("mnist", "validation", root=tmp_path)  # type: ignore[arg-type]
    with pytest.raises(DatasetError, match="limit"):
        load_split("mnist", "test", root=tmp_path, limit=-1)


# --------------------------------------------------------------------------------------------
# Missing data: messages say how to fix it (always run)
# --------------------------------------------------------------------------------------------


def _assert_helpful(message: str) -> None:
    assert "GUARDNET_DATA" in message
    for paths in EXPECTED_FILES.values():
        for path in paths:
            assert path in message
    assert "mnist/MNIST/raw/" in message and "cifar10-jpeg/cifar10_jpeg_q75.npz" in message
    assert "gtsrb32/gtsrb_32x32.npz" in message


def test_missing_root_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "no-such-folder"
    monkeypatch.setenv("GUARDNET_DATA", str(missing))
    with pytest.raises(DataNotFoundError) as excinfo:
        resolve_data_root()
    assert isinstance(excinfo.value, FileNotFoundError) and isinstance(excinfo.value, GuardnetError)
    assert str(missing) in str(excinfo.value)
    _assert_helpful(str(excinfo.value))
    with pytest.raises(DataNotFoundError):
        load_split("gtsrb", "test")


def test_no_root_anywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GUARDNET_DATA", raising=False)
    workdir = tmp_path / "a" / "b"
    workdir.mkdir(parents=True)
    monkeypatch.chdir(workdir)  # so ../shared/data does not exist
    with pytest.raises(DataNotFoundError) as excinfo:
        resolve_data_root()
    _assert_helpful(str(excinfo.value))
    # With download=True a destination is returned instead (the cache folder's data/).
    monkeypatch.setenv("GUARDNET_CACHE", str(tmp_path / "cache"))
    assert resolve_data_root(must_exist=False) == tmp_path / "cache" / "data"
    assert resolve_cache_dir() == tmp_path / "cache"


@pytest.mark.parametrize("name", ["mnist", "cifar10", "gtsrb"])
def test_root_without_files(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GUARDNET_DATA", str(tmp_path))
    with pytest.raises(DataNotFoundError) as excinfo:
        load_arrays(name, train=False)
    _assert_helpful(str(excinfo.value))


# --------------------------------------------------------------------------------------------
# Loaders on small synthetic files (always run)
# --------------------------------------------------------------------------------------------


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_mnist_idx_reader(tmp_path: Path) -> None:
    raw = tmp_path / "mnist" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
    labels = np.array([0, 1, 2, 3, 4, 5, 9], dtype=np.uint8)
    _write_idx(raw / "t10k-images-idx3-ubyte.gz", images)
    _write_idx(raw / "t10k-labels-idx1-ubyte.gz", labels)
    x, y = load_arrays("mnist", train=False, root=tmp_path)
    assert x.shape == (7, 1, 28, 28) and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert np.array_equal(x[:, 0].numpy(), images) and y.tolist() == labels.tolist()
    x[0] = 0  # callers get their own copy: the in-memory cache must not change
    assert np.array_equal(load_arrays("mnist", train=False, root=tmp_path)[0][0, 0], images[0])

    clear_memory_cache()
    with gzip.open(raw / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(b"\x00\x00\x08\x03" + struct.pack(">3I", 7, 28, 28) + b"\x00" * 10)
    with pytest.raises(DatasetError, match="header"):
        load_arrays("mnist", train=False, root=tmp_path)
    clear_memory_cache()


def _jpeg_bytes(rng: np.random.Generator, size: int = 32) -> bytes:
    buffer = io.BytesIO()
    pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=75)
    return buffer.getvalue()


def test_decode_jpeg_batch_matches_pil() -> None:
    rng = np.random.default_rng(0)
    blobs = [_jpeg_bytes(rng) for _ in range(5)]
    data = np.frombuffer(b"".join(blobs), dtype=np.uint8)
    offsets = np.cumsum([0] + [len(b) for b in blobs])
    decoded = decode_jpeg_batch(data, offsets)
    assert decoded.shape == (5, 3, 32, 32) and decoded.dtype == torch.uint8
    for i, blob in enumerate(blobs):
        reference = np.asarray(Image.open(io.BytesIO(blob)).convert("RGB")).transpose(2, 0, 1)
        assert np.abs(decoded[i].numpy().astype(int) - reference.astype(int)).max() <= 1


def _write_fake_cifar_jpeg(root: Path, n_train: int = 20, n_test: int = 8) -> None:
    rng = np.random.default_rng(1)
    arrays: dict[str, np.ndarray] = {}
    for split, n in (("train", n_train), ("test", n_test)):
        blobs = [_jpeg_bytes(rng) for _ in range(n)]
        arrays[f"{split}_jpeg"] = np.frombuffer(b"".join(blobs), dtype=np.uint8)
        arrays[f"{split}_offsets"] = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
        arrays[f"{split}_labels"] = (np.arange(n) % 10).astype(np.uint8)
    folder = root / "cifar10-jpeg"
    folder.mkdir(parents=True)
    np.savez(folder / "cifar10_jpeg_q75.npz", **arrays)


def test_cifar_jpeg_disk_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "data"
    _write_fake_cifar_jpeg(root)
    monkeypatch.setenv("GUARDNET_CACHE", str(tmp_path / "cache"))
    first = load_arrays("cifar10", train=False, root=root)
    cached = sorted(p.name for p in (tmp_path / "cache" / "datasets").iterdir())
    assert len(cached) == 2 and all(n.startswith("cifar10jpeg-test-") for n in cached)

    # A fresh process (empty memory cache) must read the .npy files, not decode again.
    clear_memory_cache()

    def no_decode(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded again despite the disk cache")

    monkeypatch.setattr(datasets_module, "_load_cifar10_jpeg", no_decode)
    second = load_arrays("cifar10", train=False, root=root)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])

    split = load_split("cifar10-jpeg", "test", root=root)
    assert split.images.dtype == torch.float32 and split.images.shape == (8, 3, 32, 32)
    assert torch.equal(split.images, first[0].float() / 255)
    clear_memory_cache()


def test_gtsrb_torchvision_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # torchvision's GTSRB layout, variable-size PPM images; no download needed.
    monkeypatch.setenv("GUARDNET_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(2)
    training = tmp_path / "gtsrb" / "GTSRB" / "Training"
    for cls, size in ((0, 40), (1, 57)):
        folder = training / f"{cls:05d}"
        folder.mkdir(parents=True)
        for frame in range(3):
            pixels = rng.integers(0, 256, (size, size + 3, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"00000_{frame:05d}.ppm")
    with pytest.warns(UserWarning, match="not the 39209"):
        images, labels = load_arrays("gtsrb", train=True, root=tmp_path)
    assert images.shape == (6, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.tolist() == [0, 0, 0, 1, 1, 1]
    clear_memory_cache()


def test_download_path_creates_then_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Stand-in for torchvision's downloader (no internet here): it creates the source folder.
    monkeypatch.setenv("GUARDNET_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "new-root"
    calls = []

    def fake_download(root_arg: Path, *, train: bool, download: bool) -> tuple[torch.Tensor, ...]:
        calls.append(download)
        (root_arg / "gtsrb").mkdir(parents=True, exist_ok=True)
        return torch.zeros((4, 3, 32, 32), dtype=torch.uint8), torch.arange(4)

    monkeypatch.setattr(datasets_module, "_load_gtsrb_torchvision", fake_download)
    with pytest.warns(UserWarning, match="12630"):
        images, _ = load_arrays("gtsrb", train=False, root=root, download=True)
    assert images.shape == (4, 3, 32, 32) and calls == [True]
    clear_memory_cache()
    with pytest.warns(UserWarning):
        load_arrays("gtsrb", train=False, root=root, download=True)
    assert calls == [True]  # second time from the disk cache
    clear_memory_cache()
    with pytest.raises(DataNotFoundError, match="cifar10-exact"):
        load_arrays("cifar10", train=False, root=root, download=True)


# --------------------------------------------------------------------------------------------
# Real data (skipped when the data root or a dataset's files are absent)
# --------------------------------------------------------------------------------------------

REAL = {
    # name: (train size, test size, image shape, channel means of the training set from the
    # data README, tolerance)
    "mnist": (60000, 10000, (1, 28, 28), (0.1307,), 1e-3),
    "cifar10": (50000, 10000, (3, 32, 32), (0.4913, 0.4821, 0.4465), 2e-3),
    "gtsrb": (39209, 12630, (3, 32, 32), (0.340, 0.312, 0.321), 5e-3),
}

# sha256 (first 16 hex digits) of the default validation indices (val_fraction=0.1, seed=0).
GOLDEN_VAL = {
    "mnist": (6000, "ab5f73b9cb3f6baa"),
    "cifar10": (5000, "2268b9c51ecf8745"),
    "gtsrb": (3990, "6d939356e223e4f5"),
}


@pytest.fixture(scope="module")
def data_root() -> Path:
    try:
        return resolve_data_root()
    except DataNotFoundError:
        pytest.skip("no data root (set GUARDNET_DATA or provide ../shared/data)")


def _require(name: str, root: Path) -> None:
    for path in EXPECTED_FILES[name]:
        if not (root / path).is_file():
            pytest.skip(f"{name}: {root / path} not present")


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_arrays(name: str, data_root: Path) -> None:
    _require(name, data_root)
    n_train, n_test, shape, means, tol = REAL[name]
    info = dataset_info(name)
    x_train, y_train = load_arrays(name, train=True, root=data_root)
    x_test, y_test = load_arrays(name, train=False, root=data_root)
    assert x_train.shape == (n_train, *shape) and x_test.shape == (n_test, *shape)
    assert x_train.dtype == x_test.dtype == torch.uint8
    assert y_train.dtype == y_test.dtype == torch.int64
    for y in (y_train, y_test):
        assert y.min().item() == 0 and y.max().item() == info.num_classes - 1
    pixels_per_channel = x_train.numel() / x_train.shape[1]
    measured = x_train.sum(dim=(0, 2, 3), dtype=torch.float64) / (255 * pixels_per_channel)
    assert torch.allclose(measured, torch.tensor(means, dtype=torch.float64), atol=tol)
    assert torch.allclose(measured, torch.tensor(info.mean, dtype=torch.float64), atol=1e-3)


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_splits(name: str, data_root: Path) -> None:
    _require(name, data_root)
    n_train, n_test, shape, _, _ = REAL[name]
    train = load_split(name, "train", root=data_root)
    val = load_split(name, "val", root=data_root)
    assert not set(train.indices.tolist()) & set(val.indices.tolist())
    assert len(train) + len(val) == n_train
    assert abs(len(val) - 0.1 * n_train) < 0.02 * n_train
    count, digest = GOLDEN_VAL[name]
    assert len(val) == count
    assert hashlib.sha256(val.indices.numpy().tobytes()).hexdigest()[:16] == digest
    image, label = val[0]
    assert image.shape == shape and image.dtype == torch.float32 and label.dtype == torch.int64
    assert 0.0 <= val.images.min().item() and val.images.max().item() <= 1.0
    _, y_train = load_arrays(name, train=True, root=data_root)
    assert torch.equal(val.labels, y_train[val.indices])

    clear_memory_cache()  # reloading from scratch gives the same split
    assert torch.equal(load_split(name, "val", root=data_root).indices, val.indices)
    assert not torch.equal(load_split(name, "val", root=data_root, seed=1).indices, val.indices)

    test = load_split(name, "test", root=data_root, limit=500)
    assert len(test) == 500 and test.indices.max().item() < n_test
    assert torch.equal(test.indices, torch.sort(test.indices).values)
    assert torch.equal(load_split(name, "test", root=data_root, limit=500).indices, test.indices)
    small = load_split(name, "train", root=data_root, limit=1000)
    assert len(small) == 1000 and set(small.indices.tolist()) <= set(train.indices.tolist())
    assert small.labels.unique().numel() >= min(10, dataset_info(name).num_classes)


def test_real_gtsrb_tracks_not_split(data_root: Path) -> None:
    _require("gtsrb", data_root)
    _, labels = load_arrays("gtsrb", train=True, root=data_root)
    val = load_split("gtsrb", "val", root=data_root)
    in_val = np.zeros(labels.numel(), dtype=bool)
    in_val[val.indices.numpy()] = True
    label_array = labels.numpy()
    for cls in range(43):
        flags = in_val[label_array == cls]
        # Every run of 30 consecutive frames (one track) is entirely in train or entirely in val.
        for start in range(0, flags.size, 30):
            run = flags[start : start + 30]
            assert run.all() or not run.any()


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_fixture_matches_real_data(name: str, data_root: Path) -> None:
    spec = FIXTURES[name]
    _require(spec.dataset, data_root)
    stored = _stored(name)
    # Test fixtures index the official test set, validation fixtures the official training set.
    x, y = load_arrays(spec.dataset, train=spec.split == "val", root=data_root)
    assert torch.equal(stored["images"], x[stored["indices"]])
    assert torch.equal(stored["labels"], y[stored["indices"]])
    if spec.selection == "first":
        assert stored["indices"].tolist() == list(range(spec.count))
    sources = fixture_metadata(name)["source_files"].split(", ")
    digests = fixture_metadata(name)["source_sha256"].split(", ")
    for source, digest in zip(sources, digests, strict=True):
        assert hashlib.sha256((data_root / source).read_bytes()).hexdigest() == digest


@pytest.mark.parametrize("name", sorted(n for n, s in FIXTURES.items() if s.split == "val"))
def test_val_fixture_inside_val_split(name: str, data_root: Path) -> None:
    spec = FIXTURES[name]
    _require(spec.dataset, data_root)
    info = dataset_info(spec.dataset)
    meta = fixture_metadata(name)
    indices = _stored(name)["indices"]
    _, y_train = load_arrays(spec.dataset, train=True, root=data_root)
    train, val = split_indices(
        y_train,
        val_fraction=float(meta["val_fraction"]),
        seed=int(meta["split_seed"]),
        group_size=info.split_group_size,
    )
    assert int(meta["split_size"]) == val.numel()
    # Never a training image: all inside the validation part, none in the train part.
    assert set(indices.tolist()) <= set(val.tolist())
    assert not set(indices.tolist()) & set(train.tolist())
    # ... of the split training and calibration actually use (load_split's defaults).
    default_val = load_split(spec.dataset, "val", root=data_root).indices
    assert torch.equal(default_val, val)
    # The documented selection reproduces the stored indices exactly.
    generator = torch.Generator(device="cpu").manual_seed(spec.seed)
    positions = torch.sort(torch.randperm(val.numel(), generator=generator)[: spec.count]).values
    assert torch.equal(indices, val[positions])
