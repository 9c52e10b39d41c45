"""DeT's accuracy / latency trade-off over the number of samples N (shipped R0 and list).

For each N: the shipped reformers with that N (the other settings as shipped), test accuracy
on clean images and on black-box BIM examples crafted on the bare classifier, and the guard's
latency per image at one batch size (``torch.utils.benchmark``, same run for every N, with
the bare classifier's for the ratio).

Example:
    python benchmarks/det_n_curve.py --det det-mnist --classifier mnist-cnn --dataset mnist \
        --ns 1 4 16 32 --bim 0.1 --json benchmarks/results/det_n_curve_mnist.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils import benchmark

from guardnet import DeTReformer, GuardedModel
from guardnet.data.datasets import load_split
from guardnet.eval.attacks.bim import BIM
from guardnet.recipes import build_classifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--det", required=True, help="shipped DeT reformers (name or folder)")
    parser.add_argument("--classifier", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--ns", type=int, nargs="+", default=[1, 4, 16, 32])
    parser.add_argument("--bim", type=float, default=0.1, help="black-box BIM budget (L-inf)")
    parser.add_argument("--test-limit", type=int, default=500)
    parser.add_argument("--batch", type=int, default=64, help="batch size of the timing")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    classifier = build_classifier(args.classifier)
    data = load_split(args.dataset, "test", limit=args.test_limit)
    x, y = data.images, data.labels
    adv = BIM(classifier, eps=args.bim, alpha=args.bim / 10, steps=20)(x, y)
    timing_batch = x[: args.batch]

    def per_image_ms(model: Any) -> float:
        timer = benchmark.Timer(
            stmt="model(batch)", globals={"model": model, "batch": timing_batch}
        )
        with torch.inference_mode():
            return timer.blocked_autorange(min_run_time=1.0).median * 1000 / len(timing_batch)

    with torch.no_grad():
        bare = {
            "clean": float((classifier(x).argmax(1) == y).float().mean()),
            "bim": float((classifier(adv).argmax(1) == y).float().mean()),
        }
    out: dict[str, Any] = {
        "det": args.det,
        "classifier": args.classifier,
        "test_images": len(x),
        "bim_eps": args.bim,
        "timing_batch": args.batch,
        "threads": args.threads,
        "bare": {**bare, "ms_per_image": per_image_ms(classifier)},
        "curve": [],
    }
    for n in args.ns:
        layer = DeTReformer.from_pretrained(args.det, num_samples=n)
        guard = GuardedModel(classifier, [layer]).eval()
        with torch.no_grad():
            clean = float((guard(x).labels == y).float().mean())
            robust = float((guard(adv).labels == y).float().mean())
        row = {"N": n, "clean": clean, "bim": robust, "ms_per_image": per_image_ms(guard)}
        row["latency_ratio"] = row["ms_per_image"] / out["bare"]["ms_per_image"]
        out["curve"].append(row)
        print(json.dumps(row), flush=True)
    out["seconds"] = time.perf_counter() - start
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
