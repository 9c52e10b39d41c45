"""The ``guardnet`` command line.

Subcommands:
    demo   wrap a real MNIST classifier with SAEC on the shipped fixture, offline, and print what
           the guard did.

``calibrate``, ``eval``, ``bench`` and ``train`` arrive with their issues.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

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
        description="Wrap the shipped MNIST classifier with SAEC, calibrate it on shipped clean "
        "validation images, and show what it does to clean, noisy and attacked test images.",
    )
    demo.add_argument("--fpr", type=float, default=0.05, help="target false-positive rate")
    demo.add_argument(
        "--noise", type=float, default=0.3, help="amplitude of the uniform noise (0-1 scale)"
    )
    demo.add_argument("--eps", type=float, default=0.3, help="PGD L-inf budget (0-1 scale)")
    demo.add_argument("--limit", type=int, default=None, help="use only the first N test images")
    demo.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    demo.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from guardnet import __version__

        print(f"guardnet {__version__}")
        return 0
    if args.command == "demo":
        from guardnet.demo import run_demo

        run_demo(
            target_fpr=args.fpr,
            noise=args.noise,
            eps=args.eps,
            limit=args.limit,
            device=args.device,
            seed=args.seed,
        )
        return 0
    parser.print_help()
    return 1


if __name__ == "__main__":
    sys.exit(main())
