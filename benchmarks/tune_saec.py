"""Sweep SAEC's design (bins, range, filter bank) on *validation* data only.

For each configuration: threshold at 5% FPR on clean validation half A, then TPR on half B with
uniform noise of each amplitude (and the FPR on clean half B). The test split is never touched.

Usage:
    python benchmarks/tune_saec.py --datasets gtsrb cifar10 --limit 4000
"""

from __future__ import annotations

import argparse
import itertools

import torch

from guardnet import SAECLayer, threshold_at_fpr
from guardnet.data import load_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--datasets", nargs="+", default=["gtsrb", "cifar10"])
    parser.add_argument("--limit", type=int, default=4000)
    parser.add_argument("--amplitudes", nargs="+", type=float, default=[4, 8, 16])
    parser.add_argument("--bins", nargs="+", type=int, default=[32, 64, 128, 256])
    parser.add_argument("--ranges", nargs="+", type=float, default=[0.05, 0.1, 0.25])
    parser.add_argument(
        "--kernels",
        nargs="+",
        default=["kv", "kb", "kv+kb", "first_order", "kv+kb+second_order+second_order_v"],
        help="kernel sets, names joined by '+'",
    )
    parser.add_argument(
        "--quantize", action="store_true", help="round noisy images to 8-bit levels (as saved)"
    )
    args = parser.parse_args()
    grid = list(
        itertools.product(
            args.bins,
            args.ranges,
            [tuple(k.split("+")) for k in args.kernels],
            ["min", "mean"],
        )
    )
    for dataset in args.datasets:
        x = load_split(dataset, "val", limit=args.limit).images
        half = x.shape[0] // 2
        a, b = x[:half], x[half:]
        gen = torch.Generator().manual_seed(0)
        noise = torch.rand(b.shape, generator=gen) * 2 - 1
        noisy = {amp: (b + noise * amp / 255).clamp(0, 1) for amp in args.amplitudes}
        if args.quantize:
            noisy = {amp: n.mul(255).round().div(255) for amp, n in noisy.items()}
        rows = []
        for bins, half_range, kernels, reduction in grid:
            if len(kernels) == 1 and reduction == "mean":
                continue
            layer = SAECLayer(
                bins=bins,
                value_range=(-half_range, half_range),
                kernels=kernels,
                reduction=reduction,
            )
            thr = threshold_at_fpr(layer.score_images(a), 0.05, higher_is_suspicious=False)
            fpr = float((layer.score_images(b) < thr).float().mean())
            tprs = [float((layer.score_images(n) < thr).float().mean()) for n in noisy.values()]
            rows.append((tprs, fpr, bins, half_range, "+".join(kernels), reduction))
        rows.sort(key=lambda r: (-r[0][1], -r[0][0]))
        amps = " ".join(f"tpr@{a:g}/255" for a in args.amplitudes)
        print(f"\n== {dataset} (validation, {half} + {half} images) ==\n{amps}  fpr_B  config")
        for tprs, fpr, bins, hr, kernels, red in rows[:15]:
            print(" ".join(f"{t:10.3f}" for t in tprs), f"{fpr:6.3f}", bins, hr, kernels, red)
        default = [r for r in rows if r[2:] == (64, 0.25, "kv", "min")]
        print("paper-like default (64 bins, +-0.25, kv):", default[0][:2] if default else None)


if __name__ == "__main__":
    main()
