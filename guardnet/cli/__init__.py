"""The ``guardnet`` command line (also ``python -m guardnet.cli``).

Subcommands, one module of this package each:
    demo               wrap the shipped MNIST classifier in the full guard on the shipped
                       fixture, offline, and print what the guard did (:mod:`.demo`).
    models             list the registered pretrained models (:mod:`.models`).
    train classifier   train (or fine-tune) a classifier on MNIST, CIFAR-10 (JPEG q75) or GTSRB:
                       seeded, resumable, saved as a Hub folder with a model card (:mod:`.train`).
    train contranet    train a ContraNet detector, stage by stage (:mod:`.train`).
    bench              the cost of protection: latency, throughput and FLOPs of guarded
                       classifiers against the bare classifiers (:mod:`.bench`).
    eval               measure a guard against standard and adaptive attacks (:mod:`.eval`).
    measure            measure a trained ContraNet or a classifier on real data (:mod:`.measure`).
    ship               write the folders guardnet ships (:mod:`.ship`).
    train branch-contranet  branch a ContraNet run before its DMM stages (:mod:`.train`).
    hub push           publish the repository's hub/ mirror to the Hugging Face Hub (:mod:`.hub`).

Adding a subcommand: write a module ``guardnet/cli/<name>.py`` with a function
``add_parser(sub: argparse._SubParsersAction) -> None`` that calls ``sub.add_parser(...)``, adds
the options and sets the handler with ``parser.set_defaults(run=handler)``, where
``handler(args: argparse.Namespace, command: str) -> int`` runs the command and returns the exit
code (``command`` is the command line as typed, for model cards and reports). Then add the
module's name to :data:`COMMANDS`. The module imports only the standard library and torch-free
modules at its top (``guardnet --help`` and ``guardnet --version`` must not import torch); the
handler imports what the command needs. tests/test_cli.py runs every subcommand's ``--help``
and checks that none imports torch.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import shlex
import sys
from collections.abc import Iterator, Sequence

__all__ = ["COMMANDS", "build_parser", "main"]

#: The subcommands' modules, in the order ``guardnet --help`` lists them.
COMMANDS = ("demo", "models", "train", "bench", "eval", "measure", "ship", "hub")


def build_parser() -> argparse.ArgumentParser:
    """The ``guardnet`` argument parser with every subcommand of :data:`COMMANDS` (no torch)."""
    parser = argparse.ArgumentParser(
        prog="guardnet",
        description="Guard PyTorch image classifiers against adversarial examples.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(sub)
    return parser


@contextlib.contextmanager
def _quiet_cuda_home_warning() -> Iterator[None]:
    """Hide torch's ``No CUDA runtime is found, using CUDA_HOME=...`` line while a command runs.

    ``torch.utils.cpp_extension`` logs it once, when first imported (``torch.utils.benchmark``,
    which ``guardnet bench`` times with, imports it), on machines with a CUDA toolkit folder but
    no GPU. guardnet compiles no extension, so the line says nothing about what a command does.
    The logger's own level is restored afterwards (``main`` may run inside a user's process).
    """
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``guardnet`` command.

    Args:
        argv: The arguments after the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit code: 0 on success, 1 when no command is given (the help is printed), 2 for an
        error guardnet explains (the message goes to stderr).

    Raises:
        SystemExit: From argparse: code 0 after ``--help``, code 2 for bad arguments.

    Example:
        >>> main(["--version"])  # doctest: +ELLIPSIS
        guardnet ...
        0
    """
    parser = build_parser()
    # The command line for model cards: the arguments exactly, the program named `guardnet`.
    command = shlex.join(["guardnet", *(sys.argv[1:] if argv is None else argv)])
    with _quiet_cuda_home_warning():
        args = parser.parse_args(argv)
        if args.version:
            from guardnet import __version__

            print(f"guardnet {__version__}")
            return 0
        run = getattr(args, "run", None)
        if run is None:
            parser.print_help()
            return 1
        return run(args, command)
