"""The ``guardnet`` command line.

Subcommands:
    demo               wrap a real MNIST classifier with SAEC on the shipped fixture, offline, and
                       print what the guard did.
    models             list the registered pretrained classifiers.
    train classifier   train (or fine-tune) a classifier on MNIST, CIFAR-10 (JPEG q75) or GTSRB:
                       seeded, resumable, saved as a Hub folder with a model card.
    bench              the cost of protection: latency, throughput and FLOPs of pretrained
                       classifiers guarded by SAEC against the bare classifiers.
    measure, ship      measure trained models; write the folders guardnet ships (see
                       guardnet.cli_tools; also ``train branch-contranet``).

``calibrate`` and ``eval`` arrive with their issues.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from typing import Any

from guardnet._utils import json_object_arg

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="guardnet",
        description="Guard PyTorch image classifiers against adversarial examples.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="run the offline demo on shipped data",
        description="Wrap the shipped MNIST classifier in the full MixDefense guard (SAEC -> "
        "classifier -> ContraNet, all shipped), calibrate it on shipped clean validation images "
        "and show what it does to clean, noisy and attacked test images, with a picture of "
        "ContraNet's rebuilds.",
    )
    demo.add_argument("--fpr", type=float, default=0.05, help="target false-positive rate")
    demo.add_argument(
        "--noise", type=float, default=0.3, help="amplitude of the uniform noise (0-1 scale)"
    )
    demo.add_argument(
        "--eps",
        type=float,
        nargs="+",
        default=[0.1, 0.3],
        help="PGD L-inf budgets (0-1 scale; default 0.1 0.3)",
    )
    demo.add_argument(
        "--grid", default=None, help="where to write the rebuild grid PNG (default: temp dir)"
    )
    demo.add_argument(
        "--budget",
        choices=["equal", "runner_up"],
        default="equal",
        help="split of the joint FPR budget: equal shares per score (default), or runner_up: "
        "chosen on the clean validation images under their runner-up labels",
    )
    demo.add_argument("--limit", type=int, default=None, help="use only the first N test images")
    demo.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    demo.add_argument("--seed", type=int, default=0)

    sub.add_parser(
        "models",
        help="list the registered pretrained classifiers",
        description="List guardnet's pretrained classifiers: name, dataset, architecture, "
        "headline metric, and whether the weights ship with the package or come from the Hub.",
    )

    train = sub.add_parser(
        "train",
        help="train models",
        description="Train guardnet models.",
    )
    train.set_defaults(print_help=train.print_help)
    train_sub = train.add_subparsers(dest="train_command", metavar="WHAT")
    _add_train_classifier(train_sub)
    _add_train_contranet(train_sub)
    _add_bench(sub)
    from guardnet.cli_tools import add_tool_parsers

    add_tool_parsers(sub, train_sub)
    from guardnet.eval.command import add_eval_parser

    add_eval_parser(sub)
    return parser


_BENCH_MODELS = ("mnist-cnn", "resnet20-cifar10jpeg-ft", "resnet20-gtsrb")


def _add_bench(sub: argparse._SubParsersAction) -> None:
    """Add ``bench`` and its options to the subcommands."""
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


def _bench(args: argparse.Namespace, command: str) -> int:
    """Run ``guardnet bench``: print the markdown tables, optionally write JSON / markdown."""
    from pathlib import Path

    import torch

    from guardnet.data import load_fixture
    from guardnet.errors import GuardnetError
    from guardnet.eval.bench import bench_guard, render_markdown
    from guardnet.guard import GuardedModel
    from guardnet.hub import load_pretrained
    from guardnet.layers import SAECLayer

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
        for name, guard, shape in _recipe_guards(args):
            result = bench_guard(
                guard,
                input_shape=shape,
                batch_sizes=args.batch_sizes,
                min_run_time=args.min_run_time,
                device=args.device,
            )
            results.append({"model": name, "command": command, **result})
        for name in args.model or ([] if args.guard else _BENCH_MODELS):
            model, config = load_pretrained(name)
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


def _recipe_guards(args: argparse.Namespace) -> list[tuple[str, Any, tuple[int, ...]]]:
    """``--guard`` recipes as calibrated guards (plus the authors' ContraNet variants)."""
    from guardnet.data import load_fixture
    from guardnet.layers import ContraNetLayer
    from guardnet.nets.contranet import ContraNet, ContraNetConfig
    from guardnet.recipes import build_guard

    out = []
    for spec in args.guard or []:
        guard, recipe = build_guard(spec, device=args.device)
        fixture = "cifar10" if recipe.dataset.startswith("cifar10") else recipe.dataset
        val_images, _ = load_fixture(f"{fixture}-val")
        guard.calibrate(val_images.to(args.device), target_fpr=0.05, progress=False)
        shape = tuple(val_images.shape[1:])
        out.append((recipe.name, guard, shape))
        if args.compare_authors and "contranet" in guard.layers:
            ours = guard.layers["contranet"].net.config
            authors = ContraNet.from_config(
                ContraNetConfig.authors(ours.num_classes, ours.in_channels)
            )
            # A second build of the recipe (deepcopy breaks spectral-norm parametrizations),
            # with the same thresholds and the authors' ContraNet in place of ours.
            variant, _ = build_guard(spec, device=args.device)
            variant.load_state_dict(guard.state_dict())
            layer = ContraNetLayer(authors).to(args.device)
            layer.threshold.copy_(guard.layers["contranet"].threshold)
            layer.score_scale.copy_(guard.layers["contranet"].score_scale)
            variant.layers["contranet"] = layer
            out.append((f"{recipe.name} (authors' ContraNet architecture)", variant, shape))
    return out


_DEFAULT_LR = {"adamw": 1e-3, "sgd": 0.05}


def _add_train_classifier(train_sub: argparse._SubParsersAction) -> None:
    """Add ``train classifier`` and its options to the ``train`` subparsers."""
    cls = train_sub.add_parser(
        "classifier",
        help="train or fine-tune an image classifier",
        description="Train a classifier on guardnet's seeded train split (validation accuracy "
        "after every epoch, official test split at the end) and save it as a Hub folder "
        "(RUN_DIR/model: config.json with the normalisation, model.safetensors, model card). "
        "Every epoch writes a pickle-free checkpoint and a line in RUN_DIR/train_log.jsonl; "
        "--resume continues an interrupted run with the same result as an uninterrupted one.",
        epilog="example: guardnet train classifier --dataset mnist --arch MnistCNN --epochs 8 "
        "--out runs/mnist-cnn",
    )
    cls.add_argument(
        "--dataset",
        required=True,
        choices=["mnist", "cifar10", "gtsrb"],
        help="training data; cifar10 is CIFAR-10 (JPEG q75)",
    )
    cls.add_argument(
        "--arch",
        default=None,
        help="registered architecture: MnistCNN, SmallConvNet, resnet20, resnet56, CifarResNet "
        "(guardnet.hub.list_architectures()); optional with --init",
    )
    cls.add_argument(
        "--arch-args",
        type=json_object_arg,
        default=None,
        metavar="JSON",
        help="extra builder arguments, e.g. '{\"depth\": 32}' for CifarResNet",
    )
    cls.add_argument(
        "--init",
        default=None,
        metavar="PRETRAINED",
        help="fine-tune from a registered name (see `guardnet models`), a weights folder or a Hub "
        "repo id; its mean/std are kept",
    )
    cls.add_argument("--epochs", type=int, default=10, help="passes over the data (default 10)")
    cls.add_argument("--batch-size", type=int, default=128, help="images per step (default 128)")
    cls.add_argument(
        "--lr", type=float, default=None, help="peak learning rate (default: adamw 1e-3, sgd 0.05)"
    )
    cls.add_argument("--weight-decay", type=float, default=5e-4, help="weight decay (default 5e-4)")
    cls.add_argument("--optimizer", choices=["adamw", "sgd"], default="adamw", help="default adamw")
    cls.add_argument(
        "--momentum", type=float, default=0.9, help="SGD (Nesterov) momentum (default 0.9)"
    )
    cls.add_argument(
        "--schedule",
        choices=["onecycle", "cosine"],
        default="onecycle",
        help="per-step learning-rate schedule (default onecycle; cosine: no warm-up, for "
        "fine-tuning)",
    )
    cls.add_argument(
        "--label-smoothing",
        type=float,
        default=0.0,
        help="cross-entropy label smoothing (default 0)",
    )
    cls.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    cls.add_argument(
        "--out",
        default=None,
        metavar="RUN_DIR",
        help="run folder (default runs/<dataset>-<arch>-seed<seed>)",
    )
    cls.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest checkpoint in RUN_DIR (starts fresh if there is none)",
    )
    cls.add_argument("--root", default=None, help="data root (default $GUARDNET_DATA)")
    cls.add_argument(
        "--limit", type=int, default=None, help="train on a seeded subset of N images (smoke runs)"
    )
    cls.add_argument(
        "--eval-limit",
        type=int,
        default=None,
        help="evaluate on seeded subsets of N validation / test images (smoke runs)",
    )
    cls.add_argument(
        "--no-augment", action="store_true", help="no data augmentation (default: per dataset)"
    )
    cls.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice, one per core); use 1 while another "
        "job shares the cores (2 threads on 2 busy cores ran 6x slower than 1)",
    )
    cls.add_argument(
        "--device", default="auto", help="auto (default: CUDA if available), cpu, cuda, ..."
    )
    cls.add_argument("--no-progress", action="store_true", help="no progress bars")


def _epochs_arg(text: str) -> tuple[str, int]:
    stage, sep, count = text.partition("=")
    from guardnet.train.contranet import STAGES

    if not sep or stage not in STAGES or not count.isdigit():
        raise argparse.ArgumentTypeError(
            f"expected STAGE=N with STAGE one of {', '.join(STAGES)}, got {text!r}"
        )
    return stage, int(count)


def _add_train_contranet(train_sub: argparse._SubParsersAction) -> None:
    """Add ``train contranet`` and its options to the ``train`` subparsers."""
    cn = train_sub.add_parser(
        "contranet",
        help="train a ContraNet detector (three stages)",
        description="Train ContraNet's networks on guardnet's train split, stage by stage "
        "(gan, aux, dis, dmm_pretrain, dmm; see guardnet.train.contranet), and save the "
        "inference nets as a Hub folder (RUN_DIR/model). Every epoch writes a pickle-free "
        "checkpoint; a rerun with the same RUN_DIR resumes. Runs unchanged under torchrun "
        "(DistributedDataParallel; gloo on CPU, NCCL on CUDA).",
        epilog="example: guardnet train contranet --dataset mnist --classifier mnist-cnn "
        '--arch-args \'{"g_ch": 8, "d_ch": 8}\' --epochs gan=4 --out runs/contranet-mnist',
    )
    cn.add_argument("--dataset", required=True, help="mnist, gtsrb or cifar10 (JPEG q75)")
    cn.add_argument("--out", default=None, help="run folder (default runs/contranet-DATASET)")
    cn.add_argument("--preset", choices=["small", "authors"], default="small")
    cn.add_argument(
        "--arch-args",
        type=json_object_arg,
        default=None,
        metavar="JSON",
        help="overrides of the preset's ContraNetConfig fields, e.g. '{\"g_ch\": 8}'",
    )
    cn.add_argument(
        "--classifier",
        default=None,
        help="protected classifier (pretrained name, folder or Hub id) for the adversarial "
        "training examples of the dis and dmm stages",
    )
    cn.add_argument(
        "--epochs",
        type=_epochs_arg,
        nargs="+",
        default=[],
        metavar="STAGE=N",
        help="epochs per stage, e.g. gan=4 dmm=2 (defaults: gan=4 aux=0 dis=1 dmm_pretrain=1 "
        "dmm=2)",
    )
    cn.add_argument(
        "--settings",
        type=json_object_arg,
        default=None,
        metavar="JSON",
        help="other ContraNetTrainSettings fields, e.g. '{\"batch_size\": 128}'",
    )
    cn.add_argument("--limit", type=int, default=None, help="train on N images (smoke runs)")
    cn.add_argument("--eval-limit", type=int, default=2000, help="validation images for checks")
    cn.add_argument("--root", default=None, help="data root (default $GUARDNET_DATA)")
    cn.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints")
    cn.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    cn.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    cn.add_argument("--no-progress", action="store_true", help="no progress bars")


def _train_contranet(args: argparse.Namespace, command: str) -> int:
    """Run ``guardnet train contranet``; errors guardnet explains go to stderr, exit code 2."""
    from guardnet.data import dataset_info
    from guardnet.errors import GuardnetError
    from guardnet.train.contranet import (
        DATASET_DEFAULTS,
        ContraNetTrainSettings,
        run_contranet_training,
    )

    try:
        name = dataset_info(args.dataset).name
        fields = dict(DATASET_DEFAULTS.get(name, {}))
        fields.update({f"{stage}_epochs": n for stage, n in args.epochs})
        fields.update(args.settings or {})
        for key in ("betas", "adv_eps"):
            if isinstance(fields.get(key), list):
                fields[key] = tuple(fields[key])
        settings = ContraNetTrainSettings(**fields)
        run_contranet_training(
            dataset=name,
            out=args.out or f"runs/contranet-{name}",
            settings=settings,
            preset=args.preset,
            arch_args=args.arch_args,
            classifier=args.classifier,
            root=args.root,
            limit=args.limit,
            eval_limit=args.eval_limit,
            resume=not args.no_resume,
            threads=args.threads,
            device=args.device,
            progress=not args.no_progress,
            command=command,
            log=lambda line: print(line, flush=True),
        )
    except (GuardnetError, ValueError, TypeError) as exc:
        print(f"guardnet train contranet: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _train_classifier(args: argparse.Namespace, command: str) -> int:
    """Run ``guardnet train classifier``; errors guardnet explains go to stderr, exit code 2."""
    from guardnet.errors import GuardnetError
    from guardnet.train.classifier import TrainSettings, run_classifier_training

    if args.arch is None and args.init is None:
        print("guardnet train classifier: error: give --arch or --init", file=sys.stderr)
        return 2
    name = args.arch or args.init.rstrip("/").rsplit("/", 1)[-1]
    out = args.out or f"runs/{args.dataset}-{name}-seed{args.seed}"
    try:
        settings = TrainSettings(
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr if args.lr is not None else _DEFAULT_LR[args.optimizer],
            weight_decay=args.weight_decay,
            optimizer=args.optimizer,
            momentum=args.momentum,
            schedule=args.schedule,
            label_smoothing=args.label_smoothing,
            seed=args.seed,
        )
        run_classifier_training(
            dataset=args.dataset,
            arch=args.arch,
            out=out,
            settings=settings,
            arch_args=args.arch_args,
            init=args.init,
            root=args.root,
            limit=args.limit,
            eval_limit=args.eval_limit,
            augment=not args.no_augment,
            resume=args.resume,
            threads=args.threads,
            device=args.device,
            progress=not args.no_progress,
            command=command,
            log=lambda line: print(line, flush=True),
        )
    except (GuardnetError, ValueError) as exc:
        print(f"guardnet train classifier: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _key_metric(metrics: dict[str, float]) -> str:
    """The headline metric: the first measured (not author-stated) test metric, else the first."""
    measured = [key for key in metrics if not key.startswith("stated_")]
    tests = [key for key in measured if "test" in key]
    key = (tests or measured or list(metrics) or [None])[0]
    if key is None:
        return "-"
    value = metrics[key]
    rate = any(word in key for word in ("acc", "tpr", "fpr"))
    shown = f"{100 * value:.2f}%" if rate and 0 <= value <= 1 else f"{value:g}"
    return f"{key} {shown}"


def _list_models() -> int:
    """Print the pretrained registry as a table (``guardnet models``)."""
    from guardnet.hub import list_pretrained

    header = ("NAME", "DATASET", "ARCHITECTURE", "KEY METRIC", "WEIGHTS")
    rows = [
        (
            entry.name,
            entry.dataset,
            entry.architecture,
            _key_metric(entry.metrics),
            "shipped" if entry.local_path is not None else f"hub: {entry.hub_id}",
        )
        for entry in list_pretrained()
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # The command line for model cards: the arguments exactly, the program named `guardnet`.
    command = shlex.join(["guardnet", *(sys.argv[1:] if argv is None else argv)])
    args = parser.parse_args(argv)
    if args.version:
        from guardnet import __version__

        print(f"guardnet {__version__}")
        return 0
    if args.command == "demo":
        from guardnet.demo import run_demo

        run_demo(
            target_fpr=args.fpr,
            budget=args.budget,
            noise=args.noise,
            eps=tuple(args.eps),
            limit=args.limit,
            device=args.device,
            seed=args.seed,
            grid=args.grid,
        )
        return 0
    if args.command == "models":
        return _list_models()
    if args.command == "bench":
        return _bench(args, command)
    if args.command == "eval":
        from guardnet.eval.command import run_eval

        return run_eval(args, command)
    from guardnet.cli_tools import run_tool

    tool = run_tool(args, command)
    if tool is not None:
        return tool
    if args.command == "train":
        if args.train_command == "classifier":
            return _train_classifier(args, command)
        if args.train_command == "contranet":
            return _train_contranet(args, command)
        args.print_help()
        return 1
    parser.print_help()
    return 1


if __name__ == "__main__":
    sys.exit(main())
