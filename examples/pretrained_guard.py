"""Load a shipped guard, calibrate it on your clean data, classify, save and reload it.

``gtsrb-mixdefense`` is SAEC -> ``resnet20-gtsrb`` -> ContraNet (``contranet-gtsrb``), all with
shipped weights. Its thresholds are not part of the recipe: they are calibrated on clean
validation images of *your* deployment data (here: GTSRB validation images that ship with
guardnet). The calibrated guard is then saved as one folder (config, weights and thresholds, a
model card) and loaded back, ready to serve.

Run: ``python examples/pretrained_guard.py`` (``--smoke`` for a quick run on 64 images).
"""

from __future__ import annotations

import argparse
import tempfile

import torch

import guardnet
from guardnet.data import load_fixture


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a quick run on a few images")
    parser.add_argument("--out", default=None, help="where to save the calibrated guard")
    args = parser.parse_args(argv)
    limit = 64 if args.smoke else None

    # A registered recipe name gives an uncalibrated guard with every layer's shipped weights.
    guard = guardnet.GuardedModel.from_pretrained("gtsrb-mixdefense")
    print(guard.recipe.description)

    # Calibrate on clean validation images. budget="runner_up" chooses how the 3% budget is
    # split over the scores, on the same clean images (no attack data).
    val_images, _ = load_fixture("gtsrb-val")
    report = guard.calibrate(val_images, target_fpr=0.03, budget="runner_up", progress=False)
    print(report)

    test_images, test_labels = load_fixture("gtsrb")
    test_images, test_labels = test_images[:limit], test_labels[:limit]
    with torch.inference_mode():
        result = guard(test_images)
    accepted = result.accepted
    print(
        f"{len(result)} test images: {result.rejected.float().mean():.1%} rejected, accuracy on "
        f"the accepted ones {(result.labels == test_labels)[accepted].float().mean():.1%}"
    )

    # Save the calibrated guard and load it back: same thresholds, same answers.
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.out or tmp
        guard.save_pretrained(folder)
        restored = guardnet.GuardedModel.from_pretrained(folder)
        with torch.inference_mode():
            again = restored(test_images)
        same = torch.equal(again.labels, result.labels) and torch.equal(
            again.rejected, result.rejected
        )
        print(f"saved to {folder} and reloaded: identical results: {same}")
        if not same:
            raise SystemExit("the reloaded guard answered differently")


if __name__ == "__main__":
    main()
