"""Seeded, resumable supervised training of classifiers (the ``guardnet train classifier`` command).

Three levels:

* :func:`train_classifier`: the loop. Batches are drawn by index from in-memory tensors (no
  per-sample Python), augmented batch-wise on tensors (:func:`default_augmentation`, kornia:
  per-image random parameters), normalised with the model's ``mean``/``std``, and fed to
  SGD or AdamW with a per-step one-cycle or cosine schedule. Loss and accuracy accumulate on the
  device and are read once per epoch. With a ``run_dir``, every epoch ends with a checkpoint and
  one line in ``train_log.jsonl``; ``resume=True`` continues from the last checkpoint and gives
  the same weights as an uninterrupted run.
* :func:`run_classifier_training`: dataset in, Hub folder out: loads guardnet's seeded splits,
  builds the model (or fine-tunes a pretrained one), trains, reports validation and test accuracy
  and writes ``RUN_DIR/model`` with :func:`guardnet.weights.save_pretrained` and a model card.
* :func:`fit_classifier` / :func:`evaluate_accuracy`: the simple API of the earlier scripts.

Checkpoints are pickle-free: ``RUN_DIR/checkpoints/epoch-NNNN/`` holds ``checkpoint.safetensors``
(every tensor: model, optimiser state, RNG states) and ``checkpoint.json`` (everything else,
with ``{"__tensor__": key}`` placeholders, ``{"__tuple__": [...]}`` for tuples and
``{"__items__": [[key, value], ...]}`` for dicts with non-string keys). The folder is written
under a temporary name and renamed, so a checkpoint is either complete or absent.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import shutil
import sys
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from guardnet._utils import eval_mode, module_device, sha256_file
from guardnet.data import dataset_info, load_split
from guardnet.errors import CheckpointError, WeightsError

__all__ = [
    "AUGMENTED_DATASETS",
    "CHECKPOINT_DIR",
    "LOG_NAME",
    "CheckpointError",
    "TrainResult",
    "TrainSettings",
    "default_augmentation",
    "evaluate_accuracy",
    "fit_classifier",
    "latest_checkpoint",
    "load_checkpoint",
    "resolve_device",
    "run_classifier_training",
    "save_checkpoint",
    "train_classifier",
]

CHECKPOINT_DIR = "checkpoints"
LOG_NAME = "train_log.jsonl"
_CKPT_TENSORS = "checkpoint.safetensors"
_CKPT_JSON = "checkpoint.json"
_CKPT_FORMAT = "guardnet-train-checkpoint"
_CKPT_VERSION = 1
_EPOCH_DIR = re.compile(r"^epoch-(\d{4,})$")
_TENSOR, _TUPLE, _ITEMS = "__tensor__", "__tuple__", "__items__"

OptimizerName = Literal["sgd", "adamw"]
ScheduleName = Literal["onecycle", "cosine"]


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


def _normalizer(
    mean: Sequence[float] | None, std: Sequence[float] | None, device: torch.device
) -> Callable[[Tensor], Tensor]:
    if mean is None and std is None:
        return lambda x: x
    if mean is None or std is None:
        raise ValueError("give both mean and std, or neither")
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return lambda x: (x - mean_t) / std_t


@torch.no_grad()
def evaluate_accuracy(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    batch_size: int = 512,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    device: str | torch.device | None = None,
) -> float:
    """Top-1 accuracy of ``model`` (run in eval mode, each submodule's mode restored afterwards).

    Args:
        model: The classifier.
        images: ``(N, C, H, W)`` images; in the model's input format, or in [0, 1] when
            ``mean``/``std`` are given.
        labels: ``(N,)`` int64 labels.
        batch_size: Images per forward pass.
        mean: Per-channel mean subtracted before the model (with ``std``); None: feed as given.
        std: Per-channel standard deviation.
        device: Where to run; default the model's device. Batches are moved there one at a time.

    Returns:
        The fraction of correct top-1 predictions (0 for an empty set).

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
        >>> evaluate_accuracy(net, torch.zeros(0, 1, 2, 2), torch.zeros(0, dtype=torch.long))
        0.0
    """
    run_on = torch.device(device) if device is not None else module_device(model)
    run_on = run_on or torch.device("cpu")
    normalize = _normalizer(mean, std, run_on)
    correct = torch.zeros((), dtype=torch.long, device=run_on)
    with eval_mode(model):
        for x, y in zip(images.split(batch_size), labels.split(batch_size), strict=True):
            x, y = x.to(run_on, non_blocking=True), y.to(run_on, non_blocking=True)
            correct += (model(normalize(x)).argmax(1) == y).sum()
    return int(correct) / max(labels.numel(), 1)  # one host sync for the whole set


# --------------------------------------------------------------------------------------------
# Augmentation
# --------------------------------------------------------------------------------------------


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


def default_augmentation(dataset: str) -> nn.Module | None:
    """The standard batched augmentation of a dataset, for float images in [0, 1].

    Built from ``kornia.augmentation``, which draws independent parameters for every image of a
    batch (``torchvision.transforms.v2`` applied to a batch tensor would draw one set for the
    whole batch). Randomness comes from torch's global generator, which the training checkpoint
    saves and restores. On 2 CPU cores each costs 2-8 ms per 128-image batch, 1-2% of a
    training step.

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

    Example:
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


# --------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainSettings:
    """Everything that determines a training trajectory (with the model, data and seed).

    Attributes:
        epochs: Passes over the training set.
        batch_size: Images per step; the last partial batch of an epoch is dropped.
        lr: Peak learning rate (one-cycle) or initial learning rate (cosine).
        weight_decay: Weight decay (decoupled for AdamW, L2 for SGD).
        optimizer: ``"adamw"`` or ``"sgd"`` (Nesterov momentum).
        momentum: SGD momentum (one-cycle cycles it between 0.85 and 0.95 instead).
        schedule: ``"onecycle"`` (warm-up then cosine decay) or ``"cosine"`` (decay from
            ``lr`` to 0, no warm-up: for fine-tuning); stepped every batch.
        label_smoothing: Cross-entropy label smoothing.
        seed: Seeds torch's global generator (initial state, dropout, augmentation), Python's
            ``random`` and the shuffling generator.
    """

    epochs: int = 5
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 5e-4
    optimizer: OptimizerName = "adamw"
    momentum: float = 0.9
    schedule: ScheduleName = "onecycle"
    label_smoothing: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        if self.schedule not in ("onecycle", "cosine"):
            raise ValueError(f"schedule must be 'onecycle' or 'cosine', got {self.schedule!r}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")

    def to_dict(self) -> dict[str, Any]:
        """The settings as a JSON-serialisable dict."""
        return dataclasses.asdict(self)


@dataclass
class TrainResult:
    """What :func:`train_classifier` did.

    Attributes:
        history: One record per epoch of the whole run (earlier sessions included):
            ``epoch``, ``loss``, ``train_acc``, ``val_acc`` (if validation data was given),
            ``lr`` (at the epoch's end) and ``seconds`` (wall time of the epoch, validation
            included).
        resumed_from: The epoch the run continued from (0: started fresh).
        sessions: One entry per session that trained this run (``start_epoch``, ``end_epoch``
            and the ``session`` mapping given to :func:`train_classifier`).
    """

    history: list[dict[str, Any]]
    resumed_from: int = 0
    sessions: list[dict[str, Any]] = field(default_factory=list)

    @property
    def train_seconds(self) -> float:
        """Training wall time summed over all epochs and sessions."""
        return float(sum(record["seconds"] for record in self.history))


def _make_optimizer(model: nn.Module, settings: TrainSettings) -> torch.optim.Optimizer:
    if settings.optimizer == "adamw":
        return torch.optim.AdamW(
            model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay
        )
    return torch.optim.SGD(
        model.parameters(),
        lr=settings.lr,
        momentum=settings.momentum,
        nesterov=settings.momentum > 0,
        weight_decay=settings.weight_decay,
    )


def _make_scheduler(
    optimizer: torch.optim.Optimizer, settings: TrainSettings, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    if settings.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=settings.lr,
            total_steps=total_steps,
            cycle_momentum=settings.optimizer == "adamw" or settings.momentum > 0,
        )
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)


# --------------------------------------------------------------------------------------------
# Checkpoints: tensors in safetensors, the rest in JSON
# --------------------------------------------------------------------------------------------


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


def _rng_state(shuffle: torch.Generator, device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "shuffle": shuffle.get_state(),
        "python": random.getstate(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: Mapping[str, Any], shuffle: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    shuffle.set_state(state["shuffle"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


def _differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    keys = sorted(set(saved) | set(current))
    return [
        f"{key}: checkpoint {saved.get(key)!r}, now {current.get(key)!r}"
        for key in keys
        if saved.get(key) != current.get(key)
    ]


def _write_log(path: Path, history: Sequence[Mapping[str, Any]]) -> None:
    """Replace ``path`` with one JSON line per record (tmp + rename)."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text("".join(json.dumps(dict(record)) + "\n" for record in history))
    os.replace(partial, path)


# --------------------------------------------------------------------------------------------
# The training loop
# --------------------------------------------------------------------------------------------


def _format_record(record: Mapping[str, Any], epochs: int) -> str:
    parts = [f"epoch {record['epoch']}/{epochs}", f"loss {record['loss']:.4f}"]
    parts.append(f"train_acc {100 * record['train_acc']:.2f}%")
    if "val_acc" in record:
        parts.append(f"val_acc {100 * record['val_acc']:.2f}%")
    parts += [f"lr {record['lr']:.2e}", f"{record['seconds']:.1f} s"]
    return "  ".join(parts)


def _batches(
    perm: Tensor, steps: int, batch_size: int, progress: bool, desc: str
) -> Iterator[Tensor]:
    # Redraw often on a terminal, rarely into a log file (background runs).
    interval = 0.5 if sys.stderr.isatty() else 60.0
    bar = tqdm(
        range(steps),
        desc=desc,
        unit="batch",
        disable=not progress,
        leave=False,
        mininterval=interval,
    )
    for step in bar:
        yield perm[step * batch_size : (step + 1) * batch_size]


def train_classifier(
    model: nn.Module,
    train_images: Tensor,
    train_labels: Tensor,
    *,
    settings: TrainSettings,
    val_images: Tensor | None = None,
    val_labels: Tensor | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    augment: Callable[[Tensor], Tensor] | None = None,
    run_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    run_info: Mapping[str, Any] | None = None,
    session: Mapping[str, Any] | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train ``model`` with cross-entropy; seeded, and resumable when given a run folder.

    Each step takes ``batch_size`` images by index from a per-epoch permutation (a dedicated,
    seeded generator), applies ``augment`` to the batch, normalises it with ``mean``/``std`` and
    takes an optimiser and a scheduler step. Loss and accuracy are summed on the device and read
    once per epoch. After each epoch: validation accuracy, one line to ``log``, and with a
    ``run_dir`` a checkpoint (model, optimiser, scheduler, the torch / shuffling / Python RNG
    states, history) and a line in ``run_dir/train_log.jsonl``.

    With ``resume=True`` the run continues after the newest checkpoint: the final weights are
    those of an uninterrupted run (on the same device and thread count). Without a checkpoint it
    starts fresh, so the same command both starts and continues a run.

    Args:
        model: The classifier (moved to ``device``; in eval mode on return).
        train_images: ``(N, C, H, W)`` float images in [0, 1] (or in the model's input format
            when ``mean``/``std`` are None).
        train_labels: ``(N,)`` int64 labels.
        settings: Optimiser, schedule, epochs, batch size, seed.
        val_images: Validation images for the per-epoch accuracy (same format).
        val_labels: Their labels.
        mean: Per-channel mean for normalisation after augmentation (with ``std``).
        std: Per-channel standard deviation.
        augment: Batched augmentation of ``(B, C, H, W)`` images, e.g.
            :func:`default_augmentation`; its randomness must come from torch's global
            generator (or be saved by the caller) for resumed runs to match.
        run_dir: Folder for checkpoints and ``train_log.jsonl``; None: neither.
        resume: Continue from the newest checkpoint in ``run_dir``.
        run_info: JSON-serialisable description of the run (data, architecture, ...), stored in
            checkpoints; a resumed run must have the same.
        session: JSON-serialisable description of this session (e.g. the command line), kept in
            :attr:`TrainResult.sessions`.
        device: Where to train; default the model's device.
        progress: Show a tqdm progress bar per epoch.
        log: Receives one line per epoch.

    Returns:
        A :class:`TrainResult` with the per-epoch history of the whole run.

    Raises:
        CheckpointError: ``run_dir`` already has checkpoints and ``resume`` is False, or the
            checkpoint belongs to a run with other settings or ``run_info``, or is damaged.
        ValueError: Bad arguments (no ``run_dir`` with ``resume``, empty training set, ...).
    """
    if train_images.shape[0] != train_labels.shape[0] or train_labels.numel() == 0:
        raise ValueError(
            f"need as many labels as images (and at least one): {tuple(train_images.shape)} "
            f"images, {tuple(train_labels.shape)} labels"
        )
    if resume and run_dir is None:
        raise ValueError("resume=True needs a run_dir")
    run_path = Path(run_dir) if run_dir is not None else None
    run_on = torch.device(device) if device is not None else module_device(model)
    run_on = run_on or torch.device("cpu")
    info = json.loads(json.dumps(dict(run_info or {})))  # canonical JSON form, for comparison
    model.to(run_on)
    normalize = _normalizer(mean, std, run_on)

    n = train_labels.shape[0]
    batch_size = min(settings.batch_size, n)
    steps = n // batch_size
    images = train_images.to(run_on)
    labels = train_labels.to(run_on)

    torch.manual_seed(settings.seed)
    random.seed(settings.seed)
    shuffle = torch.Generator(device="cpu").manual_seed(settings.seed)
    optimizer = _make_optimizer(model, settings)
    scheduler = _make_scheduler(optimizer, settings, settings.epochs * steps)
    history: list[dict[str, Any]] = []
    sessions: list[dict[str, Any]] = []
    start = 0

    checkpoint = latest_checkpoint(run_path) if run_path is not None else None
    if checkpoint is not None and not resume:
        raise CheckpointError(
            f"{run_path} already holds training checkpoints ({checkpoint.name}); resume it "
            "(--resume / resume=True) or choose another run folder"
        )
    if checkpoint is not None:
        state = load_checkpoint(checkpoint)
        problems = _differences(state["settings"], settings.to_dict())
        problems += _differences(state["run_info"], info)
        problems += _differences({"train_size": state["train_size"]}, {"train_size": n})
        if problems:
            raise CheckpointError(
                f"{checkpoint} belongs to a different run; it was trained with other settings: "
                + "; ".join(problems)
            )
        try:
            model.load_state_dict(state["model"], strict=True)
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
        except (RuntimeError, KeyError, ValueError) as exc:
            raise CheckpointError(f"cannot restore {checkpoint}: {exc}") from exc
        _restore_rng(state["rng"], shuffle)
        history, sessions, start = list(state["history"]), list(state["sessions"]), state["epoch"]
        log(f"resuming {run_path} after epoch {start}/{settings.epochs}")
    elif resume:
        log(f"no checkpoint in {run_path}: starting at epoch 1")
    sessions.append({"start_epoch": start, "end_epoch": start, **dict(session or {})})
    if run_path is not None:
        run_path.mkdir(parents=True, exist_ok=True)
        _write_log(run_path / LOG_NAME, history)

    for epoch in range(start + 1, settings.epochs + 1):
        began = time.perf_counter()
        model.train()
        perm = torch.randperm(n, generator=shuffle).to(run_on)
        loss_sum = torch.zeros((), device=run_on)
        correct = torch.zeros((), dtype=torch.long, device=run_on)
        for idx in _batches(perm, steps, batch_size, progress, f"epoch {epoch}/{settings.epochs}"):
            x, y = images.index_select(0, idx), labels.index_select(0, idx)
            if augment is not None:
                x = augment(x)
            logits = model(normalize(x))
            loss = F.cross_entropy(logits, y, label_smoothing=settings.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            # Accumulate on the device; read once per epoch (no host sync per step).
            loss_sum += loss.detach() * y.numel()
            correct += (logits.detach().argmax(1) == y).sum()
        seen = steps * batch_size
        record: dict[str, Any] = {
            "epoch": epoch,
            "loss": float(loss_sum) / seen,
            "train_acc": int(correct) / seen,
        }
        if val_images is not None and val_labels is not None:
            record["val_acc"] = evaluate_accuracy(
                model, val_images, val_labels, mean=mean, std=std, device=run_on
            )
        record["lr"] = float(scheduler.get_last_lr()[0])
        record["seconds"] = time.perf_counter() - began
        history.append(record)
        sessions[-1]["end_epoch"] = epoch
        log(_format_record(record, settings.epochs))
        if run_path is not None:
            state = {
                "epoch": epoch,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": _rng_state(shuffle, run_on),
                "history": history,
                "sessions": sessions,
                "settings": settings.to_dict(),
                "run_info": info,
                "train_size": n,
            }
            save_checkpoint(run_path, state, epoch=epoch)
            with open(run_path / LOG_NAME, "a") as handle:
                handle.write(json.dumps(record) + "\n")
    model.eval()
    return TrainResult(history=history, resumed_from=start, sessions=sessions)


def fit_classifier(
    model: nn.Module,
    train_images: Tensor,
    train_labels: Tensor,
    *,
    val_images: Tensor | None = None,
    val_labels: Tensor | None = None,
    epochs: int = 5,
    batch_size: int = 128,
    lr: float = 1e-3,
    weight_decay: float = 5e-4,
    augment: Callable[[Tensor], Tensor] | None = None,
    seed: int = 0,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Train with AdamW and a one-cycle schedule; log loss and accuracy per epoch.

    A shorthand for :func:`train_classifier` without normalisation or checkpoints.

    Args:
        model: The classifier; inputs are fed as given (normalise inside the model).
        train_images: (N, C, H, W) training images.
        train_labels: (N,) labels.
        val_images: Optional validation images for per-epoch accuracy.
        val_labels: Their labels.
        epochs: Passes over the training set.
        batch_size: Mini-batch size.
        lr: Peak learning rate.
        weight_decay: AdamW weight decay.
        augment: Batched augmentation applied to each training batch.
        seed: Seeds the shuffling, torch's global generator and Python's ``random``.
        progress: Show a progress bar per epoch.
        log: Where the per-epoch line goes.

    Returns:
        One dict per epoch: ``epoch``, ``loss``, ``train_acc``, ``val_acc`` (if given), ``lr``,
        ``seconds``.
    """
    settings = TrainSettings(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        optimizer="adamw",
        schedule="onecycle",
        seed=seed,
    )
    result = train_classifier(
        model,
        train_images,
        train_labels,
        settings=settings,
        val_images=val_images,
        val_labels=val_labels,
        augment=augment,
        progress=progress,
        log=log,
    )
    return result.history


# --------------------------------------------------------------------------------------------
# The command: dataset in, Hub folder out
# --------------------------------------------------------------------------------------------


def _metric_slug(display_name: str) -> str:
    """``"CIFAR-10 (JPEG q75)"`` -> ``"cifar10_jpeg_q75"``: metric keys name their data."""
    slug = re.sub(r"[^a-z0-9]+", "_", display_name.lower().replace("-", ""))
    return slug.strip("_")


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"``: CUDA when available, else the CPU; anything else as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _load_init(init: str) -> tuple[nn.Module, dict[str, Any]]:
    from guardnet.weights import from_pretrained

    model = from_pretrained(init)
    return model, model.pretrained_config


def _percent(value: float) -> str:
    return f"{100 * value:.2f}%"


def _model_card(
    config: Mapping[str, Any],
    *,
    title: str,
    result: TrainResult,
    counts: Mapping[str, int],
    accuracy: Mapping[str, float],
) -> str:
    from guardnet.weights import MODEL_CARD_USAGE

    training = config["training"]
    settings = training["settings"]
    display = config["dataset_display_name"]
    init_text = f"`{training['init']}`" if training["init"] else f"random (seed {settings['seed']})"
    lines = [
        "---",
        f"license: {str(config.get('license', 'unknown')).lower()}",
        "library_name: guardnet",
        f"datasets: [{config['dataset']}]",
        "tags: [image-classification, adversarial-robustness, guardnet]",
        "---",
        "",
        f"# {title}",
        "",
        f"`{config['architecture']}` (arch_args `{json.dumps(config['arch_args'])}`, "
        f"{training['parameters']:,} parameters) trained on **{display}** with "
        "`guardnet train classifier`.",
        "",
        "| | |",
        "| --- | --- |",
        f"| dataset | {display}: guardnet's seeded `train` split ({counts['train']:,} images"
        + (", a seeded subset" if training["limit"] else "")
        + ") |",
        f"| initialised from | {init_text} |",
        f"| input | (B, {', '.join(str(s) for s in config['input_size'])}) in [0, 1], normalised "
        f"by the caller with mean {config['mean']}, std {config['std']} (e.g. "
        "`GuardedModel(mean=..., std=...)`) |",
        f"| augmentation | {training['augmentation']} |",
        f"| optimiser | {settings['optimizer']}, lr {settings['lr']}, weight decay "
        f"{settings['weight_decay']}, batch {settings['batch_size']}, {settings['schedule']} "
        f"schedule, label smoothing {settings['label_smoothing']}, seed {settings['seed']} |",
        f"| epochs | {settings['epochs']} |",
        f"| wall time | {training['wall_seconds']:.0f} s of training ({training['device']}, "
        f"torch threads: {training['threads']}, torch {training['torch']}) |",
        "",
        "## Accuracy",
        "",
        "| data | images | top-1 accuracy |",
        "| --- | --- | --- |",
        f"| {display} validation (guardnet `val` split, held out of training; model selection "
        f"and calibration) | {counts['val']:,} | {_percent(accuracy['val'])} |",
        f"| {display} test (official test set) | {counts['test']:,} | "
        f"{_percent(accuracy['test'])} |",
        "",
        "## Command",
        "",
        "```bash",
    ]
    for entry in result.sessions:
        command = entry.get("command") or "(library call)"
        first, last = entry["start_epoch"] + 1, entry["end_epoch"]
        if len(result.sessions) > 1:
            done = f"epochs {first}-{last}" if last > first else f"epoch {last}"
            done = done if last >= first else "evaluation and saving only"
            lines.append(f"# {done}")
        lines.append(command)
    lines += ["```", "", "## Per-epoch log", ""]
    lines += [
        "| epoch | loss | train acc | val acc | lr | seconds |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for record in result.history:
        val = _percent(record["val_acc"]) if "val_acc" in record else "-"
        lines.append(
            f"| {record['epoch']} | {record['loss']:.4f} | {_percent(record['train_acc'])} | "
            f"{val} | {record['lr']:.2e} | {record['seconds']:.1f} |"
        )
    lines += MODEL_CARD_USAGE
    if training["init"]:
        lines += [
            f"Fine-tuned from `{training['init']}`; its licence terms apply. The initial model "
            "may have been trained on images of guardnet's validation split (e.g. the akamaster "
            "CIFAR-10 models saw all 50,000 official training images), so the validation "
            "accuracy can be optimistic; the official test split is unaffected.",
            "",
        ]
    if config.get("dataset_note"):
        lines += [f"Data: {config['dataset_note']}", ""]
    return "\n".join(lines)


def run_classifier_training(
    *,
    dataset: str,
    arch: str | None,
    out: str | os.PathLike[str],
    settings: TrainSettings,
    arch_args: Mapping[str, Any] | None = None,
    init: str | None = None,
    root: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    eval_limit: int | None = None,
    augment: bool = True,
    resume: bool = False,
    threads: int | None = None,
    device: str = "auto",
    progress: bool = True,
    command: str | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train a classifier on a guardnet dataset and save it as a Hub folder in ``out/model``.

    The model trains on the ``train`` split (optionally a seeded subset of ``limit`` images) on
    normalised inputs: the dataset's mean/std, or with ``init`` the pretrained config's. The
    per-epoch validation accuracy uses the ``val`` split; after the last epoch the model is
    evaluated on ``val`` and on the official ``test`` split, and saved with
    :func:`guardnet.weights.save_pretrained`: ``config.json`` carries the mean/std, the metrics
    (keys name the data, e.g. ``cifar10_jpeg_q75_test_accuracy``) and the training details;
    ``README.md`` is a model card with the command line, wall time and accuracies.

    Args:
        dataset: ``"mnist"``, ``"cifar10"`` (the JPEG q75 variant) or ``"gtsrb"`` (any name
            :func:`guardnet.data.dataset_info` knows).
        arch: A registered architecture (see :func:`guardnet.weights.list_architectures`); may be
            None with ``init`` (then the init's architecture).
        out: The run folder: checkpoints, ``train_log.jsonl``, ``model/``.
        settings: Optimiser, schedule, epochs, batch size, seed.
        arch_args: Extra builder arguments (``num_classes`` and ``in_channels`` come from the
            dataset). Ignored with ``init``.
        init: A registered pretrained name, a weights folder or a Hub repo id to fine-tune.
        root: Data root (default ``$GUARDNET_DATA``, see :func:`guardnet.data.load_split`).
        limit: Train on a seeded subset of this many images (smoke runs).
        eval_limit: Evaluate on seeded subsets of this many validation / test images.
        augment: Use :func:`default_augmentation`.
        resume: Continue the run in ``out`` from its newest checkpoint.
        threads: ``torch.set_num_threads`` (default: torch's choice).
        device: ``"auto"`` (CUDA if available, else CPU) or a torch device.
        progress: Show progress bars.
        command: The command line, recorded in the model card.
        log: Receives the progress lines.

    Returns:
        A summary: ``model_dir``, ``val_accuracy``, ``test_accuracy``, ``train_seconds``,
        ``history``.

    Raises:
        DataNotFoundError: The dataset's files are missing.
        WeightsError: Unknown architecture or ``init``, or ``init`` does not fit the dataset.
        CheckpointError: See :func:`train_classifier`.
    """
    from guardnet.weights import build_model, save_pretrained

    began = time.perf_counter()
    if threads is not None:
        torch.set_num_threads(threads)
    run_on = resolve_device(device)
    info = dataset_info(dataset)
    train = load_split(info.name, "train", root=root, limit=limit)
    val = load_split(info.name, "val", root=root, limit=eval_limit)
    test = load_split(info.name, "test", root=root, limit=eval_limit)

    torch.manual_seed(settings.seed)  # the initial weights
    if init is not None:
        model, init_config = _load_init(init)
        if arch is not None and init_config.get("architecture") != arch:
            raise WeightsError(
                f"--arch {arch!r} but {init!r} is a {init_config.get('architecture')!r}"
            )
        arch = str(init_config["architecture"])
        full_args = dict(init_config.get("arch_args") or {})
        if init_config.get("num_classes", info.num_classes) != info.num_classes:
            raise WeightsError(
                f"{init!r} has {init_config.get('num_classes')} classes, {info.display_name} "
                f"has {info.num_classes}"
            )
        mean, std = list(init_config["mean"]), list(init_config["std"])
        license_id = str(init_config.get("license", "unknown"))
    else:
        if arch is None:
            raise WeightsError("give an architecture (--arch) or weights to start from (--init)")
        full_args = {"num_classes": info.num_classes, "in_channels": info.channels}
        full_args.update(arch_args or {})
        model = build_model({"architecture": arch, "arch_args": full_args})
        mean, std = list(info.mean), list(info.std)
        license_id = "Apache-2.0"
    input_size = [info.channels, info.image_size, info.image_size]
    try:
        with torch.no_grad(), eval_mode(model):
            logits = model(torch.zeros(2, *input_size))
    except RuntimeError as exc:
        raise WeightsError(
            f"{arch} does not accept {info.display_name} images {tuple(input_size)}: {exc}"
        ) from exc
    if tuple(logits.shape) != (2, info.num_classes):
        raise WeightsError(f"{arch} gives {logits.shape[1]} logits for {info.num_classes} classes")

    augmentation = default_augmentation(info.name) if augment else None
    augmentation_note = _AUGMENTATION_NOTES.get(info.name, "none") if augment else "none"
    run_info = {
        "dataset": info.name,
        "architecture": arch,
        "arch_args": full_args,
        "init": init,
        "limit": limit,
        "mean": mean,
        "std": std,
        "augmentation": augmentation_note,
    }
    result = train_classifier(
        model,
        train.images,
        train.labels,
        settings=settings,
        val_images=val.images,
        val_labels=val.labels,
        mean=mean,
        std=std,
        augment=augmentation,
        run_dir=out,
        resume=resume,
        run_info=run_info,
        session={"command": command},
        device=run_on,
        progress=progress,
        log=log,
    )
    val_acc = evaluate_accuracy(model, val.images, val.labels, mean=mean, std=std)
    test_acc = evaluate_accuracy(model, test.images, test.labels, mean=mean, std=std)
    slug = _metric_slug(info.display_name)
    config = {
        "architecture": arch,
        "arch_args": full_args,
        "num_classes": info.num_classes,
        "dataset": info.name,
        "dataset_display_name": info.display_name,
        "dataset_note": info.note,
        "input_size": input_size,
        "mean": mean,
        "std": std,
        "input_normalized_by": "caller (GuardedModel mean/std)",
        "class_names": list(info.class_names),
        "license": license_id,
        "source": f"trained by guardnet: {command or 'guardnet.train.run_classifier_training'}",
        "metrics": {f"{slug}_test_accuracy": test_acc, f"{slug}_val_accuracy": val_acc},
        "train_wall_seconds": round(result.train_seconds, 1),
        "training": {
            "settings": settings.to_dict(),
            "init": init,
            "limit": limit,
            "eval_limit": eval_limit,
            "augmentation": augmentation_note,
            "parameters": sum(p.numel() for p in model.parameters()),
            "wall_seconds": round(result.train_seconds, 1),
            "device": str(run_on),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "commands": [entry.get("command") for entry in result.sessions],
            "history": result.history,
        },
    }
    counts = {"train": len(train), "val": len(val), "test": len(test)}
    title = f"{arch} on {info.display_name}"
    card = _model_card(
        config,
        title=title,
        result=result,
        counts=counts,
        accuracy={"val": val_acc, "test": test_acc},
    )
    model_dir = save_pretrained(model, Path(out) / "model", config=config, model_card=card)
    log(
        f"done in {time.perf_counter() - began:.0f} s ({result.train_seconds:.0f} s training); "
        f"{info.display_name} validation accuracy {_percent(val_acc)} ({len(val)} images)"
    )
    log(f"{info.display_name} test accuracy {_percent(test_acc)} ({len(test)} images)")
    log(f"saved {model_dir}")
    return {
        "model_dir": model_dir,
        "val_accuracy": val_acc,
        "test_accuracy": test_acc,
        "train_seconds": result.train_seconds,
        "history": result.history,
    }
