"""Resumable, pickle-free training checkpoints, shared by every guardnet trainer.

A run folder ``RUN_DIR`` holds ``checkpoints/epoch-NNNN/`` (one folder per kept epoch) and
``train_log.jsonl`` (one JSON line per finished epoch). A checkpoint folder holds
``checkpoint.safetensors`` (every tensor: model, optimiser state, RNG states) and
``checkpoint.json`` (everything else, with ``{"__tensor__": key}`` placeholders,
``{"__tuple__": [...]}`` for tuples and ``{"__items__": [[key, value], ...]}`` for dicts with
non-string keys, plus the SHA-256 of the tensor file). The folder is written under a temporary
name and renamed, so a checkpoint is either complete or absent.

Example:
    >>> import tempfile
    >>> import torch
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     folder = save_checkpoint(tmp, {"w": torch.zeros(2), "betas": (0.9, 0.99)}, epoch=3)
    ...     state = load_checkpoint(latest_checkpoint(tmp))
    >>> state["betas"], folder.name
    ((0.9, 0.99), 'epoch-0003')
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import Tensor

from guardnet._utils import sha256_file
from guardnet.errors import CheckpointError

__all__ = [
    "CHECKPOINT_DIR",
    "LOG_NAME",
    "CheckpointError",
    "latest_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
    "write_log",
]

CHECKPOINT_DIR = "checkpoints"
LOG_NAME = "train_log.jsonl"
_CKPT_TENSORS = "checkpoint.safetensors"
_CKPT_JSON = "checkpoint.json"
_CKPT_FORMAT = "guardnet-train-checkpoint"
_CKPT_VERSION = 1
_EPOCH_DIR = re.compile(r"^epoch-(\d{4,})$")
_TENSOR, _TUPLE, _ITEMS = "__tensor__", "__tuple__", "__items__"


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def _encode(obj: Any, path: str, tensors: dict[str, Tensor]) -> Any:
    """JSON-able structure of ``obj``; its tensors go to ``tensors`` under their path."""
    if isinstance(obj, Tensor):
        key = path if path not in tensors else f"{path}#{len(tensors)}"
        # A private, contiguous CPU copy (safetensors refuses tensors sharing memory).
        tensors[key] = obj.detach().to("cpu", copy=True).contiguous()
        return {_TENSOR: key}
    if isinstance(obj, Mapping):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, _join(path, k), tensors) for k, v in obj.items()}
        items = []
        for i, (k, v) in enumerate(obj.items()):
            if not (k is None or isinstance(k, (str, int, float, bool))):
                raise CheckpointError(f"cannot store a {type(k).__name__} dict key at {path}")
            items.append([k, _encode(v, _join(path, k if isinstance(k, int) else i), tensors)])
        return {_ITEMS: items}
    if isinstance(obj, (tuple, list)):
        encoded = [_encode(v, _join(path, i), tensors) for i, v in enumerate(obj)]
        return {_TUPLE: encoded} if isinstance(obj, tuple) else encoded
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise CheckpointError(f"cannot store a {type(obj).__name__} at {path} without pickle")


def _decode(obj: Any, tensors: Mapping[str, Tensor]) -> Any:
    if isinstance(obj, dict):
        if len(obj) == 1 and _TENSOR in obj:
            return tensors[obj[_TENSOR]]
        if len(obj) == 1 and _TUPLE in obj:
            return tuple(_decode(v, tensors) for v in obj[_TUPLE])
        if len(obj) == 1 and _ITEMS in obj:
            return {k: _decode(v, tensors) for k, v in obj[_ITEMS]}
        return {k: _decode(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    return obj


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _epoch_dirs(run_dir: Path) -> list[tuple[int, Path]]:
    root = run_dir / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        match = _EPOCH_DIR.match(entry.name)
        if match and entry.is_dir():
            found.append((int(match.group(1)), entry))
    return sorted(found)


def save_checkpoint(
    run_dir: str | os.PathLike[str],
    state: Mapping[str, Any],
    *,
    epoch: int,
    keep: int = 1,
    protect: Collection[int] = (),
) -> Path:
    """Write ``state`` as ``run_dir/checkpoints/epoch-NNNN/``, atomically, without pickle.

    Tensors (at any depth) go to ``checkpoint.safetensors`` keyed by their path in ``state``
    (e.g. ``model.conv1.weight``); the rest, with placeholders, to ``checkpoint.json`` together
    with the epoch and the SHA-256 of the tensor file. Both files are written into a temporary
    folder that is then renamed, so a reader never sees half a checkpoint.

    Args:
        run_dir: The run folder.
        state: Nested dicts / lists / tuples of tensors, numbers, strings, booleans and None
            (dicts may have int keys, as optimiser states do).
        epoch: Completed epochs; names the folder.
        keep: How many of the newest checkpoints to keep; older ones are deleted.
        protect: Epochs whose checkpoints are never deleted by ``keep`` (e.g. the end of each
            stage of a multi-stage run, so that the run can be branched there).

    Returns:
        The checkpoint folder.

    Raises:
        CheckpointError: ``state`` holds something that cannot be stored without pickle.

    Example:
        >>> import tempfile
        >>> import torch
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = save_checkpoint(tmp, {"w": torch.ones(2), "step": 3}, epoch=1)
        ...     load_checkpoint(path)["step"], path.name
        (3, 'epoch-0001')
    """
    root = Path(run_dir) / CHECKPOINT_DIR
    root.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, Tensor] = {}
    encoded = _encode(dict(state), "", tensors)
    final = root / f"epoch-{epoch:04d}"
    partial = root / f".epoch-{epoch:04d}.{os.getpid()}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        save_file(tensors, str(partial / _CKPT_TENSORS), metadata={"format": "pt"})
        _fsync(partial / _CKPT_TENSORS)
        header = {
            "format": _CKPT_FORMAT,
            "version": _CKPT_VERSION,
            "epoch": epoch,
            "tensors_file": _CKPT_TENSORS,
            "tensors_sha256": sha256_file(partial / _CKPT_TENSORS),
            "state": encoded,
        }
        (partial / _CKPT_JSON).write_text(json.dumps(header, indent=1) + "\n")
        _fsync(partial / _CKPT_JSON)
        if final.exists():  # re-writing an epoch (a run restarted from an older checkpoint)
            shutil.rmtree(final)
        os.replace(partial, final)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    kept = set(protect)
    for number, old in _epoch_dirs(Path(run_dir))[: -max(keep, 1)]:
        if number not in kept:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: str | os.PathLike[str]) -> Path | None:
    """The newest complete checkpoint folder of a run, or None if it has none.

    Args:
        run_dir: The run folder.

    Returns:
        ``run_dir/checkpoints/epoch-NNNN`` with the largest epoch that holds both files.

    Example:
        >>> latest_checkpoint("/nonexistent/run") is None
        True
    """
    for _, folder in reversed(_epoch_dirs(Path(run_dir))):
        if (folder / _CKPT_TENSORS).is_file() and (folder / _CKPT_JSON).is_file():
            return folder
    return None


def load_checkpoint(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (safetensors + JSON only).

    Args:
        folder: A checkpoint folder (see :func:`latest_checkpoint`).

    Returns:
        The state as saved (tensors on the CPU, tuples and int dict keys restored).

    Raises:
        CheckpointError: A file is missing, unreadable, of another format, or the tensor file
            does not match the SHA-256 recorded in the JSON file.
    """
    folder = Path(folder)
    json_path, tensor_path = folder / _CKPT_JSON, folder / _CKPT_TENSORS
    try:
        header = json.loads(json_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read the checkpoint {json_path}: {exc}") from exc
    if not isinstance(header, dict) or header.get("format") != _CKPT_FORMAT:
        raise CheckpointError(f"{json_path} is not a guardnet training checkpoint")
    if header.get("version") != _CKPT_VERSION:
        raise CheckpointError(
            f"{json_path} has checkpoint version {header.get('version')}, this guardnet reads "
            f"version {_CKPT_VERSION}"
        )
    if not tensor_path.is_file() or sha256_file(tensor_path) != header.get("tensors_sha256"):
        raise CheckpointError(
            f"{tensor_path} is missing or does not match the SHA-256 in {json_path} (damaged "
            "checkpoint); delete the folder to resume from an earlier one, or start afresh"
        )
    try:
        tensors = load_file(str(tensor_path), device="cpu")
    except Exception as exc:  # safetensors raises several types for damaged files
        raise CheckpointError(f"cannot read {tensor_path}: {exc}") from exc
    return _decode(header["state"], tensors)


def write_log(path: Path, history: Sequence[Mapping[str, Any]]) -> None:
    """Replace ``path`` (a run's ``train_log.jsonl``) with one JSON line per record.

    Written to a temporary file and renamed, so a reader never sees half a log.

    Args:
        path: The log file.
        history: The per-epoch records.
    """
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text("".join(json.dumps(dict(record)) + "\n" for record in history))
    os.replace(partial, path)
