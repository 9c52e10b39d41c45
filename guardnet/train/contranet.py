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

Every epoch ends with a pickle-free checkpoint (see :mod:`guardnet.train.classifier`);
``resume=True`` continues after the last one. Epoch counts may grow, except for a stage once a
later one has started (that would shift every later epoch: the resume refuses).
The newest checkpoint and the last one of every stage are kept, so a run can be branched at a
stage boundary: copy the run folder, delete the checkpoints after that stage, and resume with
another schedule for the later stages (settings read by one stage only, such as the
``dmm_pretrain`` loss, may change while that stage has not begun). Under ``torchrun``
(``WORLD_SIZE > 1``) the process group is set up here (gloo on CPU, NCCL on CUDA), each rank
takes its share of every epoch's permutation and the trained nets are wrapped in
``DistributedDataParallel``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from guardnet.errors import CheckpointError
from guardnet.nets.contranet import (
    ContraNet,
    ContraNetConfig,
    ContraNetDiscriminator,
    ssim_scores,
    to_unit_range,
)
from guardnet.nets.contranet.dmm import build_feature_extractor
from guardnet.train.classifier import (
    AUGMENTED_DATASETS,
    LOG_NAME,
    _write_log,
    default_augmentation,
    latest_checkpoint,
    load_checkpoint,
    resolve_device,
    save_checkpoint,
)

__all__ = [
    "STAGES",
    "ContraNetTrainResult",
    "ContraNetTrainSettings",
    "contranet_from_checkpoint",
    "pgd_linf",
    "train_contranet",
    "wrong_labels",
]

STAGES = ("gan", "aux", "dis", "dmm_pretrain", "dmm")
PRETRAIN_LOSSES = ("triplet", "supcon", "ce")
# Settings read by the DMM stages only: a resumed run may change them until the first of the
# listed stages has begun (e.g. branch a finished generator into another DMM recipe).
_DMM_STAGES = ("dmm_pretrain", "dmm")
_STAGE_ONLY_SETTINGS: dict[str, tuple[str, ...]] = {
    "dmm_pretrain_loss": ("dmm_pretrain",),
    "triplet_margin": ("dmm_pretrain",),
    "supcon_temperature": ("dmm_pretrain",),
    "dmm_pretrain_adversarial": ("dmm_pretrain",),
    "dmm_init_from_classifier": _DMM_STAGES,
    "dmm_augment": _DMM_STAGES,
}


@dataclass(frozen=True)
class ContraNetTrainSettings:
    """Hyper-parameters of :func:`train_contranet` (all stored in checkpoints and cards).

    Args:
        gan_epochs, aux_epochs, dis_epochs, dmm_pretrain_epochs, dmm_epochs: epochs per stage
            (0 skips a stage).
        batch_size: images per step and rank.
        lr_g: Adam learning rate of E and G (and their ``aux`` fine-tune).
        lr_d: Adam learning rate of D_phi, D_aux and Dis.
        lr_dmm: Adam learning rate of the DMM.
        betas: Adam betas of the GAN stages (BigGAN's (0, 0.999)).
        kl_weight, l2_weight, l1_weight, ssim_weight: reconstruction-side loss weights (KL is
            summed over latent dimensions; L2/L1 are means over pixels of [-1, 1] images).
        swap_weight: weight of the GAN loss on rebuilds under a wrong label (0 disables).
        aux_weight: weight of D_aux's loss in the ``aux`` fine-tune of E + G.
        input_noise: E's input gets uniform noise of up to this size (on the [0, 1] scale,
            drawn per image); the reconstruction target stays clean.
        ema_decay: decay of G's exponential moving average (after a warm-up, see
            :func:`ema_decay_at`).
        augment: DiffAugment-style augmentation of D_phi's inputs.
        adv_eps: PGD-L-inf budgets (on [0, 1] images) used for adversarial examples of the
            classifier in the ``dis`` and ``dmm`` stages, one drawn per image; empty: none.
        adv_steps: PGD steps of those examples.
        adv_fraction: share of each batch that gets an adversarial copy.
        dmm_pretrain_loss: metric loss of ``dmm_pretrain``: ``"triplet"`` (the authors'
            cross-modal batch-hard triplet) or ``"supcon"`` (supervised contrastive, Khosla et
            al. 2020, over both modalities: every same-class input or rebuild in the batch is a
            positive; steadier from scratch, where batch-hard triplets can stall at the margin)
            or ``"ce"`` (cross-entropy through a linear class head on each extractor; the
            heads are training-only, kept in checkpoints but not in the model). A metric loss
            over a batch of 64 sees few same-class pairs; a class head gets a gradient from
            every image, so the extractors reach a given accuracy in far fewer epochs.
        triplet_margin: margin of the ``dmm_pretrain`` triplet loss (normalised features).
        supcon_temperature: temperature of the ``supcon`` loss.
        dmm_pretrain_adversarial: in ``dmm_pretrain``, also embed PGD copies of the classifier
            (``adv_eps``, ``adv_steps``, ``adv_fraction``) with F_real and pull each towards
            its true class (``supcon`` and ``ce``). The DMM can only flag ``(x_adv, y_adv)``
            if F_real still sees x_adv's true class, and attacks on the classifier transfer
            to a net trained on clean images alone.
        dmm_init_from_classifier: start F_real and F_syn (and the ``ce`` class heads) from
            the protected classifier's weights when the first DMM epoch begins, instead of
            from random ones. Needs the ``"resnet20"`` DMM backbone with the classifier's
            input normalisation, and a CIFAR ResNet20 classifier (``dmm_init`` of
            :func:`train_contranet`). F_real then starts as accurate on clean images as the
            classifier, and ``dmm_pretrain_adversarial`` only has to teach it to read the
            classifier's adversarial examples.
        dmm_augment: name of a dataset whose standard classifier augmentation
            (:func:`~guardnet.train.classifier.default_augmentation`: crops and flips for
            CIFAR-10, small affine and colour jitter without flips for GTSRB) the two DMM stages
            apply to each batch before the rebuild and the PGD copies; ``None``: none. Without
            it F_real sees the same images every epoch and learns them by heart (CIFAR-10 after
            5 ``ce`` epochs: 92% training against 82% held-out accuracy).
        seed: seed of everything random.
        log_every: seconds between progress-bar redraws when stderr is not a terminal.
    """

    gan_epochs: int = 4
    aux_epochs: int = 0
    dis_epochs: int = 1
    dmm_pretrain_epochs: int = 1
    dmm_epochs: int = 2
    batch_size: int = 64
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    lr_dmm: float = 5e-4
    betas: tuple[float, float] = (0.0, 0.999)
    kl_weight: float = 1e-2
    l2_weight: float = 10.0
    l1_weight: float = 1.0
    ssim_weight: float = 1.0
    swap_weight: float = 1.0
    aux_weight: float = 1.0
    input_noise: float = 8 / 255
    ema_decay: float = 0.999
    augment: bool = True
    adv_eps: tuple[float, ...] = (2 / 255, 4 / 255, 8 / 255, 16 / 255)
    adv_steps: int = 10
    adv_fraction: float = 0.5
    dmm_pretrain_loss: str = "triplet"
    triplet_margin: float = 0.2
    supcon_temperature: float = 0.1
    dmm_pretrain_adversarial: bool = False
    dmm_init_from_classifier: bool = False
    dmm_augment: str | None = None
    seed: int = 0
    log_every: float = 60.0

    def __post_init__(self) -> None:
        for name in ("gan_epochs", "aux_epochs", "dis_epochs", "dmm_pretrain_epochs", "dmm_epochs"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2, got {self.batch_size}")
        if not 0.0 <= self.adv_fraction <= 1.0:
            raise ValueError(f"adv_fraction must be in [0, 1], got {self.adv_fraction}")
        if any(not 0 < e <= 1 for e in self.adv_eps):
            raise ValueError(f"adv_eps must lie in (0, 1], got {self.adv_eps}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.adv_steps < 1:
            raise ValueError(f"adv_steps must be >= 1, got {self.adv_steps}")
        if self.dmm_pretrain_loss not in PRETRAIN_LOSSES:
            raise ValueError(
                f"dmm_pretrain_loss must be one of {PRETRAIN_LOSSES}, "
                f"got {self.dmm_pretrain_loss!r}"
            )
        if not self.supcon_temperature > 0:
            raise ValueError(f"supcon_temperature must be > 0, got {self.supcon_temperature}")
        if self.dmm_pretrain_adversarial and self.dmm_pretrain_loss == "triplet":
            raise ValueError(
                "dmm_pretrain_adversarial needs dmm_pretrain_loss 'supcon' or 'ce' (adversarial "
                "copies have no rebuild of their own to be a triplet's positive), got "
                f"{self.dmm_pretrain_loss!r}"
            )
        if self.dmm_pretrain_adversarial and not (self.adv_eps and self.adv_fraction > 0):
            raise ValueError(
                "dmm_pretrain_adversarial needs a non-empty adv_eps and adv_fraction > 0"
            )
        if self.dmm_augment is not None and self.dmm_augment not in AUGMENTED_DATASETS:
            raise ValueError(
                f"dmm_augment must be None or one of {AUGMENTED_DATASETS} (the datasets with a "
                f"standard augmentation), got {self.dmm_augment!r}"
            )

    def schedule(self) -> list[tuple[str, int]]:
        """The (stage, epoch) units in order; checkpoint ``epoch-N`` is after unit N."""
        counts = {
            "gan": self.gan_epochs,
            "aux": self.aux_epochs,
            "dis": self.dis_epochs,
            "dmm_pretrain": self.dmm_pretrain_epochs,
            "dmm": self.dmm_epochs,
        }
        return [(stage, e) for stage in STAGES for e in range(counts[stage])]

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["betas"] = list(self.betas)
        out["adv_eps"] = list(self.adv_eps)
        return out


@dataclass
class ContraNetTrainResult:
    """What :func:`train_contranet` returns."""

    model: ContraNet
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def wrong_labels(labels: Tensor, num_classes: int, generator: torch.Generator | None) -> Tensor:
    """A uniformly drawn label different from each of ``labels`` (any class count >= 2).

    ``generator`` must live on ``labels``' device.
    """
    shift = torch.randint(1, num_classes, labels.shape, generator=generator, device=labels.device)
    return (labels + shift) % num_classes


def pgd_linf(
    classify: Callable[[Tensor], Tensor],
    images: Tensor,
    labels: Tensor,
    eps: Tensor,
    *,
    steps: int = 10,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Untargeted PGD-L-inf with a per-image budget, used to make training examples.

    (Evaluation uses an independent attack library; this one only feeds training.)

    Args:
        classify: [0, 1] images -> logits.
        images: (B, C, H, W) in [0, 1].
        labels: (B,) true labels.
        eps: (B,) per-image budgets.
        steps: iterations; the step size is ``2.5 * eps / steps``.
        generator: random generator of the random start.

    Returns:
        (B, C, H, W) adversarial images in [0, 1], detached.
    """
    eps = eps.view(-1, 1, 1, 1).to(images)
    alpha = 2.5 * eps / steps
    noise = torch.rand(images.shape, generator=generator, device=images.device)
    x = (images + (2 * noise - 1) * eps).clamp(0, 1)
    with torch.enable_grad():
        for _ in range(steps):
            x.requires_grad_(True)
            loss = F.cross_entropy(classify(x), labels, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x)
            x = x.detach() + alpha * grad.sign()
            x = torch.minimum(torch.maximum(x, images - eps), images + eps).clamp(0, 1)
    return x.detach()


def _kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, 1)) summed over dims, mean over the batch."""
    return 0.5 * (mu.square() + logvar.exp() - 1 - logvar).sum(dim=1).mean()


def _hinge_d(real: Tensor, fake: Tensor) -> Tensor:
    return F.relu(1 - real).mean() + F.relu(1 + fake).mean()


def ema_decay_at(step: int, decay: float) -> float:
    """EMA decay for update ``step`` (0-based): ``min(decay, (1 + step) / (10 + step))``.

    The warm-up keeps the average from dragging the random initial weights along in short runs
    (with a constant 0.999, 1,700 steps still leave 18% of the initial weights in it).
    """
    return min(decay, (1 + step) / (10 + step))


def _ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters(), strict=True):
            e.lerp_(p, 1 - decay)
        for e, b in zip(ema.buffers(), model.buffers(), strict=True):
            e.copy_(b)


def _make_augmentation(channels: int) -> nn.Module:
    """DiffAugment-style policy with kornia: colour, translation (1/8), cutout (1/4 side)."""
    import kornia.augmentation as K

    ops: list[nn.Module] = []
    if channels == 3:
        ops.append(K.ColorJiggle(brightness=0.2, contrast=0.3, saturation=0.5, p=0.8))
    else:
        ops.append(K.ColorJiggle(brightness=0.2, contrast=0.3, p=0.8))
    ops += [
        K.RandomAffine(degrees=0.0, translate=(0.125, 0.125), padding_mode="zeros", p=1.0),
        K.RandomErasing(scale=(0.0625, 0.0625), ratio=(1.0, 1.0), value=0.5, p=1.0),
    ]
    return K.AugmentationSequential(*ops)


class _Features(nn.Module):
    """F_real and F_syn of a DMM as one module (one DDP forward in ``dmm_pretrain``)."""

    def __init__(self, f_real: nn.Module, f_syn: nn.Module) -> None:
        super().__init__()
        self.f_real = f_real
        self.f_syn = f_syn

    def forward(self, x: Tensor, x_rebuilt: Tensor) -> tuple[Tensor, Tensor]:
        return self.f_real(x), self.f_syn(x_rebuilt)


class _ClassHeads(nn.Module):
    """Training-only linear class heads on F_real and F_syn (``dmm_pretrain_loss="ce"``)."""

    def __init__(self, feature_dim: int, num_classes: int) -> None:
        super().__init__()
        self.real = nn.Linear(feature_dim, num_classes)
        self.syn = nn.Linear(feature_dim, num_classes)


class _HeadedFeatures(nn.Module):
    """F_real and F_syn followed by their class heads: one DDP forward for the ``ce`` loss."""

    def __init__(self, features: _Features, heads: _ClassHeads) -> None:
        super().__init__()
        self.features = features
        self.heads = heads

    def forward(self, x: Tensor, x_rebuilt: Tensor) -> tuple[Tensor, Tensor]:
        a, p = self.features(x, x_rebuilt)
        return self.heads.real(a), self.heads.syn(p)


def _triplet_cross_modal(a: Tensor, p: Tensor, labels: Tensor, margin: float) -> Tensor:
    """Batch-hard triplet loss between input features ``a`` and rebuild features ``p``.

    Anchor ``a[i]``, positive ``p[i]`` (its own rebuild), negative the nearest ``p[j]`` of
    another class; symmetric in the two modalities.
    """
    a, p = F.normalize(a, dim=1), F.normalize(p, dim=1)
    distances = torch.cdist(a, p)
    same = labels[:, None] == labels[None, :]
    positive = distances.diagonal()
    masked = distances.masked_fill(same, float("inf"))
    loss = F.relu(positive - masked.amin(dim=1) + margin) + F.relu(
        positive - masked.amin(dim=0) + margin
    )
    return loss.mean() / 2


def _supcon_cross_modal(
    a: Tensor,
    p: Tensor,
    labels: Tensor,
    temperature: float,
    *,
    a_labels: Tensor | None = None,
) -> Tensor:
    """Supervised contrastive loss over input features ``a`` and rebuild features ``p``.

    Both modalities form one batch of normalised features; each one's positives are all
    others of its class (its own rebuild or input among them), the rest are negatives.
    ``labels`` are the classes of ``p`` and, unless ``a_labels`` is given, of ``a`` too
    (``a`` may then hold more rows than ``p``, e.g. adversarial copies of some inputs).
    """
    a_labels = labels if a_labels is None else a_labels
    z = F.normalize(torch.cat([a, p]), dim=1)
    y = torch.cat([a_labels, labels])
    self_pair = torch.eye(z.shape[0], dtype=torch.bool, device=z.device)
    logits = (z @ z.T / temperature).masked_fill(self_pair, float("-inf"))
    log_prob = logits - logits.logsumexp(dim=1, keepdim=True)
    positive = (y[:, None] == y[None, :]) & ~self_pair
    per_anchor = log_prob.masked_fill(~positive, 0.0).sum(dim=1) / positive.sum(dim=1)
    return -per_anchor.mean()


# --------------------------------------------------------------------------------------------
# Distributed setup
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup_distributed(device: torch.device) -> tuple[_Dist, torch.device]:
    """Join the ``torchrun`` process group if ``WORLD_SIZE > 1`` (gloo on CPU, NCCL on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist(), device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return _Dist(rank=dist.get_rank(), world=dist.get_world_size()), device


def _wrap(module: nn.Module, ctx: _Dist, device: torch.device) -> nn.Module:
    if ctx.world == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


def _all_reduce_mean(values: dict[str, Tensor], ctx: _Dist) -> dict[str, float]:
    if not values:
        return {}
    stacked = torch.stack([v.detach().float() for v in values.values()])
    if ctx.world > 1:
        dist.all_reduce(stacked)
        stacked /= ctx.world
    return dict(zip(values, stacked.tolist(), strict=True))


# --------------------------------------------------------------------------------------------
# The trainer
# --------------------------------------------------------------------------------------------


class _Trainer:
    def __init__(
        self,
        config: ContraNetConfig,
        settings: ContraNetTrainSettings,
        images: Tensor,
        labels: Tensor,
        classify: Callable[[Tensor], Tensor] | None,
        device: torch.device,
        ctx: _Dist,
        progress: bool,
        *,
        dmm_init: nn.Module | None = None,
    ) -> None:
        self.config, self.s, self.ctx, self.device = config, settings, ctx, device
        self.images, self.labels = images, labels
        self.classify = classify
        self.dmm_init = dmm_init
        self.progress = progress
        torch.manual_seed(settings.seed)
        net = ContraNet.from_config(config)
        self.encoder = net.encoder.to(device)
        self.generator = net.generator.to(device)
        self.dis = net.dis.to(device)
        self.dmm = net.dmm.to(device)
        self.d_phi = ContraNetDiscriminator(config).to(device)
        self.d_aux = ContraNetDiscriminator(config).to(device)
        self.g_ema = copy.deepcopy(self.generator).eval()
        for p in self.g_ema.parameters():
            p.requires_grad_(False)
        s = settings
        eg = [*self.encoder.parameters(), *self.generator.parameters()]
        self.optimizers: dict[str, torch.optim.Optimizer] = {
            "eg": torch.optim.Adam(eg, lr=s.lr_g, betas=s.betas),
            "d_phi": torch.optim.Adam(self.d_phi.parameters(), lr=s.lr_d, betas=s.betas),
            "d_aux": torch.optim.Adam(self.d_aux.parameters(), lr=s.lr_d, betas=s.betas),
            "dis": torch.optim.Adam(self.dis.parameters(), lr=s.lr_d, betas=s.betas),
            "dmm": torch.optim.Adam(self.dmm.parameters(), lr=s.lr_dmm),
        }
        # Built last so that the other nets' initial weights do not depend on the loss.
        self.class_heads: _ClassHeads | None = None
        if s.dmm_pretrain_loss == "ce":
            self.class_heads = _ClassHeads(self.dmm.feature_dim, config.num_classes).to(device)
            self.optimizers["class_heads"] = torch.optim.Adam(
                self.class_heads.parameters(), lr=s.lr_dmm
            )
        self.augment = _make_augmentation(config.in_channels).to(device) if s.augment else None
        self.dmm_augment = (
            default_augmentation(s.dmm_augment).to(device) if s.dmm_augment is not None else None
        )
        # Every rank draws the same permutation; noise and attacks differ per rank.
        self.shuffle = torch.Generator().manual_seed(s.seed)
        self.noise = torch.Generator(device=device).manual_seed(s.seed * 1000 + 1 + ctx.rank)
        self.history: list[dict[str, Any]] = []
        self.ema_steps = 0

    def update_ema(self) -> None:
        _ema_update(self.g_ema, self.generator, ema_decay_at(self.ema_steps, self.s.ema_decay))
        self.ema_steps += 1

    # ---------------------------------------------------------------- state
    def nets(self) -> dict[str, nn.Module]:
        nets: dict[str, nn.Module] = {
            "encoder": self.encoder,
            "generator": self.generator,
            "g_ema": self.g_ema,
            "d_phi": self.d_phi,
            "d_aux": self.d_aux,
            "dis": self.dis,
            "dmm": self.dmm,
        }
        if self.class_heads is not None:
            nets["class_heads"] = self.class_heads
        return nets

    def state(self, unit: int) -> dict[str, Any]:
        return {
            "unit": unit,
            "config": dataclasses.asdict(self.config),
            "settings": self.s.to_dict(),
            "nets": {k: m.state_dict() for k, m in self.nets().items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "rng": {
                "torch": torch.get_rng_state(),
                "shuffle": self.shuffle.get_state(),
                "noise": self.noise.get_state(),
            },
            "history": self.history,
            "ema_steps": self.ema_steps,
        }

    def load_state(self, state: Mapping[str, Any]) -> int:
        saved_config = state.get("config")
        try:
            # Fields added to ContraNetConfig later take their defaults in older checkpoints.
            same = ContraNetConfig(**saved_config) == self.config
        except (TypeError, ValueError):
            same = False
        if not same:
            raise CheckpointError(
                f"the checkpoint was written for ContraNetConfig {saved_config}, this run uses "
                f"{dataclasses.asdict(self.config)}: use another run folder or resume=False"
            )
        # Epoch counts may grow (a longer schedule continues); log_every is cosmetic; a DMM-side
        # setting may change while none of the stages that read it has begun.
        begun = {entry["stage"] for entry in state["history"]}
        free = {f"{stage}_epochs" for stage in STAGES} | {"log_every"}
        free |= {k for k, stages in _STAGE_ONLY_SETTINGS.items() if begun.isdisjoint(stages)}
        # Settings added later take their defaults in older checkpoints.
        saved = ContraNetTrainSettings().to_dict() | dict(state["settings"])
        changed = [k for k, v in self.s.to_dict().items() if k not in free and saved[k] != v]
        if changed:
            raise CheckpointError(
                f"settings {changed} differ from the checkpoint's; resuming would mix two "
                "recipes (only epoch counts may change)"
            )
        # The ``ce`` class heads exist only with that loss, which may be chosen (or dropped)
        # while ``dmm_pretrain`` has not begun: then the heads start fresh (or are unused).
        for key, module in self.nets().items():
            if key == "class_heads" and key not in state["nets"]:
                continue
            module.load_state_dict(state["nets"][key], strict=True)
        for key, opt in self.optimizers.items():
            if key == "class_heads" and key not in state["optimizers"]:
                continue
            opt.load_state_dict(state["optimizers"][key])
        torch.set_rng_state(state["rng"]["torch"])
        self.shuffle.set_state(state["rng"]["shuffle"])
        if self.ctx.world == 1:  # per-rank streams are re-seeded in distributed runs
            self.noise.set_state(state["rng"]["noise"])
        self.history = list(state["history"])
        self.ema_steps = int(state["ema_steps"])
        return int(state["unit"])

    def model(self) -> ContraNet:
        """The inference ContraNet (G's EMA weights), on the CPU, eval mode."""
        net = ContraNet.from_config(self.config)
        net.encoder.load_state_dict(self.encoder.state_dict())
        net.generator.load_state_dict(self.g_ema.state_dict())
        net.dis.load_state_dict(self.dis.state_dict())
        net.dmm.load_state_dict(self.dmm.state_dict())
        return net.cpu().eval()

    # ---------------------------------------------------------------- batches
    def batches(self, desc: str) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """(native [0, 1] images, ContraNet-space images, labels) for this rank, full batches."""
        n = self.labels.shape[0]
        perm = torch.randperm(n, generator=self.shuffle)
        per_step = self.s.batch_size * self.ctx.world
        steps = n // per_step
        if steps == 0:
            raise ValueError(
                f"{n} training images are fewer than one step of {per_step} "
                f"(batch_size {self.s.batch_size} x {self.ctx.world} ranks)"
            )
        interval = 0.5 if sys.stderr.isatty() else self.s.log_every
        bar = tqdm(
            range(steps),
            desc=desc,
            unit="batch",
            disable=not (self.progress and self.ctx.main),
            leave=False,
            mininterval=interval,
        )
        for step in bar:
            start = step * per_step + self.ctx.rank * self.s.batch_size
            index = perm[start : start + self.s.batch_size]
            native = self.images.index_select(0, index).to(self.device, non_blocking=True)
            labels = self.labels.index_select(0, index).to(self.device, non_blocking=True)
            yield native, to_unit_range(native), labels

    def dmm_batches(self, desc: str) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """:meth:`batches` for the DMM stages, augmented with ``dmm_augment`` when it is set."""
        for native, x, y in self.batches(desc):
            if self.dmm_augment is not None:
                native = self.dmm_augment(native)
                x = to_unit_range(native)
            yield native, x, y

    def wrong(self, labels: Tensor) -> Tensor:
        return wrong_labels(labels, self.config.num_classes, self.noise)

    def noisy_input(self, native: Tensor) -> Tensor:
        if self.s.input_noise <= 0:
            return to_unit_range(native)
        b = native.shape[0]
        size = torch.rand(b, 1, 1, 1, generator=self.noise, device=self.device)
        noise = torch.rand(native.shape, generator=self.noise, device=self.device) * 2 - 1
        return to_unit_range((native + noise * size * self.s.input_noise).clamp(0, 1))

    def aug(self, x: Tensor) -> Tensor:
        if self.augment is None:
            return x
        return self.augment((x + 1) / 2) * 2 - 1

    def adversarial(self, native: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor] | None:
        """PGD copies of a share of the batch: (x_adv in [-1, 1], y_true, y_negative)."""
        s = self.s
        count = round(native.shape[0] * s.adv_fraction)
        if self.classify is None or not s.adv_eps or count == 0:
            return None
        native, labels = native[:count], labels[:count]
        budgets = torch.tensor(s.adv_eps, device=self.device)
        pick = torch.randint(len(s.adv_eps), (count,), generator=self.noise, device=self.device)
        adv = pgd_linf(
            self.classify, native, labels, budgets[pick], steps=s.adv_steps, generator=self.noise
        )
        with torch.no_grad():
            predicted = self.classify(adv).argmax(dim=1)
        # Where the attack failed, the negative label is a random wrong one instead.
        negative = torch.where(predicted != labels, predicted, self.wrong(labels))
        return to_unit_range(adv), labels, negative

    # ---------------------------------------------------------------- stages
    def run_gan(self, desc: str) -> dict[str, Tensor]:
        s, ctx, dev = self.s, self.ctx, self.device
        encoder, generator = _wrap(self.encoder, ctx, dev), _wrap(self.generator, ctx, dev)
        d_phi = _wrap(self.d_phi, ctx, dev)
        for m in (self.encoder, self.generator, self.d_phi):
            m.train()
        opt_eg, opt_d = self.optimizers["eg"], self.optimizers["d_phi"]
        totals = _Totals(dev)
        for native, x, y in self.batches(desc):
            b = x.shape[0]
            y_all = torch.cat([y, self.wrong(y)]) if s.swap_weight > 0 else y
            x_in = self.noisy_input(native)
            # D_phi step: real (x, y) against rebuilds under the true and the wrong label.
            with torch.no_grad():
                mu, logvar = encoder(x_in)
                z = (
                    mu
                    + torch.randn(mu.shape, generator=self.noise, device=dev) * (0.5 * logvar).exp()
                )
                fake = generator(z.repeat(y_all.shape[0] // b, 1), y_all)
            opt_d.zero_grad(set_to_none=True)
            logits = d_phi(self.aug(torch.cat([x, fake])), torch.cat([y, y_all]))
            loss_d = _hinge_d(logits[:b], logits[b:])
            loss_d.backward()
            opt_d.step()
            # E + G step.
            opt_eg.zero_grad(set_to_none=True)
            mu, logvar = encoder(x_in)
            eps = torch.randn(mu.shape, generator=self.noise, device=dev)
            z = mu + eps * (0.5 * logvar).exp()
            fake = generator(z.repeat(y_all.shape[0] // b, 1), y_all)
            d_fake = d_phi(self.aug(fake), y_all)
            rebuilt = fake[:b]
            adv_loss = -d_fake[:b].mean()
            if s.swap_weight > 0:
                adv_loss = adv_loss - s.swap_weight * d_fake[b:].mean()
            l2 = F.mse_loss(rebuilt, x)
            l1 = F.l1_loss(rebuilt, x)
            ssim = ssim_scores((rebuilt + 1) / 2, (x + 1) / 2).mean()
            kl = _kl(mu, logvar)
            loss = (
                adv_loss
                + s.kl_weight * kl
                + s.l2_weight * l2
                + s.l1_weight * l1
                + s.ssim_weight * (1 - ssim)
            )
            loss.backward()
            opt_eg.step()
            self.update_ema()
            totals.add(
                loss_d=loss_d, loss_g=adv_loss, l2=l2, ssim=ssim, kl=kl, d_real=logits[:b].mean()
            )
        return totals.mean()

    def run_aux(self, desc: str) -> dict[str, Tensor]:
        s, ctx, dev = self.s, self.ctx, self.device
        encoder, generator = _wrap(self.encoder, ctx, dev), _wrap(self.generator, ctx, dev)
        d_aux = _wrap(self.d_aux, ctx, dev)
        for m in (self.encoder, self.generator, self.d_aux):
            m.train()
        opt_eg, opt_d = self.optimizers["eg"], self.optimizers["d_aux"]
        totals = _Totals(dev)
        for native, x, y in self.batches(desc):
            b = x.shape[0]
            y_pair = torch.cat([y, self.wrong(y)])
            x_in = self.noisy_input(native)
            with torch.no_grad():
                fake = generator(encoder(x_in)[0].repeat(2, 1), y_pair)
            opt_d.zero_grad(set_to_none=True)
            logits = d_aux(x.repeat(2, 1, 1, 1) - fake, y_pair)
            loss_d = _hinge_d(logits[:b], logits[b:])
            loss_d.backward()
            opt_d.step()
            opt_eg.zero_grad(set_to_none=True)
            mu, logvar = encoder(x_in)
            fake = generator(mu.repeat(2, 1), y_pair)
            scores = d_aux(x.repeat(2, 1, 1, 1) - fake, y_pair)
            # E + G make the true-label residual look right and the wrong-label one wrong.
            aux = F.relu(1 - scores[:b]).mean() + F.relu(1 + scores[b:]).mean()
            l2 = F.mse_loss(fake[:b], x)
            loss = s.aux_weight * aux + s.l2_weight * l2 + s.kl_weight * _kl(mu, logvar)
            loss.backward()
            opt_eg.step()
            self.update_ema()
            totals.add(loss_d=loss_d, aux=aux, l2=l2)
        return totals.mean()

    def _rebuild(self, x: Tensor, labels: Tensor, index: Tensor | None = None) -> Tensor:
        """G(E(x[index]), labels); ``index`` lets several labels share one encoding."""
        with torch.no_grad():
            z = self.encoder(x)[0]
            if index is not None:
                z = z.index_select(0, index)
            return self.g_ema(z, labels)

    def _frozen_rebuilder(self) -> None:
        self.encoder.eval()
        self.g_ema.eval()

    def consistency_pairs(
        self, native: Tensor, x: Tensor, y: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
        """Inputs, the labels to rebuild them under, and which pairs are consistent.

        Clean images under their true and a wrong label; with a classifier, also their PGD
        copies under the true label (consistent) and the attack's label (not). Each input is
        returned once and pair ``i`` reads ``inputs[index[i]]``, so encoder and F_real see it
        once. Returns ``(inputs, index, labels, consistent, n_adv)``; the last ``n_adv`` pairs
        are the adversarial negatives.
        """
        b = x.shape[0]
        rows = torch.arange(b, device=x.device)
        inputs, index = [x], [rows, rows]
        labels, consistent = [y, self.wrong(y)], [True, False]
        adv = self.adversarial(native, y)
        n_adv = 0
        if adv is not None:
            x_adv, y_true, y_neg = adv
            n_adv = x_adv.shape[0]
            adv_rows = torch.arange(b, b + n_adv, device=x.device)
            inputs.append(x_adv)
            index += [adv_rows, adv_rows]
            labels += [y_true, y_neg]
            consistent += [True, False]
        target = torch.cat(
            [
                torch.full_like(lab, c, dtype=torch.bool)
                for lab, c in zip(labels, consistent, strict=True)
            ]
        )
        return torch.cat(inputs), torch.cat(index), torch.cat(labels), target, n_adv

    def run_dis(self, desc: str) -> dict[str, Tensor]:
        ctx, dev = self.ctx, self.device
        self._frozen_rebuilder()
        dis = _wrap(self.dis, ctx, dev)
        self.dis.train()
        opt = self.optimizers["dis"]
        totals = _Totals(dev)
        for native, x, y in self.batches(desc):
            inputs, index, labels, target, _ = self.consistency_pairs(native, x, y)
            rebuilt = self._rebuild(inputs, labels, index)
            opt.zero_grad(set_to_none=True)
            logits = dis(rebuilt, labels)
            loss = _hinge_d(logits[target], logits[~target])
            loss.backward()
            opt.step()
            correct = ((logits > 0) == target).float().mean()
            totals.add(loss_dis=loss, acc_dis=correct)
        return totals.mean()

    def start_dmm_from_classifier(self) -> None:
        """With ``dmm_init_from_classifier``, before the first DMM epoch: copy the classifier."""
        if not self.s.dmm_init_from_classifier or any(
            r["stage"] in ("dmm_pretrain", "dmm") for r in self.history
        ):
            return
        if self.dmm_init is None:
            raise ValueError("dmm_init_from_classifier needs the classifier's network (dmm_init)")
        for extractor in (self.dmm.f_real, self.dmm.f_syn):
            extractor.load_classifier_trunk(self.dmm_init)  # type: ignore[operator]
        if self.class_heads is not None:
            # The heads then start as the classifier's last layer: F_real + head = classifier.
            for head in (self.class_heads.real, self.class_heads.syn):
                head.load_state_dict(self.dmm_init.linear.state_dict(), strict=True)  # type: ignore[union-attr]

    def run_dmm_pretrain(self, desc: str) -> dict[str, Tensor]:
        ctx, dev = self.ctx, self.device
        self._frozen_rebuilder()
        self.start_dmm_from_classifier()
        pair = _Features(self.dmm.f_real, self.dmm.f_syn)
        heads = self.class_heads
        features = _wrap(pair if heads is None else _HeadedFeatures(pair, heads), ctx, dev)
        self.dmm.train()
        opts = [self.optimizers["dmm"]]
        if heads is not None:
            heads.train()
            opts.append(self.optimizers["class_heads"])
        totals = _Totals(dev)
        for native, x, y in self.dmm_batches(desc):
            rebuilt = self._rebuild(x, y)
            inputs, input_labels = x, y
            adv = self.adversarial(native, y) if self.s.dmm_pretrain_adversarial else None
            if adv is not None:
                inputs, input_labels = torch.cat([x, adv[0]]), torch.cat([y, adv[1]])
            for opt in opts:
                opt.zero_grad(set_to_none=True)
            a, p = features(inputs, rebuilt)
            if heads is not None:  # a and p are class logits
                loss = F.cross_entropy(a, input_labels) + F.cross_entropy(p, y)
                hit = (a.argmax(dim=1) == input_labels).float()
                b = x.shape[0]
                metrics = {
                    "loss_ce": loss,
                    "acc_real": hit[:b].mean(),
                    "acc_syn": (p.argmax(dim=1) == y).float().mean(),
                }
                if adv is not None:
                    metrics["acc_real_adv"] = hit[b:].mean()
            elif self.s.dmm_pretrain_loss == "supcon":
                loss = _supcon_cross_modal(
                    a, p, y, self.s.supcon_temperature, a_labels=input_labels
                )
                metrics = {"loss_supcon": loss}
            else:
                loss = _triplet_cross_modal(a, p, y, self.s.triplet_margin)
                metrics = {"loss_triplet": loss}
            loss.backward()
            for opt in opts:
                opt.step()
            totals.add(**metrics)
        return totals.mean()

    def run_dmm(self, desc: str) -> dict[str, Tensor]:
        ctx, dev = self.ctx, self.device
        self._frozen_rebuilder()
        self.start_dmm_from_classifier()
        dmm = _wrap(self.dmm, ctx, dev)
        self.dmm.train()
        opt = self.optimizers["dmm"]
        totals = _Totals(dev)
        for native, x, y in self.dmm_batches(desc):
            inputs, index, labels, consistent, n_adv = self.consistency_pairs(native, x, y)
            target = consistent.long()
            rebuilt = self._rebuild(inputs, labels, index)
            opt.zero_grad(set_to_none=True)
            logits = dmm(inputs, rebuilt, labels, x_index=index)
            loss = F.cross_entropy(logits, target)
            loss.backward()
            opt.step()
            acc = (logits.argmax(dim=1) == target).float().mean()
            totals.add(loss_dmm=loss, acc_dmm=acc)
            if n_adv:
                negative = logits[-n_adv:].argmax(dim=1) == 0
                totals.add(acc_dmm_adv_negative=negative.float().mean())
        return totals.mean()


class _Totals:
    """Running sums of per-step losses kept on the device (one host sync per epoch)."""

    def __init__(self, device: torch.device) -> None:
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, int] = {}
        self.device = device

    def add(self, **values: Tensor) -> None:
        for k, v in values.items():
            v = v.detach().float()
            self.sums[k] = self.sums[k] + v if k in self.sums else v
            self.counts[k] = self.counts.get(k, 0) + 1

    def mean(self) -> dict[str, Tensor]:
        return {k: v / self.counts[k] for k, v in self.sums.items()}


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
    if settings.dmm_pretrain_adversarial and settings.dmm_pretrain_epochs and classify is None:
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
    ctx, device = _setup_distributed(device)
    if device.type == "cpu":
        # Denormals from randomly initialised nets make CPU kernels many times slower.
        torch.set_flush_denormal(True)
    if dmm_init is not None:
        dmm_init = copy.deepcopy(dmm_init).to(device)
    trainer = _Trainer(
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
        metrics = _all_reduce_mean(getattr(trainer, f"run_{stage}")(desc), ctx)
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
            _write_log(out / LOG_NAME, trainer.history)
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


# --------------------------------------------------------------------------------------------
# Dataset in, Hub folder out
# --------------------------------------------------------------------------------------------

#: Per-dataset defaults of the settings that depend on the pixel scale of the attacks.
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "mnist": {"input_noise": 0.1, "adv_eps": (0.05, 0.1, 0.2, 0.3)},
    "gtsrb": {"input_noise": 8 / 255, "adv_eps": (2 / 255, 4 / 255, 8 / 255, 16 / 255)},
    "cifar10": {
        "input_noise": 8 / 255,
        "adv_eps": (2 / 255, 4 / 255, 8 / 255, 16 / 255),
        "ssim_weight": 5.0,  # the authors' CIFAR weighting
    },
}


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


def _load_classifier(name_or_path: str, device: torch.device) -> tuple[Callable, dict[str, Any]]:
    from guardnet.guard import Normalize
    from guardnet.hub import load_model

    model, config = load_model(name_or_path)
    mean, std = config.get("mean"), config.get("std")
    pipeline = nn.Sequential(Normalize(mean, std), model) if mean is not None else model
    pipeline = pipeline.to(device).eval()
    for p in pipeline.parameters():
        p.requires_grad_(False)
    return pipeline, config


def _dmm_init_from(
    pipeline: nn.Module, classifier_config: Mapping[str, Any], config: ContraNetConfig, name: str
) -> tuple[ContraNetConfig, nn.Module]:
    """The classifier's network for ``dmm_init_from_classifier``, and the config with its
    input normalisation (``dmm_input_mean``/``dmm_input_std``, which must agree if given)."""
    mean, std = classifier_config.get("mean"), classifier_config.get("std")
    network = pipeline[1] if mean is not None else pipeline  # _load_classifier's pipeline
    if mean is None:  # a classifier on [0, 1] images: mean 0, std 1
        mean, std = [0.0] * config.in_channels, [1.0] * config.in_channels
    wanted = (tuple(float(v) for v in mean), tuple(float(v) for v in std))
    if config.dmm_input_mean is None:
        config = dataclasses.replace(config, dmm_input_mean=wanted[0], dmm_input_std=wanted[1])
    elif (config.dmm_input_mean, config.dmm_input_std) != wanted:
        raise ValueError(
            f"dmm_input_mean/dmm_input_std {config.dmm_input_mean}/{config.dmm_input_std} "
            f"differ from classifier {name!r}'s normalisation {wanted[0]}/{wanted[1]}, which "
            "the extractors it initialises need"
        )
    return config, network


def run_contranet_training(
    *,
    dataset: str,
    out: str | os.PathLike[str],
    settings: ContraNetTrainSettings | None = None,
    preset: str = "small",
    arch_args: Mapping[str, Any] | None = None,
    classifier: str | None = None,
    root: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    eval_limit: int | None = 2000,
    resume: bool = True,
    threads: int | None = None,
    device: str = "auto",
    progress: bool = True,
    command: str | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train a ContraNet on a guardnet dataset and save it as a Hub folder in ``out/model``.

    Args:
        dataset: ``"mnist"``, ``"gtsrb"``, ``"cifar10"`` (JPEG q75), any
            :func:`guardnet.data.dataset_info` name.
        out: run folder (checkpoints, ``train_log.jsonl``, ``model/``).
        settings: hyper-parameters; default :class:`ContraNetTrainSettings` with the dataset's
            :data:`DATASET_DEFAULTS`.
        preset: ``"small"`` or ``"authors"`` (:class:`ContraNetConfig` presets).
        arch_args: overrides of the preset's fields (e.g. ``{"g_ch": 8}``).
        classifier: pretrained name, folder or Hub id of the protected classifier, for the
            adversarial examples of the ``dis`` and ``dmm`` stages (``None``: none).
        root: data root.
        limit: train on a seeded subset of this many images.
        eval_limit: validation images for the final sanity metrics.
        resume: continue from the newest checkpoint in ``out``.
        threads: ``torch.set_num_threads``.
        device: ``"auto"`` or a torch device.
        progress: progress bars.
        command: the command line, recorded in the model card.
        log: receives progress lines.

    Returns:
        ``model_dir``, ``metrics``, ``train_seconds``, ``history``.
    """
    from guardnet.data import dataset_info, load_split
    from guardnet.hub import save_pretrained

    began = time.perf_counter()
    if threads is not None:
        torch.set_num_threads(threads)
    run_on = resolve_device(device)
    info = dataset_info(dataset)
    if settings is None:
        settings = ContraNetTrainSettings(**DATASET_DEFAULTS.get(info.name, {}))
    if preset not in ("small", "authors"):
        raise ValueError(f"preset must be 'small' or 'authors', got {preset!r}")
    base = getattr(ContraNetConfig, preset)(info.num_classes, info.channels)
    config = dataclasses.replace(base, **dict(arch_args or {}))
    train = load_split(info.name, "train", root=root, limit=limit)
    classify = None
    classifier_config: dict[str, Any] = {}
    dmm_init = None
    if classifier is not None:
        classify, classifier_config = _load_classifier(classifier, run_on)
        if classifier_config.get("num_classes", info.num_classes) != info.num_classes:
            raise ValueError(
                f"classifier {classifier!r} has {classifier_config.get('num_classes')} classes, "
                f"{info.display_name} has {info.num_classes}"
            )
    if settings.dmm_init_from_classifier:
        if classify is None:
            raise ValueError("dmm_init_from_classifier needs --classifier")
        config, dmm_init = _dmm_init_from(classify, classifier_config, config, classifier)
    result = train_contranet(
        config,
        train.images,
        train.labels,
        settings=settings,
        classify=classify,
        dmm_init=dmm_init,
        run_dir=out,
        resume=resume,
        device=run_on,
        progress=progress,
        log=log,
    )
    if dist.is_initialized() and dist.get_rank() != 0:
        return {"model_dir": None, "metrics": {}, "train_seconds": result.seconds}
    val = load_split(info.name, "val", root=root, limit=eval_limit)
    metrics = evaluate_contranet(result.model, val.images, val.labels)
    slug = info.name
    named = {f"{slug}_val_{k}": round(v, 4) for k, v in metrics.items()}
    model_dir = Path(out) / "model"
    input_size = list(train.images.shape[1:])  # (C, H, W), as in classifier configs
    hub_config = {
        "architecture": "ContraNet",
        "arch_args": dataclasses.asdict(config),
        "num_classes": info.num_classes,
        "in_channels": info.channels,
        "dataset": info.name,
        "input_size": input_size,
        "classifier": classifier,
        "train_settings": settings.to_dict(),
        "train_images": int(train.labels.shape[0]),
        "train_seconds": round(result.seconds, 1),
        "metrics": named,
        "license": "Apache-2.0",
        "source": "trained by guardnet (guardnet train contranet)",
    }
    card = _contranet_card(hub_config, command=command, history=result.history)
    save_pretrained(result.model, model_dir, config=hub_config, model_card=card)
    log(f"saved {model_dir} ({time.perf_counter() - began:.0f} s in all)")
    return {
        "model_dir": model_dir,
        "metrics": named,
        "train_seconds": result.seconds,
        "history": result.history,
    }


def _contranet_card(
    config: Mapping[str, Any], *, command: str | None, history: Sequence[Mapping[str, Any]]
) -> str:
    args = config["arch_args"]
    lines = [
        f"# ContraNet for {config['dataset']} (guardnet)",
        "",
        "ContraNet (Yang et al., NDSS 2022) detector networks: encoder, class-conditional "
        "generator (EMA weights), Dis and DMM, for guardnet's `ContraNetLayer`.",
        "",
        f"- Dataset: `{config['dataset']}` training split ({config['train_images']} images), "
        f"inputs {config['input_size']} mapped to 32x32.",
        f"- Protected classifier used for the adversarial training examples: "
        f"`{config['classifier']}`.",
        f"- Architecture: G width {4 * args['g_ch']}, D width {4 * args['d_ch']}, self-attention "
        f"{args['self_attention']}, label in G's stem {args['label_in_stem']}, "
        f"DMM {args['dmm_backbone']} x{args['dmm_width']}.",
        f"- Training wall time: {config['train_seconds']:.0f} s.",
        f"- Licence: {config['license']}.",
        "",
        "## Command",
        "",
        "```",
        command or "(not recorded)",
        "```",
        "",
        "## Sanity metrics on the validation split",
        "",
        "`*_pair`: share of images whose true-label rebuild scores as more consistent than a "
        "wrong-label rebuild (1.0 perfect, 0.5 chance). Detection rates are in the guardnet "
        "README, each with its command.",
        "",
    ]
    lines += [f"- `{k}`: {v}" for k, v in config["metrics"].items()]
    lines += ["", "## Training log (per epoch)", ""]
    lines += [f"- {json.dumps(dict(r))}" for r in history]
    return "\n".join(lines) + "\n"
