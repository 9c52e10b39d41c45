"""Yerlan Idelbayev's CIFAR-10 ResNet20 / ResNet56 checkpoints as guardnet Hub folders.

:func:`convert_akamaster` reads ``resnet20-12fca82f.th`` and ``resnet56-4bfd9763.th``
(BSD-2-Clause, by default from ``<data root>/weights/akamaster-resnet-cifar10/``), strips the
``module.`` prefix, loads them strictly into :func:`guardnet.nets.resnet20` /
:func:`~guardnet.nets.resnet56` and writes Hub folders (config.json, model.safetensors,
README.md, LICENSE.txt) under ``out`` (``guardnet ship akamaster``).

This is the only place guardnet reads a pickle: a one-time conversion of a trusted local file,
with ``torch.load(..., weights_only=True)``. Everything else reads the safetensors output.

The model card reports the accuracy measured on the CIFAR-10 (JPEG q75) test set when the folder
holds the JSON that ``guardnet measure classifier --json`` wrote for these exact weights (checked
by sha256), so the workflow is: convert, measure, convert again::

    export GUARDNET_DATA=/path/to/shared/data
    guardnet ship akamaster --out hub
    guardnet measure classifier resnet20-cifar10-akamaster --dataset cifar10 \
        --json hub/resnet20-cifar10-akamaster/eval_cifar10_jpeg_q75_test.json
    (same for resnet56)
    guardnet ship akamaster --out hub
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from guardnet._utils import sha256_file
from guardnet.data import dataset_info, resolve_data_root
from guardnet.errors import WeightsError
from guardnet.nets import CifarResNet, resnet20, resnet56
from guardnet.weights import from_pretrained, save_pretrained

SOURCE_URL = "https://github.com/akamaster/pytorch_resnet_cifar10"
CHECKPOINTS = {20: "resnet20-12fca82f.th", 56: "resnet56-4bfd9763.th"}
PARAMS = {20: "0.27 M", 56: "0.85 M"}
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
EVAL_JSON = "eval_cifar10_jpeg_q75_test.json"
JPEG_DISPLAY_NAME = "CIFAR-10 (JPEG q75)"

__all__ = ["CHECKPOINTS", "convert_akamaster", "load_akamaster"]


def load_akamaster(path: str | os.PathLike[str], depth: int) -> tuple[CifarResNet, float]:
    """One of the checkpoints as a strictly loaded guardnet ResNet, and its stated accuracy.

    Args:
        path: the ``.th`` file (a dict with ``state_dict``, keys prefixed ``module.``, and
            ``best_prec1``).
        depth: 20 or 56.

    Returns:
        The model in eval mode and the accuracy its author states (``best_prec1``, in %).

    Raises:
        WeightsError: a key lacks the ``module.`` prefix, or the depth is not 20 or 56.
        RuntimeError: the keys or shapes do not match the architecture (strict loading).
    """
    if depth not in CHECKPOINTS:
        raise WeightsError(f"depth must be one of {sorted(CHECKPOINTS)}, got {depth}")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    raw = checkpoint["state_dict"]
    unprefixed = [key for key in raw if not key.startswith("module.")]
    if unprefixed:
        raise WeightsError(f"{path}: keys without the 'module.' prefix: {unprefixed[:5]}")
    state = {key.removeprefix("module."): value for key, value in raw.items()}
    model = resnet20() if depth == 20 else resnet56()
    # strict=True: every key must match. The checkpoint predates BatchNorm's num_batches_tracked
    # counter; torch's BatchNorm fills it with 0 for such (version-less) state dicts.
    model.load_state_dict(state, strict=True)
    return model.eval(), float(checkpoint["best_prec1"])


def _measured(folder: Path, weights_sha256: str) -> dict[str, Any] | None:
    """The eval JSON in ``folder`` if it was measured on these weights, on the full test set."""
    path = folder / EVAL_JSON
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    if result.get("weights_sha256") != weights_sha256:
        raise WeightsError(
            f"{path} was measured on other weights: rerun `guardnet measure classifier`"
        )
    if (
        result.get("dataset_display_name") != JPEG_DISPLAY_NAME
        or result.get("split") != "test"
        or result.get("limit") is not None
        or result.get("n") != dataset_info("cifar10").test_size
    ):
        raise WeightsError(f"{path} is not a full CIFAR-10 (JPEG q75) test-set evaluation")
    return result


def _model_card(
    name: str, depth: int, file: str, stated: float, result: dict[str, Any] | None
) -> str:
    if result is None:
        jpeg_row = f"| test accuracy, {JPEG_DISPLAY_NAME} test set | not measured yet | — |"
    else:
        jpeg_row = (
            f"| test accuracy, {JPEG_DISPLAY_NAME} test set ({result['n']:,} images) | "
            f"{result['accuracy']:.2%} ({result['correct']}/{result['n']}) | "
            f"`{result['command']}` (torch {result['torch']}, {result['device']}) |"
        )
    stated_row = (
        f"| test accuracy, exact CIFAR-10 (10,000 images) | {stated:.2f}% | stated by the original "
        "author (`best_prec1` in the checkpoint); not re-measured by guardnet |"
    )
    return f"""---
license: bsd-2-clause
library_name: guardnet
datasets: [cifar10]
tags: [image-classification, adversarial-robustness, guardnet, resnet]
---
# {name}

ResNet{depth} for CIFAR-10 (He et al., CVPR 2016, the 6n+2 family with option-A shortcuts:
stride-2 subsampling and zero-padded new channels; `guardnet.nets.resnet{depth}`, {PARAMS[depth]}
parameters), trained on exact CIFAR-10 by Yerlan Idelbayev
([pytorch_resnet_cifar10]({SOURCE_URL}), checkpoint `{file}`). Converted to safetensors by
`guardnet ship akamaster`: weights unchanged, keys unchanged apart from the
dropped `module.` prefix; the BatchNorm `num_batches_tracked` counters, absent from the original,
are 0.

Input: (B, 3, 32, 32) RGB images in [0, 1], normalised by the caller with mean {MEAN} and std
{STD} (the statistics the original training used; `GuardedModel(mean=..., std=...)` does it).

| metric | value | source |
| --- | --- | --- |
{stated_row}
{jpeg_row}

CIFAR-10 (JPEG q75) is the CIFAR-10 test set with every image stored as a quality-75 JPEG (the
copy guardnet has offline). The compression is a distribution shift: the figure above is not a
standard CIFAR-10 result and must not be compared with one.

```python
import guardnet

model = guardnet.from_pretrained("{name}")
config = model.pretrained_config
guard = guardnet.GuardedModel(model, [guardnet.SAECLayer()], mean=config["mean"], std=config["std"])
```

Licence: BSD-2-Clause, Copyright (c) 2018, Yerlan Idelbayev; the full text is in `LICENSE.txt`
beside the weights and must stay with any copy. Architecture: K. He, X. Zhang, S. Ren, J. Sun,
"Deep Residual Learning for Image Recognition", CVPR 2016.
"""


def _convert(depth: int, source: Path, out: Path) -> Path:
    file = CHECKPOINTS[depth]
    name = f"resnet{depth}-cifar10-akamaster"
    folder = out / name
    model, stated = load_akamaster(source / file, depth)
    info = dataset_info("cifar10-exact")
    config: dict[str, Any] = {
        "architecture": f"resnet{depth}",
        "arch_args": {"num_classes": 10},
        "num_classes": 10,
        "dataset": info.name,
        "input_size": [3, 32, 32],
        "mean": list(MEAN),
        "std": list(STD),
        "input_normalized_by": "caller (GuardedModel mean/std)",
        "class_names": list(info.class_names),
        "license": "BSD-2-Clause",
        "source": (
            f"Yerlan Idelbayev, pytorch_resnet_cifar10 ({SOURCE_URL}), checkpoint {file}; "
            "converted by guardnet ship akamaster"
        ),
        "attribution": "Copyright (c) 2018, Yerlan Idelbayev (BSD-2-Clause, see LICENSE.txt)",
        "original_checkpoint": {"file": file, "sha256": sha256_file(source / file)},
        "metrics": {"stated_cifar10_exact_test_accuracy": round(stated / 100, 4)},
    }
    save_pretrained(model, folder, config=config, model_card="")  # weights first, for the sha
    weights_sha = json.loads((folder / "config.json").read_text())["weights_sha256"]
    result = _measured(folder, weights_sha)
    if result is not None:
        config["metrics"]["cifar10_jpeg_q75_test_accuracy"] = result["accuracy"]
    save_pretrained(
        model, folder, config=config, model_card=_model_card(name, depth, file, stated, result)
    )
    shutil.copyfile(source / "LICENSE.txt", folder / "LICENSE.txt")

    # The folder must load back strictly and give the original model's outputs.
    loaded = from_pretrained(folder)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        if not torch.equal(loaded(x), model(x)):
            raise WeightsError(f"{folder}: reloaded model differs from the checkpoint")
    return folder


def convert_akamaster(
    out: str | os.PathLike[str],
    *,
    source: str | os.PathLike[str] | None = None,
    depths: tuple[int, ...] = (20, 56),
) -> list[Path]:
    """Write ``out/resnet{depth}-cifar10-akamaster`` for each depth, and check it reloads.

    Each folder's weights are the checkpoint's unchanged; its card cites the accuracy measured
    on the CIFAR-10 (JPEG q75) test set when the folder already holds the
    ``eval_cifar10_jpeg_q75_test.json`` of ``guardnet measure classifier --json`` for these
    weights. Every written folder is loaded back strictly and must give the checkpoint's outputs.

    Args:
        out: the folder the model folders go in (e.g. the repository's ``hub``).
        source: the folder of the ``.th`` files and ``LICENSE.txt``; default
            ``<data root>/weights/akamaster-resnet-cifar10``.
        depths: which of 20 and 56 to convert.

    Returns:
        The written folders.

    Raises:
        WeightsError: a checkpoint or an evaluation JSON does not match, or a reloaded folder
            gives other outputs.

    Example:
        >>> convert_akamaster("hub", depths=(20,))  # doctest: +SKIP
        [PosixPath('hub/resnet20-cifar10-akamaster')]
    """
    folder = (
        Path(source)
        if source is not None
        else resolve_data_root() / "weights" / "akamaster-resnet-cifar10"
    )
    return [_convert(depth, folder, Path(out)) for depth in depths]
