"""Datasets with fixed seeded splits, and small fixtures shipped for the offline demo and tests.

Example:
    >>> from guardnet.data import load_fixture, load_split
    >>> images, labels = load_fixture("mnist")  # offline, from the package
    >>> val = load_split("cifar10", "val", limit=512)  # doctest: +SKIP
"""

from __future__ import annotations

from guardnet.data.datasets import (
    DATASETS,
    DatasetError,
    DatasetInfo,
    Split,
    SplitDataset,
    clear_memory_cache,
    dataset_info,
    decode_jpeg_batch,
    load_arrays,
    load_split,
    split_indices,
)
from guardnet.data.fixtures import (
    FIXTURES,
    FixtureSpec,
    fixture_metadata,
    fixture_names,
    load_fixture,
)
from guardnet.data.paths import resolve_cache_dir, resolve_data_root

__all__ = [
    "DATASETS",
    "FIXTURES",
    "DatasetError",
    "DatasetInfo",
    "FixtureSpec",
    "Split",
    "SplitDataset",
    "clear_memory_cache",
    "dataset_info",
    "decode_jpeg_batch",
    "fixture_metadata",
    "fixture_names",
    "load_arrays",
    "load_fixture",
    "load_split",
    "resolve_cache_dir",
    "resolve_data_root",
    "split_indices",
]
