"""The state of a ContraNet training run: its networks, optimisers, RNG streams and batches.

:class:`ContraNetTrainer` builds every network of ContraNet's training (the inference nets
E, G, Dis and DMM, G's EMA copy, the GAN discriminators D_phi and D_aux, and with the ``ce``
pretraining loss two training-only class heads), their optimisers and the seeded random
streams; it turns them into a checkpoint state and back (:meth:`~ContraNetTrainer.state`,
:meth:`~ContraNetTrainer.load_state`), and yields the batches of each stage together with the
negatives ContraNet learns to reject (wrong labels, PGD copies of the classifier). The stages
themselves are in :mod:`guardnet.train.contranet_stages`.
"""

from __future__ import annotations

import copy
import dataclasses
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from guardnet.errors import CheckpointError
from guardnet.nets.contranet import (
    ContraNet,
    ContraNetConfig,
    ContraNetDiscriminator,
    to_unit_range,
)
from guardnet.train.adversarial import joint_loss, joint_pgd_linf, pgd_linf, wrong_labels
from guardnet.train.augment import default_augmentation, diff_augmentation
from guardnet.train.distributed import DistContext
from guardnet.train.settings import STAGE_ONLY_SETTINGS, STAGES, ContraNetTrainSettings

__all__ = ["ContraNetTrainer", "ema_decay_at"]


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


class ClassHeads(nn.Module):
    """Training-only linear class heads on F_real and F_syn (``dmm_pretrain_loss="ce"``)."""

    def __init__(self, feature_dim: int, num_classes: int) -> None:
        super().__init__()
        self.real = nn.Linear(feature_dim, num_classes)
        self.syn = nn.Linear(feature_dim, num_classes)


class ContraNetTrainer:
    """Every network, optimiser and random stream of a ContraNet training run, on one rank.

    Construction seeds torch's global generator with ``settings.seed`` and builds the nets in
    a fixed order, so a run's initial weights depend on the seed and the config only.

    Args:
        config: The architecture sizes.
        settings: The hyper-parameters.
        images: ``(N, C, H, W)`` training images in [0, 1], on the CPU.
        labels: ``(N,)`` int64 labels.
        classify: The protected classifier ([0, 1] images -> logits) for PGD copies, or None.
        device: Where this rank trains.
        ctx: This rank's place in the run.
        progress: Show progress bars (rank 0 only).
        dmm_init: With ``settings.dmm_init_from_classifier``, the classifier's network.
    """

    def __init__(
        self,
        config: ContraNetConfig,
        settings: ContraNetTrainSettings,
        images: Tensor,
        labels: Tensor,
        classify: Callable[[Tensor], Tensor] | None,
        device: torch.device,
        ctx: DistContext,
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
        self.class_heads: ClassHeads | None = None
        if s.dmm_pretrain_loss == "ce":
            self.class_heads = ClassHeads(self.dmm.feature_dim, config.num_classes).to(device)
            self.optimizers["class_heads"] = torch.optim.Adam(
                self.class_heads.parameters(), lr=s.lr_dmm
            )
        self.augment = diff_augmentation(config.in_channels).to(device) if s.augment else None
        self.dmm_augment = (
            default_augmentation(s.dmm_augment).to(device) if s.dmm_augment is not None else None
        )
        # Every rank draws the same permutation; noise and attacks differ per rank.
        self.shuffle = torch.Generator().manual_seed(s.seed)
        self.noise = torch.Generator(device=device).manual_seed(s.seed * 1000 + 1 + ctx.rank)
        self.history: list[dict[str, Any]] = []
        self.ema_steps = 0

    def update_ema(self) -> None:
        """One step of G's exponential moving average (decay warmed up by :func:`ema_decay_at`)."""
        _ema_update(self.g_ema, self.generator, ema_decay_at(self.ema_steps, self.s.ema_decay))
        self.ema_steps += 1

    # ---------------------------------------------------------------- state
    def nets(self) -> dict[str, nn.Module]:
        """Every trained network by its checkpoint key (class heads only with the ``ce`` loss)."""
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
        """The checkpoint state after ``unit`` epochs of the schedule."""
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
        """Continue from a checkpoint state; returns the number of epochs it holds.

        Raises:
            CheckpointError: The checkpoint has another config, or settings that may no
                longer change (only epoch counts, ``log_every`` and the settings of DMM
                stages that have not begun may).
        """
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
        free |= {k for k, stages in STAGE_ONLY_SETTINGS.items() if begun.isdisjoint(stages)}
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
        """A random wrong label for each of ``labels`` (this rank's noise stream)."""
        return wrong_labels(labels, self.config.num_classes, self.noise)

    def noisy_input(self, native: Tensor) -> Tensor:
        """E's input: ``native`` plus uniform noise of a random size up to ``input_noise``."""
        if self.s.input_noise <= 0:
            return to_unit_range(native)
        b = native.shape[0]
        size = torch.rand(b, 1, 1, 1, generator=self.noise, device=self.device)
        noise = torch.rand(native.shape, generator=self.noise, device=self.device) * 2 - 1
        return to_unit_range((native + noise * size * self.s.input_noise).clamp(0, 1))

    def aug(self, x: Tensor) -> Tensor:
        """D_phi's DiffAugment of [-1, 1] images (identity without ``augment``)."""
        if self.augment is None:
            return x
        return self.augment((x + 1) / 2) * 2 - 1

    def adversarial(
        self, native: Tensor, labels: Tensor, *, joint: bool = False, self_attack: bool = False
    ) -> tuple[Tensor, Tensor, Tensor, int] | None:
        """Adversarial copies of a share of the batch: ``(x_adv in [-1, 1], y_true, y_negative,
        n_joint)``.

        PGD copies of the classifier; with ``joint`` (the ``dmm`` stage), the first ``n_joint``
        (``adv_joint_fraction`` of them) come from :meth:`joint_adversarial` instead; with
        ``self_attack`` (``dmm_pretrain_attack="self"``), PGD copies of F_real and its class
        head (:meth:`real_head_logits`) instead of the classifier's.
        """
        s = self.s
        count = round(native.shape[0] * s.adv_fraction)
        if not s.adv_eps or count == 0 or (self.classify is None and not self_attack):
            return None
        native, labels = native[:count], labels[:count]
        budgets = torch.tensor(s.adv_eps, device=self.device)
        pick = torch.randint(len(s.adv_eps), (count,), generator=self.noise, device=self.device)
        eps = budgets[pick]
        n_joint = 0
        targets: Tensor | None = None
        if self_attack:
            adv, predicted = self._self_adversarial(native, labels, eps)
        else:
            assert self.classify is not None
            n_joint = round(count * s.adv_joint_fraction) if joint else 0
            parts: list[Tensor] = []
            if n_joint:
                adv_joint, targets = self.joint_adversarial(
                    native[:n_joint], labels[:n_joint], eps[:n_joint]
                )
                parts.append(adv_joint)
            if n_joint < count:
                parts.append(
                    pgd_linf(
                        self.classify,
                        native[n_joint:],
                        labels[n_joint:],
                        eps[n_joint:],
                        steps=s.adv_steps,
                        generator=self.noise,
                    )
                )
            adv = torch.cat(parts)
            with torch.no_grad():
                predicted = self.classify(adv).argmax(dim=1)
        # Where the attack failed, the negative label is the joint attack's target or, for a
        # PGD copy, a random wrong one.
        fallback = self.wrong(labels)
        if targets is not None:
            fallback = torch.cat([targets, fallback[n_joint:]])
        negative = torch.where(predicted != labels, predicted, fallback)
        return to_unit_range(adv), labels, negative, n_joint

    def real_head_logits(self, images: Tensor) -> Tensor:
        """F_real's class logits (through the ``ce`` head) of [0, 1] images."""
        if self.class_heads is None:
            raise ValueError("real_head_logits needs dmm_pretrain_loss 'ce' (the class heads)")
        return self.class_heads.real(self.dmm.f_real(to_unit_range(images)))

    def _self_adversarial(
        self, native: Tensor, labels: Tensor, eps: Tensor
    ) -> tuple[Tensor, Tensor]:
        """PGD copies of F_real's own class head: ``(copies in [0, 1], F_real's labels)``.

        F_real is in eval mode while attacked, so the attack does not move its batch-norm
        statistics.
        """
        was_training = self.dmm.f_real.training
        self.dmm.f_real.eval()
        try:
            adv = pgd_linf(
                self.real_head_logits, native, labels, eps, steps=self.s.adv_steps,
                generator=self.noise,
            )  # fmt: skip
            with torch.no_grad():
                return adv, self.real_head_logits(adv).argmax(dim=1)
        finally:
            self.dmm.f_real.train(was_training)

    def joint_adversarial(
        self, native: Tensor, labels: Tensor, eps: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Joint attacks on the classifier and the current DMM: ``(adversarial images in
        [0, 1], targets)``.

        Each image is pushed towards one of the classifier's ``adv_num_targets`` most likely
        wrong classes (drawn per image; with ``adv_joint_best_target``, towards each of them
        and the attempt with the lowest joint loss kept) while the DMM is pushed to call the
        pair ``(image, G(E(image), target))`` consistent (:func:`joint_pgd_linf`, gradients
        through E and G); the first ``adv_smooth_fraction`` of them use a smooth
        ``adv_smooth_resolution`` perturbation. The DMM is in eval mode while attacked.
        """
        s = self.s
        n = native.shape[0]
        assert self.classify is not None
        with torch.no_grad():
            logits = self.classify(native)
        k = min(s.adv_num_targets, self.config.num_classes - 1)
        ranked = logits.scatter(1, labels[:, None], float("-inf")).topk(k, dim=1).indices
        if s.adv_joint_best_target:  # every target, in one batch of n * k attempts
            tries, targets = k, ranked.reshape(-1)
            native, eps = native.repeat_interleave(k, 0), eps.repeat_interleave(k, 0)
        else:
            choice = torch.randint(k, (n, 1), generator=self.noise, device=self.device)
            tries, targets = 1, ranked.gather(1, choice).squeeze(1)

        def consistency(images: Tensor, y: Tensor) -> Tensor:
            x = to_unit_range(images)
            return self.dmm(x, self.g_ema(self.encoder(x)[0], y), y)

        n_smooth = round(n * s.adv_smooth_fraction) * tries
        was_training = self.dmm.training
        self.dmm.eval()
        try:
            parts = [
                joint_pgd_linf(
                    self.classify,
                    consistency,
                    native[rows],
                    targets[rows],
                    eps[rows],
                    steps=s.adv_steps if s.adv_joint_steps is None else s.adv_joint_steps,
                    resolution=resolution,
                    generator=self.noise,
                )
                for rows, resolution in (
                    (slice(0, n_smooth), s.adv_smooth_resolution),
                    (slice(n_smooth, n * tries), None),
                )
                if rows.stop > rows.start
            ]
            adv = torch.cat(parts)
            if tries > 1:
                with torch.no_grad():
                    loss = joint_loss(self.classify, consistency, adv, targets).view(n, tries)
                best = loss.argmin(dim=1) + torch.arange(n, device=self.device) * tries
                adv, targets = adv[best], targets[best]
        finally:
            self.dmm.train(was_training)
        return adv, targets

    # ---------------------------------------------------------------- rebuilds
    def rebuild(self, x: Tensor, labels: Tensor, index: Tensor | None = None) -> Tensor:
        """G(E(x[index]), labels); ``index`` lets several labels share one encoding."""
        with torch.no_grad():
            z = self.encoder(x)[0]
            if index is not None:
                z = z.index_select(0, index)
            return self.g_ema(z, labels)

    def freeze_rebuilder(self) -> None:
        """E and G's EMA copy in eval mode: the rebuilds of the Dis and DMM stages."""
        self.encoder.eval()
        self.g_ema.eval()

    def consistency_pairs(
        self, native: Tensor, x: Tensor, y: Tensor, *, joint: bool = False
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, int, int]:
        """Inputs, the labels to rebuild them under, and which pairs are consistent.

        Clean images under their true and a wrong label; with a classifier, also their
        adversarial copies (:meth:`adversarial`, ``joint`` passed on) under the true label
        (consistent) and the attack's label (not). Each input is returned once and pair ``i``
        reads ``inputs[index[i]]``, so encoder and F_real see it once. Returns ``(inputs, index,
        labels, consistent, n_adv, n_joint)``; the last ``n_adv`` pairs are the adversarial
        negatives, the first ``n_joint`` of them those of joint attacks.
        """
        b = x.shape[0]
        rows = torch.arange(b, device=x.device)
        inputs, index = [x], [rows, rows]
        labels, consistent = [y, self.wrong(y)], [True, False]
        adv = self.adversarial(native, y, joint=joint)
        n_adv = n_joint = 0
        if adv is not None:
            x_adv, y_true, y_neg, n_joint = adv
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
        return torch.cat(inputs), torch.cat(index), torch.cat(labels), target, n_adv, n_joint

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
