"""Tiny weights folders, a Hugging Face cache in the Hub's layout, and an offline switch."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from guardnet.layers.a2d import A2DLayer
from guardnet.nets.contranet import ContraNet
from guardnet.weights import build_model, save_pretrained

TINY_CONFIG: dict[str, Any] = {
    "architecture": "CifarResNet",
    "arch_args": {"depth": 8, "num_classes": 3, "width": 4},
    "num_classes": 3,
    "dataset": "cifar10",
    "input_size": [3, 32, 32],
    "mean": [0.5, 0.5, 0.5],
    "std": [0.25, 0.25, 0.25],
    "class_names": ["a", "b", "c"],
    "license": "Apache-2.0",
    "source": "tests/weights_helpers.py",
    "metrics": {"cifar10_test_accuracy": 0.25},
}
COMMIT_A = "a" * 40
COMMIT_B = "0123456789abcdef0123456789abcdef01234567"


def randomised(model: nn.Module) -> nn.Module:
    """Random BatchNorm statistics too, so eval-mode outputs depend on every buffer."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn(module.num_features, generator=generator))
                module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
                if module.weight is not None:  # conditional BatchNorm has no affine part
                    module.weight.copy_(torch.randn(module.num_features, generator=generator))
    return model.eval()


def tiny(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return randomised(build_model(TINY_CONFIG))


def tiny_folder(folder: Path, seed: int = 0) -> tuple[Path, nn.Module]:
    model = tiny(seed)
    return save_pretrained(model, folder, config=TINY_CONFIG), model


def outputs(model: nn.Module, shape: tuple[int, ...] = (2, 3, 16, 16)) -> Tensor:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        if isinstance(model, ContraNet):  # rebuild and score under labels 0, 1, ...
            return model(x.tanh(), torch.arange(shape[0]) % model.num_classes)[1]
        if isinstance(model, A2DLayer):  # fitted statistics and thresholds, no network
            return torch.cat([b.flatten() for b in model.buffers()]).nan_to_num(nan=-1.0)
        return model(x)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def hub_cache(cache: Path, repo_id: str, snapshots: dict[str, Path], main: str) -> None:
    """A Hugging Face cache as hf_hub_download writes it: blobs, snapshot links and refs/main."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    for commit, folder in snapshots.items():
        snapshot = repo / "snapshots" / commit
        snapshot.mkdir(parents=True)
        for name in ("config.json", "model.safetensors"):
            data = (folder / name).read_bytes()
            blob = repo / "blobs" / hashlib.sha256(data).hexdigest()  # the etag of an LFS file
            blob.write_bytes(data)
            try:
                (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
            except OSError:  # no symlinks (Windows without developer mode): the Hub copies
                shutil.copyfile(blob, snapshot / name)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(main)


def use_hf_cache(monkeypatch: pytest.MonkeyPatch, cache: Path) -> None:
    """Point HF_HUB_CACHE at ``cache`` (the variable and the constant huggingface_hub read)."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
