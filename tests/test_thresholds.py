"""Threshold rules: hand-computed cases, budgets, warnings, and the finite-sample guarantee."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from guardnet import CalibrationError, CalibrationWarning, threshold_at_fpr
from guardnet.conformal import fpr_interval, min_calibration_size, rejection_slots
from guardnet.thresholds import (
    _compositions,
    calibration_size_problem,
    choose_budget,
    false_positive_rate,
    joint_thresholds,
)


class TestThresholdAtFpr:
    def test_hand_computed(self) -> None:
        scores = torch.arange(100.0)  # 0..99
        # floor(101 * 0.05) = 5 slots: the 5th largest (the 96th smallest), 95; 96..99 beyond.
        assert float(threshold_at_fpr(scores, 0.05)) == 95.0
        assert false_positive_rate(scores, 95.0) == 0.04
        # Low side: the 5th smallest, 4; 0..3 beyond.
        assert float(threshold_at_fpr(scores, 0.05, higher_is_suspicious=False)) == 4.0
        assert false_positive_rate(scores, 4.0, higher_is_suspicious=False) == 0.04
        # The calibration-rate rule: floor(100 * 0.05) = 5 beyond.
        assert float(threshold_at_fpr(scores, 0.05, method="empirical")) == 94.0
        assert false_positive_rate(scores, 94.0) == 0.05

    def test_rank_is_the_conformal_quantile(self) -> None:
        gen = torch.Generator().manual_seed(5)
        for n, alpha in [(19, 0.05), (99, 0.29), (500, 0.05), (37, 0.5)]:
            scores = torch.randn(n, generator=gen)
            rank = math.ceil((n + 1) * (1 - alpha) - 1e-9)  # the ceil((n+1)(1-a))-th smallest
            expected = scores.sort().values[rank - 1]
            assert float(threshold_at_fpr(scores, alpha)) == float(expected)
            # floor((n + 1) * alpha) - 1 calibration scores are rejected.
            beyond = int((scores > expected).sum())
            assert beyond == rejection_slots(n, alpha) - 1

    def test_zero_fpr_rejects_nothing(self) -> None:
        scores = torch.randn(50)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # asked for, so no warning
            thr = threshold_at_fpr(scores, 0.0)
        assert float(thr) == math.inf
        assert false_positive_rate(scores, thr) == 0.0

    def test_ties_only_lower_the_rate(self) -> None:
        scores = torch.tensor([0.0] * 90 + [1.0] * 10)
        thr = threshold_at_fpr(scores, 0.05)
        assert float(thr) == 1.0 and false_positive_rate(scores, thr) == 0.0

    def test_dtype_is_kept(self) -> None:
        assert threshold_at_fpr(torch.arange(100.0).double(), 0.05).dtype == torch.float64

    @pytest.mark.parametrize("bad", [-0.1, 1.0, 2.0])
    def test_bad_rate(self, bad: float) -> None:
        with pytest.raises(CalibrationError, match=r"target_fpr must be in \[0, 1\)"):
            threshold_at_fpr(torch.randn(10), bad)

    def test_bad_scores_and_method(self) -> None:
        with pytest.raises(CalibrationError, match="NaN or Inf"):
            threshold_at_fpr(torch.tensor([0.0, float("nan")]), 0.1)
        with pytest.raises(CalibrationError, match="non-empty 1-D"):
            threshold_at_fpr(torch.zeros(0), 0.1)
        with pytest.raises(CalibrationError, match="method must be one of"):
            threshold_at_fpr(torch.randn(10), 0.1, method="split")

    @pytest.mark.parametrize("higher", [True, False])
    def test_held_out_rate_close_to_target(self, higher: bool) -> None:
        gen = torch.Generator().manual_seed(0)
        calib, held_out = torch.randn(20000, generator=gen), torch.randn(20000, generator=gen)
        thr = threshold_at_fpr(calib, 0.05, higher_is_suspicious=higher)
        rate = false_positive_rate(held_out, thr, higher_is_suspicious=higher)
        assert abs(rate - 0.05) < 0.006  # 4 binomial standard deviations at n = 20000


class TestJointThresholds:
    def test_union_within_the_slots_and_budget_splits(self) -> None:
        gen = torch.Generator().manual_seed(1)
        scores = {"a": torch.randn(10000, generator=gen), "b": torch.rand(10000, generator=gen)}
        sides = {"a": True, "b": False}
        fit = joint_thresholds(scores, sides, 0.05)
        assert fit.slots == rejection_slots(10000, 0.05) == 500 and fit.num_samples == 10000
        union = (scores["a"] > fit.thresholds["a"]) | (scores["b"] < fit.thresholds["b"])
        # Each threshold's own boundary input costs a slot: 500 - 2 calibration inputs at most.
        assert 490 <= int(union.sum()) <= 498
        # Independent keys: each gets about half the slots (one key steps first on ties).
        assert abs(fit.key_slots["a"] - fit.key_slots["b"]) <= 1
        assert 0.024 < fit.rates["a"] < 0.027
        assert fit.rates["a"] == fit.key_slots["a"] / 10001
        fit = joint_thresholds(scores, sides, 0.05, budget={"a": 3, "b": 1})
        a, b = fit.key_slots["a"], fit.key_slots["b"]
        assert a // 3 - 1 <= b <= a // 3 and fit.slots <= 500

    def test_one_key_is_the_single_threshold(self) -> None:
        scores = torch.randn(777)
        fit = joint_thresholds({"a": scores}, {"a": False}, 0.1)
        assert float(fit.thresholds["a"]) == float(
            threshold_at_fpr(scores, 0.1, higher_is_suspicious=False)
        )
        assert fit.slots == fit.key_slots["a"] == rejection_slots(777, 0.1)

    def test_identical_keys_share_their_boundary(self) -> None:
        s = torch.randn(5000)
        fit = joint_thresholds({"a": s, "b": s.clone()}, {"a": True, "b": True}, 0.05)
        # The union is one threshold, but a new input beyond one copy's boundary could be below
        # the other's in general: the shared boundary input costs one slot of the 250.
        assert fit.key_slots == {"a": 249, "b": 249} and fit.slots == 250
        assert float(fit.thresholds["a"]) == float(fit.thresholds["b"])

    def test_errors(self) -> None:
        s = torch.randn(10)
        with pytest.raises(CalibrationError, match="unknown layers"):
            joint_thresholds({"a": s}, {"a": True}, 0.05, budget={"z": 1.0})
        with pytest.raises(CalibrationError, match="not all 0"):
            joint_thresholds({"a": s}, {"a": True}, 0.05, budget={"a": 0.0})
        with pytest.raises(CalibrationError, match="budget shares must be >= 0"):
            joint_thresholds({"a": s, "b": s}, {"a": True, "b": True}, 0.05, budget={"a": -1})
        with pytest.raises(CalibrationError, match="different numbers of inputs"):
            joint_thresholds({"a": s, "b": s[:5]}, {"a": True, "b": True}, 0.05)
        with pytest.raises(CalibrationError, match="'b' scores contain NaN"):
            joint_thresholds({"a": s, "b": s / 0}, {"a": True, "b": True}, 0.05)

    def test_zero_share_rejects_nothing(self) -> None:
        gen = torch.Generator().manual_seed(2)
        scores = {"a": torch.randn(4000, generator=gen), "b": torch.randn(4000, generator=gen)}
        sides = {"a": True, "b": False}
        fit = joint_thresholds(scores, sides, 0.05, budget={"a": 1.0, "b": 0.0})
        assert fit.key_slots == {"a": 200, "b": 0} and fit.rates["b"] == 0.0
        assert float(fit.thresholds["b"]) == -math.inf  # low side: nothing is below
        # "a" alone is the single threshold: 200 slots, 199 calibration inputs beyond.
        assert false_positive_rate(scores["a"], fit.thresholds["a"]) == 199 / 4000

    def test_no_keys(self) -> None:
        fit = joint_thresholds({}, {}, 0.05)
        assert fit.thresholds == {} and fit.slots == 0


class TestSizeWarnings:
    def test_too_few_for_any_threshold(self) -> None:
        scores = torch.rand(10)
        with pytest.warns(CalibrationWarning, match="needs at least 19 clean calibration") as rec:
            thr = threshold_at_fpr(scores, 0.05, higher_is_suspicious=False)
        assert float(thr) == -math.inf
        assert rec[0].filename == __file__  # attributed to the caller, not guardnet
        with pytest.warns(CalibrationWarning, match="reject nothing"):
            fit = joint_thresholds({"a": scores, "b": scores}, {"a": True, "b": True}, 0.05)
        assert fit.key_slots == {"a": 0, "b": 0} and fit.slots == 0

    def test_too_few_for_every_threshold(self) -> None:
        gen = torch.Generator().manual_seed(3)
        scores = {k: torch.rand(50, generator=gen) for k in "abcd"}
        sides = dict.fromkeys(scores, True)
        # floor(51 * 0.05) = 2 slots for 4 thresholds; 79 images give 4.
        with pytest.warns(CalibrationWarning, match=r"give 2 rank slot.*79 images") as rec:
            fit = joint_thresholds(scores, sides, 0.05)
        assert "['a', 'b', 'c', 'd']" in str(rec[0].message)
        assert sum(c > 0 for c in fit.key_slots.values()) <= 2
        assert min_calibration_size(0.05, 4) == 79

    def test_small_share(self) -> None:
        # 100 images: 5 slots; "b" asks for 0.1 / 1.1 of them (under one); 11 slots need 219.
        problem = calibration_size_problem(100, 0.05, {"a": 1.0, "b": 0.1})
        assert problem is not None and "['b']" in problem and "219 images" in problem
        assert calibration_size_problem(219, 0.05, {"a": 1.0, "b": 0.1}) is None

    def test_enough_images_stay_quiet(self) -> None:
        scores = {k: torch.rand(500) for k in "abcd"}
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            joint_thresholds(scores, dict.fromkeys(scores, True), 0.05)
            threshold_at_fpr(scores["a"], 0.05)
        assert calibration_size_problem(500, 0.05, dict.fromkeys("abcd", 1.0)) is None
        assert calibration_size_problem(3, 0.0) is None


def _uniform_tail(thresholds: torch.Tensor, higher: bool) -> torch.Tensor:
    """P(U strictly beyond each threshold) for U ~ Uniform(0, 1); +-inf give 0."""
    t = thresholds.double().clamp(0.0, 1.0)
    return 1.0 - t if higher else t


N_CAL, ALPHA, N_TEST = 500, 0.05, 1000


class TestFiniteSampleGuarantee:
    """Many calibration sets of n = 500 clean scores, each with fresh clean test scores.

    Uniform scores make each threshold's true rate on new data exact, so the rule's guarantee
    (mean rate <= alpha) and its Beta interval (covering the rate for 95% of calibration sets)
    are checked directly; the fresh test scores check the beta-binomial interval of a finite
    test set. Tolerances are about 3 standard errors of the mean over the draws.
    """

    def test_single_threshold(self) -> None:
        draws = 2000
        gen = torch.Generator().manual_seed(10)
        calib = torch.rand(draws, N_CAL, generator=gen)
        test = torch.rand(draws, N_TEST, generator=gen)
        thresholds = torch.stack([threshold_at_fpr(c, ALPHA) for c in calib])
        true_fpr = _uniform_tail(thresholds, higher=True)
        test_fpr = (test > thresholds[:, None]).double().mean(dim=1)
        slots = rejection_slots(N_CAL, ALPHA)
        # E[rate] = slots / (n + 1) = 25 / 501 exactly; the Beta(25, 476) sd is 0.0097.
        assert abs(float(true_fpr.mean()) - slots / (N_CAL + 1)) < 3 * 0.0097 / draws**0.5
        assert float(test_fpr.mean()) <= ALPHA + 0.001
        low, high = fpr_interval(slots, N_CAL)
        covered = ((true_fpr >= low) & (true_fpr <= high)).double().mean()
        assert 0.93 < float(covered) < 0.97
        low, high = fpr_interval(slots, N_CAL, test_size=N_TEST)
        covered = ((test_fpr >= low - 1e-12) & (test_fpr <= high + 1e-12)).double().mean()
        assert 0.93 < float(covered) <= 0.99  # discrete counts: at least 95% up to noise
        # The calibration-rate rule breaks the guarantee: (25 + 1) / 501 on average.
        empirical = torch.stack([threshold_at_fpr(c, ALPHA, method="empirical") for c in calib])
        assert float(_uniform_tail(empirical, higher=True).mean()) > ALPHA + 0.001

    @pytest.mark.parametrize(
        ("budget", "draws"), [(None, 600), ({"a": 2.0, "b": 1.0, "c": 1.0}, 400)]
    )
    def test_joint_thresholds(self, budget: dict[str, float] | None, draws: int) -> None:
        sides = {"a": True, "b": False, "c": True}
        gen = torch.Generator().manual_seed(11)
        calib = torch.rand(draws, len(sides), N_CAL, generator=gen)
        test = torch.rand(draws, len(sides), N_TEST, generator=gen)
        fits = [
            joint_thresholds(dict(zip(sides, c, strict=True)), sides, ALPHA, budget=budget)
            for c in calib
        ]
        thresholds = torch.tensor([[float(f.thresholds[k]) for k in sides] for f in fits])
        # Independent uniform scores: the OR passes a new input when every key passes it.
        tails = torch.stack(
            [_uniform_tail(thresholds[:, i], higher) for i, higher in enumerate(sides.values())],
            dim=1,
        )
        true_fpr = 1.0 - (1.0 - tails).prod(dim=1)
        high_side = torch.tensor(list(sides.values()))[:, None]
        beyond = torch.where(
            high_side, test > thresholds[:, :, None], test < thresholds[:, :, None]
        )
        test_fpr = beyond.any(dim=1).double().mean(dim=1)
        assert all(f.slots <= rejection_slots(N_CAL, ALPHA) for f in fits)
        tolerance = 3 * 0.0097 / draws**0.5
        assert float(true_fpr.mean()) <= ALPHA + tolerance
        assert float(test_fpr.mean()) <= ALPHA + tolerance
        # The slots say what to expect: the mean rate is the mean slots / (n + 1).
        expected = torch.tensor([f.expected_fpr for f in fits], dtype=torch.float64)
        assert abs(float(true_fpr.mean() - expected.mean())) < 2 * tolerance
        intervals = torch.tensor([fpr_interval(f.slots, N_CAL) for f in fits])
        covered = (true_fpr >= intervals[:, 0]) & (true_fpr <= intervals[:, 1])
        assert 0.92 < float(covered.double().mean()) < 0.98


class TestChooseBudget:
    def test_compositions_cover_the_simplex_grid(self) -> None:
        parts = list(_compositions(10, 3))
        assert len(parts) == math.comb(12, 2) == len(set(parts))
        assert all(sum(p) == 10 and min(p) >= 0 for p in parts)
        assert list(_compositions(2, 1)) == [(2,)]

    def test_informative_score_gets_the_budget(self) -> None:
        gen = torch.Generator().manual_seed(3)
        clean = {k: torch.randn(4000, generator=gen) for k in ("a", "b", "c")}
        # Positives: "a" separates them well, "b" a little, "c" not at all.
        positive = {
            "a": torch.randn(1000, generator=gen) + 3,
            "b": torch.randn(1000, generator=gen) + 0.5,
            "c": torch.randn(1000, generator=gen),
        }
        sides = dict.fromkeys(clean, True)
        choice = choose_budget(clean, positive, sides, 0.05, searched=["a", "b", "c"])
        assert choice.candidates == 66
        assert choice.shares == {"a": 1.0, "b": 0.0, "c": 0.0}
        # The reported rate is what those thresholds reject, and "a" alone is the single rule.
        fit = joint_thresholds(clean, sides, 0.05, budget=choice.shares)
        assert choice.positive_rejection_rate == false_positive_rate(
            positive["a"], fit.thresholds["a"]
        )
        assert float(fit.thresholds["a"]) == float(threshold_at_fpr(clean["a"], 0.05))
        # Equal shares reject fewer positives than the chosen split.
        eq = joint_thresholds(clean, sides, 0.05).thresholds
        rejected = torch.zeros(1000, dtype=torch.bool)
        for k in clean:
            rejected |= positive[k] > eq[k]
        assert float(rejected.float().mean()) < choice.positive_rejection_rate

    def test_fixed_shares_are_kept_and_ties_go_to_equal(self) -> None:
        gen = torch.Generator().manual_seed(4)
        clean = {k: torch.randn(2000, generator=gen) for k in ("pre", "x", "y")}
        # Positives no score can tell apart: every split ties, so the equal one wins.
        positive = {k: torch.full((100,), -10.0) for k in clean}
        sides = dict.fromkeys(clean, True)
        choice = choose_budget(
            clean, positive, sides, 0.05, searched=["x", "y"], fixed={"pre": 1.0},
            searched_total=2.0, step=0.25,
        )  # fmt: skip
        assert choice.shares == {"pre": 1.0, "x": 1.0, "y": 1.0}
        assert choice.positive_rejection_rate == 0.0 and choice.candidates == 5

    def test_errors(self) -> None:
        clean = {"a": torch.randn(50), "b": torch.randn(50)}
        sides = {"a": True, "b": True}
        with pytest.raises(CalibrationError, match="split the keys"):
            choose_budget(clean, clean, sides, 0.05, searched=["a"])
        with pytest.raises(CalibrationError, match="positive scores name"):
            choose_budget(clean, {"a": clean["a"]}, sides, 0.05, searched=["a", "b"])
        bad = {"a": torch.tensor([float("nan")]), "b": torch.zeros(1)}
        with pytest.raises(CalibrationError, match="NaN or Inf"):
            choose_budget(clean, bad, sides, 0.05, searched=["a", "b"])
        with pytest.raises(CalibrationError, match="use a larger step"):
            choose_budget(clean, clean, sides, 0.05, searched=["a", "b"], step=1e-5)
        with pytest.raises(CalibrationError, match="0 < step"):
            choose_budget(clean, clean, sides, 0.05, searched=["a", "b"], step=0.0)
