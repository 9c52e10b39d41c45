"""``guardnet ship``: write the folders guardnet ships.

Subcommands:
    ship contranet          a trained ContraNet's Hub folder with its measured figures.
    ship akamaster          Yerlan Idelbayev's CIFAR-10 ResNets as Hub folders.
    ship fixtures           the small dataset samples in ``guardnet/assets/fixtures/``.
    ship a2d                an A2D layer fitted and calibrated on validation data.
    ship det                DeT's chosen reformers from a training run.
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

from guardnet.cli._args import guarded, print_help

__all__ = ["add_parser"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``ship`` and its subcommands to the CLI's subcommands."""
    group = sub.add_parser(
        "ship",
        help="write the folders guardnet ships (weights with cards, fixtures)",
        description="Write Hub folders and data fixtures as guardnet ships them.",
    )
    group.set_defaults(run=functools.partial(print_help, group))
    ship_sub = group.add_subparsers(dest="ship_command", metavar="WHAT")
    _add_ship_contranet(ship_sub)
    _add_ship_akamaster(ship_sub)
    _add_ship_fixtures(ship_sub)
    _add_ship_a2d(ship_sub)
    _add_ship_det(ship_sub)


def _add_ship_det(ship_sub: argparse._SubParsersAction) -> None:
    p = ship_sub.add_parser(
        "det",
        help="DeT's chosen reformers (R0, the Reformer List, N, eps) as a Hub folder",
        description="Write the reformers a `benchmarks/det_select.py` report chose from a "
        "`guardnet train reformers` run, with the DeT settings in config.json and a model card "
        "(guardnet.ship.det.ship_det).",
    )
    p.add_argument(
        "--run", dest="run_dir", required=True, type=Path, help="the reformer training run"
    )
    p.add_argument("--selection", required=True, type=Path, help="det_select.py's JSON report")
    p.add_argument("--name", required=True)
    p.add_argument("--recipe", required=True)
    p.add_argument("--classifier", required=True)
    p.add_argument("--measured", type=Path, default=None, help="Markdown lines for the card")
    p.add_argument("--out", required=True, type=Path)
    p.set_defaults(run=guarded("ship det", _ship_det))


def _add_ship_a2d(ship_sub: argparse._SubParsersAction) -> None:
    p = ship_sub.add_parser(
        "a2d",
        help="an A2D layer fitted and calibrated on validation data, as a Hub folder",
        description="Fit an A2D layer's Box-Cox transforms on clean validation images, set its "
        "thresholds on other validation images, and write its Hub folder with a model card "
        "(guardnet.ship.ship_a2d).",
    )
    p.add_argument("--dataset", required=True, choices=["mnist", "cifar10", "gtsrb"])
    p.add_argument("--classifier", required=True, help="registered classifier name")
    p.add_argument("--attacks", nargs="+", required=True, help="attacks used as defense")
    p.add_argument("--settings", type=json.loads, default=None, help="JSON per-attack settings")
    p.add_argument("--detector", default="zscore", choices=["zscore", "vote"])
    p.add_argument("--name", required=True, help="the registered name it ships under")
    p.add_argument("--recipe", required=True, help="the guard recipe that uses it")
    p.add_argument("--fit-limit", type=int, default=300)
    p.add_argument("--val-limit", type=int, default=300)
    p.add_argument("--fpr", type=float, default=0.05)
    p.add_argument("--measured", type=Path, default=None, help="Markdown lines for the card")
    p.add_argument("--out", required=True, type=Path, help="the Hub folder to write")
    p.set_defaults(run=guarded("ship a2d", _ship_a2d))


def _add_ship_contranet(ship_sub: argparse._SubParsersAction) -> None:
    p = ship_sub.add_parser(
        "contranet",
        help="a trained ContraNet's Hub folder with its measured figures",
        description="Copy RUN_DIR/model to --out (replaced) with the test metrics of "
        "ContraNet alone (from a `guardnet measure contranet --json` report) added to "
        "config.json and a 'Measured detection' section added to the model card; print the "
        "config's metrics (guardnet.ship.ship_contranet).",
    )
    p.add_argument(
        "--run", dest="run_dir", required=True, type=Path, help="training run folder (holds model/)"
    )
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
    p.set_defaults(run=guarded("ship contranet", _ship_contranet))


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
    p.set_defaults(run=guarded("ship akamaster", _ship_akamaster))


def _add_ship_fixtures(ship_sub: argparse._SubParsersAction) -> None:
    p = ship_sub.add_parser(
        "fixtures",
        help="write the small dataset samples shipped in guardnet/assets/fixtures/",
        description="Draw the fixtures of guardnet.data.FIXTURES from the real data and write "
        "them, with their provenance README (guardnet.ship.write_fixtures).",
    )
    p.add_argument("--root", default=None, help="data root (default $GUARDNET_DATA)")
    p.add_argument("--out", type=Path, default=None, help="default: the package's fixtures")
    p.set_defaults(run=guarded("ship fixtures", _ship_fixtures))


def _ship_contranet(args: argparse.Namespace, command: str) -> None:
    from guardnet.ship import ship_contranet

    metrics = ship_contranet(
        args.run_dir / "model",
        args.out,
        measurement=args.measure,
        measure_command=args.measure_command,
        fpr=args.fpr,
        wall_time=args.wall_time,
        notes=args.notes.read_text() if args.notes is not None else None,
    )
    print(json.dumps(metrics, indent=1))


def _ship_a2d(args: argparse.Namespace, command: str) -> None:
    from guardnet.ship.a2d import ship_a2d

    measured = args.measured.read_text().splitlines() if args.measured else ()
    config = ship_a2d(
        args.out,
        dataset=args.dataset,
        classifier=args.classifier,
        attacks=args.attacks,
        name=args.name,
        recipe=args.recipe,
        settings=args.settings,
        detector=args.detector,
        fit_limit=args.fit_limit,
        val_limit=args.val_limit,
        target_fpr=args.fpr,
        command=command,
        measured=[line.removeprefix("- ") for line in measured if line.strip()],
    )
    print(json.dumps(config["fit"], indent=1))


def _ship_det(args: argparse.Namespace, command: str) -> None:
    from guardnet.ship.det import ship_det

    measured = args.measured.read_text().splitlines() if args.measured else ()
    config = ship_det(
        args.run_dir,
        args.out,
        selection=json.loads(args.selection.read_text()),
        name=args.name,
        recipe=args.recipe,
        classifier=args.classifier,
        measured=[line.removeprefix("- ") for line in measured if line.strip()],
    )
    print(json.dumps(config["det"], indent=1))


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
