"""The hyper-parameters of the two trainers: everything that determines a training trajectory.

* :class:`TrainSettings`: optimiser, schedule, epochs, batch size and seed of
  :func:`~guardnet.train.train_classifier`.
* :class:`ContraNetTrainSettings`: stage lengths, learning rates, loss weights and adversarial
  examples of :func:`~guardnet.train.train_contranet`, with :data:`CONTRANET_DATASET_DEFAULTS`
  for the settings that depend on a dataset's pixel scale (:func:`contranet_settings`).

Both are frozen dataclasses stored in every checkpoint; a resumed run must use the same ones
(except the fields a trainer lets grow or change, such as epoch counts).

Example:
    >>> TrainSettings(epochs=2, optimizer="sgd").to_dict()["optimizer"]
    'sgd'
    >>> contranet_settings("mnist", gan_epochs=1).adv_eps
    (0.05, 0.1, 0.2, 0.3)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from guardnet.train.augment import AUGMENTED_DATASETS

__all__ = [
    "CONTRANET_DATASET_DEFAULTS",
    "PRETRAIN_ATTACKS",
    "PRETRAIN_LOSSES",
    "STAGES",
    "STAGE_ONLY_SETTINGS",
    "ContraNetTrainSettings",
    "OptimizerName",
    "ScheduleName",
    "TrainSettings",
    "contranet_settings",
]

OptimizerName = Literal["sgd", "adamw"]
ScheduleName = Literal["onecycle", "cosine"]


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


STAGES = ("gan", "aux", "dis", "dmm_pretrain", "dmm")
PRETRAIN_LOSSES = ("triplet", "supcon", "ce")
PRETRAIN_ATTACKS = ("classifier", "self")
# Settings read by the DMM stages only: a resumed run may change them until the first of the
# listed stages has begun (e.g. branch a finished generator into another DMM recipe).
_DMM_STAGES = ("dmm_pretrain", "dmm")
STAGE_ONLY_SETTINGS: dict[str, tuple[str, ...]] = {
    "dmm_pretrain_loss": ("dmm_pretrain",),
    "triplet_margin": ("dmm_pretrain",),
    "supcon_temperature": ("dmm_pretrain",),
    "dmm_pretrain_adversarial": ("dmm_pretrain",),
    "dmm_pretrain_attack": ("dmm_pretrain",),
    "dmm_init_from_classifier": _DMM_STAGES,
    "dmm_augment": _DMM_STAGES,
    "adv_joint_fraction": ("dmm",),
    "adv_smooth_fraction": ("dmm",),
    "adv_smooth_resolution": ("dmm",),
    "adv_num_targets": ("dmm",),
    "adv_joint_steps": ("dmm",),
    "adv_joint_best_target": ("dmm",),
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
        adv_joint_fraction: in the ``dmm`` stage, share of those copies made by a joint attack
            on the classifier and the DMM being trained instead of PGD on the classifier
            (:func:`~guardnet.train.adversarial.joint_pgd_linf`): each is pushed towards one of
            the classifier's ``adv_num_targets`` most likely wrong classes while the DMM is
            pushed to call it consistent with its rebuild under that class, the adaptive
            attacker of the evaluation. 0 (the default): none; the DMM then only sees attacks
            on the classifier, which an attacker who knows the DMM pushes under its threshold.
        adv_smooth_fraction: share of the joint copies whose perturbation is a smooth
            ``adv_smooth_resolution`` x ``adv_smooth_resolution`` map per channel, bilinearly
            upsampled (the parameterisation noise statistics such as SAEC do not see).
        adv_smooth_resolution: side of that low-resolution perturbation.
        adv_num_targets: joint attacks target one of the classifier's this many most likely
            wrong classes, drawn per image.
        adv_joint_steps: steps of the joint attacks (``None``: ``adv_steps``). The evaluation's
            adaptive attacks take 50: a much weaker training attack may teach the DMM to resist
            only the weak one.
        adv_joint_best_target: attack each joint copy towards *every* one of the
            ``adv_num_targets`` classes (that many times the cost) and keep, per image, the
            attempt with the lowest joint loss, as the evaluation's smooth attack keeps the best
            of its targets; ``False``: one target drawn per image.
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
    adv_joint_fraction: float = 0.0
    adv_smooth_fraction: float = 0.5
    adv_smooth_resolution: int = 8
    adv_num_targets: int = 3
    adv_joint_steps: int | None = None
    adv_joint_best_target: bool = False
    dmm_pretrain_loss: str = "triplet"
    triplet_margin: float = 0.2
    supcon_temperature: float = 0.1
    dmm_pretrain_adversarial: bool = False
    dmm_pretrain_attack: str = "classifier"
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
        for name in ("adv_joint_fraction", "adv_smooth_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.adv_smooth_resolution < 1:
            raise ValueError(
                f"adv_smooth_resolution must be >= 1, got {self.adv_smooth_resolution}"
            )
        if self.adv_num_targets < 1:
            raise ValueError(f"adv_num_targets must be >= 1, got {self.adv_num_targets}")
        if any(not 0 < e <= 1 for e in self.adv_eps):
            raise ValueError(f"adv_eps must lie in (0, 1], got {self.adv_eps}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.adv_steps < 1:
            raise ValueError(f"adv_steps must be >= 1, got {self.adv_steps}")
        if self.adv_joint_steps is not None and self.adv_joint_steps < 1:
            raise ValueError(f"adv_joint_steps must be None or >= 1, got {self.adv_joint_steps}")
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
        if self.dmm_pretrain_attack not in PRETRAIN_ATTACKS:
            raise ValueError(
                f"dmm_pretrain_attack must be one of {PRETRAIN_ATTACKS}, "
                f"got {self.dmm_pretrain_attack!r}"
            )
        if self.dmm_pretrain_attack == "self" and self.dmm_pretrain_loss != "ce":
            raise ValueError(
                "dmm_pretrain_attack 'self' needs dmm_pretrain_loss 'ce' (PGD attacks F_real "
                f"through its class head), got {self.dmm_pretrain_loss!r}"
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
        """The settings as a JSON-serialisable dict (tuples as lists)."""
        out = dataclasses.asdict(self)
        out["betas"] = list(self.betas)
        out["adv_eps"] = list(self.adv_eps)
        return out


#: Per-dataset defaults of the ContraNet settings that depend on the pixel scale of the attacks.
CONTRANET_DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "mnist": {"input_noise": 0.1, "adv_eps": (0.05, 0.1, 0.2, 0.3)},
    "gtsrb": {"input_noise": 8 / 255, "adv_eps": (2 / 255, 4 / 255, 8 / 255, 16 / 255)},
    "cifar10": {
        "input_noise": 8 / 255,
        "adv_eps": (2 / 255, 4 / 255, 8 / 255, 16 / 255),
        "ssim_weight": 5.0,  # the authors' CIFAR weighting
    },
}


def contranet_settings(dataset: str | None = None, /, **fields: Any) -> ContraNetTrainSettings:
    """:class:`ContraNetTrainSettings` with a dataset's defaults under the given fields.

    Args:
        dataset: A guardnet dataset name whose :data:`CONTRANET_DATASET_DEFAULTS` apply (None,
            or a name without defaults: the class defaults, made for [0, 1] images with
            8/255-scale attacks).
        **fields: Settings that override the defaults; lists (e.g. from JSON) become the
            tuples ``betas`` and ``adv_eps`` are.

    Returns:
        The settings.

    Raises:
        ValueError: A field has a bad value.
        TypeError: An unknown field.

    Example:
        >>> settings = contranet_settings("cifar10", adv_eps=[0.01])
        >>> settings.ssim_weight, settings.adv_eps
        (5.0, (0.01,))
    """
    merged: dict[str, Any] = dict(CONTRANET_DATASET_DEFAULTS.get(dataset or "", {}))
    merged.update(fields)
    for key in ("betas", "adv_eps"):
        if isinstance(merged.get(key), list):
            merged[key] = tuple(merged[key])
    return ContraNetTrainSettings(**merged)
