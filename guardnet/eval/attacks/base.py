"""The attack base class: input checks, eval mode, device, chunking, seeding and progress.

Subclasses implement :meth:`Attack.perturb` on one chunk that is already on the model's device;
``__call__`` does everything else, so every attack (the standard ones, the foolbox wrappers and
the adaptive ones) behaves the same way: same checks, same seeds, same memory bound.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from guardnet._utils import eval_mode, module_device
from guardnet.errors import InputShapeError
from guardnet.validation import check_images

__all__ = ["Attack"]


class Attack:
    """Base class of guardnet's attacks: ``__call__`` does the rest, ``perturb`` the algorithm.

    Args:
        model: what is attacked: a classifier taking [0, 1] images (normalisation inside) for
            the standard attacks, a :class:`guardnet.GuardedModel` for the adaptive ones.
        batch_size: images per chunk; bounds memory for large inputs.
        seed: seed of the random start; chunk ``i`` uses ``seed + i`` (a generator on the
            model's device, and the global RNG for foolbox), so results do not depend on what
            ran before.
        progress: show a progress bar over chunks.

    Calling ``attack(images, labels)`` returns adversarial images shaped like ``images``, in
    [0, 1], on the images' device. The user's global RNG state is left untouched.
    """

    #: Short name used in reports and cache keys.
    name: ClassVar[str] = "attack"

    def __init__(
        self,
        model: nn.Module,
        *,
        batch_size: int = 256,
        seed: int = 0,
        progress: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.batch_size = batch_size
        self.seed = seed
        self.progress = progress

    # ----------------------------------------------------------------- for subclasses
    def perturb(self, images: Tensor, labels: Tensor, generator: torch.Generator) -> Tensor:
        """Adversarial versions of one chunk (on the model's device, model in eval mode)."""
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        """The attack's parameters (JSON-serialisable), for reports and cache keys."""
        return {}

    # ----------------------------------------------------------------- public API
    def config(self) -> dict[str, Any]:
        """Name, parameters and seed: everything that determines the result besides the model."""
        return {"attack": self.name, "params": self.params(), "seed": self.seed}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"

    def __call__(self, images: Tensor, labels: Tensor) -> Tensor:
        check_images(images)
        if not isinstance(labels, Tensor) or labels.dtype != torch.long or labels.ndim != 1:
            raise InputShapeError("labels must be a 1-D torch.long tensor of class indices")
        if labels.shape[0] != images.shape[0]:
            raise InputShapeError(
                f"{images.shape[0]} images but {labels.shape[0]} labels: one label per image"
            )
        if images.shape[0] == 0:
            return images.clone()
        device = module_device(self.model) or images.device
        chunks = list(
            zip(images.split(self.batch_size), labels.split(self.batch_size), strict=True)
        )
        out: list[Tensor] = []
        with eval_mode(self.model), _forked_rng(device):
            bar = tqdm(chunks, desc=self.name, unit="batch", disable=not self.progress)
            for index, (x, y) in enumerate(bar):
                seed = self.seed + index
                torch.manual_seed(seed)  # foolbox draws from the global RNG
                generator = torch.Generator(device=device).manual_seed(seed)
                adv = self.perturb(x.to(device), y.to(device), generator)
                out.append(adv.detach().clamp_(0.0, 1.0).to(images.device, images.dtype))
        return torch.cat(out)


@contextlib.contextmanager
def _forked_rng(device: torch.device) -> Iterator[None]:
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield
