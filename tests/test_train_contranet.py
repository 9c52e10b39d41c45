"""ContraNet training: stages, resume, settings checks, helpers, and DDP under torchrun."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from guardnet.errors import CheckpointError
from guardnet.guard import Normalize
from guardnet.nets.contranet import ContraNet, ContraNetConfig, to_unit_range
from guardnet.nets.resnet_cifar import CifarResNet
from guardnet.train import (
    ContraNetTrainSettings,
    contranet_from_checkpoint,
    evaluate_contranet,
    joint_pgd_linf,
    latest_checkpoint,
    load_checkpoint,
    pgd_linf,
    train_contranet,
    wrong_labels,
)
from guardnet.train.contranet_trainer import ContraNetTrainer as _Trainer
from guardnet.train.distributed import DistContext as _Dist
from guardnet.train.losses import supcon_cross_modal as _supcon_cross_modal
from guardnet.train.run import _dmm_init_from

ROOT = Path(__file__).resolve().parents[1]
TINY = ContraNetConfig(
    num_classes=4,
    in_channels=1,
    g_ch=2,
    d_ch=2,
    dmm_backbone="cnn",
    dmm_width=0.25,
    encoder_features=16,
    dmm_hidden=16,
)
ALL_STAGES = ContraNetTrainSettings(
    gan_epochs=1, aux_epochs=1, dis_epochs=1, dmm_pretrain_epochs=1, dmm_epochs=1, batch_size=8
)


pytestmark = pytest.mark.usefixtures("flush_denormals")


def data(n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 4, (n,), generator=g)


def classifier() -> nn.Module:
    torch.manual_seed(2)
    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 4)).eval()


def run_up_to_dis(run_dir: Path) -> tuple[torch.Tensor, torch.Tensor, dict, ContraNetTrainSettings]:
    """Train TINY's gan and dis stages into ``run_dir``: (x, y, train kwargs, those settings)."""
    x, y = data()
    kwargs = dict(classify=classifier(), progress=False, log=None)
    up_to_dis = ContraNetTrainSettings(
        gan_epochs=1, dis_epochs=1, dmm_pretrain_epochs=0, dmm_epochs=0, batch_size=8
    )
    train_contranet(TINY, x, y, settings=up_to_dis, run_dir=run_dir, **kwargs)
    return x, y, kwargs, up_to_dis


class TestHelpers:
    def test_wrong_labels_differ_and_cover_all_classes(self) -> None:
        labels = torch.arange(43).repeat(200)
        wrong = wrong_labels(labels, 43, torch.Generator().manual_seed(0))
        assert not bool((wrong == labels).any())
        assert wrong.min() == 0 and wrong.max() == 42
        for y in (0, 42):
            assert wrong[labels == y].unique().numel() == 42  # every other class drawn

    def test_pgd_respects_the_budget_and_raises_the_loss(self) -> None:
        model = classifier()
        x, y = data(16)
        y = y % 4
        eps = torch.full((16,), 0.05)
        eps[:8] = 0.01
        adv = pgd_linf(model, x, y, eps, steps=5, generator=torch.Generator().manual_seed(0))
        gap = (adv - x).abs().flatten(1).amax(1)
        assert bool((gap <= eps + 1e-6).all()) and bool((adv >= 0).all() & (adv <= 1).all())
        loss = nn.functional.cross_entropy
        assert loss(model(adv), y) > loss(model(x), y)

    def test_joint_pgd_moves_both_models_within_a_smooth_budget(self) -> None:
        torch.manual_seed(3)
        net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4)).eval()
        head = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2)).eval()
        x = 0.3 + 0.4 * torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(1))
        targets = torch.tensor([1, 2, 3, 0, 1, 2])
        eps = torch.full((6,), 0.05)
        eps[:3] = 0.02
        g = torch.Generator().manual_seed(0)
        adv = joint_pgd_linf(
            net, lambda im, t: head(im), x, targets, eps, steps=10, resolution=4, generator=g
        )
        delta = adv - x
        assert bool((delta.abs().flatten(1).amax(1) <= eps + 1e-6).all())
        ce = nn.functional.cross_entropy
        consistent = torch.ones(6, dtype=torch.long)
        assert ce(net(adv), targets) < ce(net(x), targets)
        assert ce(head(adv), consistent) < ce(head(x), consistent)
        # No clipping here, so the perturbation is a bilinear upsampling of a 4x4 map: it lies
        # in the 16-dimensional span of the upsampled basis maps.
        basis = torch.eye(16).view(16, 1, 4, 4)
        up = nn.functional.interpolate(basis, size=(8, 8), mode="bilinear", align_corners=False)
        span = up.view(16, 64).T
        flat = delta.reshape(18, 64).T
        coeffs = torch.linalg.lstsq(span, flat).solution
        torch.testing.assert_close(span @ coeffs, flat, atol=1e-5, rtol=0)
        full = (
            joint_pgd_linf(net, lambda im, t: head(im), x, targets, eps, steps=10, generator=g) - x
        )
        residual = span @ torch.linalg.lstsq(span, full.reshape(18, 64).T).solution
        assert (residual - full.reshape(18, 64).T).abs().max() > 1e-3  # every pixel moves

    def test_settings_are_checked(self) -> None:
        with pytest.raises(ValueError, match="adv_fraction"):
            ContraNetTrainSettings(adv_fraction=1.5)
        with pytest.raises(ValueError, match="gan_epochs"):
            ContraNetTrainSettings(gan_epochs=-1)
        s = ContraNetTrainSettings(gan_epochs=2, aux_epochs=0, dis_epochs=1)
        assert [u[0] for u in s.schedule()][:3] == ["gan", "gan", "dis"]
        with pytest.raises(ValueError, match="dmm_pretrain_loss must be one of"):
            ContraNetTrainSettings(dmm_pretrain_loss="arcface")
        with pytest.raises(ValueError, match="supcon_temperature"):
            ContraNetTrainSettings(supcon_temperature=0.0)
        with pytest.raises(ValueError, match="dmm_pretrain_adversarial needs dmm_pretrain_loss"):
            ContraNetTrainSettings(dmm_pretrain_adversarial=True)
        ContraNetTrainSettings(dmm_pretrain_adversarial=True, dmm_pretrain_loss="ce")
        with pytest.raises(ValueError, match="non-empty adv_eps"):
            ContraNetTrainSettings(
                dmm_pretrain_adversarial=True, dmm_pretrain_loss="supcon", adv_eps=()
            )
        with pytest.raises(ValueError, match="adv_joint_fraction must be in"):
            ContraNetTrainSettings(adv_joint_fraction=-0.1)
        with pytest.raises(ValueError, match="adv_smooth_fraction must be in"):
            ContraNetTrainSettings(adv_smooth_fraction=2.0)
        with pytest.raises(ValueError, match="adv_smooth_resolution"):
            ContraNetTrainSettings(adv_smooth_resolution=0)
        with pytest.raises(ValueError, match="adv_num_targets"):
            ContraNetTrainSettings(adv_num_targets=0)
        with pytest.raises(ValueError, match=r"dmm_augment must be None or one of .*'gtsrb'"):
            ContraNetTrainSettings(dmm_augment="imagenet")

    def test_supcon_matches_its_definition(self) -> None:
        g = torch.Generator().manual_seed(0)
        a, p = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
        labels = torch.tensor([0, 0, 1, 2, 2, 2])
        z = torch.nn.functional.normalize(torch.cat([a, p]), dim=1)
        y = torch.cat([labels, labels])
        expected = []
        for i in range(12):  # one anchor at a time, straight from Khosla et al. (2020), eq. 2
            others = [k for k in range(12) if k != i]
            log_denominator = torch.logsumexp(z[i] @ z[others].T / 0.1, dim=0)
            positives = [k for k in others if y[k] == y[i]]
            expected.append(-torch.stack([z[i] @ z[k] / 0.1 for k in positives]).mean())
            expected[-1] = expected[-1] + log_denominator
        torch.testing.assert_close(
            _supcon_cross_modal(a, p, labels, 0.1), torch.stack(expected).mean()
        )
        # Classes on orthogonal directions, both modalities alike: only log(#positives) is left.
        aligned = torch.eye(2)[torch.tensor([0, 0, 1, 1])] * 3
        loss = _supcon_cross_modal(aligned, aligned, torch.tensor([0, 0, 1, 1]), 0.01)
        torch.testing.assert_close(loss, torch.tensor(3.0).log())

    def test_supcon_takes_extra_input_rows_with_their_own_labels(self) -> None:
        g = torch.Generator().manual_seed(1)
        a, p = torch.randn(5, 4, generator=g), torch.randn(3, 4, generator=g)
        labels, a_labels = torch.tensor([0, 1, 1]), torch.tensor([0, 1, 1, 0, 1])
        z = torch.nn.functional.normalize(torch.cat([a, p]), dim=1)
        y = torch.cat([a_labels, labels])
        expected = []
        for i in range(8):
            others = [k for k in range(8) if k != i]
            log_denominator = torch.logsumexp(z[i] @ z[others].T / 0.2, dim=0)
            positives = [k for k in others if y[k] == y[i]]
            similarity = torch.stack([z[i] @ z[k] / 0.2 for k in positives]).mean()
            expected.append(log_denominator - similarity)
        got = _supcon_cross_modal(a, p, labels, 0.2, a_labels=a_labels)
        torch.testing.assert_close(got, torch.stack(expected).mean())


class TestTraining:
    def test_every_stage_runs_and_checkpoints(self, tmp_path) -> None:
        x, y = data()
        result = train_contranet(
            TINY,
            x,
            y,
            settings=ALL_STAGES,
            classify=classifier(),
            run_dir=tmp_path,
            progress=False,
            log=None,
        )
        stages = [r["stage"] for r in result.history]
        assert stages == ["gan", "aux", "dis", "dmm_pretrain", "dmm"]
        assert "acc_dmm_adv_negative" in result.history[-1]
        assert latest_checkpoint(tmp_path).name == "epoch-0005"
        # The last checkpoint holds the same inference networks as the returned model.
        stored = contranet_from_checkpoint(latest_checkpoint(tmp_path))
        for (k, a), b in zip(
            result.model.state_dict().items(), stored.state_dict().values(), strict=True
        ):
            torch.testing.assert_close(a, b, msg=k)
        assert (tmp_path / "train_log.jsonl").read_text().count("\n") == 5
        metrics = evaluate_contranet(result.model, x, y)
        assert set(metrics) == {"l2", "ssim", "dmm_pair", "dis_pair", "ssim_pair"}

    def test_resume_gives_the_uninterrupted_result(self, tmp_path) -> None:
        x, y = data()
        kwargs = dict(classify=classifier(), progress=False, log=None)
        whole = train_contranet(TINY, x, y, settings=ALL_STAGES, run_dir=tmp_path / "a", **kwargs)
        short = ContraNetTrainSettings(
            gan_epochs=1,
            aux_epochs=1,
            dis_epochs=0,
            dmm_pretrain_epochs=0,
            dmm_epochs=0,
            batch_size=8,
        )
        train_contranet(TINY, x, y, settings=short, run_dir=tmp_path / "b", **kwargs)
        resumed = train_contranet(TINY, x, y, settings=ALL_STAGES, run_dir=tmp_path / "b", **kwargs)
        # The short run ends after 'aux'; the resumed run continues with 'dis'.
        assert [r["stage"] for r in resumed.history] == ["gan", "aux", "dis", "dmm_pretrain", "dmm"]
        for (k, a), b in zip(
            whole.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
        ):
            torch.testing.assert_close(a, b, msg=k)

    def test_stage_ends_are_kept_and_ended_stages_cannot_grow(self, tmp_path) -> None:
        x, y = data()
        two_gan = ContraNetTrainSettings(
            gan_epochs=2, dis_epochs=1, dmm_pretrain_epochs=0, dmm_epochs=0, batch_size=8
        )
        train_contranet(TINY, x, y, settings=two_gan, run_dir=tmp_path, progress=False, log=None)
        kept = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
        assert kept == ["epoch-0002", "epoch-0003"]  # the last of 'gan' and of 'dis'
        # A third GAN epoch after 'dis' would read the dis checkpoint as GAN epoch 3.
        three_gan = dataclasses.replace(two_gan, gan_epochs=3)
        with pytest.raises(CheckpointError, match="its epoch 3 was dis epoch 1, but the new"):
            train_contranet(TINY, x, y, settings=three_gan, run_dir=tmp_path, progress=False)
        # Branching at the end of 'gan' works: drop the later checkpoint and resume.
        shutil.rmtree(tmp_path / "checkpoints" / "epoch-0003")
        branched = train_contranet(
            TINY, x, y, settings=three_gan, run_dir=tmp_path, progress=False, log=None
        )
        assert [r["stage"] for r in branched.history] == ["gan", "gan", "gan", "dis"]

    def test_resume_refuses_another_architecture(self, tmp_path) -> None:
        x, y = data()
        settings = ContraNetTrainSettings(
            gan_epochs=1, dis_epochs=0, dmm_pretrain_epochs=0, dmm_epochs=0, batch_size=8
        )
        train_contranet(TINY, x, y, settings=settings, run_dir=tmp_path, progress=False, log=None)
        other = ContraNetConfig(**{**TINY.__dict__, "g_ch": 3})
        with pytest.raises(CheckpointError, match="ContraNetConfig"):
            train_contranet(other, x, y, settings=settings, run_dir=tmp_path, progress=False)
        # A checkpoint written before a config field existed resumes with its default...
        header_path = tmp_path / "checkpoints" / "epoch-0001" / "checkpoint.json"
        header = json.loads(header_path.read_text())
        del header["state"]["config"]["label_in_stem"]
        header_path.write_text(json.dumps(header))
        longer = dataclasses.replace(settings, gan_epochs=2)
        resumed = train_contranet(
            TINY, x, y, settings=longer, run_dir=tmp_path, progress=False, log=None
        )
        assert [r["epoch"] for r in resumed.history] == [1, 2]
        # ...but not when the run sets that field to something else.
        stem = dataclasses.replace(TINY, label_in_stem=True)
        with pytest.raises(CheckpointError, match="ContraNetConfig"):
            train_contranet(stem, x, y, settings=longer, run_dir=tmp_path, progress=False)

    def test_a_stage_setting_may_change_until_its_stage_begins(self, tmp_path) -> None:
        x, y, kwargs, up_to_dis = run_up_to_dis(tmp_path)
        # Older checkpoints lack later settings: they resume with the defaults.
        header_path = tmp_path / "checkpoints" / "epoch-0002" / "checkpoint.json"
        header = json.loads(header_path.read_text())
        del header["state"]["settings"]["supcon_temperature"]
        header_path.write_text(json.dumps(header))
        supcon = dataclasses.replace(up_to_dis, dmm_pretrain_epochs=1, dmm_pretrain_loss="supcon")
        # A GAN-side setting may not change once the GAN stage has run.
        with pytest.raises(CheckpointError, match=r"\['kl_weight'\] differ"):
            train_contranet(
                TINY, x, y, settings=dataclasses.replace(supcon, kl_weight=0.5),
                run_dir=tmp_path, **kwargs,
            )  # fmt: skip
        resumed = train_contranet(TINY, x, y, settings=supcon, run_dir=tmp_path, **kwargs)
        assert [r["stage"] for r in resumed.history] == ["gan", "dis", "dmm_pretrain"]
        assert "loss_supcon" in resumed.history[-1] and "loss_triplet" not in resumed.history[-1]
        # Once dmm_pretrain has run, its loss is part of the recipe.
        longer = dataclasses.replace(up_to_dis, dmm_pretrain_epochs=1, dmm_epochs=1)
        with pytest.raises(CheckpointError, match=r"\['dmm_pretrain_loss'\] differ"):
            train_contranet(TINY, x, y, settings=longer, run_dir=tmp_path, **kwargs)

    def test_dmm_augment_changes_only_the_dmm_stages(self, tmp_path) -> None:
        x, y, kwargs, up_to_dis = run_up_to_dis(tmp_path)
        dmm = dataclasses.replace(up_to_dis, dmm_pretrain_epochs=1, dmm_epochs=1)
        plain_dir, augmented_dir = tmp_path / "plain", tmp_path / "augmented"
        for folder in (plain_dir, augmented_dir):  # both branch from the same dis checkpoint
            shutil.copytree(tmp_path / "checkpoints", folder / "checkpoints")
        plain = train_contranet(TINY, x, y, settings=dmm, run_dir=plain_dir, **kwargs)
        # Free to choose while neither DMM stage has begun.
        augmented_settings = dataclasses.replace(dmm, dmm_augment="mnist")
        augmented = train_contranet(
            TINY, x, y, settings=augmented_settings, run_dir=augmented_dir, **kwargs
        )
        assert plain.history[:2] == augmented.history[:2]  # gan and dis come from the checkpoint
        for stage in (2, 3):
            key = "loss_triplet" if stage == 2 else "loss_dmm"
            value = augmented.history[stage][key]
            assert math.isfinite(value) and value != plain.history[stage][key]
        assert (
            plain.model.generator.state_dict().keys()
            == augmented.model.generator.state_dict().keys()
        )
        for a, b in zip(
            plain.model.generator.state_dict().values(),
            augmented.model.generator.state_dict().values(),
            strict=True,
        ):
            torch.testing.assert_close(a, b)
        # The trainer's DMM batches are the plain batches, augmented image by image.
        trainer = _Trainer(
            TINY, augmented_settings, x, y, None, torch.device("cpu"), _Dist(), False
        )
        torch.manual_seed(0)
        native, inputs, labels = next(trainer.dmm_batches("t"))
        assert native.shape == (8, 1, 28, 28) and inputs.shape == (8, 1, 32, 32)
        torch.testing.assert_close(inputs, to_unit_range(native))
        trainer.shuffle.manual_seed(0)
        plain_native, _, plain_labels = next(trainer.batches("t"))
        assert torch.equal(labels, plain_labels) and not torch.equal(native, plain_native)
        # Once a DMM stage has run, the augmentation is part of the recipe.
        longer = dataclasses.replace(dmm, dmm_epochs=2)
        with pytest.raises(CheckpointError, match=r"\['dmm_augment'\] differ"):
            train_contranet(TINY, x, y, settings=longer, run_dir=augmented_dir, **kwargs)

    def test_adversarial_pretraining_embeds_attacked_copies(self, tmp_path) -> None:
        x, y = data()
        base = ContraNetTrainSettings(
            gan_epochs=1, dis_epochs=0, dmm_pretrain_epochs=1, dmm_epochs=0, batch_size=8,
            dmm_pretrain_loss="supcon",
        )  # fmt: skip
        adversarial = dataclasses.replace(base, dmm_pretrain_adversarial=True)
        with pytest.raises(ValueError, match="needs the classifier"):
            train_contranet(TINY, x, y, settings=adversarial, progress=False, log=None)
        kwargs = dict(classify=classifier(), progress=False, log=None)
        clean = train_contranet(TINY, x, y, settings=base, **kwargs)
        attacked = train_contranet(TINY, x, y, settings=adversarial, **kwargs)
        # Same seed and GAN stage; only the pretraining batches differ (extra anchors).
        assert clean.history[0]["loss_g"] == attacked.history[0]["loss_g"]
        loss_clean = clean.history[1]["loss_supcon"]
        loss_attacked = attacked.history[1]["loss_supcon"]
        assert math.isfinite(loss_attacked) and loss_attacked != loss_clean

    def test_joint_copies_attack_the_dmm_with_top_wrong_targets(self) -> None:
        x, y = data()
        settings = ContraNetTrainSettings(
            batch_size=8, adv_fraction=1.0, adv_joint_fraction=0.5, adv_smooth_fraction=0.5,
            adv_num_targets=2, adv_eps=(0.05,), adv_steps=3,
        )  # fmt: skip
        net = classifier()
        trainer = _Trainer(TINY, settings, x, y, net, torch.device("cpu"), _Dist(), False)
        trainer.dmm.train()
        before = {k: v.clone() for k, v in trainer.dmm.state_dict().items()}
        out = trainer.adversarial(x[:8], y[:8], joint=True)
        assert out is not None
        adv, y_true, y_neg, n_joint = out
        assert n_joint == 4 and adv.shape == (8, 1, 32, 32) and torch.equal(y_true, y[:8])
        assert bool((y_neg != y_true).all())
        # Joint targets are among the classifier's two most likely wrong classes; where the
        # attack reached its target, that is the negative label.
        logits = net(x[:4]).scatter(1, y[:4, None], float("-inf"))
        top2 = logits.topk(2, dim=1).indices
        predicted = net(((adv[:4] + 1) / 2)[..., 2:30, 2:30]).argmax(dim=1)
        hit = predicted != y[:4]
        assert bool((y_neg[:4][~hit, None] == top2[~hit]).any(dim=1).all())
        assert torch.equal(y_neg[:4][hit], predicted[hit])
        # The attack leaves the DMM in training mode and its weights and gradients untouched.
        assert trainer.dmm.training
        assert all(torch.equal(v, trainer.dmm.state_dict()[k]) for k, v in before.items())
        assert all(p.grad is None for p in trainer.dmm.parameters())
        # Without ``joint`` (the dis and dmm_pretrain stages), every copy is PGD.
        assert trainer.adversarial(x[:8], y[:8])[3] == 0  # type: ignore[index]

    def test_self_attack_copies_attack_f_real_not_the_classifier(self) -> None:
        x, y = data()
        with pytest.raises(ValueError, match="dmm_pretrain_attack must be one of"):
            ContraNetTrainSettings(dmm_pretrain_attack="dmm")
        with pytest.raises(ValueError, match="'self' needs dmm_pretrain_loss 'ce'"):
            ContraNetTrainSettings(dmm_pretrain_attack="self", dmm_pretrain_loss="supcon")
        settings = ContraNetTrainSettings(
            batch_size=8, adv_fraction=0.5, adv_eps=(0.1,), adv_steps=5, dmm_pretrain_loss="ce",
            dmm_pretrain_adversarial=True, dmm_pretrain_attack="self",
        )  # fmt: skip
        calls = []

        def classify(images: torch.Tensor) -> torch.Tensor:
            calls.append(images.shape[0])
            return classifier()(images)

        trainer = _Trainer(TINY, settings, x, y, classify, torch.device("cpu"), _Dist(), False)
        trainer.dmm.train()
        before = {k: v.clone() for k, v in trainer.dmm.state_dict().items()}
        out = trainer.adversarial(x[:8], y[:8], self_attack=True)
        assert out is not None and not calls  # the classifier is not attacked
        adv, y_true, y_neg, n_joint = out
        assert adv.shape == (4, 1, 32, 32) and n_joint == 0 and torch.equal(y_true, y[:4])
        assert bool((y_neg != y_true).all())
        adv01 = ((adv + 1) / 2)[..., 2:30, 2:30]
        assert float((adv01 - x[:4]).abs().max()) <= 0.1 + 1e-6
        assert float(adv01.min()) >= 0.0 and float(adv01.max()) <= 1.0
        # The copies raise F_real's own loss (eval mode, as attacked), and the attack leaves
        # F_real in training mode with its weights, batch-norm statistics and gradients as
        # they were.
        trainer.dmm.f_real.eval()
        with torch.no_grad():
            loss_clean = F.cross_entropy(trainer.real_head_logits(x[:4]), y[:4])
            loss_adv = F.cross_entropy(trainer.real_head_logits(adv01), y[:4])
        assert float(loss_adv) > float(loss_clean)
        trainer.dmm.train()
        assert trainer.dmm.f_real.training
        assert all(torch.equal(v, trainer.dmm.state_dict()[k]) for k, v in before.items())
        assert all(p.grad is None for p in trainer.dmm.parameters())
        plain = dataclasses.replace(
            settings, dmm_pretrain_attack="classifier", dmm_pretrain_loss="supcon"
        )
        headless = _Trainer(TINY, plain, x, y, classify, torch.device("cpu"), _Dist(), False)
        with pytest.raises(ValueError, match="needs dmm_pretrain_loss 'ce'"):
            headless.real_head_logits(x[:2])

    def test_self_adversarial_pretraining_trains_on_f_real_copies(self, tmp_path) -> None:
        x, y, kwargs, up_to_dis = run_up_to_dis(tmp_path / "classifier")
        shutil.copytree(tmp_path / "classifier", tmp_path / "self")
        ce = dataclasses.replace(
            up_to_dis, dmm_pretrain_epochs=1, dmm_pretrain_loss="ce", dmm_pretrain_adversarial=True
        )
        own = dataclasses.replace(ce, dmm_pretrain_attack="self")
        a = train_contranet(TINY, x, y, settings=ce, run_dir=tmp_path / "classifier", **kwargs)
        b = train_contranet(TINY, x, y, settings=own, run_dir=tmp_path / "self", **kwargs)
        assert 0.0 <= b.history[-1]["acc_real_adv"] <= 1.0
        assert a.history[-1]["loss_ce"] != b.history[-1]["loss_ce"]
        # Part of the dmm_pretrain recipe once that stage has run; it needs no classifier.
        longer = dataclasses.replace(ce, dmm_pretrain_epochs=2)
        with pytest.raises(CheckpointError, match="dmm_pretrain_attack"):
            train_contranet(TINY, x, y, settings=longer, run_dir=tmp_path / "self", **kwargs)
        no_dis = dataclasses.replace(own, gan_epochs=1, dis_epochs=0)
        assert train_contranet(TINY, x, y, settings=no_dis, progress=False, log=None).model

    def test_joint_attack_steps_are_their_own_setting(self) -> None:
        x, y = data()
        with pytest.raises(ValueError, match="adv_joint_steps must be None or >= 1"):
            ContraNetTrainSettings(adv_joint_steps=0)
        net = classifier()
        calls = []

        def classify(images: torch.Tensor) -> torch.Tensor:
            calls.append(images.shape[0])
            return net(images)

        def joint_calls(**overrides: int | None) -> int:
            settings = ContraNetTrainSettings(
                batch_size=8, adv_fraction=1.0, adv_joint_fraction=1.0, adv_smooth_fraction=0.0,
                adv_eps=(0.05,), adv_steps=3, **overrides,
            )  # fmt: skip
            trainer = _Trainer(TINY, settings, x, y, classify, torch.device("cpu"), _Dist(), False)
            calls.clear()
            trainer.joint_adversarial(x[:4], y[:4], torch.full((4,), 0.05))
            return len(calls)

        default, longer = joint_calls(), joint_calls(adv_joint_steps=7)
        assert default == joint_calls(adv_joint_steps=3)  # None means adv_steps
        assert longer - default == 4  # one classifier call per extra step

    def test_best_target_keeps_the_attempt_with_the_lowest_joint_loss(self, monkeypatch) -> None:
        import guardnet.train.contranet_trainer as trainer_module
        from guardnet.train import joint_loss

        x, y = data()
        net = classifier()
        attempts: list[tuple[torch.Tensor, torch.Tensor]] = []

        def fake_attack(classify, consistency, images, targets, eps, **kwargs):
            # a different, known perturbation per attempt: rows shifted by their own amounts
            shift = torch.linspace(-0.04, 0.04, images.shape[0]).view(-1, 1, 1, 1)
            adv = (images + shift).clamp(0, 1)
            attempts.append((adv, targets))
            return adv

        monkeypatch.setattr(trainer_module, "joint_pgd_linf", fake_attack)
        settings = ContraNetTrainSettings(
            batch_size=8, adv_fraction=1.0, adv_joint_fraction=1.0, adv_smooth_fraction=0.5,
            adv_num_targets=3, adv_eps=(0.05,), adv_steps=2, adv_joint_best_target=True,
        )  # fmt: skip
        trainer = _Trainer(TINY, settings, x, y, net, torch.device("cpu"), _Dist(), False)
        trainer.dmm.train()
        adv, targets = trainer.joint_adversarial(x[:4], y[:4], torch.full((4,), 0.05))
        assert trainer.dmm.training  # attacked in eval mode, given back in training mode
        # two calls (smooth, then full-resolution), each with every image's three targets
        assert [a.shape[0] for a, _ in attempts] == [6, 6]
        tried = torch.cat([a for a, _ in attempts])
        tried_targets = torch.cat([t for _, t in attempts]).view(4, 3)
        logits = net(x[:4]).scatter(1, y[:4, None], float("-inf"))
        assert torch.equal(tried_targets, logits.topk(3, dim=1).indices)

        def consistency(images: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            u = to_unit_range(images)
            return trainer.dmm(u, trainer.g_ema(trainer.encoder(u)[0], t), t)

        trainer.dmm.eval()
        with torch.no_grad():
            loss = joint_loss(net, consistency, tried, tried_targets.reshape(-1)).view(4, 3)
        best = loss.argmin(dim=1)
        assert torch.equal(targets, tried_targets[torch.arange(4), best])
        torch.testing.assert_close(adv, tried.view(4, 3, *tried.shape[1:])[torch.arange(4), best])

    def test_joint_dmm_training_logs_how_many_joint_copies_it_flags(self, tmp_path) -> None:
        x, y, kwargs, up_to_dis = run_up_to_dis(tmp_path / "plain")
        shutil.copytree(tmp_path / "plain", tmp_path / "joint")
        plain = dataclasses.replace(up_to_dis, dmm_epochs=1)
        joint = dataclasses.replace(plain, adv_joint_fraction=1.0)
        a = train_contranet(TINY, x, y, settings=plain, run_dir=tmp_path / "plain", **kwargs)
        b = train_contranet(TINY, x, y, settings=joint, run_dir=tmp_path / "joint", **kwargs)
        assert "acc_dmm_joint_negative" not in a.history[-1]
        flagged = b.history[-1]["acc_dmm_joint_negative"]
        assert 0.0 <= flagged <= 1.0
        assert b.history[-1]["acc_dmm_adv_negative"] == flagged  # every copy is joint
        assert a.history[-1]["loss_dmm"] != b.history[-1]["loss_dmm"]
        # Once the dmm stage has run, the joint attack is part of the recipe.
        longer = dataclasses.replace(plain, dmm_epochs=2)
        with pytest.raises(CheckpointError, match="adv_joint_fraction"):
            train_contranet(TINY, x, y, settings=longer, run_dir=tmp_path / "joint", **kwargs)

    def test_ce_pretraining_trains_class_heads_outside_the_model(self, tmp_path) -> None:
        x, y, kwargs, up_to_dis = run_up_to_dis(tmp_path)
        # The loss may become "ce" before dmm_pretrain begins: the heads start fresh.
        ce = dataclasses.replace(
            up_to_dis, dmm_pretrain_epochs=3, dmm_pretrain_loss="ce", dmm_pretrain_adversarial=True
        )
        result = train_contranet(TINY, x, y, settings=ce, run_dir=tmp_path, **kwargs)
        pretrain = [r for r in result.history if r["stage"] == "dmm_pretrain"]
        assert len(pretrain) == 3
        for record in pretrain:
            assert {"loss_ce", "acc_real", "acc_syn", "acc_real_adv"} <= record.keys()
            assert all(0.0 <= record[k] <= 1.0 for k in ("acc_real", "acc_syn", "acc_real_adv"))
        assert pretrain[-1]["loss_ce"] < pretrain[0]["loss_ce"]
        # The heads are training state: in the checkpoint, not in the exported model.
        state = load_checkpoint(tmp_path / "checkpoints" / "epoch-0005")
        assert "class_heads" in state["nets"] and "class_heads" in state["optimizers"]
        head = state["nets"]["class_heads"]["real.weight"]
        assert head.shape == (4, result.model.dmm.feature_dim)
        assert not any("class_heads" in k for k in result.model.state_dict())
        assert result.model.state_dict().keys() == ContraNet.from_config(TINY).state_dict().keys()
        # Resuming the ce run loads its heads strictly and continues.
        longer = dataclasses.replace(ce, dmm_pretrain_epochs=4)
        resumed = train_contranet(TINY, x, y, settings=longer, run_dir=tmp_path, **kwargs)
        assert [r["stage"] for r in resumed.history].count("dmm_pretrain") == 4

    def test_dmm_can_start_from_the_classifier(self, tmp_path) -> None:
        x, y = data(16)
        mean, std = (0.45,), (0.3,)
        cfg = dataclasses.replace(
            TINY, dmm_backbone="resnet20", dmm_width=0.25, dmm_input_mean=mean, dmm_input_std=std
        )
        torch.manual_seed(3)
        network = CifarResNet(20, 4, in_channels=1, width=4).eval()
        classify = nn.Sequential(Normalize(mean, std), network).eval()
        settings = ContraNetTrainSettings(
            gan_epochs=1, dis_epochs=0, dmm_pretrain_epochs=1, dmm_epochs=1, batch_size=8,
            dmm_pretrain_loss="ce", dmm_pretrain_adversarial=True, dmm_init_from_classifier=True,
        )  # fmt: skip
        kwargs = dict(settings=settings, classify=classify, progress=False, log=None)
        with pytest.raises(ValueError, match=r"needs the classifier's network \(dmm_init\)"):
            train_contranet(cfg, x, y, **kwargs)
        with pytest.raises(ValueError, match="dmm_backbone 'resnet20'"):
            train_contranet(TINY, x, y, dmm_init=network, **kwargs)
        with pytest.raises(ValueError, match="does not match the DMM's ResNet20 trunk"):
            wide = CifarResNet(20, 4, in_channels=1, width=8)
            train_contranet(cfg, x, y, dmm_init=wide, **kwargs)
        # Before the first DMM epoch, F_real + its class head is the classifier.
        trainer = _Trainer(
            cfg, settings, x, y, classify, torch.device("cpu"), _Dist(), False, dmm_init=network
        )
        trainer.history = [{"stage": "gan"}]
        trainer.start_dmm_from_classifier()
        with torch.no_grad():
            inputs = to_unit_range(x)  # padded to 32x32 in [-1, 1]
            heads = trainer.class_heads
            assert heads is not None
            pairs = ((trainer.dmm.f_real, heads.real), (trainer.dmm.f_syn, heads.syn))
            for extractor, head in pairs:
                extractor.eval()
                torch.testing.assert_close(
                    head(extractor(inputs)), classify((inputs + 1) / 2), atol=1e-5, rtol=1e-5
                )
        # Once a DMM epoch has run, its weights are the run's own: no second copy.
        for param in trainer.dmm.f_real.parameters():
            param.data.zero_()
        trainer.history.append({"stage": "dmm_pretrain"})
        trainer.start_dmm_from_classifier()
        assert all(not p.any() for p in trainer.dmm.f_real.parameters())
        # The whole run: it trains from there, and the classifier passed in is not touched.
        before = {k: v.clone() for k, v in network.state_dict().items()}
        result = train_contranet(cfg, x, y, dmm_init=network, run_dir=tmp_path, **kwargs)
        assert [r["stage"] for r in result.history] == ["gan", "dmm_pretrain", "dmm"]
        assert all(torch.equal(v, network.state_dict()[k]) for k, v in before.items())
        trunk = result.model.dmm.f_real.net.state_dict()
        assert any(not torch.equal(v, before[k]) for k, v in trunk.items() if v.is_floating_point())

    def test_dmm_init_takes_the_classifier_normalisation(self) -> None:
        network = CifarResNet(20, 4, in_channels=1, width=4)
        pipeline = nn.Sequential(Normalize((0.45,), (0.3,)), network)
        meta = {"mean": [0.45], "std": [0.3]}
        cfg = dataclasses.replace(TINY, dmm_backbone="resnet20")
        filled, net = _dmm_init_from(pipeline, meta, cfg, "clf")
        assert net is network
        assert (filled.dmm_input_mean, filled.dmm_input_std) == ((0.45,), (0.3,))
        assert _dmm_init_from(pipeline, meta, filled, "clf")[0] == filled
        other = dataclasses.replace(cfg, dmm_input_mean=(0.5,), dmm_input_std=(0.3,))
        with pytest.raises(ValueError, match="differ from classifier 'clf'"):
            _dmm_init_from(pipeline, meta, other, "clf")
        # A classifier without normalisation reads [0, 1] images: mean 0, std 1.
        plain, net = _dmm_init_from(network, {}, cfg, "clf")
        assert net is network and (plain.dmm_input_mean, plain.dmm_input_std) == ((0.0,), (1.0,))

    def test_the_pretraining_loss_does_not_change_initial_weights(self) -> None:
        x, y = data(8)
        nets = {
            loss: _Trainer(
                TINY, ContraNetTrainSettings(dmm_pretrain_loss=loss), x, y, None,
                torch.device("cpu"), _Dist(), False,
            ).nets()
            for loss in ("triplet", "ce")
        }  # fmt: skip
        assert "class_heads" in nets["ce"] and "class_heads" not in nets["triplet"]
        for key, module in nets["triplet"].items():
            for name, value in module.state_dict().items():
                assert torch.equal(value, nets["ce"][key].state_dict()[name]), (key, name)

    def test_bad_labels_are_named(self) -> None:
        x, _ = data(8)
        with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\)"):
            train_contranet(TINY, x, torch.full((8,), 4), settings=ALL_STAGES, progress=False)
        with pytest.raises(ValueError, match="images must be"):
            train_contranet(TINY, torch.rand(8, 3, 32, 32), torch.zeros(8, dtype=torch.long))


_DDP_SCRIPT = textwrap.dedent(
    """
    import os, sys, torch
    from torch import nn
    import torch.distributed as dist
    from safetensors.torch import save_file
    from guardnet.nets.contranet import ContraNetConfig
    from guardnet.train import ContraNetTrainSettings, train_contranet

    torch.set_num_threads(1)
    out = sys.argv[1]
    config = ContraNetConfig(num_classes=4, in_channels=1, g_ch=2, d_ch=2, dmm_backbone="cnn",
                             dmm_width=0.25, encoder_features=16, dmm_hidden=16)
    settings = ContraNetTrainSettings(gan_epochs=1, aux_epochs=1, dis_epochs=1,
                                      dmm_pretrain_epochs=1, dmm_epochs=1, batch_size=8)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(32, 1, 28, 28, generator=g), torch.randint(0, 4, (32,), generator=g)
    torch.manual_seed(2)
    clf = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 4)).eval()
    result = train_contranet(config, x, y, settings=settings, classify=clf,
                             run_dir=os.path.join(out, "run"), progress=False, log=None)
    rank = dist.get_rank()
    save_file({k: v.contiguous() for k, v in result.model.state_dict().items()},
              os.path.join(out, f"rank{rank}.safetensors"))
    with open(os.path.join(out, f"rank{rank}.steps"), "w") as f:
        f.write(str(len(result.history)))
    dist.destroy_process_group()
    """
)


def test_ddp_under_torchrun_with_gloo(tmp_path) -> None:
    script = tmp_path / "train_ddp.py"
    script.write_text(_DDP_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "0",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        "localhost:0",
        str(script),
        str(tmp_path),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    a = load_file(str(tmp_path / "rank0.safetensors"))
    b = load_file(str(tmp_path / "rank1.safetensors"))
    # DDP keeps the ranks' weights identical (gradients averaged, buffers broadcast).
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key)
    assert (tmp_path / "rank1.steps").read_text() == "5"
    assert latest_checkpoint(tmp_path / "run").name == "epoch-0005"


def _fixture_split(name: str, split: str, *, limit: int | None = None, **_: object):
    """``load_split`` on the shipped MNIST fixtures (data-free tests; not a real split)."""
    from guardnet.data import SplitDataset, dataset_info, load_fixture

    images, labels = load_fixture("mnist" if split == "train" else "mnist-val")
    images, labels = images[:limit], labels[:limit]
    indices = torch.arange(labels.numel())
    return SplitDataset(images, labels, info=dataset_info(name), split=split, indices=indices)


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory) -> tuple[Path, list[str], str]:
    """A tiny ContraNet trained once by ``guardnet train contranet``: (run, argv, stdout)."""
    import contextlib
    import io

    import guardnet.data
    from guardnet.cli import main

    run = tmp_path_factory.mktemp("cli") / "run"
    argv = ["train", "contranet", "--dataset", "mnist", "--classifier", "mnist-cnn"]
    argv += ["--arch-args", '{"g_ch": 2, "d_ch": 2, "dmm_backbone": "cnn"}']
    argv += ["--epochs", "gan=1", "dis=1", "dmm_pretrain=1", "dmm=1", "--limit", "64"]
    argv += ["--eval-limit", "32", "--settings", '{"batch_size": 16, "adv_steps": 2}']
    argv += ["--out", str(run), "--no-progress"]
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(out):
        patch.setattr(guardnet.data, "load_split", _fixture_split)
        assert main(argv) == 0
    return run, argv, out.getvalue()


def test_cli_trains_a_contranet(cli_run, tmp_path, monkeypatch, capsys) -> None:
    import json

    import guardnet.data
    from guardnet.cli import main
    from guardnet.layers import ContraNetLayer

    monkeypatch.setattr(guardnet.data, "load_split", _fixture_split)
    run, argv, out = cli_run
    assert "[gan 1/1]" in out and "[dmm 1/1]" in out and "acc_dmm_adv_negative" in out
    folder = run / "model"
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "ContraNet" and config["classifier"] == "mnist-cnn"
    assert config["input_size"] == [1, 28, 28] and config["train_settings"]["adv_steps"] == 2
    assert config["train_settings"]["adv_eps"] == [0.05, 0.1, 0.2, 0.3]  # MNIST defaults
    assert set(config["metrics"]) == {
        f"mnist_val_{k}" for k in ("l2", "ssim", "dmm_pair", "dis_pair", "ssim_pair")
    }
    assert shlex.join(["guardnet", *argv]) in (folder / "README.md").read_text()
    layer = ContraNetLayer.from_pretrained(folder)
    assert layer.num_classes == 10 and layer.net.config.g_ch == 2

    with pytest.raises(SystemExit):  # argparse rejects a malformed STAGE=N
        main([*argv[:-3], "--epochs", "gan=x", "--out", str(tmp_path / "y")])
    assert "expected STAGE=N" in capsys.readouterr().err
    assert main([*argv[:4], "--classifier", "resnet20-gtsrb", "--out", str(tmp_path / "z")]) == 2
    assert "43 classes" in capsys.readouterr().err


def test_branch_keep_dmm_continues_the_shipped_dmm(cli_run, tmp_path, monkeypatch, capsys) -> None:
    """``guardnet train branch-contranet --keep-dmm``: shipped weights -> a resumable run."""
    import guardnet.data
    from guardnet.cli import main
    from guardnet.train import load_checkpoint
    from guardnet.weights import from_pretrained

    monkeypatch.setattr(guardnet.data, "load_split", _fixture_split)
    run, argv, _ = cli_run
    shipped = from_pretrained(run / "model")
    branch = tmp_path / "branch"
    branch_argv = ["train", "branch-contranet", "--source-model", str(run / "model")]
    branch_argv += ["--out", str(branch), "--keep-dmm"]

    assert main([*branch_argv, "--arch-args", '{"dmm_hidden": 8}']) == 2
    assert "keep_dmm needs source_model and no arch_args" in capsys.readouterr().err
    assert not branch.exists()
    assert main(branch_argv) == 0
    assert "(4 units)" in capsys.readouterr().out  # gan, dis, dmm_pretrain and dmm: all done
    state = load_checkpoint(branch / "checkpoints" / "epoch-0004")
    assert [r["stage"] for r in state["history"]] == ["gan", "dis", "dmm_pretrain", "dmm"]
    for name, net in (("dmm", shipped.dmm), ("encoder", shipped.encoder)):
        for key, value in net.state_dict().items():
            torch.testing.assert_close(state["nets"][name][key], value, msg=f"{name}.{key}")

    # A longer DMM plan resumes after the shipped DMM epoch: only the DMM moves.
    longer_argv = [a if a != "dmm=1" else "dmm=2" for a in argv]
    longer_argv[longer_argv.index("--out") + 1] = str(branch)
    assert main(longer_argv) == 0
    assert "(4 of 5 epochs done)" in capsys.readouterr().out
    longer = from_pretrained(branch / "model")
    meta = longer.pretrained_config
    assert meta["train_settings"]["dmm_epochs"] == 2
    torch.testing.assert_close(longer.encoder.state_dict(), shipped.encoder.state_dict())
    torch.testing.assert_close(longer.generator.state_dict(), shipped.generator.state_dict())
    moved = [
        k
        for k, v in longer.dmm.state_dict().items()
        if v.is_floating_point() and not torch.equal(v, shipped.dmm.state_dict()[k])
    ]
    assert moved, "the extra DMM epoch left the DMM unchanged"
