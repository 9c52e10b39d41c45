"""Train the small classifiers used to attack real data in the SAEC measurements.

Each model is saved as ``<out>/<dataset>/model.safetensors`` + ``config.json`` + ``metrics.json``
(normalisation is the model's first module, so it takes [0, 1] images).

Usage:
    python benchmarks/train_quick_classifiers.py --datasets mnist gtsrb cifar10 --out runs/quick
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from guardnet.data import dataset_info, load_split
from guardnet.guard import Normalize
from guardnet.nets import MnistCNN, SmallConvNet
from guardnet.train import evaluate_accuracy, fit_classifier

EPOCHS = {"mnist": 3, "gtsrb": 4, "cifar10": 6}


def build(dataset: str) -> nn.Module:
    info = dataset_info(dataset)
    net = MnistCNN(info.num_classes) if dataset == "mnist" else SmallConvNet(info.num_classes)
    return nn.Sequential(Normalize(info.mean, info.std), net)


def flip_and_shift(x: Tensor) -> Tensor:
    """Random horizontal flip and a random translation by up to 2 pixels (one per batch)."""
    flip = torch.rand(x.shape[0], 1, 1, 1) < 0.5
    x = torch.where(flip, x.flip(3), x)
    dx, dy = (int(v) for v in torch.randint(-2, 3, (2,)))
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


def shift_only(x: Tensor) -> Tensor:
    dx, dy = (int(v) for v in torch.randint(-2, 3, (2,)))
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--datasets", nargs="+", default=["mnist", "gtsrb", "cifar10"])
    parser.add_argument("--out", type=Path, default=Path("runs/quick"))
    parser.add_argument("--root", default=None, help="data root (default: $GUARDNET_DATA)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for dataset in args.datasets:
        torch.manual_seed(args.seed)
        train = load_split(dataset, "train", root=args.root)
        val = load_split(dataset, "val", root=args.root)
        test = load_split(dataset, "test", root=args.root)
        model = build(dataset)
        # Traffic signs must not be mirrored (left/right turn signs are different classes).
        augment = {"mnist": None, "gtsrb": shift_only, "cifar10": flip_and_shift}[dataset]
        start = time.perf_counter()
        history = fit_classifier(
            model,
            train.images,
            train.labels,
            val_images=val.images,
            val_labels=val.labels,
            epochs=EPOCHS[dataset],
            augment=augment,
            seed=args.seed,
            progress=False,
            log=lambda line, d=dataset: print(f"[{d}] {line}", flush=True),
        )
        wall = time.perf_counter() - start
        test_acc = evaluate_accuracy(model, test.images, test.labels)
        out = args.out / dataset
        out.mkdir(parents=True, exist_ok=True)
        save_file(
            {k: v.contiguous() for k, v in model.state_dict().items()}, out / "model.safetensors"
        )
        arch = "MnistCNN" if dataset == "mnist" else "SmallConvNet"
        (out / "config.json").write_text(json.dumps({"arch": arch, "dataset": dataset}, indent=2))
        metrics = {"test_acc": test_acc, "wall_seconds": wall, "history": history}
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        print(f"[{dataset}] test accuracy {test_acc:.4f} in {wall:.0f} s", flush=True)


if __name__ == "__main__":
    main()
