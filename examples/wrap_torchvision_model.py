"""Guard a torchvision classifier in a few lines.

The classifier here is a torchvision ResNet-18 with random weights and 10 classes, so the script
runs offline; put your own trained model in its place. The guard holds one layer, SAEC, which
needs no weights: it rejects inputs whose high-frequency noise statistics are unusual. Its
threshold is calibrated on clean *validation* images (CIFAR-10 images that ship with guardnet),
then the guard classifies clean test images and the same images with uniform noise.

Run: ``python examples/wrap_torchvision_model.py`` (``--smoke`` for a quick run on 32 images).
"""

from __future__ import annotations

import argparse

import torch
import torchvision

import guardnet
from guardnet.data import load_fixture


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a quick run on a few images")
    args = parser.parse_args(argv)
    limit = 32 if args.smoke else None
    torch.manual_seed(0)

    # 1. Your classifier: any nn.Module that maps (B, C, H, W) images to (B, K) logits.
    model = torchvision.models.resnet18(num_classes=10)

    # 2. Wrap it. mean/std are the normalisation the classifier expects; the layers always see
    #    [0, 1] images.
    guard = guardnet.GuardedModel(
        model,
        [guardnet.SAECLayer()],
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
    )

    # 3. Calibrate on clean validation images (never on test or attack data).
    val_images, _ = load_fixture("cifar10-val")
    report = guard.calibrate(val_images, target_fpr=0.05, progress=False)
    print(report)

    # 4. Classify. Inputs are float images in [0, 1], shape (B, C, H, W).
    test_images, _ = load_fixture("cifar10")
    test_images = test_images[:limit]
    noisy = (test_images + torch.empty_like(test_images).uniform_(-16 / 255, 16 / 255)).clamp(0, 1)
    for name, images in (("clean", test_images), ("uniform noise 16/255", noisy)):
        result = guard(images)
        print(
            f"{name:<22} {len(result)} images, rejected {result.rejected.float().mean():.1%}, "
            f"mean SAEC score {result.scores['saec'].mean():.3g}"
        )
    print("labels of the first 8 clean images:", guard(test_images[:8]).labels.tolist())


if __name__ == "__main__":
    main()
