"""Latency and MACs of the ContraNet layer against a same-size build of the authors' ContraNet.

For each ContraNet (a trained one, by name or folder, or a preset), the whole layer (encode,
rebuild under the predicted label only, DMM + Dis + SSIM) is timed with torch.utils.benchmark
at one batch size, under ``torch.inference_mode``, in the same run as the authors' architecture
(384-channel BigGAN-style generator with self-attention, 192-channel projection discriminator,
two full-width MobileNetV2 feature extractors; random weights with denormals flushed) for the
same classes and channels. Variants: ``channels_last`` (the layer's default memory format),
``contiguous`` (NCHW) and ``compile`` (``torch.compile`` of the networks, channels-last); the
authors' architecture is timed in both memory formats, and the speed-up compares like with like.

Usage:
    python benchmarks/bench_contranet.py --contranet runs/contranet-mnist/model --batch 64 \
        --threads 2 --variants channels_last contiguous compile \
        --json benchmarks/results/contranet_speed_mnist.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from guardnet.eval.bench import count_flops, hardware_metadata, measure_latency
from guardnet.layers import ContraNetLayer, LayerInput
from guardnet.nets.contranet import ContraNet, ContraNetConfig


def layer_fn(layer: ContraNetLayer, labels: torch.Tensor, *, inference: bool = True):
    def run(images: torch.Tensor) -> torch.Tensor:
        # FlopCounterMode cannot trace spectral-norm parametrizations in inference mode.
        with torch.inference_mode(inference), torch.no_grad():
            return layer(LayerInput(images=images, labels=labels)).scores

    return run


def time_variant(
    layer: ContraNetLayer, images: torch.Tensor, labels: torch.Tensor, variant: str, args
) -> dict:
    entry: dict = {"variant": variant}
    layer = ContraNetLayer(layer.net, channels_last=variant != "contiguous")
    run = layer_fn(layer, labels)
    if variant == "compile":
        # The whole layer's forward (rebuild + three scores), not just ContraNet.forward.
        run = layer_fn(torch.compile(layer), labels)  # type: ignore[arg-type]
        tick = time.perf_counter()
        run(images)
        entry["compile_seconds"] = time.perf_counter() - tick
    timing = measure_latency(run, images, min_run_time=args.min_run_time)
    entry.update(timing)
    entry["ms_per_image"] = timing["median_s"] / images.shape[0] * 1e3
    return entry


def bench_one(name: str, net: ContraNet, input_size: int, args) -> dict:
    cfg = net.config
    authors = ContraNet.from_config(ContraNetConfig.authors(cfg.num_classes, cfg.in_channels))
    torch.manual_seed(0)
    images = torch.rand(args.batch, cfg.in_channels, input_size, input_size)
    labels = torch.randint(0, cfg.num_classes, (args.batch,))
    rows = {}
    for label, model in ((name, net), ("authors' architecture", authors)):
        layer = ContraNetLayer(model.eval()).eval()
        macs = count_flops(layer_fn(layer, labels[:1], inference=False), images[:1])["total"] / 2
        params = sum(p.numel() for p in model.parameters())
        variants = args.variants if model is net else ["channels_last", "contiguous"]
        rows[label] = {
            "gmacs_per_image": macs / 1e9,
            "params_m": params / 1e6,
            "timings": [time_variant(layer, images, labels, v, args) for v in variants],
        }
    speedups = {}
    for variant in ("channels_last", "contiguous"):
        ours = _ms(rows[name], variant)
        theirs = _ms(rows["authors' architecture"], variant)
        if ours is not None and theirs is not None:
            speedups[variant] = theirs / ours
    return {
        "contranet": name,
        "config": cfg.__dict__,
        "input_size": input_size,
        "batch": args.batch,
        "rows": rows,
        "speedup": speedups,
    }


def _ms(row: dict, variant: str) -> float | None:
    return next((t["ms_per_image"] for t in row["timings"] if t["variant"] == variant), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--contranet",
        nargs="+",
        required=True,
        help="trained ContraNets (name or folder), or small:K:C for a preset",
    )
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--min-run-time", type=float, default=2.0)
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["channels_last", "contiguous"],
        choices=["channels_last", "contiguous", "compile"],
    )
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    results = []
    for spec in args.contranet:
        if spec.startswith("small:"):
            _, k, c = spec.split(":")
            net, size = ContraNet.from_config(ContraNetConfig.small(int(k), int(c))), 32
        else:
            layer = ContraNetLayer.from_pretrained(spec)
            net = layer.net
            size = net.pretrained_config.get("input_size", [32])[-1]
        result = bench_one(spec, net.eval(), size, args)
        results.append(result)
        for label, row in result["rows"].items():
            for t in row["timings"]:
                print(
                    f"{label:<40} {t['variant']:<14} {row['gmacs_per_image']:.3f} GMACs/img  "
                    f"{t['ms_per_image']:.2f} ms/img (batch {args.batch}, IQR "
                    f"{t['iqr_s'] / args.batch * 1e3:.2f})"
                )
        for variant, ratio in result["speedup"].items():
            print(f"speed-up ({variant}): {ratio:.1f}x")
    if args.json:
        out = {
            "results": results,
            "threads": args.threads,
            "hardware": hardware_metadata("cpu"),
            "torch": torch.__version__,
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
