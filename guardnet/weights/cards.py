"""Model cards: the ``README.md`` of a weights folder (a Hub repository's front page)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = ["MODEL_CARD_USAGE", "default_model_card"]

#: The "how to load" snippet every generated model card ends with.
MODEL_CARD_USAGE: list[str] = [
    "",
    "```python",
    "import guardnet",
    "",
    'model = guardnet.from_pretrained("<this folder, its registered name or org/repo>")',
    "config = model.pretrained_config  # this folder's config.json",
    "```",
    "",
]


def default_model_card(config: Mapping[str, Any], *, title: str) -> str:
    """A minimal model card built from a config (metadata header, description, metrics).

    Args:
        config: The model's config.
        title: The card's heading (usually the folder or repository name).

    Returns:
        Markdown text with a Hugging Face metadata header.

    Example:
        >>> card = default_model_card({"architecture": "resnet20", "license": "MIT"}, title="r20")
        >>> card.splitlines()[1]
        'license: mit'
    """
    license_id = str(config.get("license", "unknown")).lower()
    dataset = config.get("dataset")
    lines = ["---", f"license: {license_id}", "library_name: guardnet"]
    if dataset:
        lines.append(f"datasets: [{dataset}]")
    lines += ["tags: [image-classification, adversarial-robustness, guardnet]", "---", ""]
    lines.append(f"# {title}")
    lines.append("")
    lines.append(
        f"`{config.get('architecture')}` with arch_args `{json.dumps(config.get('arch_args', {}))}`"
        f"; input {config.get('input_size')} normalised with mean {config.get('mean')} and std "
        f"{config.get('std')} (by the caller, e.g. `GuardedModel(mean=..., std=...)`)."
    )
    if config.get("source"):
        lines += ["", f"Source: {config['source']}"]
    metrics = config.get("metrics") or {}
    if metrics:
        lines += ["", "| metric | value |", "| --- | --- |"]
        lines += [f"| {key} | {value} |" for key, value in metrics.items()]
    lines += MODEL_CARD_USAGE
    return "\n".join(lines)
