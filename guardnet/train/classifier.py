"""Seeded, resumable supervised training of classifiers: the loop.

* :func:`train_classifier`: batches are drawn by index from in-memory tensors (no per-sample
  Python), augmented batch-wise on tensors (e.g. :func:`~guardnet.train.default_augmentation`,
  kornia: per-image random parameters), normalised with the model's ``mean``/``std``, and fed
  to SGD or AdamW with a per-step one-cycle or cosine schedule (:class:`TrainSettings`). Loss
  and accuracy accumulate on the device and are read once per epoch. With a ``run_dir``, every
  epoch ends with a checkpoint (:mod:`guardnet.train.checkpoint`) and one line in
  ``train_log.jsonl``; ``resume=True`` continues from the last checkpoint and gives the same
  weights as an uninterrupted run.
* :func:`fit_classifier` / :func:`evaluate_accuracy`: the simple API.

:func:`~guardnet.train.run_classifier_training` wraps the loop: dataset in, Hub folder out.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from guardnet._utils import eval_mode, module_device
from guardnet.errors import CheckpointError
from guardnet.train.checkpoint import (
    LOG_NAME,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    write_log,
)
from guardnet.train.settings import TrainSettings

__all__ = [
    "TrainResult",
    "evaluate_accuracy",
    "fit_classifier",
    "train_classifier",
]


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
# The training loop
# --------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What :func:`train_classifier` did.

    Attributes:
        history: One record per epoch of the whole run (earlier invocations included):
            ``epoch``, ``loss``, ``train_acc``, ``val_acc`` (if validation data was given),
            ``lr`` (at the epoch's end) and ``seconds`` (wall time of the epoch, validation
            included).
        resumed_from: The epoch the run continued from (0: started fresh).
        invocations: One entry per call that trained this run, a resumed run having several
            (``start_epoch``, ``end_epoch`` and the ``invocation`` mapping given to
            :func:`train_classifier`).
    """

    history: list[dict[str, Any]]
    resumed_from: int = 0
    invocations: list[dict[str, Any]] = field(default_factory=list)

    @property
    def train_seconds(self) -> float:
        """Training wall time summed over all epochs and invocations."""
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
    invocation: Mapping[str, Any] | None = None,
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
        invocation: JSON-serialisable description of this call (e.g. the command line), kept
            in :attr:`TrainResult.invocations`.
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
    invocations: list[dict[str, Any]] = []
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
        history, start = list(state["history"]), state["epoch"]
        if "invocations" not in state:
            raise CheckpointError(
                f"{checkpoint} was written by an older guardnet (no 'invocations' record): "
                "resume it with that version, or start the run again in a new --out folder"
            )
        invocations = list(state["invocations"])
        log(f"resuming {run_path} after epoch {start}/{settings.epochs}")
    elif resume:
        log(f"no checkpoint in {run_path}: starting at epoch 1")
    invocations.append({"start_epoch": start, "end_epoch": start, **dict(invocation or {})})
    if run_path is not None:
        run_path.mkdir(parents=True, exist_ok=True)
        write_log(run_path / LOG_NAME, history)

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
        invocations[-1]["end_epoch"] = epoch
        log(_format_record(record, settings.epochs))
        if run_path is not None:
            state = {
                "epoch": epoch,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": _rng_state(shuffle, run_on),
                "history": history,
                "invocations": invocations,
                "settings": settings.to_dict(),
                "run_info": info,
                "train_size": n,
            }
            save_checkpoint(run_path, state, epoch=epoch)
            with open(run_path / LOG_NAME, "a") as handle:
                handle.write(json.dumps(record) + "\n")
    model.eval()
    return TrainResult(history=history, resumed_from=start, invocations=invocations)


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
