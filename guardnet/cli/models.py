"""``guardnet models``: the registered pretrained models as a table."""

from __future__ import annotations

import argparse

__all__ = ["add_parser"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``models`` to the CLI's subcommands."""
    models = sub.add_parser(
        "models",
        help="list the registered pretrained classifiers",
        description="List guardnet's pretrained classifiers: name, dataset, architecture, "
        "headline metric, and whether the weights ship with the package or come from the Hub.",
    )
    models.set_defaults(run=_run)


def _key_metric(metrics: dict[str, float]) -> str:
    """The headline metric: the first measured (not author-stated) test metric, else the first."""
    measured = [key for key in metrics if not key.startswith("stated_")]
    tests = [key for key in measured if "test" in key]
    key = (tests or measured or list(metrics) or [None])[0]
    if key is None:
        return "-"
    value = metrics[key]
    rate = any(word in key for word in ("acc", "tpr", "fpr"))
    shown = f"{100 * value:.2f}%" if rate and 0 <= value <= 1 else f"{value:g}"
    return f"{key} {shown}"


def _run(args: argparse.Namespace, command: str) -> int:
    """Print the pretrained registry as a table (``guardnet models``)."""
    from guardnet.hub import list_pretrained

    header = ("NAME", "DATASET", "ARCHITECTURE", "KEY METRIC", "WEIGHTS")
    rows = [
        (
            entry.name,
            entry.dataset,
            entry.architecture,
            _key_metric(entry.metrics),
            "shipped" if entry.local_path is not None else f"hub: {entry.hub_id}",
        )
        for entry in list_pretrained()
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    return 0
