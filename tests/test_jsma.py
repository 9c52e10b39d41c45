"""JSMA (Papernot et al. 2016) as an attack: the element it moves, when it stops, its targets."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from guardnet.eval.attacks import JSMA, make_attack
from guardnet.eval.attacks.targets import choose_targets
from guardnet.ops.attack_cost import jsma_cost, saliency_map_attack


class FirstPixelVote(nn.Module):
    """Two classes on (1, 1, 4) images: logits (1 - x0, x0); only pixel 0 matters."""

    def forward(self, x: Tensor) -> Tensor:
        first = x.flatten(1)[:, :1]
        return torch.cat([1.0 - first, first], dim=1)


def images(first: float, n: int = 3) -> Tensor:
    x = torch.full((n, 1, 1, 4), 0.7)
    x[..., 0] = first
    return x


def test_moves_only_the_salient_element_until_the_label_flips() -> None:
    x = images(0.2)
    y = torch.zeros(3, dtype=torch.long)
    adv = JSMA(FirstPixelVote())(x, y)
    # 0.2 -> 0.6 in four moves of 0.1 (at 0.5 the tie keeps class 0); nothing else moves
    assert torch.allclose(adv[..., 0], torch.full((3, 1, 1), 0.6))
    assert torch.equal(adv[..., 1:], x[..., 1:])
    assert bool((FirstPixelVote()(adv).argmax(1) == 1).all())
    adv2, iterations = saliency_map_attack(
        FirstPixelVote(), x, y, torch.ones(3, dtype=torch.long), limit=100
    )
    assert torch.equal(adv2, adv)
    assert iterations.tolist() == [4.0, 4.0, 4.0]
    assert torch.equal(iterations, jsma_cost(FirstPixelVote(), x, y, y + 1, limit=100))


def test_a_failed_attack_returns_its_last_iterate() -> None:
    x = images(0.2, n=2)
    y = torch.zeros(2, dtype=torch.long)
    # three moves reach 0.5, where the label does not change yet
    adv = JSMA(FirstPixelVote(), max_changes_per_feature=3)(x, y)
    assert torch.allclose(adv[..., 0], torch.full((2, 1, 1), 0.5))
    assert bool((FirstPixelVote()(adv).argmax(1) == 0).all())
    adv = JSMA(FirstPixelVote(), max_iterations=2)(x, y)
    assert torch.allclose(adv[..., 0], torch.full((2, 1, 1), 0.4))


def test_targets_are_never_the_label() -> None:
    attack = JSMA(nn.Identity(), target="random", seed=3)
    logits = torch.randn(400, 5, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(5, (400,), generator=torch.Generator().manual_seed(1))
    targets = attack.targets(logits, labels, torch.Generator().manual_seed(2))
    assert bool((targets != labels).all())
    assert set(targets.tolist()) == set(range(5))
    again = attack.targets(logits, labels, torch.Generator().manual_seed(2))
    assert torch.equal(targets, again)
    second = JSMA(nn.Identity()).targets(logits, labels, torch.Generator())
    expected = logits.scatter(1, labels[:, None], float("-inf")).argmax(1)
    assert torch.equal(second, expected)


def test_fools_a_linear_classifier_with_few_elements() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4)).eval()
    x = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    y = model(x).argmax(1)
    adv = make_attack("jsma", model, max_iterations=200)(x, y)
    fooled = model(adv).argmax(1) != y
    assert float(fooled.float().mean()) >= 0.9
    changed = ((adv - x).abs() > 1e-6).flatten(1).sum(1)
    assert int(changed.max()) < 3 * 8 * 8 // 4  # an L0 attack
    assert float((adv - x).abs().max()) <= 7 * 0.1 + 1e-6
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0


def test_arguments_are_checked() -> None:
    model = nn.Identity()
    with pytest.raises(ValueError, match="max_iterations"):
        JSMA(model, max_iterations=0)
    with pytest.raises(ValueError, match="theta"):
        JSMA(model, theta=0.0)
    with pytest.raises(ValueError, match="max_changes_per_feature"):
        JSMA(model, max_changes_per_feature=0)
    with pytest.raises(ValueError, match="target"):
        JSMA(model, target="third")


def test_target_rules_need_two_classes_and_a_known_rule() -> None:
    labels = torch.zeros(3, dtype=torch.long)
    with pytest.raises(ValueError, match="at least 2 classes"):
        choose_targets(torch.zeros(3, 1), labels, "second")
    with pytest.raises(ValueError, match="target rule"):
        choose_targets(torch.zeros(3, 4), labels, "third")
