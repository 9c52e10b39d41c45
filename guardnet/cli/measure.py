"""``guardnet measure``: measure trained models on real data.

Subcommands:
    measure contranet       a trained ContraNet, alone and behind SAEC, against PGD and C&W on
                            its classifier (:func:`guardnet.eval.measure.measure_contranet`).
    measure classifier      a pretrained classifier's top-1 accuracy on a split.
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

from guardnet.cli._args import guarded, print_help
from guardnet.cli.eval import parse_eps

__all__ = ["add_parser"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``measure`` and its subcommands to the CLI's subcommands."""
    group = sub.add_parser(
        "measure",
        help="measure a trained ContraNet or a classifier on real data",
        description="Measure trained models on the real splits (--root / $GUARDNET_DATA).",
    )
    group.set_defaults(run=functools.partial(print_help, group))
    measure_sub = group.add_subparsers(dest="measure_command", metavar="WHAT")
    _add_measure_contranet(measure_sub)
    _add_measure_classifier(measure_sub)


def _add_measure_contranet(measure_sub: argparse._SubParsersAction) -> None:
    p = measure_sub.add_parser(
        "contranet",
        help="a ContraNet, alone and behind SAEC, against PGD and C&W on its classifier",
        description="Calibrate ContraNet alone and SAEC + ContraNet on clean validation images "
        "at each --fpr budget, then report clean FPR, Acc_dec, and TPR, Acc_rob and AUROC per "
        "score against PGD-L-inf (random start) and C&W-L2 (foolbox) on the test images the "
        "classifier gets right (guardnet.eval.measure).",
        epilog="example: guardnet measure contranet --dataset mnist --contranet contranet-mnist "
        "--classifier mnist-cnn --eps 0.1 0.3 --json contranet_mnist.json",
    )
    p.add_argument("--dataset", required=True)
    p.add_argument("--contranet", required=True, help="pretrained name or Hub folder")
    p.add_argument("--classifier", required=True, help="pretrained classifier name")
    p.add_argument(
        "--eps", type=parse_eps, nargs="+", required=True, help="PGD budgets, 0-1 or k/255"
    )
    p.add_argument("--steps", type=int, default=50, help="PGD steps")
    p.add_argument("--cw-steps", type=int, default=100, help="C&W-L2 steps; 0 skips C&W")
    p.add_argument("--fpr", type=float, nargs="+", default=[0.05], help="validation budgets")
    p.add_argument(
        "--budget",
        nargs="+",
        choices=["equal", "runner_up"],
        default=["equal"],
        help="how the joint budget is split over the scores (each is measured; the first is "
        "the headline): equal shares, or chosen on the clean validation images under their "
        "runner-up labels (GuardedModel.calibrate(budget='runner_up'))",
    )
    p.add_argument("--val-limit", type=int, default=2000, help="seeded validation images")
    p.add_argument("--test-limit", type=int, default=1000, help="seeded test images")
    p.add_argument("--root", default=None, help="data root (default $GUARDNET_DATA)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="write the report here")
    p.add_argument("--grid", default=None, help="write a reconstruction grid PNG here")
    p.add_argument(
        "--attack-cache",
        default=None,
        help="folder of adversarial examples reused across ContraNets of one classifier",
    )
    p.set_defaults(run=guarded("measure contranet", _measure_contranet))


def _add_measure_classifier(measure_sub: argparse._SubParsersAction) -> None:
    p = measure_sub.add_parser(
        "classifier",
        help="a pretrained classifier's top-1 accuracy on a split",
        description="Top-1 accuracy of a pretrained classifier (registered name, folder or Hub "
        "repo id) on a split, images normalised with its config's mean and std. CIFAR-10 here "
        'is "CIFAR-10 (JPEG q75)", never standard CIFAR-10.',
        epilog="example: guardnet measure classifier resnet20-cifar10-akamaster --dataset "
        "cifar10 --split test --json out.json",
    )
    p.add_argument("model", help="pretrained name, weights folder or Hub repo id")
    p.add_argument("--dataset", default=None, help="dataset name (default: the config's)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--root", default=None, help="data root (default $GUARDNET_DATA)")
    p.add_argument("--limit", type=int, default=None, help="seeded subset of the split")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", type=Path, default=None, help="also write the result here")
    p.set_defaults(run=guarded("measure classifier", _measure_classifier))


def _measure_contranet(args: argparse.Namespace, command: str) -> None:

    import torch

    from guardnet.eval.measure import measure_contranet, summary_lines

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    report = measure_contranet(
        args.contranet,
        args.classifier,
        args.dataset,
        eps=args.eps,
        steps=args.steps,
        cw_steps=args.cw_steps,
        target_fprs=args.fpr,
        budgets=args.budget,
        val_limit=args.val_limit,
        test_limit=args.test_limit,
        seed=args.seed,
        attack_cache=args.attack_cache,
        grid=args.grid,
        root=args.root,
    )
    print("\n".join(summary_lines(report)))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")


def _measure_classifier(args: argparse.Namespace, command: str) -> None:
    from guardnet.eval.measure import classifier_accuracy

    result = classifier_accuracy(
        args.model,
        dataset=args.dataset,
        split=args.split,
        root=args.root,
        limit=args.limit,
        batch_size=args.batch_size,
        device=args.device,
    )
    n, correct = result["n"], result["correct"]
    print(
        f"{args.model} on {result['dataset_display_name']} {args.split} ({n} images): top-1 "
        f"accuracy {result['accuracy']:.2%} ({correct}/{n}), {result['seconds']:.1f} s on "
        f"{args.device}"
    )
    if args.json is not None:
        # The command as typed; the data root is the reader's own ($GUARDNET_DATA or --root).
        result["command"] = command
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
