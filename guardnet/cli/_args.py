"""Argument types shared by the subcommands (argparse ``type=`` callables, torch-free)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["guarded", "json_object_arg", "print_help"]


def json_object_arg(text: str) -> dict[str, Any]:
    """Parse an option's JSON object (argparse ``type``).

    Args:
        text: The option's value, e.g. ``'{"depth": 32}'``.

    Returns:
        The parsed object.

    Raises:
        argparse.ArgumentTypeError: ``text`` is not JSON, or not a JSON object.

    Example:
        >>> json_object_arg('{"steps": 20}')
        {'steps': 20}
    """
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc}): {text!r}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def guarded(
    name: str, runner: Callable[[argparse.Namespace, str], object]
) -> Callable[[argparse.Namespace, str], int]:
    """A subcommand handler around ``runner``: exit code 0, or 2 with the message on stderr for
    an error guardnet explains (``GuardnetError``).

    Args:
        name: The subcommand as typed after ``guardnet`` (e.g. ``"measure contranet"``).
        runner: Runs the command from its arguments and command line.
    """

    def run(args: argparse.Namespace, command: str) -> int:
        from guardnet.errors import GuardnetError

        try:
            runner(args, command)
        except GuardnetError as exc:
            print(f"guardnet {name}: error: {exc}", file=sys.stderr)
            return 2
        return 0

    return run


def print_help(parser: argparse.ArgumentParser, args: argparse.Namespace, command: str) -> int:
    """Handler of a command group called without its subcommand: its help, exit code 1 (bind
    ``parser`` with ``functools.partial``)."""
    parser.print_help()
    return 1
