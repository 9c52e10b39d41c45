"""Argument types shared by the subcommands (argparse ``type=`` callables, torch-free)."""

from __future__ import annotations

import argparse
import json
from typing import Any

__all__ = ["json_object_arg"]


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
