"""``guardnet bench``: the cost of protection (latency, throughput, FLOPs) of guards."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_parser"]

_BENCH_MODELS = ("mnist-cnn", "resnet20-cifar10jpeg-ft", "resnet20-gtsrb")
# Guards with a probe layer (A2D attacks every input): validation images they are calibrated
# on, and real test images they are timed on.
PROBE_CALIBRATION_IMAGES = 200
PROBE_TIMING_IMAGES = 256


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``bench`` and its options to the CLI's subcommands."""
    bench = sub.add_parser(
        "bench",
        help="measure the cost of protection (latency, throughput, FLOPs)",
        description="Wrap pretrained classifiers with SAEC (calibrated on the shipped validation "
        "fixture of their dataset) and time the whole guard against the bare classifier, per "
        "batch size, with FLOPs per image and hardware metadata.",
        epilog="example: guardnet bench --model mnist-cnn --batch-sizes 1 64 --json bench.json",
    )
    bench.add_argument(
        "--model",
        action="append",
        default=None,
        metavar="NAME",
        help=f"registered pretrained name, repeatable (default: {' '.join(_BENCH_MODELS)})",
    )
    bench.add_argument(
        "--guard",
        action="append",
        default=None,
        metavar="RECIPE",
        help="a guard recipe (guardnet eval --list-guards) to bench as a whole, repeatable; "
        "calibrated on the shipped validation fixture of its dataset",
    )
    bench.add_argument(
        "--compare-authors",
        action="store_true",
        help="with --guard: also bench each guard with its ContraNet replaced by a same-size "
        "build of the ContraNet authors' architecture (random weights: the cost is the same)",
    )
    bench.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 64, 256], metavar="N")
    bench.add_argument(
        "--min-run-time",
        type=float,
        default=0.5,
        help="seconds of timed runs per measurement at least (default 0.5)",
    )
    bench.add_argument("--json", default=None, metavar="PATH", help="write the results as JSON")
    bench.add_argument(
        "--markdown", default=None, metavar="PATH", help="write the tables as markdown"
    )
    bench.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    bench.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads for the timings (default: torch's choice, one per core); use 1 "
        "while another job shares the cores, where more threads than free cores stall",
    )
    bench.set_defaults(run=_run)


def _run(args: argparse.Namespace, command: str) -> int:
    """Run ``guardnet bench``: print the markdown tables, optionally write JSON / markdown."""
    import torch

    from guardnet.data import load_fixture
    from guardnet.errors import GuardnetError
    from guardnet.eval.bench import bench_guard, render_markdown
    from guardnet.guard import GuardedModel
    from guardnet.layers import SAECLayer
    from guardnet.weights import from_pretrained

    if any(size < 1 for size in args.batch_sizes):
        print("guardnet bench: error: batch sizes must be >= 1", file=sys.stderr)
        return 2
    if args.threads is not None and args.threads < 1:
        print("guardnet bench: error: --threads must be >= 1", file=sys.stderr)
        return 2
    threads = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    results = []
    try:
        for name, guard, shape, images in _recipe_guards(args):
            result = bench_guard(
                guard,
                input_shape=shape,
                batch_sizes=args.batch_sizes,
                min_run_time=args.min_run_time,
                device=args.device,
                images=images,
            )
            results.append({"model": name, "command": command, **result})
        for name in args.model or ([] if args.guard else _BENCH_MODELS):
            model = from_pretrained(name)
            config = model.pretrained_config
            guard = GuardedModel(
                model,
                [SAECLayer()],
                mean=config["mean"],
                std=config["std"],
                num_classes=config["num_classes"],
            ).to(args.device)
            dataset = "cifar10" if config["dataset"].startswith("cifar10") else config["dataset"]
            val_images, _ = load_fixture(f"{dataset}-val")
            guard.calibrate(val_images.to(args.device), target_fpr=0.05, progress=False)
            result = bench_guard(
                guard,
                input_shape=config["input_size"],
                batch_sizes=args.batch_sizes,
                min_run_time=args.min_run_time,
                device=args.device,
            )
            results.append({"model": name, "command": command, **result})
    except (GuardnetError, ValueError) as exc:
        print(f"guardnet bench: error: {exc}", file=sys.stderr)
        return 2
    finally:
        torch.set_num_threads(threads)  # main() may run in-process (tests, notebooks)
    text = render_markdown(results)
    print(text)
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2) + "\n")
    if args.markdown:
        path = Path(args.markdown)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return 0


def _recipe_guards(
    args: argparse.Namespace,
) -> list[tuple[str, Any, tuple[int, ...], Any]]:
    """``--guard`` recipes as calibrated guards (plus the authors' ContraNet variants)."""
    from guardnet.data import load_fixture
    from guardnet.guard import build_guard
    from guardnet.layers import ContraNetLayer, LayerKind
    from guardnet.nets.contranet import ContraNet, ContraNetConfig

    out = []
    for spec in args.guard or []:
        guard = build_guard(spec, device=args.device)
        recipe = guard.recipe
        fixture = "cifar10" if recipe.dataset.startswith("cifar10") else recipe.dataset
        val_images, _ = load_fixture(f"{fixture}-val")
        real = None
        if any(layer.kind is LayerKind.PROBE for layer in guard.layers.values()):
            # A probe attacks every input: calibrate on fewer images, time on real test ones.
            val_images = val_images[:PROBE_CALIBRATION_IMAGES]
            real = load_fixture(fixture)[0][:PROBE_TIMING_IMAGES]
        if guard.rejectors:  # a guard that only corrects labels (DeT) has no threshold
            guard.calibrate(val_images.to(args.device), target_fpr=0.05, progress=False)
        shape = tuple(val_images.shape[1:])
        out.append((recipe.name, guard, shape, real))
        if args.compare_authors and "contranet" in guard.layers:
            ours = guard.layers["contranet"].net.config
            authors = ContraNet.from_config(
                ContraNetConfig.authors(ours.num_classes, ours.in_channels)
            )
            # A second build of the recipe (deepcopy breaks spectral-norm parametrizations),
            # with the same thresholds and the authors' ContraNet in place of ours.
            variant = build_guard(spec, device=args.device)
            variant.load_state_dict(guard.state_dict())
            layer = ContraNetLayer(authors).to(args.device)
            layer.threshold.copy_(guard.layers["contranet"].threshold)
            layer.score_scale.copy_(guard.layers["contranet"].score_scale)
            variant.layers["contranet"] = layer
            out.append((f"{recipe.name} (authors' ContraNet architecture)", variant, shape, real))
    return out
