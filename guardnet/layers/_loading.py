"""Loading a layer's networks from a registered name, a Hub folder or a repo id."""

from __future__ import annotations

import os

import torch
from torch import nn

from guardnet.errors import WeightsError

__all__ = ["load_layer_module"]


def load_layer_module(
    name_or_path: str | os.PathLike[str],
    expected: type[nn.Module],
    what: str,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    local_files_only: bool | None = None,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """:func:`guardnet.weights.from_pretrained`, refusing anything but an ``expected`` module.

    Args:
        name_or_path: a registered name, a Hub folder or a repo id.
        expected: the module class the folder must hold.
        what: how the error names it (e.g. ``"a ContraNet"``).
        revision, cache_dir, local_files_only, device: as for :func:`guardnet.from_pretrained`.

    Raises:
        WeightsError: the folder holds another architecture.
    """
    from guardnet.weights import from_pretrained

    name = os.fspath(name_or_path)
    module = from_pretrained(
        name,
        revision=revision,
        cache_dir=cache_dir,
        local_files_only=local_files_only,
        device=device,
    )
    if not isinstance(module, expected):
        architecture = module.pretrained_config.get("architecture")
        raise WeightsError(f"{name!r} holds a {architecture!r}, not {what}")
    return module
