"""``guardnet hub push``: publish the repository's ``hub/`` mirror to the Hugging Face Hub."""

from __future__ import annotations

import argparse
import functools
import sys

from guardnet.cli._args import print_help

__all__ = ["add_parser"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``hub`` and its ``push`` subcommand to the CLI's subcommands."""
    hub = sub.add_parser("hub", help="publish pretrained weights to the Hugging Face Hub")
    hub.set_defaults(run=functools.partial(print_help, hub))
    push = hub.add_subparsers(dest="hub_command", metavar="WHAT").add_parser(
        "push",
        help="upload hub/<name> folders to their Hub repos",
        description="Check each registered folder of the hub/ mirror (strict load, sha256s as "
        "registered) and upload it to its Hub repo, one commit per repo; --dry-run uploads "
        "nothing and writes the exact upload set (files, sizes, sha256s, repo ids) to --manifest.",
    )
    push.add_argument("names", nargs="*", help="registered names (default: all)")
    push.add_argument("--dry-run", action="store_true", help="upload nothing")
    push.add_argument("--manifest", default=None, help="write the upload set as JSON here")
    push.add_argument("--mirror", default=None, help="folder holding <name>/ (default: hub/)")
    push.set_defaults(run=_push)


def _push(args: argparse.Namespace, command: str) -> int:
    from guardnet.errors import WeightsError
    from guardnet.weights.publish import describe, push

    try:
        manifest = push(
            args.names or None, dry_run=args.dry_run, out=args.manifest, mirror=args.mirror
        )
    except WeightsError as exc:
        print(f"guardnet hub push: error: {exc}", file=sys.stderr)
        return 1
    print(describe(manifest))
    return 0
