"""Worst case per example, budget curves and convergence checks: the pure functions and the
harness's report."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import SecondPixelDetector, SumClassifier
from torch import Tensor

from guardnet import GuardedModel
from guardnet.eval.harness import AttackPlan, evaluate_guard, format_report
from guardnet.eval.sanity import budget_curve, convergence_check
from guardnet.eval.worst_case import RunOutcome, robust_mask, worst_case_table
from guardnet.layers import Layer, LayerInput, LayerKind, LayerOutput


def test_robust_mask_is_the_per_example_and_of_the_failures() -> None:
    gen = torch.Generator().manual_seed(0)
    masks = {f"run{i}": torch.rand(50, generator=gen) < 0.3 for i in range(4)}
    expected = torch.ones(50, dtype=torch.bool)
    for mask in masks.values():
        expected &= ~mask
    assert torch.equal(robust_mask(masks), expected)
    assert torch.equal(robust_mask(list(masks.values())), expected)
    # Never above any single run's robust share.
    assert all(int(expected.sum()) <= int((~m).sum()) for m in masks.values())
    with pytest.raises(ValueError, match="at least one run"):
        robust_mask({})
    with pytest.raises(ValueError, match="one shape"):
        robust_mask([masks["run0"], masks["run1"][:10]])
    with pytest.raises(ValueError, match="bool"):
        robust_mask([masks["run0"].float()])


def test_worst_case_table_counts_runs_within_each_budget() -> None:
    # Four images. "pgd" breaks 0 and 1 at distance 0.03; "cw" (minimum norm) breaks 1 at 0.02
    # and 2 at 0.5; "adaptive" breaks 3, but only at FPR 0.05.
    t, f = True, False
    runs = {
        "pgd": RunOutcome(
            torch.full((4,), 0.03),
            {"0.05": torch.tensor([t, t, f, f]), "0.5": torch.tensor([t, f, f, f])},
        ),
        "cw": RunOutcome(
            torch.tensor([0.1, 0.02, 0.5, 0.1]),
            {"0.05": torch.tensor([f, t, t, f]), "0.5": torch.tensor([f, t, t, f])},
        ),
        "adaptive": RunOutcome(torch.full((4,), 0.03), {"0.05": torch.tensor([f, f, f, t])}),
    }
    table = worst_case_table(runs, budgets=[0.03, 0.01, 0.03], fprs=["0.05", "0.5"])
    assert [(r["eps"], r["fpr"]) for r in table] == [
        (0.01, "0.05"),
        (0.01, "0.5"),
        (0.03, "0.05"),
        (0.03, "0.5"),
    ]
    by_key = {(r["eps"], r["fpr"]): r for r in table}
    low = by_key[(0.01, "0.05")]  # nothing fits in 0.01
    assert low["robust_accuracy"] == 1.0 and low["runs"] == {"pgd": 1.0, "cw": 1.0, "adaptive": 1.0}
    row = by_key[(0.03, "0.05")]  # cw's image 2 is out of budget: images 0, 1, 3 broken
    assert row["robust"] == 1 and row["robust_accuracy"] == 0.25 and row["attacked"] == 4
    assert row["runs"] == {"pgd": 0.5, "cw": 0.75, "adaptive": 0.75}
    assert row["only_run"] == {"pgd": 1, "cw": 0, "adaptive": 1}
    row = by_key[(0.03, "0.5")]  # the adaptive run was not judged at 0.5
    assert set(row["runs"]) == {"pgd", "cw"} and row["robust_accuracy"] == 0.5
    assert worst_case_table(runs, budgets=[0.1], fprs=["0.2"]) == []


def test_budget_curve_flags_an_attack_that_does_not_reach_100_percent() -> None:
    ok = budget_curve([(0.3, 1.0), (0.1, 0.4)])
    assert ok == {"eps": [0.1, 0.3], "success": [0.4, 1.0], "warning": None}
    weak = budget_curve([(0.1, 0.2), (0.3, 0.5)], min_success=0.9)
    assert "may be broken" in weak["warning"] and "50.0%" in weak["warning"]
    assert budget_curve([(0.3, 0.1)])["warning"] is None  # one budget says nothing
    with pytest.raises(ValueError, match="min_success"):
        budget_curve([(0.1, 0.2)], min_success=0.0)
    check = convergence_check("steps", 100, 0.30, 0.295)
    assert check["warning"] is None and check["change"] == pytest.approx(-0.005)
    assert "not converged" in convergence_check("queries", 2000, 0.30, 0.2)["warning"]


# ------------------------------------------------------------------- the harness's report


def toy_guard() -> GuardedModel:
    return GuardedModel(SumClassifier(), [SecondPixelDetector()], num_classes=2)


def toy_split(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """Two pixels: class 0 (sum < 1), x2 near 0.5 (the detector's clean region)."""
    gen = torch.Generator().manual_seed(seed)
    first = 0.2 + 0.2 * torch.rand(n, generator=gen)
    second = 0.44 + 0.12 * torch.rand(n, generator=gen)
    return torch.stack([first, second], dim=1).view(n, 1, 1, 2), torch.zeros(n, dtype=torch.long)


def test_harness_reports_worst_case_curves_and_convergence() -> None:
    guard = toy_guard()
    val, _ = toy_split(300, 0)
    x, y = toy_split(60, 1)
    steps = {"steps": 20}
    plans = [
        AttackPlan("bpda", adaptive=True, eps=0.02, params=steps, fpr=0.05),
        AttackPlan("bpda", adaptive=True, eps=0.4, params=steps, fpr=0.05),
        AttackPlan("orthogonal", adaptive=True, eps=0.4, params=steps, fpr=0.05),
        AttackPlan("square", adaptive=True, eps=0.02, params={"queries": 5}, fpr=0.05),
        AttackPlan("square", adaptive=True, eps=0.05, params={"queries": 5}, fpr=0.05),
    ]
    report = evaluate_guard(
        guard,
        val_images=val,
        test_images=x,
        test_labels=y,
        plans=plans,
        fprs=(0.05,),
        convergence=True,
        log=lambda _: None,
    )
    rows = {(r["eps"], r["fpr"]): r for r in report["worst_case"]}
    assert set(rows) == {(0.02, "0.05"), (0.05, "0.05"), (0.4, "0.05")}
    top = rows[(0.4, "0.05")]
    own = {
        label: entry["at_fpr"]["0.05"]["acc_rob"]
        for label, entry in report["attacks"].items()
        if label.endswith("eps=0.4 fpr=0.05")
    }
    for label, acc in own.items():  # a run's own figure equals its figure within its budget
        assert top["runs"][label] == pytest.approx(acc)
    assert top["robust_accuracy"] <= min(top["runs"].values())
    assert len(top["runs"]) == 2 * len(plans)  # every run and its doubled-effort rerun
    # Runs at a larger budget do not count at a smaller one (the toy needs eps ~0.15).
    assert rows[(0.02, "0.05")]["robust_accuracy"] == 1.0
    curves = {c["attack"]: c for c in report["budget_curves"]}
    assert curves["bpda"]["eps"] == [0.02, 0.4] and curves["bpda"]["success"][-1] > 0.9
    assert curves["bpda"]["warning"] is None
    assert "may be broken" in curves["square"]["warning"]  # 5 queries at <= 0.05: nothing
    (check,) = report["attacks"]["bpda eps=0.4 fpr=0.05"]["convergence"]
    assert check["param"] == "steps" and check["value"] == 40
    assert check["attack"]["params"]["steps"] == 40
    (check,) = report["attacks"]["square eps=0.05 fpr=0.05"]["convergence"]
    assert check["param"] == "queries" and check["value"] == 10
    assert report["attack_settings"]["seed"] == 0
    # Every attack hyper-parameter is in the report, which is JSON-serialisable.
    params = report["attacks"]["square eps=0.05 fpr=0.05"]["attack"]["params"]
    assert params["queries"] == 5 and params["p_init"] == 0.05 and params["loss"] == "sum"
    report.pop("examples")
    json.dumps(report)
    text = format_report(report)
    assert "worst case per example" in text and "budget curves" in text
    assert "WARNING" in text and "steps x2" in text


def test_convergence_doubles_each_named_parameter_the_attack_has() -> None:
    guard = toy_guard()
    val, _ = toy_split(200, 0)
    x, y = toy_split(20, 1)
    plan = AttackPlan("smooth", adaptive=True, eps=0.4, params={"steps": 10}, fpr=0.05)
    report = evaluate_guard(
        guard,
        val_images=val,
        test_images=x,
        test_labels=y,
        plans=[plan],
        fprs=(0.05,),
        convergence=["restarts", "steps", "queries"],  # smooth has no queries: skipped
        log=lambda _: None,
    )
    checks = report["attacks"][plan.label]["convergence"]
    assert [(c["param"], c["value"]) for c in checks] == [("restarts", 2), ("steps", 20)]
    assert report["attack_settings"]["convergence"] == ["restarts", "steps", "queries"]
    (row,) = report["worst_case"]
    assert set(row["runs"]) == {plan.label, f"{plan.label} restarts=2", f"{plan.label} steps=20"}


class ClassZeroReformer(Layer):
    """``reform`` without a threshold: every label becomes class 0 (the toy's true class)."""

    kind = LayerKind.REFORM
    rejects = False
    default_name = "relabel"

    def forward(self, inputs: LayerInput) -> LayerOutput:
        batch = inputs.images.shape[0]
        logits = torch.zeros(batch, 2, device=inputs.images.device)
        logits[:, 0] = 1.0
        return LayerOutput(scores=torch.zeros(batch), logits=logits)


def test_a_reform_layer_that_corrects_the_label_defeats_the_run() -> None:
    guard = GuardedModel(SumClassifier(), [ClassZeroReformer()], num_classes=2)
    val, _ = toy_split(200, 0)
    x, y = toy_split(40, 1)
    report = evaluate_guard(
        guard,
        val_images=val,
        test_images=x,
        test_labels=y,
        plans=[AttackPlan("pgd", eps=0.4, params={"steps": 20})],
        fprs=(0.05,),
        log=lambda _: None,
    )
    m = report["attacks"]["pgd eps=0.4"]["at_fpr"]["0.05"]
    # PGD fools the classifier and nothing rejects, but the reformer's final label is right:
    # no image is broken.
    assert m["attack_success_rate"] > 0.5 and m["acc_rob"] < 0.5 and m["acc_rc"] == 1.0
    (row,) = report["worst_case"]
    assert row["robust_accuracy"] == 1.0
    assert "worst case per example" in format_report(report)
