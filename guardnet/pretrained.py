"""``guardnet.from_pretrained``: one loader for every model and guard guardnet publishes or saves.

* a registered model name (``guardnet models``), a weights folder or a Hub repo id holding one:
  the network (:func:`guardnet.weights.from_pretrained`);
* a registered guard recipe (``guardnet eval --list-guards``) or a JSON recipe file: the guard
  built from it, uncalibrated;
* a folder or Hub repo written by :meth:`guardnet.GuardedModel.save_pretrained`: the calibrated
  guard.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from guardnet.guard import GuardedModel
from guardnet.recipes import GUARD_RECIPES
from guardnet.weights import resolve

__all__ = ["from_pretrained"]


def from_pretrained(
    name_or_path: str | os.PathLike[str],
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    local_files_only: bool | None = None,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """Load a classifier, a layer's networks or a whole guard by name, folder or Hub repo id.

    Args:
        name_or_path: a registered model or guard recipe name, a folder, a JSON recipe file or a
            Hub repo id (``"org/name"``).
        revision: Hub branch, tag or commit (Hub repos only).
        cache_dir: Hugging Face cache folder (default ``HF_HUB_CACHE``).
        local_files_only: True: never use the network, only the cache.
        device: where the returned module lives.

    Returns:
        A :class:`~guardnet.GuardedModel` for a recipe or a saved guard (calibrated when saved
        calibrated), else the network in eval mode with its config as ``pretrained_config``.

    Raises:
        WeightsError: nothing of that name, a missing or damaged file, a failed download.

    Example:
        >>> import guardnet
        >>> type(guardnet.from_pretrained("mnist-cnn")).__name__
        'MnistCNN'
        >>> type(guardnet.from_pretrained("mnist-saec")).__name__
        'GuardedModel'
    """
    text = os.fspath(name_or_path)
    hub = {"revision": revision, "cache_dir": cache_dir, "local_files_only": local_files_only}
    if text in GUARD_RECIPES or (text.endswith(".json") and Path(text).is_file()):
        return GuardedModel.from_pretrained(text, device=device)
    if resolve.load_config(text, **hub).get("guardnet_type") == "guard":
        return GuardedModel.from_pretrained(text, device=device, **hub)
    return resolve.from_pretrained(text, device=device, **hub)
