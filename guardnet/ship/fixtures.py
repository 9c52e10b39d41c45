"""The small fixtures (test-set and validation-split samples) in ``guardnet/assets/fixtures/``.

:func:`write_fixtures` (``guardnet ship fixtures``) reads the real datasets through
:mod:`guardnet.data` (so the fixtures hold exactly what the loaders return), draws the images
described by :data:`guardnet.data.FIXTURES`, and writes one safetensors file per fixture plus a
README stating provenance. Test fixtures sample the official test set; validation fixtures
sample guardnet's default validation split (``load_split(name, "val")``, the seeded stratified
held-out part of the official training set) and store training-set positions.
"""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path

import safetensors
import torch
import torchvision
from safetensors.torch import save_file

from guardnet._utils import sha256_file
from guardnet.data import (
    FIXTURES,
    FixtureSpec,
    dataset_info,
    load_arrays,
    load_split,
    resolve_data_root,
    split_indices,
)
from guardnet.data.paths import EXPECTED_FILES
from guardnet.errors import DatasetError

__all__ = ["DEFAULT_OUT", "write_fixtures"]

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "assets" / "fixtures"

# Validation fixtures sample the split that `load_split(name, "val")` returns by default, i.e. the
# one models are trained and calibrated against; read the defaults rather than repeat them.
_SPLIT_DEFAULTS = inspect.signature(load_split).parameters
VAL_FRACTION: float = _SPLIT_DEFAULTS["val_fraction"].default
SPLIT_SEED: int = _SPLIT_DEFAULTS["seed"].default

# Source files per dataset: only the test-set files the test fixtures are drawn from.
SOURCES: dict[str, tuple[str, ...]] = {
    "mnist": tuple(p for p in EXPECTED_FILES["mnist"] if "t10k" in p),
    "cifar10": EXPECTED_FILES["cifar10"],
    "gtsrb": EXPECTED_FILES["gtsrb"],
}
# Source files per dataset for the validation fixtures (official training set).
VAL_SOURCES: dict[str, tuple[str, ...]] = {
    "mnist": tuple(p for p in EXPECTED_FILES["mnist"] if "train" in p),
    "cifar10": EXPECTED_FILES["cifar10"],
    "gtsrb": EXPECTED_FILES["gtsrb"],
}

TERMS: dict[str, str] = {
    "mnist": (
        "MNIST, Y. LeCun, C. Cortes and C. J. C. Burges (http://yann.lecun.com/exdb/mnist/); "
        'cite LeCun et al., "Gradient-based learning applied to document recognition", Proc. '
        "IEEE 1998. The original distribution carries no licence file; it is redistributed "
        "widely for research (e.g. by torchvision's downloader)."
    ),
    "cifar10": (
        'CIFAR-10, A. Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", '
        "2009 (https://www.cs.toronto.edu/~kriz/cifar.html). CAVEAT: these images were decoded "
        "from a JPEG quality-75 copy of CIFAR-10, not the lossless originals. The compression is "
        "a measured distribution shift (ResNet20 trained on exact CIFAR-10: 91.78% stated, 81.0% "
        'on the JPEG test set), so anything measured on them must be labelled "CIFAR-10 (JPEG '
        'q75)" and never reported as standard CIFAR-10 numbers.'
    ),
    "gtsrb": (
        "German Traffic Sign Recognition Benchmark (https://benchmark.ini.rub.de/), official "
        "Final_Test set, whole images resized to 32x32 by the public copy this was taken from. "
        "GTSRB's own terms apply (research use); cite J. Stallkamp, M. Schlipsing, J. Salmen and "
        'C. Igel, "Man vs. computer: Benchmarking machine learning algorithms for traffic sign '
        'recognition", Neural Networks 32:323-332, 2012.'
    ),
}


def terms_of(spec: FixtureSpec) -> str:
    """Terms and citation for a fixture (GTSRB names the official set it was drawn from)."""
    text = TERMS[spec.dataset]
    if spec.split == "val" and spec.dataset == "gtsrb":
        text = text.replace("official Final_Test set", "official Final_Training set")
    return text


def select(spec: FixtureSpec, n: int) -> torch.Tensor:
    """Positions within the split (of ``n`` images) drawn for ``spec`` (sorted, int64)."""
    if spec.selection == "first":
        return torch.arange(spec.count)
    generator = torch.Generator(device="cpu").manual_seed(spec.seed)
    return torch.sort(torch.randperm(n, generator=generator)[: spec.count]).values


def selection_text(spec: FixtureSpec, n: int) -> str:
    """Human-readable description of how the images were chosen from a split of ``n`` images."""
    if spec.selection == "first":
        return f"the first {spec.count} {spec.split} images (indices 0..{spec.count - 1})"
    return (
        f"seeded random sample: sorted(torch.randperm({n}, generator="
        f"torch.Generator().manual_seed({spec.seed}))[:{spec.count}])"
    )


def val_positions(spec: FixtureSpec, root: Path, train_labels: torch.Tensor) -> torch.Tensor:
    """Sorted positions in the official training set of the default validation split.

    Taken from :func:`guardnet.data.load_split` (the code path training and calibration use) and
    checked against :func:`guardnet.data.split_indices` with the recorded parameters.
    """
    info = dataset_info(spec.dataset)
    val = load_split(spec.dataset, "val", root=root, val_fraction=VAL_FRACTION, seed=SPLIT_SEED)
    _, expected = split_indices(
        train_labels, val_fraction=VAL_FRACTION, seed=SPLIT_SEED, group_size=info.split_group_size
    )
    if not torch.equal(val.indices, expected) or not torch.equal(
        val.labels, train_labels[val.indices]
    ):
        raise DatasetError(f"{spec.dataset}: load_split('val') disagrees with split_indices.")
    return val.indices


def make_fixture(spec: FixtureSpec, root: Path, out: Path) -> dict[str, str]:
    """Write one fixture file and return its metadata (with the file's size and sha256)."""
    info = dataset_info(spec.dataset)
    if spec.split == "test":
        images, labels = load_arrays(spec.dataset, train=False, root=root)
        indices = select(spec, labels.numel())
        selection = selection_text(spec, labels.numel())
        sources = SOURCES[spec.dataset]
        split_meta: dict[str, str] = {}
    else:
        images, labels = load_arrays(spec.dataset, train=True, root=root)
        val = val_positions(spec, root, labels)
        indices = val.index_select(0, select(spec, val.numel()))
        sample = (
            f"torch.arange({spec.count})"
            if spec.selection == "first"
            else f"sorted(torch.randperm({val.numel()}, generator="
            f"torch.Generator().manual_seed({spec.seed}))[:{spec.count}])"
        )
        selection = (
            f"{'first' if spec.selection == 'first' else 'seeded random'} sample of the "
            f"validation split: val = load_split({spec.dataset!r}, 'val').indices, i.e. "
            f"split_indices(<official training labels>, val_fraction={VAL_FRACTION}, "
            f"seed={SPLIT_SEED}, group_size={info.split_group_size})[1] ({val.numel()} sorted "
            f"positions in the official training set); indices = val[{sample}]"
        )
        sources = VAL_SOURCES[spec.dataset]
        # Only validation fixtures get these keys, so the test fixtures' bytes stay unchanged.
        split_meta = {
            "indices": "positions in the official training set",
            "val_fraction": str(VAL_FRACTION),
            "split_seed": str(SPLIT_SEED),
            "split_group_size": str(info.split_group_size),
            "split_size": str(val.numel()),
        }
    metadata = {
        "dataset": info.name,
        "display_name": info.display_name,
        "split": spec.split,
        "count": str(spec.count),
        "selection": selection,
        "source_files": ", ".join(sources),
        "source_sha256": ", ".join(sha256_file(root / p) for p in sources),
        "made_by": "guardnet ship fixtures",
        "torch_version": torch.__version__,
        "torchvision_version": torchvision.__version__,
        "safetensors_version": safetensors.__version__,
        "terms": terms_of(spec),
        **split_meta,
    }
    if spec.dataset == "cifar10":
        metadata["decoder"] = "torchvision.io.decode_jpeg (RGB), via guardnet.data.load_arrays"
    tensors = {
        "images": images.index_select(0, indices).contiguous(),
        "labels": labels.index_select(0, indices).contiguous(),
        "indices": indices.to(torch.int64).contiguous(),
    }
    path = out / spec.filename
    # One JSON metadata entry: safetensors writes a multi-key metadata map in random order, which
    # would make the file's bytes (and sha256) change on every run.
    save_file(tensors, str(path), metadata={"provenance": json.dumps(metadata, sort_keys=True)})
    path.chmod(0o644)  # safetensors creates files owner-only; package data should be readable
    return {**metadata, "size_bytes": str(path.stat().st_size), "sha256": sha256_file(path)}


def write_readme(out: Path, rows: list[tuple[FixtureSpec, dict[str, str]]]) -> None:
    """Write ``README.md`` next to the fixtures."""
    names = {spec.filename: name for name, spec in FIXTURES.items()}
    test_names = ", ".join(f"`{names[s.filename]}`" for s, _ in rows if s.split == "test")
    val_names = ", ".join(f"`{names[s.filename]}`" for s, _ in rows if s.split == "val")
    lines = [
        "# Fixtures",
        "",
        "Small dataset samples shipped in the package for the offline demo and the tests, of two",
        "kinds:",
        "",
        f"- **Test-set samples** ({test_names}):",
        "  drawn from the official **test** sets, for evaluation. `indices` are positions in",
        "  the official test set.",
        f"- **Validation samples** ({val_names}):",
        "  drawn from guardnet's own **validation** split, i.e.",
        '  `guardnet.data.load_split(name, "val")` with its defaults: the seeded, stratified',
        "  part of the official **training** set held out from training (whole tracks for",
        "  GTSRB). `indices` are positions in the official training set. Calibrate thresholds",
        "  on these, never on the test-set samples.",
        "",
        "Load them with `guardnet.data.load_fixture(name)` (float images in [0, 1], int64 labels).",
        "Each file is safetensors with the keys `images` (uint8 N,C,H,W), `labels` (int64) and",
        "`indices` (int64), plus the provenance below as string metadata",
        "(`guardnet.data.fixture_metadata(name)`). Generated by",
        "`guardnet ship fixtures --root <data root>`; do not edit by hand.",
        "",
        "Never report results on these samples as test-set numbers: they are a few hundred",
        "images, for smoke tests and demos.",
        "",
    ]
    for spec, meta in rows:
        if spec.split == "test":
            split = "split `test` (official test set)"
        else:
            split = (
                f"split `val`: the validation part of the official training set, "
                f"val_fraction {meta['val_fraction']}, seed {meta['split_seed']}, group size "
                f"{meta['split_group_size']} ({meta['split_size']} images)"
            )
        lines += [
            f"## `{spec.filename}` — {meta['display_name']}",
            "",
            f"- Name: `{names[spec.filename]}`.",
            f"- Images: {meta['count']}, {meta['selection']}.",
            f"- Source: `{meta['source_files']}` (under the data root), {split}.",
            f"- Source sha256: `{meta['source_sha256']}`.",
            f"- File: {int(meta['size_bytes']):,} bytes, sha256 `{meta['sha256']}`.",
        ]
        if "decoder" in meta:
            lines.append(f"- Pixels: decoded with {meta['decoder']}.")
        lines += [f"- Terms: {meta['terms']}", ""]
    lines += [
        f"Made with torch {rows[0][1]['torch_version']}, torchvision "
        f"{rows[0][1]['torchvision_version']}, safetensors {rows[0][1]['safetensors_version']}.",
        "",
    ]
    (out / "README.md").write_text("\n".join(lines), encoding="utf-8")


def write_fixtures(
    *,
    root: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] = DEFAULT_OUT,
) -> list[dict[str, str]]:
    """Write every fixture of :data:`guardnet.data.FIXTURES` and their README to ``out``.

    The files' bytes depend only on the data, the fixture specs and the recorded library
    versions (the provenance is one sorted JSON entry), so writing again with the same versions
    reproduces them.

    Args:
        root: the data root (default: ``$GUARDNET_DATA`` and the usual places).
        out: the folder to write; default the package's ``assets/fixtures``.

    Returns:
        Per fixture, its provenance metadata with ``size_bytes`` and ``sha256``.

    Raises:
        DataNotFoundError: the data root or a source file is missing.

    Example:
        >>> write_fixtures(root="/data", out="/tmp/fixtures")  # doctest: +SKIP
    """
    data_root = resolve_data_root(root)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    rows = [(spec, make_fixture(spec, data_root, folder)) for spec in FIXTURES.values()]
    write_readme(folder, rows)
    return [meta for _, meta in rows]
