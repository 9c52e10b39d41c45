"""Protect a larger-input classifier with the 32x32 ContraNet (as in the ContraNet paper's Fig. 13).

ContraNet's networks work at 32x32; ``ContraNetLayer`` resizes any other input size inside the
layer, so a classifier of 128x128 images is guarded unchanged. The classifier here stands in for
yours: the shipped CIFAR-10 (JPEG q75) ResNet20 behind a resize, fed CIFAR-10 images upsampled to
128x128. The guard is calibrated on clean validation images and then judged on clean test images
and on PGD examples crafted against the classifier.

Run: ``python examples/high_resolution_classifier.py`` (``--smoke`` for a quick run).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import guardnet
from guardnet.data import load_fixture
from guardnet.eval.attacks import make_attack

SIZE = 128


def upsample(images: Tensor) -> Tensor:
    return F.interpolate(images, size=(SIZE, SIZE), mode="bilinear", align_corners=False).clamp(
        0, 1
    )


class HighResolutionClassifier(nn.Module):
    """A classifier of 128x128 images (a stand-in: a 32x32 ResNet20 behind a resize)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = guardnet.from_pretrained("resnet20-cifar10jpeg-ft")
        config = self.net.pretrained_config
        self.normalize = guardnet.Normalize(config["mean"], config["std"])

    def forward(self, images: Tensor) -> Tensor:
        small = F.interpolate(images, size=(32, 32), mode="bilinear", antialias=True)
        return self.net(self.normalize(small))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a quick run on a few images")
    args = parser.parse_args(argv)
    limit = 32 if args.smoke else None

    classifier = HighResolutionClassifier().eval()
    guard = guardnet.GuardedModel(
        classifier, [guardnet.ContraNetLayer.from_pretrained("contranet-cifar10")]
    )
    val_images, _ = load_fixture("cifar10-val")
    report = guard.calibrate(
        upsample(val_images), target_fpr=0.05, budget="runner_up", progress=False
    )
    print(report)

    images, labels = load_fixture("cifar10")
    images, labels = upsample(images[:limit]), labels[:limit]
    clean = guard(images)
    correct = clean.classifier_labels == labels
    print(
        f"clean {SIZE}x{SIZE}: accuracy {correct.float().mean():.1%}, "
        f"rejected {clean.rejected.float().mean():.1%}"
    )

    # PGD-L-inf 8/255 against the bare classifier, on the images it gets right.
    attack = make_attack("pgd", classifier, eps=8 / 255, steps=10 if args.smoke else 50)
    adversarial = attack(images[correct], labels[correct])
    attacked = guard(adversarial)
    fooled = attacked.classifier_labels != labels[correct]
    caught = attacked.rejected[fooled].float().mean() if fooled.any() else torch.tensor(0.0)
    print(
        f"PGD 8/255 at {SIZE}x{SIZE}: fools the classifier on {fooled.float().mean():.1%} of "
        f"{int(correct.sum())} images; the guard rejects {caught:.1%} of those"
    )


if __name__ == "__main__":
    main()
