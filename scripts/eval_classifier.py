"""Top-1 accuracy of a pretrained classifier on a dataset split.

The model is a registered pretrained name (``guardnet.list_pretrained()``), a weights folder or a
Hub repo id. Images come from ``guardnet.data.load_split`` as floats in [0, 1] and are normalised
with the config's ``mean`` / ``std``. The dataset's display name labels the result (CIFAR-10 here
is "CIFAR-10 (JPEG q75)", never standard CIFAR-10).

Usage:
    GUARDNET_DATA=/path/to/shared/data python scripts/eval_classifier.py \
        resnet20-cifar10-akamaster --dataset cifar10 --split test --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from guardnet.data import dataset_info, load_split
from guardnet.guard import Normalize
from guardnet.weights import from_pretrained


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    batch_size: int,
    device: str,
    progress: bool = True,
) -> int:
    """Number of correct top-1 predictions of ``model`` (already normalising) on the images."""
    correct = torch.zeros((), dtype=torch.long, device=device)
    batches = zip(images.split(batch_size), labels.split(batch_size), strict=True)
    total = (len(labels) + batch_size - 1) // batch_size
    for x, y in tqdm(batches, total=total, desc="eval", unit="batch", disable=not progress):
        logits = model(x.to(device))
        correct += (logits.argmax(dim=1) == y.to(device)).sum()
    return int(correct)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("model", help="pretrained name, weights folder or Hub repo id")
    parser.add_argument("--dataset", default=None, help="dataset name (default: the config's)")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--root", default=None, help="data root (default: $GUARDNET_DATA)")
    parser.add_argument("--limit", type=int, default=None, help="seeded subset of the split")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()

    model = from_pretrained(args.model, device=args.device)
    config = model.pretrained_config
    info = dataset_info(args.dataset or config["dataset"])
    if config.get("num_classes") not in (None, info.num_classes):
        parser.error(
            f"the model has {config['num_classes']} classes, {info.name} has {info.num_classes}"
        )
    data = load_split(info.name, args.split, root=args.root, limit=args.limit)
    classifier = (
        nn.Sequential(Normalize(config["mean"], config["std"]), model).to(args.device).eval()
    )

    start = time.perf_counter()
    correct = evaluate(
        classifier,
        data.images,
        data.labels,
        batch_size=args.batch_size,
        device=args.device,
        progress=not args.no_progress,
    )
    seconds = time.perf_counter() - start
    n = len(data.labels)
    accuracy = correct / max(n, 1)
    print(
        f"{args.model} on {info.display_name} {args.split} ({n} images): top-1 accuracy "
        f"{accuracy:.2%} ({correct}/{n}), {seconds:.1f} s on {args.device}"
    )

    if args.json is not None:
        env = (
            f"GUARDNET_DATA={os.environ['GUARDNET_DATA']} "
            if os.environ.get("GUARDNET_DATA")
            else ""
        )
        result = {
            "model": args.model,
            "weights_sha256": config.get("weights_sha256"),
            "dataset": info.name,
            "dataset_display_name": info.display_name,
            "split": args.split,
            "limit": args.limit,
            "n": n,
            "correct": correct,
            "accuracy": accuracy,
            "seconds": round(seconds, 1),
            "device": args.device,
            "torch": torch.__version__,
            "command": env + shlex.join(["python", "scripts/eval_classifier.py", *sys.argv[1:]]),
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
