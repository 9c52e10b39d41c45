"""The layer-aware adaptive attacks (smooth PGD, Square, HopSkipJump, EOT) on toy guards whose
geometry is known."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import SecondPixelDetector
from torch import Tensor, nn

from guardnet import GuardedModel
from guardnet.errors import ConfigError
from guardnet.eval.attacks import (
    ADAPTIVE_ATTACKS,
    HopSkipJump,
    SmoothPGD,
    SquareAttack,
    ViewPGD,
    make_adaptive_attack,
    register_adaptive_attack,
)
from guardnet.eval.attacks.smooth import upsample_perturbation
from guardnet.eval.attacks.square import square_fraction, square_masks
from guardnet.layers.base import Layer, LayerInput, LayerKind, LayerOutput


def verdict(guard: GuardedModel, adv: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    result = guard(adv)
    return result.classifier_labels != labels, result.rejected


def assert_in_budget(adv: Tensor, x: Tensor, eps: float) -> None:
    assert adv.shape == x.shape
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    assert float((adv - x).abs().max()) <= eps + 1e-6


# ---------------------------------------------------------------------------------------------
# A high-frequency detector (SAEC-like: a noise statistic without gradient) on 16x16 images.
# Class 1 iff mean(w * x) > 0.11 with w = 0.2 + a +-1 checkerboard: the classifier's gradient
# sign is the checkerboard, so PGD's perturbation is high-frequency and the detector (mean
# absolute Laplacian, rejecting above 0.01) catches it; a constant shift of +eps (gain
# 0.2 eps = 0.02 at eps 0.1) fools the classifier and leaves the Laplacian of the smooth images
# at 0.
# ---------------------------------------------------------------------------------------------


class CheckerClassifier(nn.Module):
    def __init__(self, size: int = 16) -> None:
        super().__init__()
        i = torch.arange(size)
        checker = ((i[:, None] + i[None, :]) % 2 * 2 - 1).float()
        self.register_buffer("w", 0.2 + checker)

    def forward(self, x: Tensor) -> Tensor:
        s = (x * self.w).mean(dim=(1, 2, 3)) - 0.11
        return torch.stack([-s, s], dim=1) * 100


class LaplacianDetector(Layer):
    """``pre``, not differentiable: mean absolute Laplacian over the interior pixels."""

    kind = LayerKind.PRE
    default_name = "laplacian"

    def forward(self, inputs: LayerInput) -> LayerOutput:
        kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
        with torch.no_grad():
            lap = F.conv2d(inputs.images.detach(), kernel.view(1, 1, 3, 3).to(inputs.images))
        return LayerOutput(scores=lap.abs().mean(dim=(1, 2, 3)))


def smooth_toy(n: int = 6) -> tuple[GuardedModel, Tensor, Tensor]:
    guard = GuardedModel(CheckerClassifier(), [LaplacianDetector()], num_classes=2)
    guard.layers["laplacian"].set_threshold(0.01, score_scale=0.01)
    ramp = torch.linspace(-0.05, 0.05, 16)
    slope = torch.linspace(0.5, 1.0, n)
    x = 0.5 + slope[:, None, None] * ramp[None, None, :] * torch.ones(n, 16, 16)
    return guard, x.unsqueeze(1), torch.zeros(n, dtype=torch.long)


@pytest.mark.filterwarnings("ignore:no rejecting layer")
def test_smooth_attack_evades_a_high_frequency_detector_that_pgd_does_not() -> None:
    guard, x, y = smooth_toy()
    fooled, rejected = verdict(guard, x, y)
    assert not fooled.any() and not rejected.any()
    plain = ViewPGD(guard, eps=0.1, steps=50, random_start=False)(x, y)
    fooled, rejected = verdict(guard, plain, y)
    assert not (fooled & ~rejected).any()  # PGD's checkerboard is always caught
    adv = SmoothPGD(guard, eps=0.1, steps=50, resolution=4, random_start=False)(x, y)
    fooled, rejected = verdict(guard, adv, y)
    assert (fooled & ~rejected).all()
    assert_in_budget(adv, x, 0.1)


def test_upsampled_perturbation_stays_in_the_ball() -> None:
    low = (torch.rand(3, 2, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1) * 0.1
    up = upsample_perturbation(low, (13, 17))
    assert up.shape == (3, 2, 13, 17) and float(up.abs().max()) <= 0.1 + 1e-7
    assert upsample_perturbation(low, (4, 4)) is low


# ---------------------------------------------------------------------------------------------
# A label-conditioned detector (ContraNet-like). Six pixels: logits 10 * x[0:3]; for predicted
# label k the detector rejects when the "key" pixel x[3 + k] > 0.5. Image A's keys reject
# label 2, image B's label 1; in each, the runner-up class by clean logits is the rejected one,
# so only an attack that tries every wrong class finds the label that passes (A -> 1, B -> 2).
# ---------------------------------------------------------------------------------------------


class PixelLogits(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return 10 * x.flatten(1)[:, :3]


class KeyDetector(Layer):
    kind = LayerKind.POST
    differentiable = True
    default_name = "key"

    def forward(self, inputs: LayerInput) -> LayerOutput:
        assert inputs.labels is not None
        flat = inputs.images.flatten(1)
        return LayerOutput(scores=flat.gather(1, 3 + inputs.labels[:, None]).squeeze(1))


def key_toy() -> tuple[GuardedModel, Tensor, Tensor]:
    guard = GuardedModel(PixelLogits(), [KeyDetector()], num_classes=3)
    guard.layers["key"].set_threshold(0.5, score_scale=0.1)
    a = [0.55, 0.45, 0.5, 0.0, 0.0, 1.0]
    b = [0.55, 0.5, 0.45, 0.0, 1.0, 0.0]
    x = torch.tensor([a, b, a, b]).view(4, 1, 1, 6)
    return guard, x, torch.zeros(4, dtype=torch.long)


def test_targeting_every_class_picks_the_passing_label_per_image() -> None:
    guard, x, y = key_toy()
    kwargs = {"eps": 0.1, "steps": 40, "resolution": None, "random_start": False}
    for weak in (SmoothPGD(guard, **kwargs), SmoothPGD(guard, num_targets=1, **kwargs)):
        fooled, rejected = verdict(guard, weak(x, y), y)
        assert not (fooled & ~rejected).any()  # the runner-up label is always rejected
    attack = SmoothPGD(guard, num_targets="all", **kwargs)
    adv = attack(x, y)
    result = guard(adv)
    assert not result.rejected.any()
    assert result.classifier_labels.tolist() == [1, 2, 1, 2]
    assert_in_budget(adv, x, 0.1)
    assert attack.params()["num_targets"] == "all"
    # Targets in the order of the clean logits; more than K - 1 asked: every other class.
    targets = SmoothPGD(guard, num_targets=5, **kwargs)._targets(x, y, torch.Generator())
    assert [t.tolist() for t in targets] == [[2, 1, 2, 1], [1, 2, 1, 2]]


# ---------------------------------------------------------------------------------------------
# Gradient-free toy on 8x8 images: class 1 iff the left half's mean > 0.5; the detector (a
# count, no gradient) rejects when more than a quarter of the right half's pixels exceed 0.55.
# Class-0 images sit at 0.45 / 0.5: at eps 0.08 the attack must raise >= 27 of the 32 left
# pixels and keep >= 24 of the 32 right ones from rising.
# ---------------------------------------------------------------------------------------------


class LeftHalfClassifier(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        s = x[..., :4].mean(dim=(1, 2, 3)) - 0.5
        return torch.stack([-s, s], dim=1) * 10


class RightCountDetector(Layer):
    kind = LayerKind.PRE
    default_name = "count"

    def forward(self, inputs: LayerInput) -> LayerOutput:
        right = inputs.images[..., 4:].detach()
        return LayerOutput(scores=(right > 0.55).float().mean(dim=(1, 2, 3)))


def count_toy() -> GuardedModel:
    guard = GuardedModel(LeftHalfClassifier(), [RightCountDetector()], num_classes=2)
    guard.layers["count"].set_threshold(0.25, score_scale=0.25)
    return guard


def class0_images(n: int) -> Tensor:
    x = torch.full((n, 1, 8, 8), 0.5)
    x[..., :4] = 0.45 - 0.01 * torch.arange(n).view(n, 1, 1, 1) / n
    return x


def test_square_attack_defeats_the_count_detector_within_budget() -> None:
    guard = count_toy()
    x = class0_images(6)
    y = torch.zeros(6, dtype=torch.long)
    attack = SquareAttack(guard, eps=0.08, queries=1500, seed=1)
    adv = attack(x, y)
    fooled, rejected = verdict(guard, adv, y)
    assert (fooled & ~rejected).all()
    assert_in_budget(adv, x, 0.08)
    # On the vertices of the ball: every pixel moved by exactly +-eps (none clipped here).
    torch.testing.assert_close((adv - x).abs(), torch.full_like(x, 0.08))
    assert attack.params() == {
        "eps": 0.08,
        "norm": "Linf",
        "queries": 1500,
        "p_init": 0.05,
        "loss": "sum",
        "confidence": 0.0,
    }


def test_square_schedule_and_masks() -> None:
    assert square_fraction(0, 1000, 0.1) == 0.1
    assert square_fraction(2, 1000, 0.1) == 0.05  # query 20 of 10,000
    assert square_fraction(999, 1000, 0.1) == pytest.approx(0.1 / 2**9)
    masks = square_masks(3, 5, 7, 4, torch.Generator().manual_seed(0), "cpu")
    assert masks.shape == (4, 1, 5, 7) and masks.sum(dim=(1, 2, 3)).tolist() == [9] * 4


def test_hopskipjump_walks_from_another_class_to_the_budget() -> None:
    # Class-1 images with half their left pixels at 0.95, half at 0.3 are the starts: the
    # L-inf path from a class-0 image to one crosses the boundary at distance 0.25 > eps, so
    # only HopSkipJump's gradient-estimate steps bring it inside eps = 0.08.
    guard = count_toy()
    starts = torch.full((2, 1, 8, 8), 0.5)
    starts[..., :4] = torch.tensor([0.95, 0.3]).repeat(16).view(1, 1, 8, 4)
    x = torch.cat([class0_images(6), starts])
    y = guard(x).classifier_labels
    assert y.tolist() == [0] * 6 + [1, 1] and not guard(x).rejected.any()
    attack = HopSkipJump(guard, eps=0.08, iterations=20, init_evals=50, init_samples=10)
    adv = attack(x, y)
    assert_in_budget(adv, x, 0.08)
    fooled, rejected = verdict(guard, adv, y)
    assert (fooled & ~rejected)[:6].all()
    # Starting at the boundary point of the L-inf path alone stays out of budget.
    start, found = attack._start(x[:6], y[:6], torch.Generator().manual_seed(0))
    assert found.all()
    _, dist = attack._boundary(x[:6], y[:6], start, 1e-6)
    assert bool((dist > 0.2).all())


def test_hopskipjump_without_a_start_returns_the_input() -> None:
    guard = count_toy()
    x = class0_images(3)
    y = torch.zeros(3, dtype=torch.long)
    adv = HopSkipJump(guard, eps=0.08, iterations=2, init_samples=0)(x, y)
    assert torch.equal(adv, x)


# ---------------------------------------------------------------------------------------------
# EOT: a classifier whose value is w0 . x but whose gradient is w0 + 10 * noise (fresh noise per
# call). One draw's sign is right 54% of the time; the sum of 32 draws' gradients is right
# most of the time, which the attack needs to raise the 64 pixels' mean by half the budget.
# ---------------------------------------------------------------------------------------------


class NoisyGradientClassifier(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        flat = x.flatten(1)
        noise = 10 * torch.randn_like(flat)
        s = flat.mean(dim=1) - 0.55 + (noise * (flat - flat.detach())).mean(dim=1)
        return torch.stack([-s, s], dim=1) * 100


def eot_toy() -> tuple[GuardedModel, Tensor, Tensor]:
    guard = GuardedModel(NoisyGradientClassifier(), [SecondPixelDetector()], num_classes=2)
    guard.layers["pixel"].set_threshold(10.0)  # never rejects
    return guard, torch.full((6, 1, 8, 8), 0.5), torch.zeros(6, dtype=torch.long)


@pytest.mark.parametrize("cls", [ViewPGD, SmoothPGD])
def test_eot_averages_a_random_layers_gradient(cls: type) -> None:
    guard, x, y = eot_toy()
    extra = {"resolution": None} if cls is SmoothPGD else {}
    kwargs = {"eps": 0.1, "steps": 20, "random_start": False, **extra}
    fooled, _ = verdict(guard, cls(guard, **kwargs)(x, y), y)
    assert fooled.float().mean() <= 0.5
    attack = cls(guard, eot_samples=32, **kwargs)
    adv = attack(x, y)
    fooled, rejected = verdict(guard, adv, y)
    assert (fooled & ~rejected).all()
    assert_in_budget(adv, x, 0.1)
    assert attack.params()["eot_samples"] == 32


# ---------------------------------------------------------------------------------------------
# Registry and arguments
# ---------------------------------------------------------------------------------------------


def test_the_new_attacks_are_registered_and_built_by_name() -> None:
    guard, _, _ = key_toy()
    assert {"smooth", "square", "hopskipjump"} <= set(ADAPTIVE_ATTACKS)
    built = {"smooth": SmoothPGD, "square": SquareAttack, "hopskipjump": HopSkipJump}
    for name, cls in built.items():
        attack = make_adaptive_attack(name, guard, eps=0.1, batch_size=4, seed=3, progress=False)
        assert type(attack) is cls and attack.config()["attack"] == name
        assert attack.config()["params"]["eps"] == 0.1
    with pytest.raises(ConfigError, match="already registered"):

        @register_adaptive_attack
        class Impostor(SquareAttack):
            name = "square"


def test_new_attacks_check_their_arguments() -> None:
    guard, _, _ = key_toy()
    with pytest.raises(TypeError, match="GuardedModel"):
        SquareAttack(nn.Linear(2, 2), eps=0.1)  # type: ignore[arg-type]
    cases = [
        (SquareAttack, {"eps": 0.0}, "eps"),
        (SquareAttack, {"eps": 0.1, "queries": 0}, "queries"),
        (SquareAttack, {"eps": 0.1, "p_init": 2.0}, "p_init"),
        (SquareAttack, {"eps": 0.1, "loss": "ce"}, "loss"),
        (HopSkipJump, {"eps": 0.1, "iterations": 0}, "iterations"),
        (HopSkipJump, {"eps": 0.1, "gamma": 0.0}, "gamma"),
        (SmoothPGD, {"eps": 0.1, "resolution": 0}, "resolution"),
        (SmoothPGD, {"eps": 0.1, "restarts": 0}, "restarts"),
        (SmoothPGD, {"eps": 0.1, "num_targets": 0}, "num_targets"),
        (SmoothPGD, {"eps": 0.1, "num_targets": 2, "targeted": True}, "targeted"),
        (SmoothPGD, {"eps": 0.1, "norm": "L2"}, "L-inf"),
        (SmoothPGD, {"eps": 0.1, "eot_samples": 0}, "eot_samples"),
    ]
    for cls, kwargs, message in cases:
        with pytest.raises(ConfigError, match=message):
            cls(guard, **kwargs)


def test_query_attacks_are_seeded() -> None:
    guard = count_toy()
    x = class0_images(3)
    y = torch.zeros(3, dtype=torch.long)
    first = SquareAttack(guard, eps=0.08, queries=30, seed=5)(x, y)
    assert torch.equal(first, SquareAttack(guard, eps=0.08, queries=30, seed=5)(x, y))
    assert not torch.equal(first, SquareAttack(guard, eps=0.08, queries=30, seed=6)(x, y))
