"""Batched A2D attack costs against a one-image-at-a-time loop, on a shipped classifier.

Both compute the same costs (checked); the loop calls the same kernel on one image at a time,
as a per-sample implementation would. Real test images of the classifier's dataset.

Example:
    python benchmarks/bench_a2d.py --classifier mnist-cnn --dataset mnist --batch 256 \
        --threads 2 --json benchmarks/results/a2d_speed_mnist.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from guardnet.data.datasets import load_split
from guardnet.layers.a2d import A2D_PRESETS
from guardnet.ops.attack_cost import bim_cost, boundary_cost, jsma_cost
from guardnet.recipes import build_classifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classifier", required=True)
    parser.add_argument("--dataset", required=True, choices=sorted(A2D_PRESETS))
    parser.add_argument("--attacks", nargs="+", default=["bim"])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = build_classifier(args.classifier)  # [0, 1] images in
    x = load_split(args.dataset, "test", limit=args.batch).images
    with torch.no_grad():
        logits = model(x)
    labels, targets = logits.argmax(1), logits.topk(2, dim=1).indices[:, 1]
    preset = A2D_PRESETS[args.dataset]

    def run(attack: str, index: slice) -> torch.Tensor:
        s = preset[attack]
        if attack in ("bim", "bim2"):
            norm = "linf" if attack == "bim" else "l2"
            return bim_cost(
                model,
                x[index],
                labels[index],
                eps=s["eps"],
                step=s["step"],
                limit=int(s["limit"]),
                norm=norm,
            )
        if attack == "jsma":
            return jsma_cost(
                model,
                x[index],
                labels[index],
                targets[index],
                limit=int(s["limit"]),
                theta=s["theta"],
            )
        return boundary_cost(
            model, x[index], labels[index], limit=int(s["limit"]), mse_target=s["mse_target"]
        )

    results = {}
    for attack in args.attacks:
        start = time.perf_counter()
        batched = run(attack, slice(None))
        batched_s = time.perf_counter() - start
        start = time.perf_counter()
        loop = torch.cat([run(attack, slice(i, i + 1)) for i in range(len(x))])
        loop_s = time.perf_counter() - start
        results[attack] = {
            "settings": preset[attack],
            "batched_seconds": batched_s,
            "loop_seconds": loop_s,
            "speedup": loop_s / batched_s,
            "costs_equal": bool(torch.equal(batched, loop)),
            "max_cost_difference": float((batched - loop).abs().max()),
            "mean_cost": float(batched.mean()),
            "images_at_limit": int((batched == preset[attack]["limit"]).sum()),
        }
        print(attack, json.dumps(results[attack]), flush=True)
    out = {
        "classifier": args.classifier,
        "dataset": args.dataset,
        "batch": len(x),
        "threads": args.threads,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "results": results,
    }
    with open(args.json, "w") as f:
        json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
