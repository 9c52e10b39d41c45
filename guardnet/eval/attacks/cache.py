"""A disk cache of adversarial examples, so several guards are judged on the same examples.

Files are safetensors (no pickle): ``<dir>/<attack>-<key>.safetensors`` with the tensor
``adversarial`` and the key's ingredients as JSON metadata. The key hashes the attack's
configuration (name, parameters, seed), the attacked model's weights and buffers (thresholds
included, so an adaptive attack on a guard calibrated differently is a different entry), and
the images and labels. A file whose metadata or shape does not match is recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from guardnet.eval.attacks.base import Attack

__all__ = ["AdversarialCache", "tensor_fingerprint"]


def tensor_fingerprint(*tensors: Tensor) -> str:
    """sha256 over the shapes, dtypes and bytes of ``tensors`` (moved to the CPU)."""
    digest = hashlib.sha256()
    for t in tensors:
        t = t.detach().contiguous().cpu().reshape(-1)
        digest.update(f"{tuple(t.shape)}|{t.dtype}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def model_fingerprint(model: nn.Module) -> str:
    """sha256 of a module's state dict (names, shapes and values)."""
    digest = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor_fingerprint(value).encode())
    return digest.hexdigest()


class AdversarialCache:
    """Run attacks through a folder of cached results.

    Args:
        directory: where the files live (created on first write).

    Example:
        >>> cache = AdversarialCache("runs/adv-cache")  # doctest: +SKIP
        >>> adv = cache.run(attack, images, labels)  # doctest: +SKIP
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.hits = 0
        self.misses = 0

    def key(self, attack: Attack, images: Tensor, labels: Tensor) -> tuple[str, dict[str, Any]]:
        """The cache key of an attack on these inputs, and what went into it."""
        ingredients = {
            **attack.config(),
            "model": model_fingerprint(attack.model),
            "inputs": tensor_fingerprint(images, labels),
        }
        text = json.dumps(ingredients, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:20], ingredients

    def path(self, attack: Attack, key: str) -> Path:
        return self.directory / f"{attack.name}-{key}.safetensors"

    def run(self, attack: Attack, images: Tensor, labels: Tensor) -> Tensor:
        """``attack(images, labels)``, read from the cache when this exact run was done before."""
        from safetensors import safe_open
        from safetensors.torch import save_file

        key, ingredients = self.key(attack, images, labels)
        path = self.path(attack, key)
        expected = json.dumps(ingredients, sort_keys=True, default=str)
        if path.is_file():
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if meta.get("ingredients") == expected:
                    adv = f.get_tensor("adversarial")
                    if adv.shape == images.shape:
                        self.hits += 1
                        return adv.to(images.device, images.dtype)
        self.misses += 1
        adv = attack(images, labels)
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file(
            {"adversarial": adv.detach().contiguous().cpu()},
            str(tmp),
            metadata={"ingredients": expected},
        )
        os.replace(tmp, path)
        return adv
