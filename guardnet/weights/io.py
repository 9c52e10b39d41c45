"""Weights folders on disk: strict safetensors loading, saving, sha256 checks.

A weights folder has the layout of a Hugging Face Hub model repository:

* ``config.json``: ``architecture`` (a name in the architecture registry) and ``arch_args`` (its
  keyword arguments) rebuild the module; ``num_classes``, ``dataset``, ``input_size``, ``mean``,
  ``std`` (the normalisation the caller applies, e.g. through ``GuardedModel(mean=, std=)``),
  ``class_names``, ``license``, ``source`` and ``metrics`` describe it; ``weights_sha256`` (written
  by :func:`save_pretrained`) lets the loader detect a damaged weights file.
* ``model.safetensors``: the ``state_dict`` (metadata ``{"format": "pt"}``). Only safetensors is
  read: never a pickle. Large matrices may be stored as float16 (``save_pretrained``'s
  ``float16_keys``); they load into the model's own dtype.
* ``README.md``: the model card.

Loading is strict: a missing or unexpected key or a wrong shape raises
:class:`~guardnet.errors.WeightsError` naming the keys, never a model with random weights.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from guardnet._utils import sha256_file
from guardnet.errors import WeightsError
from guardnet.weights.cards import default_model_card
from guardnet.weights.registry import build_model

__all__ = [
    "CONFIG_NAME",
    "MODEL_CARD_NAME",
    "WEIGHTS_NAME",
    "folder_files",
    "load_files",
    "load_state_dict_strict",
    "read_config",
    "read_weights",
    "save_pretrained",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
MODEL_CARD_NAME = "README.md"

_MAX_LISTED_KEYS = 12
_DAMAGED_HINT = (
    "The file is corrupted or truncated (an interrupted download or copy?). Copy it again, or for "
    "a Hub download delete it from the Hugging Face cache (`hf cache` commands) and fetch it again."
)


def _listed(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED_KEYS])
    more = len(keys) - _MAX_LISTED_KEYS
    return shown + (f", ... and {more} more" if more > 0 else "")


def _mismatch_report(
    expected: Mapping[str, Tensor], found: Mapping[str, Tensor]
) -> tuple[list[str], list[str], list[str]]:
    """Missing keys, unexpected keys and ``key: found vs expected`` shape mismatches."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = [
        f"{key} (file {tuple(found[key].shape)}, model {tuple(expected[key].shape)})"
        for key in sorted(set(expected) & set(found))
        if found[key].shape != expected[key].shape
    ]
    return missing, unexpected, wrong


def load_state_dict_strict(
    model: nn.Module, state: Mapping[str, Tensor], *, source: str = "the weights"
) -> None:
    """Load ``state`` into ``model`` requiring exactly the model's keys and shapes.

    Args:
        model: The module to fill.
        state: Tensors by ``state_dict`` key.
        source: What ``state`` came from (a path), for the error message.

    Raises:
        WeightsError: Keys are missing or unexpected, or shapes differ; the message names them.

    Example:
        >>> net = nn.Linear(2, 2)
        >>> load_state_dict_strict(net, {"weight": torch.zeros(2, 2)})
        Traceback (most recent call last):
        ...
        guardnet.errors.WeightsError: the weights do not match Linear: missing keys: bias
    """
    missing, unexpected, wrong = _mismatch_report(model.state_dict(), state)
    if missing or unexpected or wrong:
        problems = []
        if missing:
            problems.append(f"missing keys: {_listed(missing)}")
        if unexpected:
            problems.append(f"unexpected keys: {_listed(unexpected)}")
        if wrong:
            problems.append(f"wrong shapes: {_listed(wrong)}")
        raise WeightsError(f"{source} do not match {type(model).__name__}: " + "; ".join(problems))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # e.g. a dtype that cannot be copied
        raise WeightsError(f"cannot load {source} into {type(model).__name__}: {exc}") from exc


# --------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------


def _saveable_state(model: nn.Module) -> dict[str, Tensor]:
    """Detached, contiguous CPU tensors, none sharing memory (safetensors refuses shared ones)."""
    state: dict[str, Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for key, value in model.state_dict().items():
        tensor = value.detach().to("cpu").contiguous()
        storage = (tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes())
        if storage in seen:
            tensor = tensor.clone()
        elif tensor.numel() > 0:
            seen.add(storage)
        state[key] = tensor
    return state


def _stored_as_float16(state: dict[str, Tensor], keys: Collection[str]) -> dict[str, Tensor]:
    """``state`` with ``keys`` cast to float16, refusing keys that would not survive the cast."""
    keys = {keys} if isinstance(keys, str) else set(keys)  # one key given as a bare string
    unknown = sorted(keys - state.keys())
    if unknown:
        raise WeightsError(f"float16_keys names keys the model does not have: {_listed(unknown)}")
    not_float = sorted(key for key in keys if not state[key].is_floating_point())
    if not_float:
        raise WeightsError(
            f"float16_keys names tensors that are not floating point: {_listed(not_float)}"
        )
    limit = torch.finfo(torch.float16).max
    too_large = sorted(key for key in keys if bool(state[key].abs().amax() > limit))
    if too_large:
        raise WeightsError(
            f"float16_keys names tensors with values beyond float16's range (+-{limit:g}): "
            f"{_listed(too_large)}"
        )
    return {key: value.half() if key in keys else value for key, value in state.items()}


def save_pretrained(
    model: nn.Module,
    folder: str | os.PathLike[str],
    *,
    config: Mapping[str, Any],
    model_card: str | None = None,
    float16_keys: Collection[str] = (),
) -> Path:
    """Write ``model`` to ``folder`` in the Hub layout: config.json, model.safetensors, README.md.

    The config must rebuild ``model``: ``build_model(config)`` has to produce exactly the same
    ``state_dict`` keys and shapes (checked before anything is written), so the folder always
    loads with :func:`guardnet.from_pretrained`. ``weights_sha256`` is added to the written config.

    Args:
        model: The trained model (any device; tensors are copied to the CPU).
        folder: Destination folder (created; existing files of the same names are replaced).
        config: ``architecture`` and ``arch_args``, plus the descriptive keys (``num_classes``,
            ``dataset``, ``input_size``, ``mean``, ``std``, ``class_names``, ``license``,
            ``source``, ``metrics``); must be JSON-serialisable.
        model_card: README.md text; default :func:`~guardnet.weights.cards.default_model_card`.
        float16_keys: ``state_dict`` keys stored as float16, halving their share of the file (for
            large matrices such as a class-conditional layer). They load back into the model's
            own dtype; the rounding (about 3 significant digits) can move scores slightly, so
            measure the saved folder, not the model it came from.

    Returns:
        The folder's path.

    Raises:
        WeightsError: The config cannot rebuild ``model`` or is not JSON-serialisable, or
            ``float16_keys`` names a key the model lacks, a non-floating tensor, or values beyond
            float16's range.

    Example:
        >>> import tempfile
        >>> cfg = {"architecture": "MnistCNN", "arch_args": {"num_classes": 10}}
        >>> from guardnet.nets import MnistCNN
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = save_pretrained(MnistCNN(), tmp, config=cfg)
        ...     sorted(p.name for p in path.iterdir())
        ['README.md', 'config.json', 'model.safetensors']
    """
    folder = Path(folder)
    reference = build_model(config).state_dict()
    state = _saveable_state(model)
    missing, unexpected, wrong = _mismatch_report(reference, state)
    if missing or unexpected or wrong:
        raise WeightsError(
            f"config {config.get('architecture')!r} {config.get('arch_args')} does not describe "
            f"this {type(model).__name__}: keys the config expects but the model lacks: "
            f"{_listed(missing) or 'none'}; keys only the model has: "
            f"{_listed(unexpected) or 'none'}; wrong shapes: {_listed(wrong) or 'none'}"
        )
    try:
        config_text = json.dumps(dict(config), indent=2)
    except (TypeError, ValueError) as exc:
        raise WeightsError(f"config is not JSON-serialisable: {exc}") from exc
    if float16_keys:
        state = _stored_as_float16(state, float16_keys)

    return write_folder(
        folder,
        state,
        json.loads(config_text),
        card=lambda written: (
            model_card
            if model_card is not None
            else default_model_card(written, title=Path(folder).name)
        ),
    )


def write_folder(
    folder: str | os.PathLike[str],
    state: Mapping[str, Tensor],
    config: dict[str, Any],
    *,
    card: Callable[[dict[str, Any]], str],
) -> Path:
    """Write a Hub-layout folder: ``model.safetensors``, then ``config.json``, then the card.

    The weights go to a partial file renamed into place, their sha256 is recorded in the config
    as ``weights_sha256``, and the weights file gets the config's permissions (safetensors
    creates owner-only files, which a shared model folder could not read).

    Args:
        folder: Destination (created; files of the same names are replaced).
        state: The tensors to store (CPU, contiguous, not sharing memory).
        config: The JSON-serialisable config; ``weights_sha256`` is added to it in place.
        card: Builds the model card from the written config.

    Returns:
        The folder's path.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / WEIGHTS_NAME
    partial = folder / (WEIGHTS_NAME + ".partial")
    # One metadata key: safetensors stores metadata as a map whose order is not fixed, and
    # saving the same state twice must give the same bytes.
    save_file(dict(state), str(partial), metadata={"format": "pt"})
    os.replace(partial, weights)
    config["weights_sha256"] = sha256_file(weights)
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    shutil.copymode(folder / CONFIG_NAME, weights)
    text = card(config)
    (folder / MODEL_CARD_NAME).write_text(text if text.endswith("\n") else text + "\n")
    return folder


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def folder_files(folder: Path, names: Collection[str] = (CONFIG_NAME, WEIGHTS_NAME)) -> list[Path]:
    """The paths of ``names`` in ``folder``, refusing a folder that lacks one of them.

    Raises:
        WeightsError: A file is missing (the message says pickles are not loaded).
    """
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise WeightsError(
            f"{folder} is not a guardnet weights folder: {', '.join(missing)} missing (expected "
            f"{CONFIG_NAME} and {WEIGHTS_NAME}; other formats such as .pt / .bin pickles are not "
            "loaded)"
        )
    return [folder / name for name in names]


def read_config(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``.

    Raises:
        WeightsError: The file cannot be read or does not hold a JSON object.
    """
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightsError(f"cannot read the model config {path}: {exc}") from exc
    if not isinstance(config, dict):
        raise WeightsError(f"the model config {path} must hold a JSON object")
    return config


def read_weights(
    path: Path, expected_sha256: str | None, *, recorded_in: str = "its config.json"
) -> dict[str, Tensor]:
    """The tensors of a safetensors file, after checking its sha256 when one is expected.

    Args:
        path: The ``model.safetensors``.
        expected_sha256: The sha256 it must have, or None for no check.
        recorded_in: Where ``expected_sha256`` comes from, for the message.

    Raises:
        WeightsError: The sha256 differs, or safetensors cannot parse the file.
    """
    if expected_sha256 is not None and sha256_file(path) != expected_sha256:
        raise WeightsError(
            f"{path} does not match the weights_sha256 recorded in {recorded_in}. {_DAMAGED_HINT}"
        )
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises several types for damaged files
        raise WeightsError(
            f"cannot read the safetensors file {path}: {exc}. {_DAMAGED_HINT}"
        ) from exc


def load_files(
    config_path: Path,
    weights_path: Path,
    *,
    weights_sha256: str | None = None,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """Build the model ``config_path`` describes and load ``weights_path`` into it strictly.

    Args:
        config_path: A ``config.json``.
        weights_path: Its ``model.safetensors``.
        weights_sha256: The sha256 the weights must have (a registry's record); the config's
            ``weights_sha256``, when it has one, must then be the same. Default: the config's
            (no check if it has none).
        device: Where the returned model lives.

    Returns:
        The model in eval mode, its config dict attached as ``model.pretrained_config``.

    Raises:
        WeightsError: Unreadable config, unknown architecture, damaged weights or keys that do
            not match.
    """
    config = read_config(config_path)
    model = build_model(config)
    recorded = config.get("weights_sha256")
    recorded = recorded if isinstance(recorded, str) else None
    recorded_in = "the registry"
    if weights_sha256 is None:
        weights_sha256, recorded_in = recorded, "its config.json"
    elif recorded is not None and recorded != weights_sha256:
        raise WeightsError(
            f"{config_path} records weights_sha256 {recorded}, the registry {weights_sha256}: "
            "the folder and the registry describe different weights"
        )
    state = read_weights(weights_path, weights_sha256, recorded_in=recorded_in)
    load_state_dict_strict(model, state, source=f"the weights in {weights_path}")
    model = model.to(device).eval()
    model.pretrained_config = config
    return model
