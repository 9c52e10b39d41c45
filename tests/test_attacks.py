"""Attacks: the adaptive attacks on a toy guard whose geometry is known, the standard attacks
(closed forms on affine models, invariants, strength on the shipped MNIST classifier), and the
adversarial-example cache."""

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
    STANDARD_ATTACKS,
    AdversarialCache,
    DetectorLossPGD,
    OrthogonalPGD,
    SelectivePGD,
    ViewPGD,
    make_adaptive_attack,
    make_attack,
    project_out,
)
from guardnet.eval.attacks.apgd import apgd, apgd_checkpoints
from guardnet.eval.attacks.bim import bim_steps
from guardnet.eval.attacks.losses import dlr_loss
from guardnet.eval.attacks.pgd import pgd
from guardnet.eval.attacks.targets import choose_targets

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


# ------------------------------------------------------------------- standard attacks


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
        ("apgd", {"eps": 0.5, "steps": 10, "norm": "L2", "loss": "dlr"}, "2"),
        ("deepfool", {"steps": 10}, None),
        ("ead", {"steps": 50, "binary_search_steps": 4, "initial_const": 1.0}, None),
        ("cw", {"steps": 100, "binary_search_steps": 3, "initial_const": 1.0}, None),
        ("cw", {"steps": 5, "binary_search_steps": 1}, "weak"),  # too weak: fails
    ],
)
def test_standard_attacks_run_and_respect_budgets(
    name: str, kwargs: dict, norm: str | None
) -> None:
    if STANDARD_ATTACKS[name][0] == "foolbox":
        pytest.importorskip("foolbox")
    model = Linear().eval()
    x = torch.rand(6, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    y = model(x).argmax(1)
    adv = make_attack(name, model, **kwargs)(x, y)
    assert adv.shape == x.shape and float(adv.min()) >= 0 and float(adv.max()) <= 1
    delta = (adv - x).flatten(1)
    if norm == "inf":
        assert float(delta.abs().max()) <= kwargs["eps"] + 1e-6
    elif norm == "2":
        assert float(delta.norm(dim=1).max()) <= kwargs["eps"] + 1e-5
    else:  # minimum-norm attacks: they should fool this weak linear model
        fooled = model(adv).argmax(1) != y
        assert bool(fooled.float().mean() >= 0.5) or norm == "weak"
        if name in ("cw", "ead"):  # where it fails, the input comes back (foolbox: zeros)
            assert torch.equal(adv[~fooled], x[~fooled])
            assert bool((adv.flatten(1).abs().sum(dim=1) > 0).all())


@pytest.mark.parametrize("rule", ["second", "random"])
def test_targeted_cw_reaches_the_chosen_class(rule: str) -> None:
    pytest.importorskip("foolbox")
    model = Linear().eval()
    x = torch.rand(6, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    y = model(x).argmax(1)
    attack = make_attack(
        "cw", model, steps=100, binary_search_steps=3, initial_const=1.0, target=rule, seed=4
    )
    adv = attack(x, y)
    logits = model(x)
    expected = choose_targets(logits, y, rule, generator=torch.Generator().manual_seed(4))
    reached = model(adv).argmax(1)
    assert bool((expected != y).all())
    assert float((reached == expected).float().mean()) >= 0.8
    with pytest.raises(ValueError, match="target must be None or one of"):
        make_attack("cw", model, target="third")


def two_class_linear() -> tuple[nn.Module, Tensor, Tensor, Tensor]:
    """A 2-class affine model, inputs 0.1 or more from the [0, 1] bounds, and the unit direction
    ``w_other - w_y`` that raises the cross-entropy everywhere (the loss is monotone in it)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 2)).eval()
    x = 0.2 + 0.6 * torch.rand(5, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    y = model(x).argmax(1)
    w = model[1].weight.detach()
    return model, x, y, (w[1 - y] - w[y]).view_as(x)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("fgsm", {}),
        ("bim", {}),  # 29 steps of 1/255 > 0.1
        ("pgd", {"random_start": False}),
        ("pgd", {}),  # 50 steps of 0.005 cross the ball from any random start
    ],
)
def test_linf_attacks_reach_the_worst_corner_of_a_linear_model(name: str, kwargs: dict) -> None:
    # The worst L-inf perturbation of a 2-class affine model is eps * sign(w_other - w_y).
    model, x, y, direction = two_class_linear()
    adv = make_attack(name, model, eps=0.1, **kwargs)(x, y)
    torch.testing.assert_close(adv, x + 0.1 * direction.sign(), rtol=0, atol=1e-6)


def test_pgdl2_reaches_the_closest_worst_point_of_a_linear_model() -> None:
    model, x, y, direction = two_class_linear()
    unit = direction / direction.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    adv = make_attack("pgdl2", model, eps=0.1, random_start=False)(x, y)
    torch.testing.assert_close(adv, x + 0.1 * unit, rtol=0, atol=1e-6)


def test_zero_budget_gives_back_the_input() -> None:
    model, x, y, _ = two_class_linear()
    for norm in ("Linf", "L2"):
        assert torch.equal(pgd(model, x, y, eps=0.0, alpha=0.1, steps=3, norm=norm), x)
        assert torch.equal(apgd(model, x, y, eps=0.0, steps=5, norm=norm)[0], x)
    with pytest.raises(ValueError, match="needs a budget eps > 0"):
        make_attack("pgd", model, eps=0.0)


def test_per_image_budgets() -> None:
    model, x, y, direction = two_class_linear()
    eps = torch.tensor([0.0, 0.02, 0.05, 0.1, 0.1])
    adv = pgd(model, x, y, eps=eps, alpha=2.5 * eps / 10, steps=10)
    expected = x + eps.view(-1, 1, 1, 1) * direction.sign()
    torch.testing.assert_close(adv, expected, rtol=0, atol=1e-6)


def test_dlr_loss_closed_forms_and_class_counts() -> None:
    logits = torch.tensor([[4.0, 3.0, 1.0, 0.0, -2.0], [0.0, 5.0, 2.0, 1.0, 1.0]])
    labels = torch.tensor([0, 2])
    # untargeted: -(z_y - max other) / (z_pi1 - z_pi3)
    expected = torch.tensor([-(4 - 3) / (4 - 1), -(2 - 5) / (5 - 1)])
    torch.testing.assert_close(dlr_loss(logits, labels), expected)
    # targeted: -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)
    targets = torch.tensor([3, 1])
    expected = torch.tensor([-(4 - 0) / (4 - 0.5), -(2 - 5) / (5 - 1)])
    torch.testing.assert_close(dlr_loss(logits, labels, targets), expected)
    # invariant to shifting and scaling the logits
    torch.testing.assert_close(dlr_loss(3 * logits + 7, labels), dlr_loss(logits, labels))
    with pytest.raises(InputShapeError, match="at least 4 classes"):
        dlr_loss(logits[:, :3], labels, torch.tensor([1, 0]))
    with pytest.raises(InputShapeError, match="at least 3 classes"):
        dlr_loss(logits[:, :2], torch.tensor([0, 1]))


def test_apgd_checkpoints_follow_the_paper() -> None:
    # p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), times 100 steps
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert apgd_checkpoints(10) == [2, 3, 4, 5, 6, 7, 8, 9, 10]
    assert apgd_checkpoints(1) == [1]


def test_apgd_returns_misclassified_points_or_the_input() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 5)).eval()
    x = torch.rand(16, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    y = model(x).argmax(1)
    y[:2] = (y[:2] + 1) % 5  # two images the model already gets wrong
    adv, fooled = apgd(model, x, y, eps=0.03, steps=20)
    assert float((adv - x).abs().max()) <= 0.03 + 1e-6
    predicted = model(adv).argmax(1)
    assert torch.equal(fooled, predicted != y)
    assert torch.equal(adv[:2], x[:2]) and bool(fooled[:2].all())
    assert torch.equal(adv[~fooled], x[~fooled])
    assert 0 < int(fooled[2:].sum()) < 14  # the budget fools some, not all


def test_autoattack_runs_within_budget_and_needs_four_classes() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 5)).eval()  # APGD-T's DLR needs >= 4
    x = torch.rand(6, 3, 4, 4)
    y = model(x).argmax(1)
    attack = make_attack("autoattack", model, eps=0.05, steps=20)
    assert attack.params()["ensemble"] == "apgd-ce+apgd-t"
    adv = attack(x, y)
    assert float((adv - x).abs().max()) <= 0.05 + 1e-6
    fooled = model(adv).argmax(1) != y
    # AutoAttack returns the input where it fails: unchanged images are exactly the failures.
    assert torch.equal(adv[~fooled], x[~fooled])
    with pytest.raises(InputShapeError, match="at least 4 classes"):
        make_attack("autoattack", Linear().eval(), eps=0.05, steps=2)(x, Linear()(x).argmax(1))


def test_standard_attack_names_and_defaults() -> None:
    # The defaults the measured figures were made with (guardnet/eval/attacks/library.py).
    defaults = {name: entry[1] for name, entry in STANDARD_ATTACKS.items()}
    assert defaults["fgsm"] == {}
    assert defaults["bim"] == {"alpha": 1 / 255, "steps": None}
    assert defaults["pgd"] == defaults["pgdl2"]
    assert defaults["pgd"] == {"steps": 50, "alpha": None, "random_start": True}
    assert defaults["apgd"] == {
        "steps": 100,
        "norm": "Linf",
        "loss": "ce",
        "rho": 0.75,
        "momentum": 0.75,
    }
    apgdt = {"steps": 100, "target_classes": 9, "norm": "Linf", "rho": 0.75, "momentum": 0.75}
    assert defaults["apgdt"] == defaults["autoattack"] == apgdt
    assert defaults["cw"] == {
        "binary_search_steps": 9,
        "steps": 1000,
        "lr": 0.01,
        "confidence": 0.0,
        "initial_const": 1e-3,
        "target": None,
    }
    assert defaults["ead"] == {
        "binary_search_steps": 9,
        "steps": 100,
        "lr": 0.01,
        "confidence": 0.0,
        "initial_const": 1e-3,
        "beta": 1e-3,
    }
    assert defaults["deepfool"] == {"steps": 50, "overshoot": 0.02, "candidates": 10}
    assert defaults["jsma"] == {
        "max_iterations": 2000,
        "theta": 0.1,
        "max_changes_per_feature": 7,
        "target": "second",
    }
    takes_eps = {name for name, entry in STANDARD_ATTACKS.items() if entry[2]}
    assert takes_eps == {"fgsm", "bim", "pgd", "pgdl2", "apgd", "apgdt", "autoattack"}


def test_step_rules() -> None:
    model = Linear()
    assert make_attack("pgd", model, eps=0.1).params()["alpha"] == pytest.approx(2.5 * 0.1 / 50)
    assert make_attack("pgd", model, eps=0.1, steps=10).params()["alpha"] == pytest.approx(0.025)
    # Kurakin et al.: int(min(255 eps + 4, 1.25 * 255 eps)) steps of 1/255, at least one
    assert [bim_steps(e) for e in (1 / 255, 4 / 255, 8 / 255, 0.1, 0.3)] == [1, 5, 10, 29, 80]
    assert make_attack("bim", model, eps=0.3).params() == {
        "eps": 0.3,
        "alpha": 1 / 255,
        "steps": 80,
    }
    assert make_attack("fgsm", model, eps=0.1).params() == {"eps": 0.1}


def test_standard_attack_arguments_are_checked() -> None:
    model = Linear()
    with pytest.raises(ValueError, match="unknown attack"):
        make_attack("nope", model, eps=0.1)
    with pytest.raises(ValueError, match="needs a budget"):
        make_attack("pgd", model)
    with pytest.raises(ValueError, match="takes no eps"):
        make_attack("cw", model, eps=0.1)
    with pytest.raises(ValueError, match="no parameter"):
        make_attack("pgd", model, eps=0.1, stepz=3)
    with pytest.raises(ValueError, match="steps must be an integer"):
        make_attack("pgd", model, eps=0.1, steps=0)
    with pytest.raises(ValueError, match="norm must be one of"):
        make_attack("apgd", model, eps=0.1, norm="L1")
    with pytest.raises(ValueError, match="loss must be one of"):
        make_attack("apgd", model, eps=0.1, loss="hinge")
    attack = make_attack("pgd", model, eps=0.1, seed=3, batch_size=2)
    assert attack.seed == 3 and attack.batch_size == 2


def test_standard_attacks_are_seeded_and_chunk_independent() -> None:
    model = Linear().eval()
    x = torch.rand(6, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    y = model(x).argmax(1)

    def run(seed: int) -> Tensor:  # one short step: the random start shows
        return make_attack("pgd", model, eps=0.05, steps=1, alpha=0.001, seed=seed)(x, y)

    assert torch.equal(run(5), run(5)) and not torch.equal(run(5), run(6))
    # Without a random start the chunking cannot matter.
    one = make_attack("bim", model, eps=0.05, batch_size=6)(x, y)
    two = make_attack("bim", model, eps=0.05, batch_size=4)(x, y)
    assert torch.equal(one, two)


# ------------------------------------------------------------------- a real classifier


@pytest.fixture(scope="module")
def mnist_classifier() -> tuple[nn.Module, Tensor, Tensor]:
    """The shipped MNIST classifier (normalisation included) and 32 test images it gets right."""
    from guardnet.data import dataset_info, load_fixture
    from guardnet.demo import load_demo_classifier
    from guardnet.guard import Normalize

    info = dataset_info("mnist")
    model = nn.Sequential(Normalize(info.mean, info.std), load_demo_classifier()).eval()
    images, labels = load_fixture("mnist")
    images, labels = images[:40], labels[:40]
    with torch.no_grad():
        right = model(images).argmax(1) == labels
    return model, images[right][:32], labels[right][:32]


def fooled_share(model: nn.Module, adv: Tensor, labels: Tensor) -> float:
    with torch.no_grad():
        return float((model(adv).argmax(1) != labels).float().mean())


def test_pgd_on_a_real_classifier_grows_with_eps_and_beats_random_noise(
    mnist_classifier: tuple[nn.Module, Tensor, Tensor],
) -> None:
    model, x, y = mnist_classifier
    shares = [
        fooled_share(model, make_attack("pgd", model, eps=e, steps=10)(x, y), y)
        for e in (0.05, 0.1, 0.3)
    ]
    assert shares == sorted(shares) and shares[-1] == 1.0 and shares[0] < 0.5, shares
    # Gradient-free baseline: random corners of the same ball fool (almost) nothing.
    signs = torch.randint(0, 2, x.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    noise = (x + 0.1 * signs).clamp(0, 1)
    assert fooled_share(model, noise, y) + 0.2 < shares[1], shares


def test_apgd_and_autoattack_on_a_real_classifier(
    mnist_classifier: tuple[nn.Module, Tensor, Tensor],
) -> None:
    model, x, y = mnist_classifier
    pgd_share = fooled_share(model, make_attack("pgd", model, eps=0.1, steps=10)(x, y), y)
    apgd_adv = make_attack("apgd", model, eps=0.1, steps=10)(x, y)
    apgd_fooled = model(apgd_adv).argmax(1) != y
    assert float(apgd_fooled.float().mean()) >= pgd_share - 1 / 32
    aa_adv = make_attack("autoattack", model, eps=0.1, steps=10, target_classes=2)(x, y)
    aa_fooled = model(aa_adv).argmax(1) != y
    # AutoAttack's first stage is the same seeded APGD-CE run: it fools a superset.
    assert bool((aa_fooled | ~apgd_fooled).all())
    assert torch.equal(aa_adv[apgd_fooled], apgd_adv[apgd_fooled])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_standard_attacks_run_on_cuda() -> None:
    model = Linear().eval().cuda()
    x = torch.rand(6, 3, 4, 4)  # on the CPU: the attack moves chunks to the model's device
    y = model(x.cuda()).argmax(1).cpu()
    for name, kwargs in (("pgd", {"eps": 0.05}), ("pgdl2", {"eps": 0.5}), ("apgd", {"eps": 0.05})):
        adv = make_attack(name, model, steps=5, **kwargs)(x, y)
        assert adv.device == x.device and adv.shape == x.shape
    cpu = make_attack("bim", Linear().eval(), eps=0.05)(x, y)
    torch.testing.assert_close(make_attack("bim", model, eps=0.05)(x, y), cpu, rtol=0, atol=1e-5)


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
