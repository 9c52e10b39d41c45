"""Finite-sample arithmetic: rank slots, calibration sizes, Beta and beta-binomial intervals."""

from __future__ import annotations

import math

import pytest
import torch

from guardnet import CalibrationError
from guardnet.conformal import (
    beta_cdf,
    beta_quantile,
    expected_fpr,
    fpr_interval,
    min_calibration_size,
    rejection_slots,
)


def test_rejection_slots() -> None:
    assert rejection_slots(500, 0.05) == 25
    assert rejection_slots(18, 0.05) == 0 and rejection_slots(19, 0.05) == 1
    # The decimal the user wrote, not its binary neighbour: 100 * 0.29 is 28.999... in floats.
    assert rejection_slots(99, 0.29) == 29
    assert rejection_slots(10, 0.0) == 0
    with pytest.raises(CalibrationError, match=r"target_fpr must be in \[0, 1\)"):
        rejection_slots(10, 1.0)
    with pytest.raises(CalibrationError, match="num_samples must be >= 0"):
        rejection_slots(-1, 0.1)


@pytest.mark.parametrize("alpha", [0.01, 0.05, 0.1, 0.29, 0.5])
@pytest.mark.parametrize("slots", [1, 3, 4])
def test_min_calibration_size_is_the_smallest(alpha: float, slots: int) -> None:
    n = min_calibration_size(alpha, slots)
    assert rejection_slots(n, alpha) >= slots
    assert n == 0 or rejection_slots(n - 1, alpha) < slots


def test_min_calibration_size_errors() -> None:
    with pytest.raises(CalibrationError, match="rejects nothing"):
        min_calibration_size(0.0)
    with pytest.raises(CalibrationError, match="slots must be >= 1"):
        min_calibration_size(0.05, 0)


def test_expected_fpr() -> None:
    assert expected_fpr(25, 500) == 25 / 501
    assert expected_fpr(0, 10) == 0.0
    with pytest.raises(CalibrationError, match="0 <= slots <= n \\+ 1"):
        expected_fpr(12, 10)


class TestBeta:
    @pytest.mark.parametrize("b", [1, 2, 7, 400])
    def test_closed_forms(self, b: int) -> None:
        x = torch.linspace(0, 1, 101, dtype=torch.float64)
        # Beta(1, b): 1 - (1 - x)^b; Beta(b, 1): x^b.
        torch.testing.assert_close(beta_cdf(x, 1, b), 1 - (1 - x) ** b, atol=1e-12, rtol=0)
        torch.testing.assert_close(beta_cdf(x, b, 1), x**b, atol=1e-12, rtol=0)

    @pytest.mark.parametrize(("a", "b"), [(2, 3), (25, 476), (476, 25), (300, 300)])
    def test_symmetry_and_shape(self, a: int, b: int) -> None:
        x = torch.rand(50, dtype=torch.float64)
        torch.testing.assert_close(beta_cdf(x, a, b), 1 - beta_cdf(1 - x, b, a), atol=1e-10, rtol=0)
        assert beta_cdf(x.view(5, 10), a, b).shape == (5, 10)
        ordered = beta_cdf(x.sort().values, a, b)
        assert bool((ordered.diff() >= 0).all())

    @pytest.mark.parametrize(("a", "b"), [(1, 1), (3, 7), (25, 476), (2500, 47501)])
    def test_quantile_inverts_the_cdf(self, a: int, b: int) -> None:
        q = torch.tensor([0.001, 0.025, 0.5, 0.975, 0.999], dtype=torch.float64)
        x = beta_quantile(q, a, b)
        torch.testing.assert_close(beta_cdf(x, a, b), q, atol=1e-9, rtol=0)
        assert bool((x.diff() > 0).all())

    @pytest.mark.parametrize(("a", "b"), [(3, 7), (25, 476), (2500, 47501)])
    def test_against_scipy(self, a: int, b: int) -> None:
        stats = pytest.importorskip("scipy.stats")
        q = torch.tensor([0.025, 0.5, 0.975], dtype=torch.float64)
        reference = torch.from_numpy(stats.beta.ppf(q.numpy(), a, b))
        torch.testing.assert_close(beta_quantile(q, a, b), reference, atol=1e-9, rtol=0)

    def test_errors(self) -> None:
        with pytest.raises(CalibrationError, match="integers >= 1"):
            beta_cdf(0.5, 0, 3)
        with pytest.raises(CalibrationError, match="integers >= 1"):
            beta_quantile(0.5, 2.5, 3)  # type: ignore[arg-type]
        with pytest.raises(CalibrationError, match=r"points in \[0, 1\]"):
            beta_cdf(1.5, 2, 3)
        with pytest.raises(CalibrationError, match=r"probabilities in \[0, 1\]"):
            beta_quantile(-0.1, 2, 3)


class TestFprInterval:
    def test_beta_interval(self) -> None:
        low, high = fpr_interval(25, 500)
        assert low < 25 / 501 < high
        assert beta_cdf(low, 25, 476).item() == pytest.approx(0.025, abs=1e-9)
        assert beta_cdf(high, 25, 476).item() == pytest.approx(0.975, abs=1e-9)
        narrow = fpr_interval(25, 500, level=0.5)
        assert low < narrow[0] < narrow[1] < high

    def test_more_calibration_images_narrow_it(self) -> None:
        widths = [
            (lambda lo_hi: lo_hi[1] - lo_hi[0])(fpr_interval(rejection_slots(n, 0.05), n))
            for n in (100, 1000, 10000)
        ]
        assert widths[0] > widths[1] > widths[2]

    def test_finite_test_set(self) -> None:
        low, high = fpr_interval(25, 500, test_size=1000)
        beta_low, beta_high = fpr_interval(25, 500)
        # The test set's own sampling widens it; the rates are counts out of 1000.
        assert low < beta_low and high > beta_high
        assert math.isclose(low * 1000, round(low * 1000))
        # One test image is rejected with probability 25 / 501: both outcomes are inside.
        assert fpr_interval(25, 500, test_size=1) == (0.0, 1.0)

    def test_finite_test_set_matches_a_simulation(self) -> None:
        # Rate ~ Beta(5, 96), count ~ Binomial(40, rate): the simulated 2.5% / 97.5% counts.
        gen = torch.Generator().manual_seed(0)
        rates = torch.distributions.Beta(5.0, 96.0).sample((200_000,))
        counts = torch.binomial(torch.full_like(rates, 40.0), rates, generator=gen)
        low, high = fpr_interval(5, 100, test_size=40)
        assert float((counts < low * 40).double().mean()) < 0.025
        assert float((counts <= low * 40).double().mean()) >= 0.025 - 0.002
        assert float((counts > high * 40).double().mean()) < 0.025
        assert float((counts >= high * 40).double().mean()) >= 0.025 - 0.002

    def test_edges_and_errors(self) -> None:
        assert fpr_interval(0, 10) == (0.0, 0.0)
        assert fpr_interval(11, 10) == (1.0, 1.0)
        with pytest.raises(CalibrationError, match=r"level must be in \(0, 1\)"):
            fpr_interval(1, 10, level=1.0)
        with pytest.raises(CalibrationError, match="test_size must be >= 1"):
            fpr_interval(1, 10, test_size=0)
