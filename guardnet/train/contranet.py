"""ContraNet's three-stage training (Algorithm 1 of the paper), resumable and DDP-ready.

Yang et al., "What You See is Not What the Network Infers: Detecting Adversarial Examples
Based on Semantic Contradiction", NDSS 2022.

Stages, run in this order; each is a number of epochs in :class:`ContraNetTrainSettings` (0
skips it):

1. ``gan``: encoder E + generator G against the projection discriminator D_phi. Hinge GAN loss,
   KL, L2, L1 and SSIM reconstruction losses; benign uniform noise on E's input while the target
   stays clean; DiffAugment-style kornia augmentation (colour, translation, cutout) on everything
   D_phi sees; an EMA copy of G is what inference uses. guardnet's own addition
   (``swap_weight``): each batch is also rebuilt under a wrong label and that rebuild gets the
   GAN loss for the wrong label, which forces G to use the label instead of copying z.
   ``aux``: D_aux learns to tell ``x - G(z, y)`` from ``x - G(z, y_wrong)``, and E + G are
   fine-tuned with it (the authors allow skipping it).
2. ``dis``: Dis learns ``G(E(x), y_true)`` (positive) against ``G(E(x), y_wrong)`` (negative),
   hinge loss; with PGD examples of the classifier, ``G(E(x_adv), y_adv)`` is a negative too.
3. ``dmm_pretrain``: F_real and F_syn with a cross-modal metric loss, the authors' triplet loss
   (batch-hard mining on class labels) or a supervised contrastive one, or as classifiers
   through linear heads used only here (``"ce"``); with ``supcon`` and ``ce`` optionally with
   PGD copies of the classifier as extra F_real inputs of their true class (with the
   ``"resnet20"`` backbone, F_real and F_syn may start as copies of a ResNet20 classifier:
   ``dmm_init_from_classifier``); ``dmm``: the whole DMM
   with cross-entropy on (x, G(E(x), y)) positive vs
   (x, G(E(x), y_wrong)) negative, plus (x_adv, G(E(x_adv), y_true)) positive and
   (x_adv, G(E(x_adv), y_adv)) negative.

Every epoch ends with a pickle-free checkpoint (see :mod:`guardnet.train.checkpoint`);
``resume=True`` continues after the last one. Epoch counts may grow, except for a stage once a
later one has started (that would shift every later epoch: the resume refuses).
The newest checkpoint and the last one of every stage are kept, so a run can be branched at a
stage boundary: copy the run folder, delete the checkpoints after that stage, and resume with
another schedule for the later stages (settings read by one stage only, such as the
``dmm_pretrain`` loss, may change while that stage has not begun). Under ``torchrun``
(``WORLD_SIZE > 1``) the process group is set up here (gloo on CPU, NCCL on CUDA), each rank
takes its share of every epoch's permutation and the trained nets are wrapped in
``DistributedDataParallel`` (:mod:`guardnet.train.distributed`).

This module holds the loop over the schedule (:func:`train_contranet`); the networks, their
state and batches are in :mod:`guardnet.train.contranet_trainer`, one epoch of each stage in
:mod:`guardnet.train.contranet_stages`, the losses in :mod:`guardnet.train.losses` and the
hyper-parameters in :mod:`guardnet.train.settings`.
"""

from __future__ import annotations

import copy
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from guardnet.errors import CheckpointError
from guardnet.nets.contranet import ContraNet, ContraNetConfig, to_unit_range
from guardnet.nets.contranet.dmm import build_feature_extractor
from guardnet.train.adversarial import wrong_labels
from guardnet.train.checkpoint import (
    LOG_NAME,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    write_log,
)
from guardnet.train.contranet_stages import STAGE_EPOCHS
from guardnet.train.contranet_trainer import ContraNetTrainer
from guardnet.train.distributed import all_reduce_mean, setup_distributed
from guardnet.train.settings import ContraNetTrainSettings

__all__ = [
    "ContraNetTrainResult",
    "contranet_from_checkpoint",
    "evaluate_contranet",
    "train_contranet",
]


@dataclass
class ContraNetTrainResult:
    """What :func:`train_contranet` returns."""

    model: ContraNet
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def contranet_from_checkpoint(folder: str | os.PathLike[str]) -> ContraNet:
    """The inference ContraNet stored in a training checkpoint (G's EMA weights), CPU, eval.

    Lets a run be inspected between stages (rebuild grids, label fidelity) before it finishes;
    a finished run's ``RUN_DIR/model`` holds the same networks in Hub layout.

    Args:
        folder: ``RUN_DIR/checkpoints/epoch-NNNN`` (see :func:`latest_checkpoint`).

    Raises:
        CheckpointError: the folder is not a readable checkpoint.
    """
    state = load_checkpoint(folder)
    net = ContraNet.from_config(ContraNetConfig(**state["config"]))
    nets = state["nets"]
    for module, key in (
        (net.encoder, "encoder"),
        (net.generator, "g_ema"),
        (net.dis, "dis"),
        (net.dmm, "dmm"),
    ):
        module.load_state_dict(nets[key], strict=True)
    return net.eval()


def _check_schedule(
    done: Sequence[Mapping[str, Any]], schedule: Sequence[tuple[str, int]], found: Path
) -> None:
    """Refuse to resume when the new schedule would reinterpret the epochs already done.

    Checkpoint ``epoch-N`` is "after unit N" of the schedule, so growing a stage that already
    ended (or adding an earlier stage) would shift every later unit: the ``aux`` epoch of the
    checkpoint would be read as, say, the first ``dis`` epoch.
    """
    done_units = [(str(r["stage"]), int(r["epoch"]) - 1) for r in done]
    for unit, did in enumerate(done_units):
        planned = schedule[unit] if unit < len(schedule) else None
        if planned != did:
            instead = f"{planned[0]} epoch {planned[1] + 1}" if planned else "nothing"
            raise CheckpointError(
                f"{found} holds {len(done_units)} finished epochs; its epoch {unit + 1} was "
                f"{did[0]} epoch {did[1] + 1}, but the new schedule puts {instead} there: a "
                "stage that has ended cannot grow and an earlier stage cannot be added (branch "
                "the run from an earlier stage's last checkpoint instead)"
            )


def train_contranet(
    config: ContraNetConfig,
    images: Tensor,
    labels: Tensor,
    *,
    settings: ContraNetTrainSettings | None = None,
    classify: Callable[[Tensor], Tensor] | None = None,
    dmm_init: nn.Module | None = None,
    run_dir: str | os.PathLike[str] | None = None,
    resume: bool = True,
    device: str | torch.device = "cpu",
    progress: bool = True,
    log: Callable[[str], None] | None = print,
) -> ContraNetTrainResult:
    """Train every ContraNet network, stage by stage (see the module docstring).

    Args:
        config: the architecture sizes.
        images: (N, C, H, W) training images in [0, 1] (any size: they are padded or resized to
            32x32 as at inference), on the CPU.
        labels: (N,) int64 true labels.
        settings: hyper-parameters (default :class:`ContraNetTrainSettings`).
        classify: the protected classifier, [0, 1] images -> logits, for the adversarial
            examples of the ``dis`` and ``dmm`` stages (``None``: no adversarial examples) and
            of ``dmm_pretrain`` with ``dmm_pretrain_adversarial`` (which then needs it). It
            must already be in eval mode on ``device``.
        dmm_init: with ``settings.dmm_init_from_classifier``, the classifier's network: a
            :class:`~guardnet.nets.resnet_cifar.CifarResNet` of depth 20 taking images
            normalised with the config's ``dmm_input_mean`` and ``dmm_input_std``, whose
            weights start the DMM's extractors (it is only read).
        run_dir: folder for checkpoints and ``train_log.jsonl`` (``None``: keep nothing).
        resume: continue after the newest checkpoint in ``run_dir``.
        device: where to train; under ``torchrun`` with CUDA each rank uses ``LOCAL_RANK``.
        progress: show progress bars (rank 0 only).
        log: where per-epoch lines go (rank 0 only); ``None`` silences them.

    Returns:
        A :class:`ContraNetTrainResult` with the inference :class:`ContraNet` (CPU, eval).

    Raises:
        ValueError: images and labels disagree, a label is out of range,
            ``dmm_pretrain_adversarial`` is set without ``classify``, or
            ``dmm_init_from_classifier`` without ``dmm_init``, the ``"resnet20"`` backbone or
            a classifier that matches it.
        CheckpointError: resuming from a checkpoint of another configuration.
    """
    settings = settings or ContraNetTrainSettings()
    if images.ndim != 4 or images.shape[1] != config.in_channels:
        raise ValueError(
            f"images must be (N, {config.in_channels}, H, W), got {tuple(images.shape)}"
        )
    if labels.shape != (images.shape[0],):
        raise ValueError(f"labels must be ({images.shape[0]},), got {tuple(labels.shape)}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= config.num_classes):
        raise ValueError(
            f"labels must lie in [0, {config.num_classes}), got [{int(labels.min())}, "
            f"{int(labels.max())}]"
        )
    if (
        settings.dmm_pretrain_adversarial
        and settings.dmm_pretrain_attack == "classifier"
        and settings.dmm_pretrain_epochs
        and classify is None
    ):
        raise ValueError("dmm_pretrain_adversarial needs the classifier (classify) to attack")
    if settings.dmm_init_from_classifier:
        if config.dmm_backbone != "resnet20":
            raise ValueError(
                "dmm_init_from_classifier needs ContraNetConfig.dmm_backbone 'resnet20', got "
                f"{config.dmm_backbone!r}"
            )
        if dmm_init is None:
            raise ValueError("dmm_init_from_classifier needs the classifier's network (dmm_init)")
        # Fail now, not hours later when the DMM stages begin: a trunk built as the DMM's is.
        trunk, _ = build_feature_extractor(
            "resnet20", in_channels=config.in_channels, width=config.dmm_width
        )
        trunk.load_classifier_trunk(dmm_init)  # type: ignore[operator]
        if not isinstance(getattr(dmm_init, "linear", None), nn.Linear) or (
            dmm_init.linear.out_features != config.num_classes
        ):
            raise ValueError(
                f"dmm_init must end in a linear layer `linear` to {config.num_classes} classes"
            )
    device = torch.device(device)
    ctx, device = setup_distributed(device)
    if device.type == "cpu":
        # Denormals from randomly initialised nets make CPU kernels many times slower.
        torch.set_flush_denormal(True)
    if dmm_init is not None:
        dmm_init = copy.deepcopy(dmm_init).to(device)
    trainer = ContraNetTrainer(
        config, settings, images, labels, classify, device, ctx, progress, dmm_init=dmm_init
    )
    out = Path(run_dir) if run_dir is not None else None
    first = 0
    schedule = settings.schedule()
    if out is not None and resume:
        found = latest_checkpoint(out)
        if found is not None:
            first = trainer.load_state(load_checkpoint(found))
            _check_schedule(trainer.history[:first], schedule, found)
            if ctx.main and log is not None:
                log(f"resuming from {found} ({first} of {len(schedule)} epochs done)")
    # The last checkpoint of every stage stays, so a run can be branched at a stage boundary.
    stage_ends = {
        unit + 1
        for unit, (stage, _) in enumerate(schedule)
        if unit + 1 == len(schedule) or schedule[unit + 1][0] != stage
    }
    started = time.perf_counter()
    previous_seconds = sum(r.get("seconds", 0.0) for r in trainer.history)
    counts = Counter(stage for stage, _ in schedule)
    for unit in range(first, len(schedule)):
        stage, epoch = schedule[unit]
        desc = f"{stage} {epoch + 1}/{counts[stage]}"
        tick = time.perf_counter()
        metrics = all_reduce_mean(STAGE_EPOCHS[stage](trainer, desc), ctx)
        record = {
            "unit": unit + 1,
            "stage": stage,
            "epoch": epoch + 1,
            **{k: round(v, 6) for k, v in metrics.items()},
            "seconds": round(time.perf_counter() - tick, 2),
        }
        trainer.history.append(record)
        if ctx.main and log is not None:
            parts = [f"{k} {v:.4f}" for k, v in metrics.items()]
            log(f"[{desc}] " + "  ".join(parts) + f"  {record['seconds']:.1f} s")
        if out is not None and ctx.main:
            save_checkpoint(out, trainer.state(unit + 1), epoch=unit + 1, protect=stage_ends)
            write_log(out / LOG_NAME, trainer.history)
        if ctx.world > 1:
            dist.barrier()
    if ctx.world > 1:
        # DDP broadcasts buffers (BatchNorm statistics, spectral-norm vectors) at the start of
        # each forward, so after the last step the ranks differ slightly: end on rank 0's.
        for module in trainer.nets().values():
            for buffer in module.buffers():
                dist.broadcast(buffer, src=0)
    seconds = previous_seconds + (time.perf_counter() - started)
    return ContraNetTrainResult(model=trainer.model(), history=trainer.history, seconds=seconds)


@torch.no_grad()
def evaluate_contranet(
    model: ContraNet,
    images: Tensor,
    labels: Tensor,
    *,
    batch_size: int = 256,
    seed: int = 0,
) -> dict[str, float]:
    """Quick sanity metrics of a trained ContraNet on labelled clean images.

    Rebuild quality under the true label (L2 on [-1, 1], SSIM on [0, 1]) and how often each
    rejector scores the true-label rebuild as more consistent than a wrong-label one (DMM
    probability, Dis logit, SSIM): 1.0 is perfect, 0.5 is chance. Detection rates against
    attacks are measured separately (``guardnet measure contranet``).
    """
    model = model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    parts: dict[str, list[Tensor]] = {
        k: [] for k in ("l2", "ssim", "dmm_pair", "dis_pair", "ssim_pair")
    }
    for start in range(0, labels.shape[0], batch_size):
        x = to_unit_range(images[start : start + batch_size].to(device))
        y = labels[start : start + batch_size].to(device)
        y_wrong = wrong_labels(y, model.num_classes, generator)
        both = torch.cat([y, y_wrong])
        x2 = x.repeat(2, 1, 1, 1)
        rebuilt = model.rebuild(x2, both)
        scores = model.scores(x2, rebuilt, both)
        b = y.shape[0]
        parts["l2"].append((rebuilt[:b] - x).square().mean(dim=(1, 2, 3)))
        parts["ssim"].append(scores[:b, 2])
        for i, name in enumerate(("dmm_pair", "dis_pair", "ssim_pair")):
            parts[name].append((scores[:b, i] > scores[b:, i]).float())
    return {k: float(torch.cat(v).mean()) for k, v in parts.items()}
