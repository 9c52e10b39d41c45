"""``guardnet models``: the registered pretrained models as a table."""

from __future__ import annotations

import argparse

__all__ = ["add_parser"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``models`` to the CLI's subcommands."""
    models = sub.add_parser(
        "models",
        help="list the registered pretrained models",
        description="List guardnet's pretrained models: name, dataset, architecture, headline "
        "metric (from the model's config.json in the hub/ mirror or the Hugging Face cache) and "
        "Hub repo.",
    )
    models.set_defaults(run=_run)


def _key_metric(metrics: dict[str, float], headline: str | None = None) -> str:
    """The config's ``headline_metric``, else the first measured (not author-stated) test
    metric, else the first."""
    measured = [key for key in metrics if not key.startswith("stated_")]
    tests = [key for key in measured if "test" in key]
    named = [headline] if headline in metrics else []
    key = (named or tests or measured or list(metrics) or [None])[0]
    if key is None:
        return "-"
    value = metrics[key]
    rate = any(word in key for word in ("acc", "tpr", "fpr"))
    shown = f"{100 * value:.2f}%" if rate and 0 <= value <= 1 else f"{value:g}"
    return f"{key} {shown}"


def _run(args: argparse.Namespace, command: str) -> int:
    """Print the pretrained registry as a table (``guardnet models``).

    Figures come from each model's config.json, read from the mirror or the Hugging Face cache
    only (no download): "-" for a model whose config is in neither.
    """
    from guardnet.errors import WeightsError
    from guardnet.weights import list_pretrained, load_config

    header = ("NAME", "DATASET", "ARCHITECTURE", "KEY METRIC", "HUB REPO")
    rows = []
    for entry in list_pretrained():
        try:
            config = load_config(entry.name, local_files_only=True)
        except WeightsError:
            config = {}
        metrics = config.get("metrics") or {}
        rows.append(
            (
                entry.name,
                entry.dataset,
                entry.architecture,
                _key_metric(metrics, config.get("headline_metric")),
                entry.hub_id,
            )
        )
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    return 0
