"""Train DeT's reformers: plain denoising training, then cross training (DeT, Algorithm 1).

Plain training: every reformer learns to rebuild clean images from noise-added ones,
``x~ = clip(x + l * N(0, 1))``, minimising the squared L2 distance to ``x`` (MagNet's recipe).

Cross training, exactly as DeT's Algorithm 1: every epoch draws batches ``x`` and
``x~ = clip(x + l * N(0, 1))``; for every pair ``(p0, p1)`` of reformers, first update only
``R[p1]`` to minimise ``||R[p1](R[p0](x~)) - x||``, then update only ``R[p0]`` to minimise
``||R[p0](R[p1](x~)) - x||`` through the updated ``R[p1]``. The pair's two reformers learn to
undo each other's changes, which makes adversarial examples transfer less between them.

Runs are seeded and resumable: a pickle-free checkpoint (:mod:`guardnet.train.checkpoint`)
after every epoch of either phase (the last plain epoch's is kept, to compare the reformers
before and after cross training); at the end the run's ``model/`` folder holds every reformer
as one :class:`~guardnet.nets.reformer.ReformerSet` in Hub layout.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from guardnet.nets.reformer import REFORMER_STYLES, ReformerSet
from guardnet.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from guardnet.weights.io import write_folder

__all__ = ["ReformerTrainingOptions", "cross_training_step", "train_reformers"]

# Per style, a factor on the learning rate: the leaky-ReLU style collapsed to a constant image
# at the sigmoid reformers' 1e-2 (with ReLUs and PyTorch's default initialisation); it trains at
# a tenth of the rate, with He initialisation.
_LR_SCALE = {"wide": 0.1, "relu": 0.1, "relu-pooled": 0.1}


@dataclass(frozen=True)
class ReformerTrainingOptions:
    """What ``guardnet train reformers`` does.

    Attributes:
        dataset: the training data's name (recorded in the config).
        styles: per reformer, its :data:`~guardnet.nets.reformer.REFORMER_STYLES` key.
        epochs: plain denoising epochs.
        cross_epochs: cross-training epochs after them (0: none).
        noise: ``l``, the standard deviation of the Gaussian training noise.
        batch_size: images per batch.
        lr: Adam's learning rate (one optimiser per reformer; 1e-3 leaves the sigmoid
            autoencoders near the mean image after a few epochs, 1e-2 does not); the
            leaky-ReLU styles (``"wide"``, ``"relu"``, ``"relu-pooled"``) take a tenth of it.
        seed: seeds initial weights (reformer ``i`` with ``seed + i``), shuffling and noise.
        cross_lr: Adam's learning rate in the cross-training epochs, scaled per style like
            ``lr`` (default: ``lr``). At ``lr``, one CIFAR-10 cross epoch of six reformers
            tripled their rebuild error: each reformer takes a step in every pair it is in.
            A run resumed before its cross epochs may change it and ``cross_epochs``.
    """

    dataset: str
    styles: tuple[str, ...]
    epochs: int = 5
    cross_epochs: int = 1
    noise: float = 0.1
    batch_size: int = 128
    lr: float = 1e-2
    seed: int = 0
    cross_lr: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = [s for s in self.styles if s not in REFORMER_STYLES]
        if unknown or not self.styles:
            raise ValueError(f"styles must name {sorted(REFORMER_STYLES)}, got {self.styles}")
        if self.epochs < 0 or self.cross_epochs < 0 or self.epochs + self.cross_epochs < 1:
            raise ValueError("epochs and cross_epochs must be >= 0 with at least one epoch")
        if not self.noise >= 0 or self.batch_size < 1 or not self.lr > 0:
            raise ValueError("noise must be >= 0, batch_size >= 1 and lr > 0")
        if self.cross_lr is not None and not self.cross_lr > 0:
            raise ValueError(f"cross_lr must be > 0, got {self.cross_lr}")


# Options that only act in the cross epochs: a run resumed before them may change these.
_CROSS_ONLY = ("cross_epochs", "cross_lr")


def _same_options(saved: dict[str, Any], current: dict[str, Any], *, plain_only: bool) -> bool:
    saved = {"cross_lr": None, **json.loads(json.dumps(saved))}
    current = json.loads(json.dumps(current))
    if plain_only:
        for key in _CROSS_ONLY:
            saved.pop(key, None)
            current.pop(key, None)
    return saved == current


def _noisy(x: Tensor, noise: float, generator: torch.Generator) -> Tensor:
    gaussian = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return (x + noise * gaussian).clamp(0.0, 1.0)


def _reconstruction_loss(rebuilt: Tensor, clean: Tensor) -> Tensor:
    """Squared L2 distance per image, averaged over the batch."""
    return (rebuilt - clean).flatten(1).pow(2).sum(1).mean()


def cross_training_step(
    reformers: ReformerSet,
    optimizers: Sequence[torch.optim.Optimizer],
    clean: Tensor,
    noisy: Tensor,
) -> list[float]:
    """One batch of DeT's cross training (Algorithm 1) over every pair of reformers.

    Args:
        reformers: the reformers, trained in place.
        optimizers: one per reformer, over its parameters only.
        clean: (B, C, H, W) clean images.
        noisy: the same images with training noise.

    Returns:
        The two losses of every pair, in pair order.
    """
    losses: list[float] = []
    for p0, p1 in itertools.combinations(range(len(reformers)), 2):
        r0, r1 = reformers[p0], reformers[p1]
        # Update only R[p1]: R[p0]'s output is a fixed input to it.
        with torch.no_grad():
            first = r0(noisy)
        loss1 = _reconstruction_loss(r1(first), clean)
        optimizers[p1].zero_grad(set_to_none=True)
        loss1.backward()
        optimizers[p1].step()
        # Update only R[p0], through the updated (and now fixed) R[p1].
        with torch.no_grad():
            second = r1(noisy)
        loss2 = _reconstruction_loss(r0(second), clean)
        optimizers[p0].zero_grad(set_to_none=True)
        loss2.backward()
        optimizers[p0].step()
        losses += [loss1.detach(), loss2.detach()]  # type: ignore[list-item]
    return [float(v) for v in torch.stack(losses).tolist()] if losses else []  # type: ignore[arg-type]


@torch.no_grad()
def reconstruction_error(
    reformers: ReformerSet, images: Tensor, *, noise: float, seed: int = 0, batch_size: int = 512
) -> list[float]:
    """Mean squared L2 rebuild error of every reformer on noise-added ``images``."""
    generator = torch.Generator(device=images.device).manual_seed(seed)
    totals = torch.zeros(len(reformers), dtype=torch.float64)
    for chunk in images.split(batch_size):
        noisy = _noisy(chunk, noise, generator)
        for i, reformer in enumerate(reformers.reformers):
            rebuilt = reformer(noisy)
            totals[i] += float((rebuilt - chunk).flatten(1).pow(2).sum(1).sum())
    return (totals / max(1, len(images))).tolist()


def train_reformers(
    options: ReformerTrainingOptions,
    train_images: Tensor,
    val_images: Tensor,
    run_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    invocation: str = "",
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train reformers (plain, then cross) and write ``run_dir/model``.

    Args:
        options: what to train.
        train_images: (N, C, H, W) training images in [0, 1].
        val_images: held-out images for the rebuild error after every epoch.
        run_dir: the run folder (checkpoints, ``log.json``, ``model/``).
        resume: continue from the newest checkpoint (the options must match).
        progress: show progress bars.
        invocation: the command line, recorded in the config.
        log: where to print one line per epoch.

    Returns:
        The written config.
    """
    run = Path(run_dir)
    channels = int(train_images.shape[1])
    configs = [{"in_channels": channels, **REFORMER_STYLES[style]} for style in options.styles]
    names = [f"{style}-{i}" for i, style in enumerate(options.styles)]
    reformers = ReformerSet(configs, names=names)
    for i, reformer in enumerate(reformers.reformers):
        torch.manual_seed(options.seed + i)
        reformer.reset_parameters()
    optimizers = [
        torch.optim.Adam(r.parameters(), lr=options.lr * _LR_SCALE.get(style, 1.0))
        for r, style in zip(reformers.reformers, options.styles, strict=True)
    ]
    generator = torch.Generator().manual_seed(options.seed)
    history: list[dict[str, Any]] = []
    epoch = 0
    option_record = dataclasses.asdict(options)
    if resume and (checkpoint := latest_checkpoint(run)) is not None:
        state = load_checkpoint(checkpoint)
        if not _same_options(
            state["options"], option_record, plain_only=int(state["epoch"]) <= options.epochs
        ):
            raise ValueError(
                f"{run} was trained with other options: {state['options']}; start a new run"
            )
        reformers.load_state_dict(state["reformers"])
        for optimizer, saved in zip(optimizers, state["optimizers"], strict=True):
            optimizer.load_state_dict(saved)
        generator.set_state(state["generator"])
        history, epoch = list(state["history"]), int(state["epoch"])
        log(f"resumed {run} at epoch {epoch}")
    total = options.epochs + options.cross_epochs
    steps = len(train_images) // options.batch_size
    start = time.perf_counter()
    while epoch < total:
        phase = "plain" if epoch < options.epochs else "cross"
        base_lr = options.lr if phase == "plain" or options.cross_lr is None else options.cross_lr
        for optimizer, style in zip(optimizers, options.styles, strict=True):
            for group in optimizer.param_groups:
                group["lr"] = base_lr * _LR_SCALE.get(style, 1.0)
        reformers.train()
        order = torch.randperm(len(train_images), generator=generator)
        losses: list[float] = []
        bar = tqdm(
            range(steps),
            desc=f"{phase} {epoch + 1}/{total}",
            disable=not progress,
            leave=False,
            mininterval=60.0,
        )
        for step in bar:
            clean = train_images[order[step * options.batch_size : (step + 1) * options.batch_size]]
            noisy = _noisy(clean, options.noise, generator)
            if phase == "plain":
                batch_losses = []
                for reformer, optimizer in zip(reformers.reformers, optimizers, strict=True):
                    loss = _reconstruction_loss(reformer(noisy), clean)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    batch_losses.append(loss.detach())
                losses.append(float(torch.stack(batch_losses).mean()))
            else:
                losses.append(
                    sum(cross_training_step(reformers, optimizers, clean, noisy))
                    / max(1, len(reformers) * (len(reformers) - 1))
                )
        reformers.eval()
        val_error = reconstruction_error(reformers, val_images, noise=options.noise)
        epoch += 1
        record = {
            "epoch": epoch,
            "phase": phase,
            "train_loss": sum(losses) / max(1, len(losses)),
            "val_rebuild_error": val_error,
            "seconds": time.perf_counter() - start,
        }
        history.append(record)
        log(json.dumps(record))
        save_checkpoint(
            run,
            {
                "options": option_record,
                "reformers": reformers.state_dict(),
                "optimizers": [o.state_dict() for o in optimizers],
                "generator": generator.get_state(),
                "history": history,
                "epoch": epoch,
            },
            epoch=epoch,
            # the plain-trained reformers, to compare with cross-trained ones (DeT's Fig. 4)
            protect=(options.epochs,) if options.cross_epochs else (),
        )
    config = {
        "architecture": "ReformerSet",
        "arch_args": reformers.arch_args(),
        "dataset": options.dataset,
        "in_channels": channels,
        "input_size": list(train_images.shape[1:]),
        "train_settings": option_record,
        "history": history,
        "train_images": len(train_images),
        "val_images": len(val_images),
        "command": invocation,
    }
    state = {k: v.detach().cpu().contiguous().clone() for k, v in reformers.state_dict().items()}
    write_folder(run / "model", state, config, card=_card)
    return config


def _card(config: dict[str, Any]) -> str:
    last = config["history"][-1] if config["history"] else {}
    rows = "\n".join(
        f"| `{name}` | {json.dumps(args)} | {err:.3f} |"
        for name, args, err in zip(
            config["arch_args"]["names"],
            config["arch_args"]["reformers"],
            last.get("val_rebuild_error", [float("nan")] * len(config["arch_args"]["names"])),
            strict=True,
        )
    )
    s = config["train_settings"]
    return f"""---
license: apache-2.0
library_name: guardnet
tags: [adversarial-defense, det, reformer, {config["dataset"]}]
---

# DeT reformers for {config["dataset"]}

Denoising autoencoders (after MagNet's) trained by `guardnet train reformers`: {s["epochs"]}
plain epochs on noise-added images (noise {s["noise"]}), then {s["cross_epochs"]} epochs of
DeT's cross training (Algorithm 1) over every pair. Rebuild error: mean squared L2 distance on
{config["val_images"]} held-out noise-added images after the last epoch.

| reformer | architecture | rebuild error |
| --- | --- | ---: |
{rows}

## Command

```bash
{config["command"]}
```
"""
