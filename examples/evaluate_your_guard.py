"""Evaluate a guard with the harness behind ``guardnet eval``: an attack of your choice, the ROC.

The harness calibrates the guard on clean validation images, runs the attacks on the test images
the classifier gets right and reports, per attack, the success rate, the guard's TPR on the
successful examples, the robust accuracy and the AUROC of every score. Here: the shipped GTSRB
SAEC guard against PGD-L-inf at 8/255 and the adaptive Orthogonal PGD, with the ROC curves
written to a PNG (matplotlib: ``pip install "guardnet[eval]"``).

Run: ``python examples/evaluate_your_guard.py --out eval-out`` (``--smoke`` for a quick run).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import guardnet
from guardnet.data import load_fixture
from guardnet.eval.harness import AttackPlan, evaluate_guard, format_report
from guardnet.eval.plots import plot_roc


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a quick run on a few images")
    parser.add_argument("--out", default=None, help="folder for roc.png (default: a temp dir)")
    args = parser.parse_args(argv)
    limit = 24 if args.smoke else 300
    steps = {"steps": 5} if args.smoke else {}

    guard = guardnet.GuardedModel.from_pretrained("gtsrb-saec")
    val_images, _ = load_fixture("gtsrb-val")
    test_images, test_labels = load_fixture("gtsrb")
    plans = [
        AttackPlan("pgd", eps=8 / 255, params=steps),
        AttackPlan("orthogonal", adaptive=True, eps=8 / 255, params=steps, fpr=0.05),
    ]
    report = evaluate_guard(
        guard,
        val_images=val_images,
        test_images=test_images[:limit],
        test_labels=test_labels[:limit],
        plans=plans,
        fprs=(0.05,),
        log=lambda line: None,
    )
    print(format_report(report))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        out.mkdir(parents=True, exist_ok=True)
        path = plot_roc(report, out / "roc.png", title="GTSRB SAEC guard")
        print(f"ROC curves: {path}" + ("" if args.out else " (temporary; pass --out to keep it)"))


if __name__ == "__main__":
    main()
