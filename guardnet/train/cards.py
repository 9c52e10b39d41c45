"""Model cards (``README.md`` of a Hub folder) of the models the run commands train.

Each card says what was trained on which data, with which command and settings, how long it
took and what it measured, straight from the run's config and history.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from guardnet.train.classifier import TrainResult

__all__ = ["GUARDNET_SPLITS", "classifier_card", "contranet_card"]

#: How a classifier card describes guardnet's own splits.
GUARDNET_SPLITS: Mapping[str, str] = {
    "train": "guardnet's seeded `train` split",
    "val": "guardnet `val` split, held out of training; model selection and calibration",
    "test": "official test set",
}


def _percent(value: float) -> str:
    return f"{100 * value:.2f}%"


def classifier_card(
    config: Mapping[str, Any],
    *,
    title: str,
    result: TrainResult,
    counts: Mapping[str, int],
    accuracy: Mapping[str, float],
    splits: Mapping[str, str] | None = None,
) -> str:
    """The model card (``README.md``) of a classifier trained by ``guardnet train classifier``.

    Args:
        config: The model's config, with its ``training`` record.
        title: The card's heading.
        result: The training history and the commands that trained the run.
        counts: Images per split (``train``, ``val`` and, if measured, ``test``).
        accuracy: Top-1 accuracy per evaluated split (``val``, and ``test`` if measured).
        splits: How the card describes each split of your own data (None: guardnet's
            seeded splits of a guardnet dataset, :data:`GUARDNET_SPLITS`).

    Returns:
        Markdown with a Hugging Face metadata header.
    """
    from guardnet.weights import MODEL_CARD_USAGE

    builtin = splits is None
    splits = GUARDNET_SPLITS if splits is None else splits
    training = config["training"]
    settings = training["settings"]
    display = config["dataset_display_name"]
    init_text = f"`{training['init']}`" if training["init"] else f"random (seed {settings['seed']})"
    lines = [
        "---",
        f"license: {str(config.get('license', 'unknown')).lower()}",
        "library_name: guardnet",
        f"datasets: [{config['dataset']}]",
        "tags: [image-classification, adversarial-robustness, guardnet]",
        "---",
        "",
        f"# {title}",
        "",
        f"`{config['architecture']}` (arch_args `{json.dumps(config['arch_args'])}`, "
        f"{training['parameters']:,} parameters) trained on **{display}** with "
        "`guardnet train classifier`.",
        "",
        "| | |",
        "| --- | --- |",
        f"| dataset | {display}: {splits['train']} ({counts['train']:,} images"
        + (", a seeded subset" if training["limit"] else "")
        + ") |",
        f"| initialised from | {init_text} |",
        f"| input | (B, {', '.join(str(s) for s in config['input_size'])}) in [0, 1], normalised "
        f"by the caller with mean {config['mean']}, std {config['std']} (e.g. "
        "`GuardedModel(mean=..., std=...)`) |",
        f"| augmentation | {training['augmentation']} |",
        f"| optimiser | {settings['optimizer']}, lr {settings['lr']}, weight decay "
        f"{settings['weight_decay']}, batch {settings['batch_size']}, {settings['schedule']} "
        f"schedule, label smoothing {settings['label_smoothing']}, seed {settings['seed']} |",
        f"| epochs | {settings['epochs']} |",
        f"| wall time | {training['wall_seconds']:.0f} s of training ({training['device']}, "
        f"torch threads: {training['threads']}, torch {training['torch']}) |",
        "",
        "## Accuracy",
        "",
        "| data | images | top-1 accuracy |",
        "| --- | --- | --- |",
        f"| {display} validation ({splits['val']}) | {counts['val']:,} | "
        f"{_percent(accuracy['val'])} |",
    ]
    if "test" in accuracy:
        lines.append(
            f"| {display} test ({splits['test']}) | {counts['test']:,} | "
            f"{_percent(accuracy['test'])} |"
        )
    lines += ["", "## Command", "", "```bash"]
    for entry in result.invocations:
        command = entry.get("command") or "(library call)"
        first, last = entry["start_epoch"] + 1, entry["end_epoch"]
        if len(result.invocations) > 1:
            done = f"epochs {first}-{last}" if last > first else f"epoch {last}"
            done = done if last >= first else "evaluation and saving only"
            lines.append(f"# {done}")
        lines.append(command)
    lines += ["```", "", "## Per-epoch log", ""]
    lines += [
        "| epoch | loss | train acc | val acc | lr | seconds |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for record in result.history:
        val = _percent(record["val_acc"]) if "val_acc" in record else "-"
        lines.append(
            f"| {record['epoch']} | {record['loss']:.4f} | {_percent(record['train_acc'])} | "
            f"{val} | {record['lr']:.2e} | {record['seconds']:.1f} |"
        )
    lines += MODEL_CARD_USAGE
    if training["init"] and builtin:
        lines += [
            f"Fine-tuned from `{training['init']}`; its licence terms apply. The initial model "
            "may have been trained on images of guardnet's validation split (e.g. the akamaster "
            "CIFAR-10 models saw all 50,000 official training images), so the validation "
            "accuracy can be optimistic; the official test split is unaffected.",
            "",
        ]
    elif training["init"]:
        lines += [f"Fine-tuned from `{training['init']}`; its licence terms apply.", ""]
    if config.get("dataset_note"):
        lines += [f"Data: {config['dataset_note']}", ""]
    return "\n".join(lines)


def contranet_card(
    config: Mapping[str, Any], *, command: str | None, history: Sequence[Mapping[str, Any]]
) -> str:
    """The model card (``README.md``) of a ContraNet trained by ``guardnet train contranet``.

    Args:
        config: The model's config (architecture, data, classifier, metrics).
        command: The command line that trained it.
        history: The per-epoch records of the run.

    Returns:
        Markdown.
    """
    args = config["arch_args"]
    lines = [
        f"# ContraNet for {config['dataset']} (guardnet)",
        "",
        "ContraNet (Yang et al., NDSS 2022) detector networks: encoder, class-conditional "
        "generator (EMA weights), Dis and DMM, for guardnet's `ContraNetLayer`.",
        "",
        f"- Dataset: `{config['dataset']}` training split ({config['train_images']} images), "
        f"inputs {config['input_size']} mapped to 32x32.",
        *([f"- Data: {config['dataset_note']}"] if config.get("dataset_note") else []),
        f"- Protected classifier used for the adversarial training examples: "
        f"`{config['classifier']}`.",
        f"- Architecture: G width {4 * args['g_ch']}, D width {4 * args['d_ch']}, self-attention "
        f"{args['self_attention']}, label in G's stem {args['label_in_stem']}, "
        f"DMM {args['dmm_backbone']} x{args['dmm_width']}.",
        f"- Training wall time: {config['train_seconds']:.0f} s.",
        f"- Licence: {config['license']}.",
        "",
        "## Command",
        "",
        "```",
        command or "(not recorded)",
        "```",
        "",
        "## Sanity metrics on the validation split",
        "",
        "`*_pair`: share of images whose true-label rebuild scores as more consistent than a "
        "wrong-label rebuild (1.0 perfect, 0.5 chance). Measure detection rates with "
        "`guardnet measure contranet` or `guardnet eval`.",
        "",
    ]
    lines += [f"- `{k}`: {v}" for k, v in config["metrics"].items()]
    lines += ["", "## Training log (per epoch)", ""]
    lines += [f"- {json.dumps(dict(r))}" for r in history]
    return "\n".join(lines) + "\n"
