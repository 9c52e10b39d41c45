"""The ``measure``, ``ship`` and ``train branch-contranet`` subcommands of ``guardnet``.

Subcommands:
    measure contranet       a trained ContraNet, alone and behind SAEC, against PGD and C&W on
                            its classifier (:func:`guardnet.eval.measure.measure_contranet`).
    measure classifier      a pretrained classifier's top-1 accuracy on a split.
    ship contranet          a trained ContraNet's Hub folder with its measured figures.
    ship akamaster          Yerlan Idelbayev's CIFAR-10 ResNets as Hub folders.
    ship fixtures           the small dataset samples in ``guardnet/assets/fixtures/``.
    train branch-contranet  a ContraNet run that resumes at its DMM stages.

Only ``argparse`` is imported here; each command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from guardnet._utils import json_object_arg

__all__ = ["add_tool_parsers", "run_tool"]


def _group(
    sub: argparse._SubParsersAction, name: str, *, help: str, description: str
) -> argparse._SubParsersAction:
    """A subcommand with subcommands of its own (``dest``: ``<name>_command``)."""
    group = sub.add_parser(name, help=help, description=description)
    group.set_defaults(print_help=group.print_help)
    return group.add_subparsers(dest=f"{name}_command", metavar="WHAT")


def add_tool_parsers(
    sub: argparse._SubParsersAction, train_sub: argparse._SubParsersAction
) -> None:
    """Add ``measure``, ``ship`` and ``train branch-contranet`` to the command line."""
    measure_sub = _group(
        sub,
        "measure",
        help="measure a trained ContraNet or a classifier on real data",
        description="Measure trained models on the real splits (--root / $GUARDNET_DATA).",
    )
    _add_measure_contranet(measure_sub)
    _add_measure_classifier(measure_sub)
    ship_sub = _group(
        sub,
        "ship",
        help="write the folders guardnet ships (weights with cards, fixtures)",
        description="Write Hub folders and data fixtures as guardnet ships them.",
    )
    _add_ship_contranet(ship_sub)
    _add_ship_akamaster(ship_sub)
    _add_ship_fixtures(ship_sub)
    _add_train_branch(train_sub)


def _add_measure_contranet(measure_sub: argparse._SubParsersAction) -> None:
    p = measure_sub.add_parser(
        "contranet",
        help="a ContraNet, alone and behind SAEC, against PGD and C&W on its classifier",
        description="Calibrate ContraNet alone and SAEC + ContraNet on clean validation images "
        "at each --fpr budget, then report clean FPR, Acc_dec, and TPR, Acc_rob and AUROC per "
        "score against torchattacks' PGD-L-inf (random start) and C&W-L2 on the test images the "
        "classifier gets right (guardnet.eval.measure).",
        epilog="example: guardnet measure contranet --dataset mnist --contranet contranet-mnist "
        "--classifier mnist-cnn --eps 0.1 0.3 --json contranet_mnist.json",
    )
    p.add_argument("--dataset", required=True)
    p.add_argument("--contranet", required=True, help="pretrained name or Hub folder")
    p.add_argument("--classifier", required=True, help="pretrained classifier name")
    p.add_argument("--eps", type=float, nargs="+", required=True, help="PGD budgets, 0-1")
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


def _add_ship_contranet(ship_sub: argparse._SubParsersAction) -> None:
    p = ship_sub.add_parser(
        "contranet",
        help="a trained ContraNet's Hub folder with its measured figures",
        description="Copy RUN_DIR/model to --out (replaced) with the test metrics of "
        "ContraNet alone (from a `guardnet measure contranet --json` report) added to "
        "config.json and a 'Measured detection' section added to the model card; print the "
        "config's metrics (guardnet.ship.ship_contranet).",
    )
    p.add_argument("--run", required=True, type=Path, help="training run folder (holds model/)")
    p.add_argument("--out", required=True, type=Path, help="the Hub folder to write")
    p.add_argument("--measure", required=True, type=Path, help="the measurement's JSON report")
    p.add_argument("--measure-command", required=True, help="the measurement command line")
    p.add_argument(
        "--fpr", type=float, default=None, help="budget for config.json's metrics (default: first)"
    )
    p.add_argument("--wall-time", default=None, help="text of the card's 'Training wall time'")
    p.add_argument(
        "--notes", type=Path, default=None, help="Markdown file put before the card's '## Command'"
    )


def _add_ship_akamaster(ship_sub: argparse._SubParsersAction) -> None:
    p = ship_sub.add_parser(
        "akamaster",
        help="convert Yerlan Idelbayev's CIFAR-10 ResNet20/56 checkpoints to Hub folders",
        description="Read resnet20-12fca82f.th and resnet56-4bfd9763.th (BSD-2-Clause), load "
        "them strictly into guardnet's ResNets and write OUT/resnet{20,56}-cifar10-akamaster "
        "with config, safetensors, card and licence; the card cites the CIFAR-10 (JPEG q75) "
        "accuracy when the folder holds `guardnet measure classifier --json` output for these "
        "weights (guardnet.ship.convert_akamaster).",
    )
    p.add_argument("--out", required=True, type=Path, help="folder the model folders go in")
    p.add_argument(
        "--source",
        type=Path,
        default=None,
        help="folder of the .th files (default DATA_ROOT/weights/akamaster-resnet-cifar10)",
    )
    p.add_argument("--depths", type=int, nargs="+", default=[20, 56], choices=[20, 56])


def _add_ship_fixtures(ship_sub: argparse._SubParsersAction) -> None:
    p = ship_sub.add_parser(
        "fixtures",
        help="write the small dataset samples shipped in guardnet/assets/fixtures/",
        description="Draw the fixtures of guardnet.data.FIXTURES from the real data and write "
        "them, with their provenance README (guardnet.ship.write_fixtures).",
    )
    p.add_argument("--root", default=None, help="data root (default $GUARDNET_DATA)")
    p.add_argument("--out", type=Path, default=None, help="default: the package's fixtures")


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


def run_tool(args: argparse.Namespace, command: str) -> int | None:
    """Run one of this module's subcommands; None if ``args`` names none of them.

    Errors guardnet explains go to stderr with exit code 2.
    """
    from guardnet.errors import GuardnetError

    what = {
        "measure": getattr(args, "measure_command", None),
        "ship": getattr(args, "ship_command", None),
        "train": getattr(args, "train_command", None),
    }.get(args.command)
    runners = {
        ("measure", "contranet"): _measure_contranet,
        ("measure", "classifier"): _measure_classifier,
        ("ship", "contranet"): _ship_contranet,
        ("ship", "akamaster"): _ship_akamaster,
        ("ship", "fixtures"): _ship_fixtures,
        ("train", "branch-contranet"): _train_branch,
    }
    if args.command in ("measure", "ship") and what is None:
        args.print_help()
        return 1
    runner = runners.get((args.command, what))
    if runner is None:
        return None
    try:
        runner(args, command)
    except GuardnetError as exc:
        print(f"guardnet {args.command} {what}: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _measure_contranet(args: argparse.Namespace, command: str) -> None:
    import logging

    import torch

    from guardnet.eval.measure import measure_contranet, summary_lines

    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
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
        data = os.environ.get("GUARDNET_DATA")
        result["command"] = (f"GUARDNET_DATA={data} " if data else "") + command
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")


def _ship_contranet(args: argparse.Namespace, command: str) -> None:
    from guardnet.ship import ship_contranet

    metrics = ship_contranet(
        args.run / "model",
        args.out,
        measurement=args.measure,
        measure_command=args.measure_command,
        fpr=args.fpr,
        wall_time=args.wall_time,
        notes=args.notes.read_text() if args.notes is not None else None,
    )
    print(json.dumps(metrics, indent=1))


def _ship_akamaster(args: argparse.Namespace, command: str) -> None:
    from guardnet.ship import convert_akamaster

    for folder in convert_akamaster(args.out, source=args.source, depths=tuple(args.depths)):
        metrics = json.loads((folder / "config.json").read_text())["metrics"]
        size = (folder / "model.safetensors").stat().st_size
        print(f"{folder}: {size / 1e6:.2f} MB, metrics {metrics}")


def _ship_fixtures(args: argparse.Namespace, command: str) -> None:
    from guardnet.ship import write_fixtures

    options = {} if args.out is None else {"out": args.out}
    for meta in write_fixtures(root=args.root, **options):
        print(f"{meta['display_name']} {meta['split']}: {meta['size_bytes']} bytes, "
              f"sha256 {meta['sha256']}")  # fmt: skip


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
