"""A plain, seeded supervised training loop for the reference classifiers."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from guardnet._utils import eval_mode

__all__ = ["evaluate_accuracy", "fit_classifier"]


@torch.no_grad()
def evaluate_accuracy(
    model: nn.Module, images: Tensor, labels: Tensor, *, batch_size: int = 512
) -> float:
    """Top-1 accuracy of ``model`` (in eval mode) on images already in its input format."""
    correct = 0
    with eval_mode(model):
        for x, y in zip(images.split(batch_size), labels.split(batch_size), strict=True):
            correct += int((model(x).argmax(1) == y).sum())
    return correct / max(labels.numel(), 1)


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
) -> list[dict[str, float]]:
    """Train with AdamW and a one-cycle schedule; log loss and accuracy per epoch.

    Args:
        model: the classifier; inputs are fed as given (normalise inside the model).
        train_images: (N, C, H, W) training images.
        train_labels: (N,) labels.
        val_images: optional validation images for per-epoch accuracy.
        val_labels: their labels.
        epochs: passes over the training set.
        batch_size: mini-batch size.
        lr: peak learning rate.
        weight_decay: AdamW weight decay.
        augment: batched augmentation applied to each training batch.
        seed: seeds the shuffling and initial-state-independent randomness.
        progress: show a progress bar per epoch.
        log: where the per-epoch line goes.

    Returns:
        One dict per epoch: ``epoch``, ``loss``, ``train_acc``, ``val_acc`` (if given), ``seconds``.
    """
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(
        TensorDataset(train_images, train_labels),
        batch_size=batch_size,
        shuffle=True,
        generator=generator,
        drop_last=True,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=epochs * len(loader)
    )
    history = []
    for epoch in range(1, epochs + 1):
        model.train()
        start = time.perf_counter()
        loss_sum = torch.zeros(())
        correct = torch.zeros((), dtype=torch.long)
        seen = 0
        for x, y in tqdm(loader, desc=f"epoch {epoch}/{epochs}", disable=not progress, leave=False):
            if augment is not None:
                x = augment(x)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            # Accumulate on-device; read once per epoch (no host sync per step).
            loss_sum += loss.detach() * y.numel()
            correct += (logits.detach().argmax(1) == y).sum()
            seen += y.numel()
        record = {
            "epoch": float(epoch),
            "loss": float(loss_sum) / seen,
            "train_acc": int(correct) / seen,
            "seconds": time.perf_counter() - start,
        }
        if val_images is not None and val_labels is not None:
            record["val_acc"] = evaluate_accuracy(model, val_images, val_labels)
        log(
            " ".join(
                f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()
            )
        )
        history.append(record)
    model.eval()
    return history
