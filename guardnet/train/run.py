"""The run commands: data in, a trained model as a Hub folder out.

* :func:`run_classifier_training` (``guardnet train classifier``): trains or fine-tunes a
  classifier with :func:`~guardnet.train.train_classifier`, reports validation and test
  accuracy and writes ``OUT/model``.
* :func:`run_contranet_training` (``guardnet train contranet``): trains a ContraNet with
  :func:`~guardnet.train.train_contranet`, measures sanity metrics on validation images and
  writes ``OUT/model``.

Each takes one options object (:mod:`guardnet.train.options`); the data is a guardnet dataset,
an ``ImageFolder`` tree or Datasets of your own (:mod:`guardnet.train.data`). The Hub folder
is written by :func:`guardnet.weights.save_pretrained` with a model card
(:mod:`guardnet.train.cards`).
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from guardnet._utils import eval_mode
from guardnet.errors import WeightsError
from guardnet.nets.contranet import ContraNetConfig
from guardnet.train.augment import augmentation_note, default_augmentation
from guardnet.train.cards import classifier_card, contranet_card
from guardnet.train.classifier import evaluate_accuracy, train_classifier
from guardnet.train.contranet import evaluate_contranet, train_contranet
from guardnet.train.data import TrainingData, load_training_data
from guardnet.train.distributed import resolve_device
from guardnet.train.options import ClassifierTrainingOptions, ContraNetTrainingOptions
from guardnet.train.settings import contranet_settings

__all__ = ["run_classifier_training", "run_contranet_training"]

# Input size of your own images when neither the options nor a pretrained model give one.
_DEFAULT_IMAGE_SIZE, _DEFAULT_CHANNELS = 32, 3


def _metric_slug(display_name: str) -> str:
    """``"CIFAR-10 (JPEG q75)"`` -> ``"cifar10_jpeg_q75"``: metric keys name their data."""
    slug = re.sub(r"[^a-z0-9]+", "_", display_name.lower().replace("-", ""))
    return slug.strip("_")


def _percent(value: float) -> str:
    return f"{100 * value:.2f}%"


def _input_size(
    options: ClassifierTrainingOptions | ContraNetTrainingOptions,
    pretrained: Mapping[str, Any] | None,
) -> tuple[int, int]:
    """``(image_size, channels)`` for your own images: the options', else the pretrained
    model's ``input_size``, else 32 and 3."""
    size = list((pretrained or {}).get("input_size") or [])
    channels = options.channels or (int(size[0]) if size else _DEFAULT_CHANNELS)
    image_size = options.image_size or (int(size[-1]) if size else _DEFAULT_IMAGE_SIZE)
    return image_size, channels


def _user_splits(data: TrainingData) -> dict[str, str] | None:
    """How a model card describes the splits of your own data (None for a guardnet dataset)."""
    if data.builtin:
        return None
    return {
        "train": f"the `train` images of {data.source}",
        "val": "the `val` images, held out of training; model selection and calibration",
        "test": "the `test` images",
    }


# --------------------------------------------------------------------------------------------
# Classifiers
# --------------------------------------------------------------------------------------------


def _load_init(init: str) -> tuple[nn.Module, dict[str, Any]]:
    from guardnet.weights import from_pretrained

    model = from_pretrained(init)
    return model, model.pretrained_config


def run_classifier_training(options: ClassifierTrainingOptions) -> dict[str, Any]:
    """Train a classifier and save it as a Hub folder in ``options.out/model``.

    The model trains on the ``train`` split (optionally a seeded subset of ``limit`` images) on
    normalised inputs: the data's mean/std, or with ``init`` the pretrained config's. The
    per-epoch validation accuracy uses the ``val`` split; after the last epoch the model is
    evaluated on ``val`` and on the ``test`` split (a guardnet dataset's official one; your own
    data's if it has one), and saved with :func:`guardnet.weights.save_pretrained`:
    ``config.json`` carries the mean/std, the metrics (keys name the data, e.g.
    ``cifar10_jpeg_q75_test_accuracy``) and the training details; ``README.md`` is a model card
    with the command line, wall time and accuracies.

    Args:
        options: The run: data, architecture or ``init``, settings, run folder.

    Returns:
        A summary: ``model_dir``, ``val_accuracy``, ``test_accuracy`` (None without test
        images), ``train_seconds``, ``history``.

    Raises:
        DataNotFoundError: The dataset's files are missing.
        DatasetError: Your own data is malformed.
        WeightsError: Unknown architecture or ``init``, or ``init`` does not fit the data.
        CheckpointError: See :func:`~guardnet.train.train_classifier`.

    Example:
        >>> options = ClassifierTrainingOptions(  # doctest: +SKIP
        ...     out="runs/flowers", data_dir="data/flowers", arch="resnet20", image_size=32
        ... )
        >>> run_classifier_training(options)["val_accuracy"]  # doctest: +SKIP
    """
    from guardnet.weights import build_model, save_pretrained

    o, settings = options, options.settings
    began = time.perf_counter()
    if o.threads is not None:
        torch.set_num_threads(o.threads)
    run_on = resolve_device(o.device)
    model, init_config = _load_init(o.init) if o.init is not None else (None, None)
    image_size, channels = _input_size(o, init_config)
    data = load_training_data(o, image_size=image_size, channels=channels)
    info = data.info
    train = data.split("train", limit=o.limit)
    val = data.split("val", limit=o.eval_limit)
    test = data.split("test", limit=o.eval_limit) if data.has_test else None

    torch.manual_seed(settings.seed)  # the initial weights
    arch = o.arch
    if model is not None and init_config is not None:
        if arch is not None and init_config.get("architecture") != arch:
            raise WeightsError(
                f"--arch {arch!r} but {o.init!r} is a {init_config.get('architecture')!r}"
            )
        arch = str(init_config["architecture"])
        full_args = dict(init_config.get("arch_args") or {})
        if init_config.get("num_classes", info.num_classes) != info.num_classes:
            raise WeightsError(
                f"{o.init!r} has {init_config.get('num_classes')} classes, {info.display_name} "
                f"has {info.num_classes}"
            )
        mean, std = list(init_config["mean"]), list(init_config["std"])
        license_id = str(init_config.get("license", "unknown"))
    else:
        if arch is None:
            raise WeightsError("give an architecture (--arch) or weights to start from (--init)")
        full_args = {"num_classes": info.num_classes, "in_channels": info.channels}
        full_args.update(o.arch_args or {})
        model = build_model({"architecture": arch, "arch_args": full_args})
        mean, std = list(info.mean), list(info.std)
        license_id = "Apache-2.0"
    input_size = [info.channels, info.image_size, info.image_size]
    try:
        with torch.no_grad(), eval_mode(model):
            logits = model(torch.zeros(2, *input_size))
    except RuntimeError as exc:
        raise WeightsError(
            f"{arch} does not accept {info.display_name} images {tuple(input_size)}: {exc}"
        ) from exc
    if tuple(logits.shape) != (2, info.num_classes):
        raise WeightsError(f"{arch} gives {logits.shape[1]} logits for {info.num_classes} classes")

    augment = o.augment and data.builtin  # your own data has no standard augmentation
    augmentation = default_augmentation(info.name) if augment else None
    note = augmentation_note(info.name) if augment else "none"
    run_info = {
        "dataset": info.name,
        "architecture": arch,
        "arch_args": full_args,
        "init": o.init,
        "limit": o.limit,
        "mean": mean,
        "std": std,
        "augmentation": note,
    }
    if not data.builtin:
        run_info["data"] = data.source
    result = train_classifier(
        model,
        train.images,
        train.labels,
        settings=settings,
        val_images=val.images,
        val_labels=val.labels,
        mean=mean,
        std=std,
        augment=augmentation,
        run_dir=o.out,
        resume=o.resume,
        run_info=run_info,
        invocation={"command": o.command},
        device=run_on,
        progress=o.progress,
        log=o.log,
    )
    accuracy = {"val": evaluate_accuracy(model, val.images, val.labels, mean=mean, std=std)}
    if test is not None:
        accuracy["test"] = evaluate_accuracy(model, test.images, test.labels, mean=mean, std=std)
    slug = _metric_slug(info.display_name)
    metrics = {f"{slug}_{s}_accuracy": accuracy[s] for s in ("test", "val") if s in accuracy}
    config = {
        "architecture": arch,
        "arch_args": full_args,
        "num_classes": info.num_classes,
        "dataset": info.name,
        "dataset_display_name": info.display_name,
        "dataset_note": info.note,
        "input_size": input_size,
        "mean": mean,
        "std": std,
        "input_normalized_by": "caller (GuardedModel mean/std)",
        "class_names": list(info.class_names),
        "license": license_id,
        "source": f"trained by guardnet: {o.command or 'guardnet.train.run_classifier_training'}",
        "metrics": metrics,
        "train_wall_seconds": round(result.train_seconds, 1),
        "training": {
            "settings": settings.to_dict(),
            "init": o.init,
            "limit": o.limit,
            "eval_limit": o.eval_limit,
            "augmentation": note,
            "parameters": sum(p.numel() for p in model.parameters()),
            "wall_seconds": round(result.train_seconds, 1),
            "device": str(run_on),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "commands": [entry.get("command") for entry in result.invocations],
            "history": result.history,
        },
    }
    counts = {"train": len(train), "val": len(val)}
    if test is not None:
        counts["test"] = len(test)
    card = classifier_card(
        config,
        title=f"{arch} on {info.display_name}",
        result=result,
        counts=counts,
        accuracy=accuracy,
        splits=_user_splits(data),
    )
    model_dir = save_pretrained(model, Path(o.out) / "model", config=config, model_card=card)
    o.log(
        f"done in {time.perf_counter() - began:.0f} s ({result.train_seconds:.0f} s training); "
        f"{info.display_name} validation accuracy {_percent(accuracy['val'])} ({len(val)} images)"
    )
    if test is not None:
        o.log(
            f"{info.display_name} test accuracy {_percent(accuracy['test'])} ({len(test)} images)"
        )
    o.log(f"saved {model_dir}")
    return {
        "model_dir": model_dir,
        "val_accuracy": accuracy["val"],
        "test_accuracy": accuracy.get("test"),
        "train_seconds": result.train_seconds,
        "history": result.history,
    }


# --------------------------------------------------------------------------------------------
# ContraNet
# --------------------------------------------------------------------------------------------


def _load_classifier(name_or_path: str, device: torch.device) -> tuple[Callable, dict[str, Any]]:
    from guardnet.guard import Normalize
    from guardnet.weights import from_pretrained

    model = from_pretrained(name_or_path)
    config = model.pretrained_config
    mean, std = config.get("mean"), config.get("std")
    pipeline = nn.Sequential(Normalize(mean, std), model) if mean is not None else model
    pipeline = pipeline.to(device).eval()
    for p in pipeline.parameters():
        p.requires_grad_(False)
    return pipeline, config


def _dmm_init_from(
    pipeline: nn.Module, classifier_config: Mapping[str, Any], config: ContraNetConfig, name: str
) -> tuple[ContraNetConfig, nn.Module]:
    """The classifier's network for ``dmm_init_from_classifier``, and the config with its
    input normalisation (``dmm_input_mean``/``dmm_input_std``, which must agree if given)."""
    mean, std = classifier_config.get("mean"), classifier_config.get("std")
    network = pipeline[1] if mean is not None else pipeline  # _load_classifier's pipeline
    if mean is None:  # a classifier on [0, 1] images: mean 0, std 1
        mean, std = [0.0] * config.in_channels, [1.0] * config.in_channels
    wanted = (tuple(float(v) for v in mean), tuple(float(v) for v in std))
    if config.dmm_input_mean is None:
        config = dataclasses.replace(config, dmm_input_mean=wanted[0], dmm_input_std=wanted[1])
    elif (config.dmm_input_mean, config.dmm_input_std) != wanted:
        raise ValueError(
            f"dmm_input_mean/dmm_input_std {config.dmm_input_mean}/{config.dmm_input_std} "
            f"differ from classifier {name!r}'s normalisation {wanted[0]}/{wanted[1]}, which "
            "the extractors it initialises need"
        )
    return config, network


def run_contranet_training(options: ContraNetTrainingOptions) -> dict[str, Any]:
    """Train a ContraNet and save it as a Hub folder in ``options.out/model``.

    Under ``torchrun`` every rank trains its share; rank 0 alone measures and saves.

    Args:
        options: The run: data, preset and architecture overrides, protected classifier,
            settings, run folder.

    Returns:
        ``model_dir``, ``metrics`` (sanity metrics on the validation images, see
        :func:`~guardnet.train.evaluate_contranet`), ``train_seconds``, ``history``.

    Raises:
        DataNotFoundError: The dataset's files are missing.
        DatasetError: Your own data is malformed.
        ValueError: The classifier does not fit the data, or a setting needs what is missing.
        CheckpointError: See :func:`~guardnet.train.train_contranet`.

    Example:
        >>> options = ContraNetTrainingOptions(  # doctest: +SKIP
        ...     out="runs/contranet-flowers", data_dir="data/flowers", classifier="runs/x/model"
        ... )
        >>> run_contranet_training(options)["metrics"]  # doctest: +SKIP
    """
    from guardnet.weights import save_pretrained

    o = options
    began = time.perf_counter()
    if o.threads is not None:
        torch.set_num_threads(o.threads)
    run_on = resolve_device(o.device)
    classify, classifier_config = None, None
    if o.classifier is not None:
        classify, classifier_config = _load_classifier(o.classifier, run_on)
    image_size, channels = _input_size(o, classifier_config)
    data = load_training_data(o, image_size=image_size, channels=channels)
    info = data.info
    settings = o.settings
    if settings is None:
        settings = contranet_settings(info.name if data.builtin else None)
    base = getattr(ContraNetConfig, o.preset)(info.num_classes, info.channels)
    config = dataclasses.replace(base, **dict(o.arch_args or {}))
    train = data.split("train", limit=o.limit)
    if classifier_config is not None:
        if classifier_config.get("num_classes", info.num_classes) != info.num_classes:
            raise ValueError(
                f"classifier {o.classifier!r} has {classifier_config.get('num_classes')} "
                f"classes, {info.display_name} has {info.num_classes}"
            )
    dmm_init = None
    if settings.dmm_init_from_classifier:
        if classify is None or classifier_config is None or o.classifier is None:
            raise ValueError("dmm_init_from_classifier needs --classifier")
        config, dmm_init = _dmm_init_from(classify, classifier_config, config, o.classifier)
    result = train_contranet(
        config,
        train.images,
        train.labels,
        settings=settings,
        classify=classify,
        dmm_init=dmm_init,
        run_dir=o.out,
        resume=o.resume,
        device=run_on,
        progress=o.progress,
        log=o.log,
    )
    if dist.is_initialized() and dist.get_rank() != 0:
        return {"model_dir": None, "metrics": {}, "train_seconds": result.seconds}
    val = data.split("val", limit=o.eval_limit)
    metrics = evaluate_contranet(result.model, val.images, val.labels)
    named = {f"{info.name}_val_{k}": round(v, 4) for k, v in metrics.items()}
    model_dir = Path(o.out) / "model"
    hub_config = {
        "architecture": "ContraNet",
        "arch_args": dataclasses.asdict(config),
        "num_classes": info.num_classes,
        "in_channels": info.channels,
        "dataset": info.name,
        "input_size": list(train.images.shape[1:]),  # (C, H, W), as in classifier configs
        "classifier": o.classifier,
        "train_settings": settings.to_dict(),
        "train_images": int(train.labels.shape[0]),
        "train_seconds": round(result.seconds, 1),
        "metrics": named,
        "license": "Apache-2.0",
        "source": "trained by guardnet (guardnet train contranet)",
    }
    if not data.builtin:
        hub_config |= {"dataset_note": info.note, "class_names": list(info.class_names)}
    card = contranet_card(hub_config, command=o.command, history=result.history)
    save_pretrained(result.model, model_dir, config=hub_config, model_card=card)
    o.log(f"saved {model_dir} ({time.perf_counter() - began:.0f} s in all)")
    return {
        "model_dir": model_dir,
        "metrics": named,
        "train_seconds": result.seconds,
        "history": result.history,
    }
