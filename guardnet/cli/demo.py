"""``guardnet demo``: the full guard on shipped MNIST data, offline."""

from __future__ import annotations

import argparse

__all__ = ["add_parser"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``demo`` and its options to the CLI's subcommands."""
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
    demo.set_defaults(run=_run)


def _run(args: argparse.Namespace, command: str) -> int:
    """Run ``guardnet demo``."""
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
