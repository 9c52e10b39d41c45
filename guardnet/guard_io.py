"""Save a calibrated guard to a folder and load it back, so it is calibrated once and deployed.

:meth:`guardnet.GuardedModel.save_pretrained` and :meth:`guardnet.GuardedModel.from_pretrained`
call this module. A saved guard is a folder in the Hugging Face Hub layout, like a pretrained
model's:

* ``config.json``: ``"guardnet_type": "guard"`` and ``format_version`` mark the format; the rest
  rebuilds the guard without any weights: the classifier (its registered ``architecture`` and
  ``arch_args`` when it came from a pretrained guardnet model, else only its class name), each
  layer's ``name``, ``type`` and constructor ``config`` (:meth:`guardnet.layers.Layer.get_config`),
  ``num_classes``, ``in_channels``, ``mean``, ``std``, ``cascade``, ``max_batch_size``,
  ``validate_inputs`` and ``fail_closed``; then the ``calibration`` report, the named ``recipe``
  the guard was built from (if any) and ``weights_sha256``.
* ``model.safetensors``: the guard's whole ``state_dict``: every layer's weights with its
  ``threshold`` and ``score_scale`` buffers, the normalisation, and the classifier's weights
  unless they were left out (``include_classifier=False``, the default for a classifier that
  cannot be rebuilt from a config).
* ``README.md``: a card with the recipe, the thresholds, the calibration figures and how to load.

Loading builds every part empty from the config (nothing is downloaded) and loads the one state
dict strictly, so the loaded guard is calibrated and gives the same results, bit for bit, as the
saved one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from guardnet.calibration import CalibrationReport
from guardnet.errors import ConfigError, WeightsError
from guardnet.layers.registry import build_layer, layer_config
from guardnet.weights.pretrained import REPO_ID

if TYPE_CHECKING:
    from guardnet.guard import GuardedModel
    from guardnet.recipes import GuardRecipe

__all__ = [
    "FORMAT_VERSION",
    "GUARD_TYPE",
    "classifier_config",
    "guard_config",
    "guard_model_card",
    "load_guard",
    "save_guard",
]

#: The ``guardnet_type`` of a saved guard's config.json.
GUARD_TYPE = "guard"
#: The newest folder format this version writes and reads.
FORMAT_VERSION = 1

_CLASSIFIER_PREFIX = "classifier."
# Descriptive keys of a pretrained classifier's config that travel with the guard.
_CLASSIFIER_INFO = ("dataset", "num_classes", "input_size", "mean", "std", "license")


# --------------------------------------------------------------------------------------------
# The classifier
# --------------------------------------------------------------------------------------------


def _split_normalize(classifier: nn.Module) -> tuple[nn.Module, nn.Module | None]:
    """``(model, normalize)`` for ``Sequential(Normalize, model)``, else ``(classifier, None)``."""
    from guardnet.nets.normalize import Normalize

    if (
        isinstance(classifier, nn.Sequential)
        and len(classifier) == 2
        and isinstance(classifier[0], Normalize)
    ):
        return classifier[1], classifier[0]
    return classifier, None


def classifier_config(classifier: nn.Module) -> dict[str, Any] | None:
    """The config that rebuilds ``classifier`` without weights, or ``None`` when none can.

    A classifier can be rebuilt when it is a pretrained guardnet model (it carries its config as
    ``pretrained_config``, with a registered ``architecture``), alone or behind a
    :class:`~guardnet.Normalize` in an ``nn.Sequential`` (as the guard recipes build it).

    Returns:
        ``{"architecture", "arch_args", "normalize", ...}`` (``normalize``: the mean/std of the
        ``Normalize`` in front, or ``None``), plus the pretrained config's ``dataset``,
        ``num_classes``, ``input_size``, ``mean``, ``std`` and ``license`` where it has them.

    Example:
        >>> from guardnet.nets.small import MnistCNN
        >>> net = MnistCNN()
        >>> classifier_config(net) is None
        True
        >>> net.pretrained_config = {"architecture": "MnistCNN", "arch_args": {"num_classes": 10}}
        >>> classifier_config(net)["architecture"]
        'MnistCNN'
    """
    model, normalize = _split_normalize(classifier)
    pretrained = getattr(model, "pretrained_config", None)
    if not isinstance(pretrained, Mapping) or not isinstance(pretrained.get("architecture"), str):
        return None
    config: dict[str, Any] = {
        "architecture": pretrained["architecture"],
        "arch_args": dict(pretrained.get("arch_args") or {}),
        "normalize": None
        if normalize is None
        else {
            "mean": normalize.mean.flatten().tolist(),  # type: ignore[operator]
            "std": normalize.std.flatten().tolist(),  # type: ignore[operator]
        },
    }
    config.update({key: pretrained[key] for key in _CLASSIFIER_INFO if key in pretrained})
    return config


def _build_classifier(config: Mapping[str, Any]) -> nn.Module:
    """An untrained classifier from :func:`classifier_config`'s output."""
    from guardnet.nets.normalize import Normalize
    from guardnet.weights.registry import build_model

    model = build_model(config)
    model.pretrained_config = {k: v for k, v in config.items() if k != "normalize"}
    normalize = config.get("normalize")
    if normalize is None:
        return model
    return nn.Sequential(Normalize(normalize["mean"], normalize["std"]), model)


def _class_name(module: nn.Module) -> str:
    cls = type(module)
    return f"{cls.__module__}.{cls.__qualname__}"


# --------------------------------------------------------------------------------------------
# The config
# --------------------------------------------------------------------------------------------


def guard_config(guard: GuardedModel, *, include_classifier: bool | None = None) -> dict[str, Any]:
    """The JSON-serialisable config that rebuilds ``guard`` without weights (see the module doc).

    Args:
        guard: the guard.
        include_classifier: whether the weights file holds the classifier's weights (``None``:
            when :func:`classifier_config` can rebuild the classifier).

    Raises:
        ConfigError: a layer's class is not registered or has no ``get_config``, or the config
            is not JSON-serialisable.
    """
    from guardnet.nets.normalize import Normalize

    rebuild = classifier_config(guard.classifier)
    if include_classifier is None:
        include_classifier = rebuild is not None
    layers = []
    for name, layer in guard.layers.items():
        try:
            entry = layer_config(layer)  # type: ignore[arg-type]
        except (NotImplementedError, ConfigError) as exc:
            raise ConfigError(f"cannot save layer {name!r}: {exc}") from exc
        layers.append({"name": name, "type": entry.pop("type"), "config": entry})
    normalize = guard.normalize
    report = getattr(guard, "calibration_report", None)
    recipe = getattr(guard, "recipe", None)
    config: dict[str, Any] = {
        "guardnet_type": GUARD_TYPE,
        "format_version": FORMAT_VERSION,
        "classifier": {
            "class": _class_name(guard.classifier),
            "weights_included": bool(include_classifier),
            **(rebuild or {"architecture": None}),
        },
        "layers": layers,
        "num_classes": guard.num_classes,
        "in_channels": guard.in_channels,
        "mean": normalize.mean.flatten().tolist() if isinstance(normalize, Normalize) else None,
        "std": normalize.std.flatten().tolist() if isinstance(normalize, Normalize) else None,
        "cascade": guard.cascade,
        "max_batch_size": guard.max_batch_size,
        "validate_inputs": guard.validate_inputs,
        "fail_closed": guard.fail_closed,
        "calibration": None if report is None else report.to_dict(),
        "recipe": recipe.to_dict() if hasattr(recipe, "to_dict") else None,
    }
    try:
        return json.loads(json.dumps(config))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"the guard's config is not JSON-serialisable: {exc}") from exc


def _guard_from_config(
    config: Mapping[str, Any],
    classifier: nn.Module,
    *,
    source: str,
    guard_class: type[GuardedModel],
) -> GuardedModel:
    """An uncalibrated guard with untrained layers, built from ``config`` around ``classifier``."""
    layers = {}
    for entry in config.get("layers") or []:
        try:
            name = entry["name"]
            layers[name] = build_layer({"type": entry["type"], **entry.get("config", {})})
        except (KeyError, TypeError, ConfigError) as exc:
            raise ConfigError(f"{source}: cannot rebuild layer entry {entry!r}: {exc}") from exc
    try:
        return guard_class(
            classifier,
            layers,
            mean=config.get("mean"),
            std=config.get("std"),
            num_classes=config.get("num_classes"),
            in_channels=config.get("in_channels"),
            cascade=bool(config.get("cascade", False)),
            max_batch_size=config.get("max_batch_size"),
            validate_inputs=bool(config.get("validate_inputs", True)),
            fail_closed=bool(config.get("fail_closed", False)),
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: the config does not build a guard: {exc}") from exc


# --------------------------------------------------------------------------------------------
# The model card
# --------------------------------------------------------------------------------------------


def guard_model_card(guard: GuardedModel, config: Mapping[str, Any], *, title: str) -> str:
    """A short card for a saved guard: recipe, thresholds, calibration figures, how to load.

    Args:
        guard: the guard being saved (its thresholds are read from its buffers).
        config: its :func:`guard_config`.
        title: the card's heading (usually the folder name).
    """
    info = config["classifier"]
    classifier = (
        f"`{info['architecture']}` (arch_args `{json.dumps(info['arch_args'])}`)"
        if info.get("architecture")
        else f"a user classifier (`{info['class']}`)"
    )
    lines = ["---", "library_name: guardnet", "tags: [adversarial-robustness, guardnet, guard]"]
    lines += ["---", "", f"# {title}", ""]
    lines.append(
        f"A guardnet guard: {classifier} with {len(config['layers'])} defense layer(s), for "
        f"{config['num_classes']} classes. The classifier's weights are "
        f"{'in' if info['weights_included'] else 'not in'} this folder."
    )
    recipe = config.get("recipe")
    if recipe:
        lines += ["", f"Built from the guard recipe `{recipe['name']}`: {recipe['description']}"]
    lines += ["", "| layer | type | score | threshold | suspicious side |"]
    lines.append("| --- | --- | --- | --- | --- |")
    names = {id(layer): name for name, layer in guard.layers.items()}
    types = {entry["name"]: entry["type"] for entry in config["layers"]}
    for key, (layer, score) in guard.rejectors.items():
        name = names[id(layer)]
        index = ... if score is None else layer.score_names.index(score)
        side = "high" if layer.higher_is_suspicious else "low"
        threshold = float(layer.threshold[index])
        lines.append(f"| {name} | {types[name]} | {key} | {threshold:.6g} | {side} |")
    report = config.get("calibration")
    lines += ["", "## Calibration", ""]
    if report is None:
        lines.append(
            "Not calibrated by `GuardedModel.calibrate`: call `guard.calibrate(clean_val_images)` "
            "after loading unless the thresholds above were set by hand."
        )
    else:
        runner_up = report.get("runner_up_rejection_rate")
        budget = ", budget='runner_up'" if runner_up is not None else ""
        if report.get("budget") and runner_up is None:
            budget = f", budget={json.dumps(report['budget'])}"
        lines.append(
            f"`guard.calibrate(clean_images, target_fpr={report['target_fpr']:g}, "
            f"mode={report['mode']!r}{budget})` on {report['num_samples']} clean images, before "
            f"saving: the guard rejects {report['overall_fpr']:.2%} of them."
        )
        if report.get("budget"):
            shares = ", ".join(f"{k} {v:.3g}" for k, v in report["budget"].items())
            lines.append(f"Budget shares: {shares}.")
        if runner_up is not None:
            lines.append(
                f"Under their runner-up labels it rejects {runner_up:.2%} of the same images."
            )
        lines += ["", "| score | target FPR | achieved FPR |", "| --- | --- | --- |"]
        for key, entry in report["layers"].items():
            lines.append(f"| {key} | {entry['target_fpr']:.2%} | {entry['achieved_fpr']:.2%} |")
    argument = "" if info["weights_included"] and info.get("architecture") else ", classifier=model"
    lines += [
        "",
        "## Load",
        "",
        "```python",
        "from guardnet import GuardedModel",
        "",
        f'guard = GuardedModel.from_pretrained("<this folder or org/repo>"{argument})',
        "result = guard(images)  # (B, C, H, W) in [0, 1]: result.labels, result.rejected",
        "```",
    ]
    if argument:
        lines += [
            "",
            f"`model` is the classifier the guard was saved with (a `{info['class']}`)"
            + (
                "; its weights are loaded from this folder."
                if info["weights_included"]
                else ", with its trained weights."
            ),
        ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Saving and loading
# --------------------------------------------------------------------------------------------


def save_guard(
    guard: GuardedModel,
    folder: str | os.PathLike[str],
    *,
    include_classifier: bool | None = None,
    model_card: str | None = None,
) -> Path:
    """Implementation of :meth:`guardnet.GuardedModel.save_pretrained`."""
    from guardnet import __version__
    from guardnet.weights.io import _saveable_state, load_state_dict_strict, write_folder

    config = guard_config(guard, include_classifier=include_classifier)
    config["guardnet_version"] = __version__
    include = config["classifier"]["weights_included"]
    state = _saveable_state(guard)
    if not include:
        state = {k: v for k, v in state.items() if not k.startswith(_CLASSIFIER_PREFIX)}
    # The folder must load: rebuild the guard from the config alone and fill it.
    rebuilt_classifier = (
        _build_classifier(config["classifier"])
        if config["classifier"]["architecture"]
        else guard.classifier
    )
    rebuilt = _guard_from_config(
        config, rebuilt_classifier, source="the guard's config", guard_class=type(guard)
    )
    check = state if include else {**state, **_prefixed(rebuilt_classifier)}
    try:
        load_state_dict_strict(rebuilt, check, source="the guard's weights")
    except WeightsError as exc:
        raise ConfigError(
            f"the guard's config does not rebuild it (does the classifier's pretrained_config "
            f"still describe it? a layer's get_config()?): {exc}"
        ) from exc

    return write_folder(
        folder,
        state,
        config,
        card=lambda written: (
            model_card
            if model_card is not None
            else guard_model_card(guard, written, title=Path(folder).name)
        ),
    )


def _prefixed(classifier: nn.Module) -> dict[str, torch.Tensor]:
    return {_CLASSIFIER_PREFIX + k: v for k, v in classifier.state_dict().items()}


def _check_format(config: Mapping[str, Any], path: Path) -> None:
    kind = config.get("guardnet_type")
    if kind != GUARD_TYPE:
        hint = (
            f"it holds one model (architecture {config['architecture']!r}): load it with "
            "guardnet.from_pretrained"
            if "architecture" in config
            else "it was not written by GuardedModel.save_pretrained"
        )
        raise WeightsError(
            f"{path} is not a saved guard (guardnet_type is {kind!r}, expected {GUARD_TYPE!r}): "
            f"{hint}"
        )
    version = config.get("format_version")
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise WeightsError(
            f"{path} has guard format_version {version!r}; this guardnet reads versions 1 to "
            f"{FORMAT_VERSION} (a newer guardnet wrote it? upgrade guardnet)"
        )


def _load_folder(
    config_path: Path,
    weights_path: Path,
    *,
    classifier: nn.Module | None,
    guard_class: type[GuardedModel],
) -> GuardedModel:
    from guardnet.recipes import load_recipe
    from guardnet.weights.io import load_state_dict_strict, read_config, read_weights

    config = read_config(config_path)
    _check_format(config, config_path)
    info = config.get("classifier") or {}
    include = bool(info.get("weights_included"))
    if classifier is None:
        if not (include and info.get("architecture")):
            what = (
                "its weights were not saved"
                if info.get("architecture")
                else "it is not a registered guardnet architecture"
            )
            raise WeightsError(
                f"{config_path.parent} cannot rebuild its classifier (a {info.get('class')}: "
                f"{what}): pass it as GuardedModel.from_pretrained(path, classifier=model)"
            )
        classifier = _build_classifier(info)
    elif not isinstance(classifier, nn.Module):
        raise TypeError(f"classifier must be an nn.Module, got {type(classifier).__name__}")
    guard = _guard_from_config(config, classifier, source=str(config_path), guard_class=guard_class)
    expected_sha = config.get("weights_sha256")
    state = read_weights(weights_path, expected_sha if isinstance(expected_sha, str) else None)
    source = f"the weights in {weights_path}"
    if not include:
        stray = sorted(k for k in state if k.startswith(_CLASSIFIER_PREFIX))
        if stray:
            raise WeightsError(
                f"{source} hold classifier keys ({', '.join(stray[:5])}) although config.json "
                "says the classifier's weights were not saved"
            )
        state = {**state, **_prefixed(classifier)}
    load_state_dict_strict(guard, state, source=source)
    if config.get("calibration") is not None:
        guard.calibration_report = CalibrationReport.from_dict(config["calibration"])
    if config.get("recipe"):
        guard.recipe = load_recipe(config["recipe"])
    guard.pretrained_config = config
    return guard


def load_guard(
    name_or_path: str | os.PathLike[str],
    *,
    classifier: nn.Module | None = None,
    device: str | torch.device = "cpu",
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    local_files_only: bool | None = None,
    guard_class: type[GuardedModel],
) -> GuardedModel:
    """Implementation of :meth:`guardnet.GuardedModel.from_pretrained` (``guard_class``: the
    class to build, which this module does not import)."""
    from guardnet.recipes import GUARD_RECIPES

    text = os.fspath(name_or_path)
    path = Path(text)
    if text in GUARD_RECIPES or (path.suffix == ".json" and path.is_file()):
        if classifier is not None:
            raise ValueError(
                f"classifier= applies to saved guards; {text!r} is a guard recipe, which names "
                "its classifier"
            )
        return guard_from_recipe(text, guard_class=guard_class, device=device)
    if not (path.is_dir() or REPO_ID.match(text)):
        raise WeightsError(
            f"{text!r} is neither a saved guard's folder, a guard recipe "
            f"({', '.join(sorted(GUARD_RECIPES))}), a JSON recipe file nor a Hub repo id "
            "('org/name')"
        )
    from guardnet.weights.resolve import resolve_files

    files = resolve_files(
        text, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only
    )
    config_path, weights_path = files.config, files.weights
    assert weights_path is not None
    guard = _load_folder(config_path, weights_path, classifier=classifier, guard_class=guard_class)
    return guard.to(device).eval()


def guard_from_recipe(
    spec: str | os.PathLike[str] | Mapping[str, Any] | GuardRecipe,
    *,
    guard_class: type[GuardedModel],
    device: str | torch.device = "cpu",
    max_batch_size: int | None = 500,
) -> GuardedModel:
    """Implementation of :func:`guardnet.build_guard` (``guard_class``: the class to build)."""
    from guardnet.recipes import build_classifier, build_recipe_layer, load_recipe

    recipe = load_recipe(spec)
    classifier = build_classifier(recipe.classifier)
    layers = [build_recipe_layer(entry) for entry in recipe.layers]
    guard = guard_class(
        classifier,
        layers,
        num_classes=classifier[1].pretrained_config.get("num_classes"),
        max_batch_size=max_batch_size,
    )
    guard.recipe = recipe
    return guard.to(device).eval()
