"""Throughput of the batched SAEC kernels against a per-image loop.

The SAEC score of an image is the variance of the normalized histogram of the SRM residuals of
its pseudo-saturation map (averaged over the filter bank). This script times, with the shipped
``SAECLayer`` defaults unless told otherwise,

(a) the batched pipeline ``pseudo_saturation_map -> highpass_filter(bank) -> batched_histogram
    -> histogram_variance`` on one batch (this is ``SAECLayer.score_images``), and
(b) a reference that loops over the images and uses ``torch.histc`` per image and kernel,

checks that both give the same scores, and prints images/second and the speed-up.

Example:
    python benchmarks/bench_saec_ops.py --batch 256 --size 32 --channels 3 --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.benchmark import Timer

from guardnet.layers.saec import DEFAULT_KERNELS, SAECLayer
from guardnet.ops import (
    batched_histogram,
    highpass_filter,
    histogram_variance,
    pseudo_saturation_map,
)


def make_layer(
    bins: int, value_range: tuple[float, float], kernels: tuple[str, ...], device: str
) -> SAECLayer:
    layer = SAECLayer(kernels=kernels, bins=bins, value_range=value_range, reduction="mean")
    return layer.to(device)


def per_image_scores(
    images: Tensor, bins: int, value_range: tuple[float, float], kernels: tuple[str, ...]
) -> Tensor:
    lo, hi = value_range
    scores = []
    for image in images:
        residual = highpass_filter(pseudo_saturation_map(image.unsqueeze(0)), list(kernels))[0]
        per_kernel = [
            (torch.histc(r, bins=bins, min=lo, max=hi) / r.numel()).var(correction=0)
            for r in residual
        ]
        scores.append(torch.stack(per_kernel).mean())
    return torch.stack(scores)


def measure(
    fn: Callable[..., Tensor], args: tuple, repeats: int, min_run_time: float
) -> list[float]:
    """Median seconds per call of each of ``repeats`` blocked_autorange rounds."""
    # Timer runs single-threaded unless told otherwise; measure with the threads torch uses.
    timer = Timer(
        "fn(*args)", globals={"fn": fn, "args": args}, num_threads=torch.get_num_threads()
    )
    return [timer.blocked_autorange(min_run_time=min_run_time).median for _ in range(repeats)]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--size", type=int, default=32, help="image height and width")
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--bins", type=int, default=256)
    parser.add_argument("--value-range", type=float, nargs=2, default=(-0.01, 0.01))
    parser.add_argument("--kernels", nargs="+", default=list(DEFAULT_KERNELS))
    parser.add_argument("--repeats", type=int, default=5, help="timing rounds per variant")
    parser.add_argument("--min-run-time", type=float, default=0.5, help="seconds per round")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="default: torch's default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(args.seed)
    shape = (args.batch, args.channels, args.size, args.size)
    images = torch.rand(shape, generator=gen).to(args.device)
    value_range = (float(args.value_range[0]), float(args.value_range[1]))
    kernels = tuple(args.kernels)
    layer = make_layer(args.bins, value_range, kernels, args.device)

    with torch.inference_mode():
        batched = layer.score_images(images)
        reference = per_image_scores(images, args.bins, value_range, kernels)
        max_abs_diff = float((batched - reference).abs().max()) if args.batch else 0.0

        sync = torch.cuda.synchronize if images.is_cuda else (lambda: None)

        def run_batched() -> Tensor:
            out = layer.score_images(images)
            sync()
            return out

        def run_reference() -> Tensor:
            out = per_image_scores(images, args.bins, value_range, kernels)
            sync()
            return out

        # Stage timings of the batched pipeline, for profiling.
        sat = pseudo_saturation_map(images)
        residual = highpass_filter(sat, list(kernels))
        hist = batched_histogram(residual, bins=args.bins, value_range=value_range)
        stages = {
            "pseudo_saturation_map": (pseudo_saturation_map, (images,)),
            "highpass_filter": (highpass_filter, (sat, list(kernels))),
            "batched_histogram": (
                lambda r: batched_histogram(r, bins=args.bins, value_range=value_range),
                (residual,),
            ),
            "histogram_variance": (histogram_variance, (hist,)),
        }
        stage_s = {
            name: statistics.median(measure(fn, fargs, args.repeats, args.min_run_time / 4))
            for name, (fn, fargs) in stages.items()
        }
        batched_s = measure(run_batched, (), args.repeats, args.min_run_time)
        reference_s = measure(run_reference, (), args.repeats, args.min_run_time)

    batched_med = statistics.median(batched_s)
    reference_med = statistics.median(reference_s)
    result = {
        "config": {
            "batch": args.batch,
            "channels": args.channels,
            "size": args.size,
            "bins": args.bins,
            "kernels": list(kernels),
            "value_range": list(value_range),
            "repeats": args.repeats,
            "min_run_time": args.min_run_time,
            "device": str(images.device),
            "threads": torch.get_num_threads(),
        },
        "env": {"torch": torch.__version__, "python": platform.python_version()},
        "batched": {
            "seconds_per_batch": batched_med,
            "seconds_per_batch_all": batched_s,
            "images_per_second": args.batch / batched_med,
            "stage_seconds": stage_s,
        },
        "per_image_reference": {
            "seconds_per_batch": reference_med,
            "seconds_per_batch_all": reference_s,
            "images_per_second": args.batch / reference_med,
        },
        "speedup": reference_med / batched_med,
        "max_abs_score_diff": max_abs_diff,
    }

    print(
        f"SAEC ops, batch {args.batch} x {args.channels} x {args.size} x {args.size}, "
        f"kernels {'+'.join(kernels)}, bins {args.bins} over {value_range}, "
        f"{torch.get_num_threads()} threads, "
        f"device {images.device}, torch {torch.__version__}"
    )
    for name, seconds in stage_s.items():
        print(f"  stage {name:24s} {seconds * 1e3:8.3f} ms/batch")
    print(
        f"batched pipeline   : {batched_med * 1e3:8.3f} ms/batch  "
        f"{args.batch / batched_med:12,.0f} images/s"
    )
    print(
        f"per-image + histc  : {reference_med * 1e3:8.3f} ms/batch  "
        f"{args.batch / reference_med:12,.0f} images/s"
    )
    print(f"speed-up           : {reference_med / batched_med:8.1f}x")
    print(f"max |score diff|   : {max_abs_diff:.3g}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
