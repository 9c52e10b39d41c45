"""Attacks: the library wrappers, guardnet's adaptive attacks on a toy guard whose geometry is
known, and the adversarial-example cache."""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch
from helpers import SecondPixelDetector, SumClassifier
from torch import Tensor, nn

from guardnet import GuardedModel
from guardnet.errors import InputShapeError
from guardnet.eval.attacks import (
    ADAPTIVE_ATTACKS,
    AdversarialCache,
    DetectorLossPGD,
    LibraryAttack,
    OrthogonalPGD,
    SelectivePGD,
    ViewPGD,
    make_adaptive_attack,
    make_attack,
    project_out,
)

# ---------------------------------------------------------------------------------------------
# A toy guard in two pixels. Class 1 iff x1 + x2 > 1; the detector rejects |x2 - 0.5| > 0.05.
# From (0.3, 0.52) with eps 0.3 the attacker must raise x1 (to > 0.45) and keep x2 near 0.5:
# the classifier's gradient raises both pixels, so a classifier-only attack is always caught,
# while an attack that respects the detector (orthogonal projection) gets through.
# ---------------------------------------------------------------------------------------------


def toy_guard() -> GuardedModel:
    guard = GuardedModel(SumClassifier(), [SecondPixelDetector()], num_classes=2)
    guard.layers["pixel"].set_threshold(0.05, score_scale=0.05)
    return guard


def toy_inputs(n: int = 8) -> tuple[Tensor, Tensor]:
    x = torch.tensor([0.3, 0.52]).repeat(n, 1).view(n, 1, 1, 2)
    return x, torch.zeros(n, dtype=torch.long)


def outcome(guard: GuardedModel, adv: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    result = guard(adv)
    return result.classifier_labels != labels, result.rejected


def test_toy_guard_starts_clean() -> None:
    guard = toy_guard()
    x, y = toy_inputs()
    fooled, rejected = outcome(guard, x, y)
    assert not fooled.any() and not rejected.any()


def test_classifier_only_pgd_is_caught_by_the_toy_detector() -> None:
    pytest.importorskip("torchattacks")
    guard = toy_guard()
    x, y = toy_inputs()
    adv = make_attack("pgd", guard.classifier, eps=0.3, steps=20)(x, y)
    fooled, rejected = outcome(guard, adv, y)
    assert fooled.all() and rejected.all()  # fools the classifier, never passes the guard


@pytest.mark.parametrize("cls", [OrthogonalPGD, DetectorLossPGD, ViewPGD])
def test_adaptive_attacks_defeat_the_toy_guard(cls: type) -> None:
    guard = toy_guard()
    x, y = toy_inputs()
    kwargs = {"detector_weight": 2.0} if cls is DetectorLossPGD else {}
    adv = cls(guard, eps=0.3, steps=50, random_start=False, **kwargs)(x, y)
    fooled, rejected = outcome(guard, adv, y)
    assert (fooled & ~rejected).all()
    assert float((adv - x).abs().max()) <= 0.3 + 1e-6


def test_detector_loss_distance_term_shrinks_the_perturbation() -> None:
    # eps 0.05 cannot reach x1 + x2 > 1 from (0.3, 0.52), so both attacks return their last
    # iterate: the plain one pushed to the edge of the ball, the one with a heavy distance term
    # held near the input (it oscillates within a step of it).
    guard = toy_guard()
    x, y = toy_inputs(4)
    plain = DetectorLossPGD(guard, eps=0.05, steps=60, random_start=False)
    # The toy margins have slope 20 per pixel: a weight of 1e4 outpulls them one step out.
    tight = DetectorLossPGD(guard, eps=0.05, steps=60, random_start=False, distance_weight=1e4)
    assert "distance_weight" not in plain.params() and tight.params()["distance_weight"] == 1e4
    size = {a: (a(x, y) - x).flatten(1).norm(dim=1) for a in (plain, tight)}
    assert bool((size[plain] > 0.04).all())
    assert bool((size[tight] < 3 * tight.alpha).all())
    with pytest.raises(ValueError, match="distance_weight"):
        DetectorLossPGD(guard, eps=0.1, distance_weight=-1.0)


def test_orthogonal_pgd_moves_only_the_free_pixel() -> None:
    guard = toy_guard()
    x, y = toy_inputs()
    adv = OrthogonalPGD(guard, eps=0.3, steps=50, random_start=False)(x, y)
    # The detector's gradient is along x2: the projected classifier step leaves x2 alone.
    torch.testing.assert_close(adv[..., 1], x[..., 1])
    assert bool((adv[..., 0] > 0.45).all())


def test_selective_pgd_alternates_objectives_and_stays_in_budget() -> None:
    guard = toy_guard()
    x, y = toy_inputs()
    adv = SelectivePGD(guard, eps=0.3, steps=50, random_start=False)(x, y)
    assert float((adv - x).abs().max()) <= 0.3 + 1e-6
    # Without projection, its classifier steps raise x2 too: it ends up away from (0.3, 0.52).
    assert not torch.equal(adv, x)


def test_project_out_is_orthogonal_and_keeps_zero_directions() -> None:
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 3, 5, 5, generator=gen), torch.randn(4, 3, 5, 5, generator=gen)
    b[1] = 0
    out = project_out(a, b)
    dots = (out.flatten(1) * b.flatten(1)).sum(1)
    torch.testing.assert_close(dots, torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1], a[1])


def test_l2_attack_respects_the_budget() -> None:
    guard = toy_guard()
    x, y = toy_inputs()
    adv = OrthogonalPGD(guard, eps=0.25, norm="L2", steps=30)(x, y)
    assert float((adv - x).flatten(1).norm(dim=1).max()) <= 0.25 + 1e-5


def test_adaptive_attack_is_seeded_and_leaves_the_global_rng_alone() -> None:
    guard = toy_guard()
    x, y = toy_inputs()
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first = ViewPGD(guard, eps=0.1, steps=3, seed=7)(x, y)
    after = torch.rand(1)
    second = ViewPGD(guard, eps=0.1, steps=3, seed=7)(x, y)
    assert torch.equal(first, second)
    assert torch.equal(before, after)


def test_targeted_adaptive_attack_reaches_its_targets() -> None:
    torch.manual_seed(0)
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
    guard = GuardedModel(classifier, [SecondPixelDetector()], num_classes=4)
    guard.layers["pixel"].set_threshold(10.0)  # never rejects: the classifier alone
    x = torch.rand(6, 3, 8, 8)
    y = guard(x).classifier_labels
    attack = DetectorLossPGD(guard, eps=0.5, steps=50, targeted=True, random_start=False)
    adv = attack(x, y)
    predicted = guard(adv).classifier_labels
    assert bool((predicted != y).all())


def test_adaptive_attacks_check_their_arguments() -> None:
    guard = toy_guard()
    with pytest.raises(TypeError, match="GuardedModel"):
        ViewPGD(nn.Linear(2, 2), eps=0.1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="eps"):
        ViewPGD(guard, eps=0.0)
    with pytest.raises(ValueError, match="norm"):
        ViewPGD(guard, eps=0.1, norm="L1")
    with pytest.raises(ValueError, match="unknown scores"):
        DetectorLossPGD(guard, eps=0.1, weights={"nope": 1.0})
    with pytest.raises(ValueError, match="unknown adaptive attack"):
        make_adaptive_attack("nope", guard, eps=0.1)
    assert {"bpda", "detector", "selective", "orthogonal"} <= set(ADAPTIVE_ATTACKS)


def test_attack_checks_inputs() -> None:
    attack = ViewPGD(toy_guard(), eps=0.1)
    x, y = toy_inputs(2)
    with pytest.raises(InputShapeError, match="one label per image"):
        attack(x, y[:1])
    with pytest.raises(InputShapeError, match=r"torch\.long"):
        attack(x, y.float())
    assert attack(x[:0], y[:0]).shape == (0, 1, 1, 2)


# ------------------------------------------------------------------- library attacks


class Linear(nn.Module):
    num_classes: ClassVar[int] = 3

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


@pytest.mark.parametrize(
    ("name", "kwargs", "norm"),
    [
        ("fgsm", {"eps": 0.05}, "inf"),
        ("bim", {"eps": 0.05}, "inf"),
        ("pgd", {"eps": 0.05, "steps": 10}, "inf"),
        ("pgdl2", {"eps": 0.5, "steps": 10}, "2"),
        ("apgd", {"eps": 0.05, "steps": 10}, "inf"),
        ("deepfool", {"steps": 10}, None),
        ("ead", {"steps": 50, "binary_search_steps": 4, "initial_const": 1.0}, None),
        ("cw", {"steps": 100, "binary_search_steps": 3, "initial_const": 1.0}, None),
        ("cw", {"steps": 5, "binary_search_steps": 1}, "weak"),  # too weak: fails
    ],
)
def test_library_attacks_run_and_respect_budgets(name: str, kwargs: dict, norm: str | None) -> None:
    pytest.importorskip("torchattacks")
    if name in ("cw", "deepfool"):
        pytest.importorskip("foolbox")
    model = Linear().eval()
    x = torch.rand(6, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    y = model(x).argmax(1)
    adv = make_attack(name, model, **kwargs)(x, y)
    assert adv.shape == x.shape and float(adv.min()) >= 0 and float(adv.max()) <= 1
    delta = (adv - x).flatten(1)
    if norm == "inf":
        assert float(delta.abs().max()) <= kwargs["eps"] + 1e-5
    elif norm == "2":
        assert float(delta.norm(dim=1).max()) <= kwargs["eps"] + 1e-4
    else:  # minimum-norm attacks: they should fool this weak linear model
        fooled = model(adv).argmax(1) != y
        assert bool(fooled.float().mean() >= 0.5) or norm == "weak"
        if name == "cw":  # where it fails, the input comes back (foolbox alone returns zeros)
            assert torch.equal(adv[~fooled], x[~fooled])
            assert bool((adv.flatten(1).abs().sum(dim=1) > 0).all())


def test_deepfool_matches_the_closed_form_on_a_linear_model() -> None:
    # On an affine classifier DeepFool's first step lands (1 + overshoot) times past the nearest
    # decision boundary, whose L2 distance is |f_y - f_k| / ||w_y - w_k||, minimised over k.
    pytest.importorskip("foolbox")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 43)).eval()  # GTSRB's class count
    with torch.no_grad():
        model[1].weight.mul_(0.1)
    x = 0.5 + 0.01 * torch.randn(5, 3, 4, 4)  # far from the [0, 1] bounds: no clipping
    logits = model(x)
    y = logits.argmax(1)
    w = model[1].weight
    gaps = logits.gather(1, y[:, None]) - logits  # (N, K), >= 0
    dists = gaps / (w[y][:, None, :] - w[None]).norm(dim=2)  # (N, K)
    top10 = logits.argsort(1, descending=True)[:, 1:10]  # the candidates other than y
    expected = dists.gather(1, top10).min(1).values
    adv = make_attack("deepfool", model, steps=50)(x, y)
    assert bool((model(adv).argmax(1) != y).all())
    moved = (adv - x).flatten(1).norm(dim=1)
    torch.testing.assert_close(moved, 1.02 * (expected + 1e-4), rtol=1e-3, atol=1e-5)


def test_library_attack_arguments_are_checked() -> None:
    model = Linear()
    with pytest.raises(ValueError, match="unknown attack"):
        LibraryAttack("nope", model, eps=0.1)
    with pytest.raises(ValueError, match="needs a budget"):
        LibraryAttack("pgd", model)
    with pytest.raises(ValueError, match="takes no eps"):
        LibraryAttack("cw", model, eps=0.1)
    with pytest.raises(ValueError, match="no parameter"):
        LibraryAttack("pgd", model, eps=0.1, stepz=3)
    attack = LibraryAttack("pgd", model, eps=0.1)
    assert attack.params()["alpha"] == pytest.approx(2.5 * 0.1 / 50)
    assert LibraryAttack("bim", model, eps=8 / 255).params()["steps"] == 10  # Kurakin's rule


# ------------------------------------------------------------------- cache


def test_cache_reuses_results_and_separates_configurations(tmp_path) -> None:
    guard = toy_guard()
    x, y = toy_inputs(4)
    cache = AdversarialCache(tmp_path)
    first = cache.run(ViewPGD(guard, eps=0.1, steps=3), x, y)
    again = cache.run(ViewPGD(guard, eps=0.1, steps=3), x, y)
    assert torch.equal(first, again) and cache.hits == 1 and cache.misses == 1
    cache.run(ViewPGD(guard, eps=0.2, steps=3), x, y)  # other parameters
    guard.layers["pixel"].set_threshold(0.1)  # other thresholds: another model state
    cache.run(ViewPGD(guard, eps=0.1, steps=3), x, y)
    cache.run(ViewPGD(guard, eps=0.1, steps=3), x + 0.01, y)  # other inputs
    assert cache.misses == 4 and len(list(tmp_path.glob("*.safetensors"))) == 4


def test_autoattack_runs_within_budget() -> None:
    pytest.importorskip("torchattacks")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 5)).eval()  # APGD-T's DLR needs >= 4
    x = torch.rand(6, 3, 4, 4)
    y = model(x).argmax(1)
    adv = make_attack("autoattack", model, eps=0.05)(x, y)
    assert float((adv - x).abs().max()) <= 0.05 + 1e-6
    fooled = model(adv).argmax(1) != y
    # AutoAttack returns the input where it fails: unchanged images are exactly the failures.
    assert torch.equal(adv[~fooled], x[~fooled])
