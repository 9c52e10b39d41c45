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
