"""Devices and the ``torchrun`` process group of a training run.

Under ``torchrun`` (``WORLD_SIZE > 1``) :func:`setup_distributed` joins the process group (gloo
on the CPU, NCCL on CUDA, one GPU per ``LOCAL_RANK``); :func:`wrap` then puts a trained net in
``DistributedDataParallel`` and :func:`all_reduce_mean` averages per-epoch metrics over the
ranks. In a single process all three are no-ops.

Example:
    >>> ctx, device = setup_distributed(torch.device("cpu"))  # WORLD_SIZE unset: one process
    >>> ctx.world, ctx.main, device
    (1, True, device(type='cpu'))
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["DistContext", "all_reduce_mean", "resolve_device", "setup_distributed", "wrap"]


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"``: CUDA when available, else the CPU; anything else as given.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass(frozen=True)
class DistContext:
    """This process's place in the run: its ``rank`` among ``world`` processes."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the process that logs and writes checkpoints."""
        return self.rank == 0


def setup_distributed(device: torch.device) -> tuple[DistContext, torch.device]:
    """Join the ``torchrun`` process group if ``WORLD_SIZE > 1`` (gloo on CPU, NCCL on CUDA).

    Args:
        device: The device asked for; a CUDA device becomes ``cuda:LOCAL_RANK``.

    Returns:
        ``(context, device)``: the rank and world size, and the device this rank trains on.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(), device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistContext(rank=dist.get_rank(), world=dist.get_world_size()), device


def wrap(module: nn.Module, ctx: DistContext, device: torch.device) -> nn.Module:
    """``module`` in ``DistributedDataParallel`` when there are several ranks, else itself."""
    if ctx.world == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


def all_reduce_mean(values: dict[str, Tensor], ctx: DistContext) -> dict[str, float]:
    """The mean of each scalar over the ranks, as floats (one host sync for all of them)."""
    if not values:
        return {}
    stacked = torch.stack([v.detach().float() for v in values.values()])
    if ctx.world > 1:
        dist.all_reduce(stacked)
        stacked /= ctx.world
    return dict(zip(values, stacked.tolist(), strict=True))
