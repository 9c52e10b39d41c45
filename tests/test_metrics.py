"""Detection metrics against hand-computed cases."""

from __future__ import annotations

import pytest
import torch

from guardnet.eval import auroc, tpr_at_threshold


def test_auroc_hand_computed() -> None:
    neg = torch.tensor([0.1, 0.4, 0.35, 0.8])
    pos = torch.tensor([0.9, 0.5, 0.3])
    # Pairs (pos > neg): 0.9 beats 4, 0.5 beats 3, 0.3 beats 1 -> 8 of 12.
    assert auroc(neg, pos) == pytest.approx(8 / 12)
    assert auroc(neg, pos, higher_is_suspicious=False) == pytest.approx(4 / 12)


def test_auroc_ties_count_half() -> None:
    assert auroc(torch.tensor([1.0, 1.0]), torch.tensor([1.0])) == pytest.approx(0.5)
    assert auroc(torch.tensor([0.0, 1.0]), torch.tensor([1.0])) == pytest.approx(0.75)


def test_auroc_matches_pairwise_definition() -> None:
    gen = torch.Generator().manual_seed(0)
    neg = torch.randint(0, 20, (300,), generator=gen).float()
    pos = torch.randint(5, 25, (200,), generator=gen).float()
    diff = pos[:, None] - neg[None, :]
    expected = float(((diff > 0).double() + 0.5 * (diff == 0).double()).mean())
    assert auroc(neg, pos) == pytest.approx(expected, abs=1e-12)


def test_auroc_empty_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one negative and one positive"):
        auroc(torch.zeros(0), torch.ones(3))


def test_tpr_at_threshold() -> None:
    pos = torch.tensor([0.1, 0.5, 0.9, 1.0])
    assert tpr_at_threshold(pos, 0.5) == 0.5
    assert tpr_at_threshold(pos, 0.5, higher_is_suspicious=False) == 0.25


def test_roc_curve_hand_computed_and_consistent_with_auroc() -> None:
    from guardnet.eval import roc_curve

    fpr, tpr, thr = roc_curve(torch.tensor([0.0, 1.0]), torch.tensor([2.0]))
    assert fpr.tolist() == [0.0, 0.0, 0.5, 1.0]
    assert tpr.tolist() == [0.0, 1.0, 1.0, 1.0]
    assert thr.tolist() == [2.0, 1.0, 0.0, -1.0]
    gen = torch.Generator().manual_seed(0)
    neg, pos = torch.randn(500, generator=gen), torch.randn(300, generator=gen) + 1
    for higher in (True, False):
        f, t, _ = roc_curve(neg, pos if higher else -pos, higher_is_suspicious=higher)
        area = float(torch.trapezoid(t, f))
        assert area == pytest.approx(
            auroc(neg, pos if higher else -pos, higher_is_suspicious=higher)
        )


def test_tpr_at_fpr_uses_validation_threshold() -> None:
    from guardnet.eval import oracle_tpr_at_fpr, tpr_at_fpr

    val = torch.arange(100.0)  # 5%: the ceil(101 * 0.95) = 96th smallest, 95
    test_clean = torch.arange(100.0) + 2  # shifted: 96..101 exceed 95 -> 6%
    adv = torch.tensor([90.0, 95.0, 96.5, 200.0])
    out = tpr_at_fpr(val, adv, 0.05, test_clean=test_clean)
    assert out["threshold"] == 95.0 and out["tpr"] == 0.5
    assert out["test_fpr"] == pytest.approx(0.06)
    # The oracle fits on the test clean scores instead: threshold 97, so 96.5 passes.
    assert oracle_tpr_at_fpr(test_clean, adv, 0.05) == 0.25


def test_detection_and_robust_accuracy() -> None:
    from guardnet.eval import detection_accuracy, robust_accuracy

    correct = torch.tensor([True, True, False, False])
    rejected = torch.tensor([False, True, True, False])
    assert detection_accuracy(correct, rejected) == 0.5  # items 0 and 2
    fooled = torch.tensor([True, True, False, True])
    assert robust_accuracy(fooled, rejected) == 0.5  # items 0 and 3 succeed
    with pytest.raises(ValueError, match="shapes differ"):
        detection_accuracy(correct, rejected[:2])
