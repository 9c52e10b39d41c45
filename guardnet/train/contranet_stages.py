"""The five stages of ContraNet's training (Algorithm 1 of the paper), one function each.

Each stage function runs one epoch of its stage on a
:class:`~guardnet.train.contranet_trainer.ContraNetTrainer` and returns the epoch's mean
losses and accuracies (device tensors, read once per epoch). :data:`STAGE_EPOCHS` maps the
stage names of :data:`~guardnet.train.settings.STAGES` to them.

1. ``gan``: encoder E + generator G against the projection discriminator D_phi (hinge GAN loss,
   KL, L2, L1 and SSIM reconstruction losses, rebuilds under a wrong label as extra fakes);
   ``aux``: D_aux on residuals ``x - G(z, y)`` and a fine-tune of E + G with it.
2. ``dis``: Dis on true-label rebuilds against wrong-label and adversarial ones.
3. ``dmm_pretrain``: F_real and F_syn with a metric or class loss; ``dmm``: the whole DMM on
   consistent against inconsistent (input, rebuild) pairs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from guardnet.nets.contranet import ssim_scores
from guardnet.train.contranet_trainer import ClassHeads, ContraNetTrainer
from guardnet.train.distributed import wrap
from guardnet.train.losses import (
    hinge_discriminator_loss,
    kl_to_standard_normal,
    supcon_cross_modal,
    triplet_cross_modal,
)

__all__ = ["STAGE_EPOCHS", "run_aux", "run_dis", "run_dmm", "run_dmm_pretrain", "run_gan"]


class _Features(nn.Module):
    """F_real and F_syn of a DMM as one module (one DDP forward in ``dmm_pretrain``)."""

    def __init__(self, f_real: nn.Module, f_syn: nn.Module) -> None:
        super().__init__()
        self.f_real = f_real
        self.f_syn = f_syn

    def forward(self, x: Tensor, x_rebuilt: Tensor) -> tuple[Tensor, Tensor]:
        return self.f_real(x), self.f_syn(x_rebuilt)


class _HeadedFeatures(nn.Module):
    """F_real and F_syn followed by their class heads: one DDP forward for the ``ce`` loss."""

    def __init__(self, features: _Features, heads: ClassHeads) -> None:
        super().__init__()
        self.features = features
        self.heads = heads

    def forward(self, x: Tensor, x_rebuilt: Tensor) -> tuple[Tensor, Tensor]:
        a, p = self.features(x, x_rebuilt)
        return self.heads.real(a), self.heads.syn(p)


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


def _generator_and(
    t: ContraNetTrainer, discriminator: str
) -> tuple[nn.Module, nn.Module, nn.Module, torch.optim.Optimizer, torch.optim.Optimizer]:
    """E, G and a GAN discriminator (``"d_phi"`` or ``"d_aux"``) for training, each wrapped
    for DDP, and the optimisers of E + G and of the discriminator."""
    nets = (t.encoder, t.generator, getattr(t, discriminator))
    wrapped = [wrap(m, t.ctx, t.device) for m in nets]
    for m in nets:
        m.train()
    return (*wrapped, t.optimizers["eg"], t.optimizers[discriminator])  # type: ignore[return-value]


def run_gan(t: ContraNetTrainer, desc: str) -> dict[str, Tensor]:
    """One ``gan`` epoch: a D_phi step, then an E + G step, per batch.

    D_phi (hinge loss, DiffAugment on its inputs) scores real ``(x, y)`` against rebuilds of
    the noisy input under the true label and, with ``swap_weight``, a wrong one. E + G then
    minimise the GAN loss of both rebuilds plus KL, L2, L1 and (1 - SSIM) to the clean
    input; G's EMA copy follows every step.
    """
    s, dev = t.s, t.device
    encoder, generator, d_phi, opt_eg, opt_d = _generator_and(t, "d_phi")
    totals = _Totals(dev)
    for native, x, y in t.batches(desc):
        b = x.shape[0]
        y_all = torch.cat([y, t.wrong(y)]) if s.swap_weight > 0 else y
        x_in = t.noisy_input(native)
        # D_phi step: real (x, y) against rebuilds under the true and the wrong label.
        with torch.no_grad():
            mu, logvar = encoder(x_in)
            z = mu + torch.randn(mu.shape, generator=t.noise, device=dev) * (0.5 * logvar).exp()
            fake = generator(z.repeat(y_all.shape[0] // b, 1), y_all)
        opt_d.zero_grad(set_to_none=True)
        logits = d_phi(t.aug(torch.cat([x, fake])), torch.cat([y, y_all]))
        loss_d = hinge_discriminator_loss(logits[:b], logits[b:])
        loss_d.backward()
        opt_d.step()
        # E + G step.
        opt_eg.zero_grad(set_to_none=True)
        mu, logvar = encoder(x_in)
        eps = torch.randn(mu.shape, generator=t.noise, device=dev)
        z = mu + eps * (0.5 * logvar).exp()
        fake = generator(z.repeat(y_all.shape[0] // b, 1), y_all)
        d_fake = d_phi(t.aug(fake), y_all)
        rebuilt = fake[:b]
        adv_loss = -d_fake[:b].mean()
        if s.swap_weight > 0:
            adv_loss = adv_loss - s.swap_weight * d_fake[b:].mean()
        l2 = F.mse_loss(rebuilt, x)
        l1 = F.l1_loss(rebuilt, x)
        ssim = ssim_scores((rebuilt + 1) / 2, (x + 1) / 2).mean()
        kl = kl_to_standard_normal(mu, logvar)
        loss = (
            adv_loss
            + s.kl_weight * kl
            + s.l2_weight * l2
            + s.l1_weight * l1
            + s.ssim_weight * (1 - ssim)
        )
        loss.backward()
        opt_eg.step()
        t.update_ema()
        totals.add(
            loss_d=loss_d, loss_g=adv_loss, l2=l2, ssim=ssim, kl=kl, d_real=logits[:b].mean()
        )
    return totals.mean()


def run_aux(t: ContraNetTrainer, desc: str) -> dict[str, Tensor]:
    """One ``aux`` epoch: D_aux on residuals ``x - G(z, y)``, then E + G fine-tuned with it.

    D_aux learns to tell the true-label residual from a wrong-label one; E + G are pushed to
    make the first look right and the second wrong (plus L2 and KL).
    """
    s, dev = t.s, t.device
    encoder, generator, d_aux, opt_eg, opt_d = _generator_and(t, "d_aux")
    totals = _Totals(dev)
    for native, x, y in t.batches(desc):
        b = x.shape[0]
        y_pair = torch.cat([y, t.wrong(y)])
        x_in = t.noisy_input(native)
        with torch.no_grad():
            fake = generator(encoder(x_in)[0].repeat(2, 1), y_pair)
        opt_d.zero_grad(set_to_none=True)
        logits = d_aux(x.repeat(2, 1, 1, 1) - fake, y_pair)
        loss_d = hinge_discriminator_loss(logits[:b], logits[b:])
        loss_d.backward()
        opt_d.step()
        opt_eg.zero_grad(set_to_none=True)
        mu, logvar = encoder(x_in)
        fake = generator(mu.repeat(2, 1), y_pair)
        scores = d_aux(x.repeat(2, 1, 1, 1) - fake, y_pair)
        # E + G make the true-label residual look right and the wrong-label one wrong.
        aux = F.relu(1 - scores[:b]).mean() + F.relu(1 + scores[b:]).mean()
        l2 = F.mse_loss(fake[:b], x)
        loss = (
            s.aux_weight * aux + s.l2_weight * l2 + s.kl_weight * kl_to_standard_normal(mu, logvar)
        )
        loss.backward()
        opt_eg.step()
        t.update_ema()
        totals.add(loss_d=loss_d, aux=aux, l2=l2)
    return totals.mean()


def run_dis(t: ContraNetTrainer, desc: str) -> dict[str, Tensor]:
    """One ``dis`` epoch: Dis (hinge) on consistent against inconsistent rebuilds.

    Positives are true-label rebuilds, negatives wrong-label rebuilds and, with a classifier,
    rebuilds of PGD copies under the attack's label (:meth:`ContraNetTrainer.consistency_pairs`).
    """
    ctx, dev = t.ctx, t.device
    t.freeze_rebuilder()
    dis = wrap(t.dis, ctx, dev)
    t.dis.train()
    opt = t.optimizers["dis"]
    totals = _Totals(dev)
    for native, x, y in t.batches(desc):
        inputs, index, labels, target, _, _ = t.consistency_pairs(native, x, y)
        rebuilt = t.rebuild(inputs, labels, index)
        opt.zero_grad(set_to_none=True)
        logits = dis(rebuilt, labels)
        loss = hinge_discriminator_loss(logits[target], logits[~target])
        loss.backward()
        opt.step()
        correct = ((logits > 0) == target).float().mean()
        totals.add(loss_dis=loss, acc_dis=correct)
    return totals.mean()


def run_dmm_pretrain(t: ContraNetTrainer, desc: str) -> dict[str, Tensor]:
    """One ``dmm_pretrain`` epoch: F_real and F_syn with the ``dmm_pretrain_loss``.

    ``triplet`` or ``supcon`` on (input, true-label rebuild) features, or ``ce`` through the
    training-only class heads; with ``dmm_pretrain_adversarial`` PGD copies (of the classifier,
    or of F_real itself with ``dmm_pretrain_attack="self"``) join the inputs under their true
    class.
    """
    ctx, dev = t.ctx, t.device
    t.freeze_rebuilder()
    t.start_dmm_from_classifier()
    pair = _Features(t.dmm.f_real, t.dmm.f_syn)
    heads = t.class_heads
    features = wrap(pair if heads is None else _HeadedFeatures(pair, heads), ctx, dev)
    t.dmm.train()
    opts = [t.optimizers["dmm"]]
    if heads is not None:
        heads.train()
        opts.append(t.optimizers["class_heads"])
    totals = _Totals(dev)
    for native, x, y in t.dmm_batches(desc):
        rebuilt = t.rebuild(x, y)
        inputs, input_labels = x, y
        adv = (
            t.adversarial(native, y, self_attack=t.s.dmm_pretrain_attack == "self")
            if t.s.dmm_pretrain_adversarial
            else None
        )
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
        elif t.s.dmm_pretrain_loss == "supcon":
            loss = supcon_cross_modal(a, p, y, t.s.supcon_temperature, a_labels=input_labels)
            metrics = {"loss_supcon": loss}
        else:
            loss = triplet_cross_modal(a, p, y, t.s.triplet_margin)
            metrics = {"loss_triplet": loss}
        loss.backward()
        for opt in opts:
            opt.step()
        totals.add(**metrics)
    return totals.mean()


def run_dmm(t: ContraNetTrainer, desc: str) -> dict[str, Tensor]:
    """One ``dmm`` epoch: the whole DMM, cross-entropy on consistent vs inconsistent pairs.

    With ``adv_joint_fraction`` > 0, part of the adversarial pairs come from joint attacks on
    the classifier and the DMM being trained (adversarial training of the DMM against the
    adaptive attacker); ``acc_dmm_joint_negative`` is the share of them it flags.
    """
    ctx, dev = t.ctx, t.device
    t.freeze_rebuilder()
    t.start_dmm_from_classifier()
    dmm = wrap(t.dmm, ctx, dev)
    t.dmm.train()
    opt = t.optimizers["dmm"]
    totals = _Totals(dev)
    for native, x, y in t.dmm_batches(desc):
        inputs, index, labels, consistent, n_adv, n_joint = t.consistency_pairs(
            native, x, y, joint=True
        )
        target = consistent.long()
        rebuilt = t.rebuild(inputs, labels, index)
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
            if n_joint:
                totals.add(acc_dmm_joint_negative=negative[:n_joint].float().mean())
    return totals.mean()


#: The epoch function of each stage, by name.
STAGE_EPOCHS: dict[str, Callable[[ContraNetTrainer, str], dict[str, Tensor]]] = {
    "gan": run_gan,
    "aux": run_aux,
    "dis": run_dis,
    "dmm_pretrain": run_dmm_pretrain,
    "dmm": run_dmm,
}
