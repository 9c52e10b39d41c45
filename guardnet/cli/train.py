"""``guardnet train``: train classifiers and ContraNet detectors (``train classifier``,
``train contranet``), on guardnet's datasets or on your own ImageFolder tree (``--data-dir``)."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from guardnet.cli._args import guarded, json_object_arg, print_help

__all__ = ["add_parser"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``train`` and its subcommands to the CLI's subcommands."""
    train = sub.add_parser(
        "train",
        help="train models",
        description="Train guardnet models.",
    )
    train.set_defaults(run=functools.partial(print_help, train))
    train_sub = train.add_subparsers(dest="train_command", metavar="WHAT")
    _add_train_classifier(train_sub)
    _add_train_contranet(train_sub)
    _add_train_branch(train_sub)
    _add_train_reformers(train_sub)


_DEFAULT_LR = {"adamw": 1e-3, "sgd": 0.05}

_DATA_DIR_HELP = (
    "your own images instead of --dataset: a torchvision ImageFolder tree, "
    "PATH/train/CLASS/IMAGE and PATH/val/CLASS/IMAGE (PATH/test/ optional), every split with the "
    "same class folders; the images are resized to --image-size and converted to --channels, "
    "and the model is named after the folder"
)


def _add_data_args(
    parser: argparse.ArgumentParser, *, dataset_help: str, choices: Sequence[str] | None = None
) -> None:
    """The training data options both ``train`` subcommands share."""
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("--dataset", choices=choices, help=dataset_help)
    data.add_argument("--data-dir", default=None, metavar="PATH", help=_DATA_DIR_HELP)
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        metavar="N",
        help="with --data-dir: resize the images to N x N (default: the input size of the "
        "pretrained model the run starts from or protects, else 32)",
    )
    parser.add_argument(
        "--channels",
        type=int,
        choices=[1, 3],
        default=None,
        help="with --data-dir: convert the images to 1 (grey) or 3 (RGB) channels (default: "
        "those of the pretrained model, as for --image-size, else 3)",
    )


def _data_options(args: argparse.Namespace) -> dict[str, Any]:
    """The data fields of a training options object, from the ``train`` arguments."""
    return {
        "dataset": args.dataset,
        "data_dir": args.data_dir,
        "image_size": args.image_size,
        "channels": args.channels,
        "root": args.root,
    }


def _data_name(args: argparse.Namespace) -> str:
    """What default run folders are named after: the dataset, or the --data-dir folder."""
    from pathlib import Path

    return args.dataset if args.dataset is not None else Path(args.data_dir).resolve().name


def _add_train_classifier(train_sub: argparse._SubParsersAction) -> None:
    """Add ``train classifier`` and its options to the ``train`` subparsers."""
    cls = train_sub.add_parser(
        "classifier",
        help="train or fine-tune an image classifier",
        description="Train a classifier on guardnet's seeded train split (validation accuracy "
        "after every epoch, official test split at the end), or on your own ImageFolder tree "
        "(--data-dir), and save it as a Hub folder "
        "(RUN_DIR/model: config.json with the normalisation, model.safetensors, model card). "
        "Every epoch writes a pickle-free checkpoint and a line in RUN_DIR/train_log.jsonl; "
        "--resume continues an interrupted run with the same result as an uninterrupted one.",
        epilog="examples: guardnet train classifier --dataset mnist --arch MnistCNN --epochs 8 "
        "--out runs/mnist-cnn; guardnet train classifier --data-dir data/flowers --arch "
        "resnet20 --image-size 32 --epochs 20",
    )
    _add_data_args(
        cls,
        dataset_help="training data; cifar10 is CIFAR-10 (JPEG q75)",
        choices=["mnist", "cifar10", "gtsrb"],
    )
    cls.add_argument(
        "--arch",
        default=None,
        help="registered architecture: MnistCNN, SmallConvNet, resnet20, resnet56, CifarResNet "
        "(guardnet.weights.list_architectures()); optional with --init",
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
        "--no-augment",
        action="store_true",
        help="no data augmentation (default: per dataset; --data-dir images get none)",
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
    cls.set_defaults(run=_run_classifier)


def _epochs_arg(text: str) -> tuple[str, int]:
    stage, sep, count = text.partition("=")
    from guardnet.train.settings import STAGES

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
        description="Train ContraNet's networks on guardnet's train split or on your own "
        "ImageFolder tree (--data-dir), stage by stage "
        "(gan, aux, dis, dmm_pretrain, dmm; see guardnet.train.contranet), and save the "
        "inference nets as a Hub folder (RUN_DIR/model). Every epoch writes a pickle-free "
        "checkpoint; a rerun with the same RUN_DIR resumes. Runs unchanged under torchrun "
        "(DistributedDataParallel; gloo on CPU, NCCL on CUDA).",
        epilog="examples: guardnet train contranet --dataset mnist --classifier mnist-cnn "
        '--arch-args \'{"g_ch": 8, "d_ch": 8}\' --epochs gan=4 --out runs/contranet-mnist; '
        "guardnet train contranet --data-dir data/flowers --classifier runs/flowers/model",
    )
    _add_data_args(cn, dataset_help="mnist, gtsrb or cifar10 (JPEG q75)")
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
    cn.set_defaults(run=_run_contranet)


def _run_contranet(args: argparse.Namespace, command: str) -> int:
    """Run ``guardnet train contranet``; errors guardnet explains go to stderr, exit code 2."""
    from guardnet.data import dataset_info
    from guardnet.errors import GuardnetError
    from guardnet.train import ContraNetTrainingOptions, contranet_settings, run_contranet_training

    try:
        dataset = dataset_info(args.dataset).name if args.dataset is not None else None
        fields = {f"{stage}_epochs": n for stage, n in args.epochs} | (args.settings or {})
        options = ContraNetTrainingOptions(
            out=args.out or f"runs/contranet-{dataset or _data_name(args)}",
            **(_data_options(args) | {"dataset": dataset}),
            settings=contranet_settings(dataset, **fields),
            preset=args.preset,
            arch_args=args.arch_args,
            classifier=args.classifier,
            limit=args.limit,
            eval_limit=args.eval_limit,
            resume=not args.no_resume,
            threads=args.threads,
            device=args.device,
            progress=not args.no_progress,
            command=command,
            log=lambda line: print(line, flush=True),
        )
        run_contranet_training(options)
    except (GuardnetError, ValueError, TypeError) as exc:
        print(f"guardnet train contranet: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _run_classifier(args: argparse.Namespace, command: str) -> int:
    """Run ``guardnet train classifier``; errors guardnet explains go to stderr, exit code 2."""
    from guardnet.errors import GuardnetError
    from guardnet.train import ClassifierTrainingOptions, TrainSettings, run_classifier_training

    if args.arch is None and args.init is None:
        print("guardnet train classifier: error: give --arch or --init", file=sys.stderr)
        return 2
    name = args.arch or args.init.rstrip("/").rsplit("/", 1)[-1]
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
        options = ClassifierTrainingOptions(
            out=args.out or f"runs/{_data_name(args)}-{name}-seed{args.seed}",
            **_data_options(args),
            arch=args.arch,
            arch_args=args.arch_args,
            init=args.init,
            settings=settings,
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
        run_classifier_training(options)
    except (GuardnetError, ValueError) as exc:
        print(f"guardnet train classifier: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _add_train_branch(train_sub: argparse._SubParsersAction) -> None:
    p = train_sub.add_parser(
        "branch-contranet",
        help="branch a ContraNet run before its DMM stages, with a fresh (or the shipped) DMM",
        description="Write a run folder holding a ContraNet run's encoder, generators and "
        "discriminators with a freshly built DMM (or, with --keep-dmm, the shipped one), so "
        "that `guardnet train contranet --out OUT` with new DMM settings resumes at the DMM "
        "stages (guardnet.train.branch).",
        epilog="example: guardnet train branch-contranet --source-model contranet-gtsrb --out "
        "runs/contranet-gtsrb-more-dmm --keep-dmm",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--source", help="a checkpoint folder of the run")
    source.add_argument("--source-model", help="shipped ContraNet weights: a name or folder")
    p.add_argument("--out", required=True, help="the new run folder")
    p.add_argument("--units", type=int, help="units before dmm_pretrain (--source)")
    p.add_argument("--dataset", help="for the dataset's default settings (--source)")
    p.add_argument(
        "--arch-args", type=json_object_arg, default={}, metavar="JSON", help="DMM size overrides"
    )
    p.add_argument(
        "--settings", type=json_object_arg, default={}, metavar="JSON", help="setting overrides"
    )
    p.add_argument(
        "--keep-dmm", action="store_true", help="keep the shipped DMM (--source-model only)"
    )
    p.set_defaults(run=guarded("train branch-contranet", _train_branch))


def _train_branch(args: argparse.Namespace, command: str) -> None:
    from guardnet.train.branch import branch_contranet

    written, units = branch_contranet(
        args.out,
        source=args.source,
        source_model=args.source_model,
        units=args.units,
        dataset=args.dataset,
        arch_args=args.arch_args,
        settings=args.settings,
        keep_dmm=args.keep_dmm,
    )
    print(f"wrote {written} and {Path(args.out) / 'train_log.jsonl'} ({units} units)")


def _add_train_reformers(train_sub: argparse._SubParsersAction) -> None:
    p = train_sub.add_parser(
        "reformers",
        help="DeT's reformers: plain denoising, then cross training",
        description="Train denoising autoencoders (one per --styles entry) on noise-added "
        "images of --dataset, then cross-train every pair (DeT, Algorithm 1); write "
        "OUT/model as one ReformerSet Hub folder (guardnet.train.reformer).",
        epilog="example: guardnet train reformers --dataset mnist --styles pooled plain wide "
        "--epochs 5 --cross-epochs 1 --noise 0.1 --out runs/reformers-mnist",
    )
    p.add_argument("--dataset", required=True, choices=["mnist", "cifar10", "gtsrb"])
    p.add_argument(
        "--styles",
        nargs="+",
        required=True,
        help="pooled, plain, wide, relu or relu-pooled, per reformer",
    )
    p.add_argument("--epochs", type=int, default=5, help="plain denoising epochs")
    p.add_argument("--cross-epochs", type=int, default=1, help="cross-training epochs")
    p.add_argument("--noise", type=float, default=0.1, help="training noise std (l)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument(
        "--cross-lr", type=float, default=None, help="learning rate of the cross epochs (--lr)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-limit", type=int, default=None, help="training images (seeded subset)")
    p.add_argument("--val-limit", type=int, default=1000, help="validation images for the error")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", required=True, type=Path, help="the run folder")
    p.set_defaults(run=guarded("train reformers", _train_reformers))


def _train_reformers(args: argparse.Namespace, command: str) -> None:
    import torch

    from guardnet.data.datasets import load_split
    from guardnet.train.reformer import ReformerTrainingOptions, train_reformers

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    options = ReformerTrainingOptions(
        dataset=args.dataset,
        styles=tuple(args.styles),
        epochs=args.epochs,
        cross_epochs=args.cross_epochs,
        noise=args.noise,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        cross_lr=args.cross_lr,
    )
    train = load_split(args.dataset, "train", limit=args.train_limit).images
    val = load_split(args.dataset, "val", limit=args.val_limit).images
    config = train_reformers(
        options,
        train,
        val,
        args.out,
        resume=args.resume,
        progress=not args.no_progress,
        invocation=command,
    )
    print(
        f"wrote {args.out / 'model'}: rebuild errors {config['history'][-1]['val_rebuild_error']}"
    )
