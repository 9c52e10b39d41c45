"""The CIFAR ResNets (option-A shortcuts) and the akamaster checkpoints they load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from guardnet.data import resolve_data_root
from guardnet.errors import DataNotFoundError
from guardnet.nets import CifarResNet, resnet20, resnet56
from guardnet.nets.resnet_cifar import BasicBlock, PadShortcut

MIRROR = Path(__file__).resolve().parents[1] / "hub"


def test_option_a_shortcut_subsamples_and_zero_pads() -> None:
    x = torch.randn(2, 16, 8, 8)
    out = PadShortcut(16, 32, 2)(x)
    assert out.shape == (2, 32, 4, 4)
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2])
    assert not out[:, :8].any() and not out[:, 24:].any()

    block = BasicBlock(16, 32, stride=2).eval()
    assert block(x).shape == (2, 32, 4, 4)
    assert list(block.shortcut.parameters()) == []
    assert isinstance(BasicBlock(16, 16).shortcut, nn.Identity)
    with pytest.raises(ValueError, match="cannot reduce"):
        PadShortcut(32, 16, 1)


@pytest.mark.parametrize(
    ("factory", "depth", "params"), [(resnet20, 20, 269_722), (resnet56, 56, 853_018)]
)
def test_resnet_depth_and_size(factory: Any, depth: int, params: int) -> None:
    model = factory().eval()
    weighted = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(weighted) == depth
    assert sum(p.numel() for p in model.parameters()) == params
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    with pytest.raises(ValueError, match="6n\\+2"):
        CifarResNet(21)


def _akamaster_dir() -> Path:
    try:
        root = resolve_data_root()
    except DataNotFoundError:
        pytest.skip("no data root ($GUARDNET_DATA or ../shared/data)")
    folder = root / "weights" / "akamaster-resnet-cifar10"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    return folder


@pytest.mark.parametrize(
    ("factory", "file", "name"),
    [
        (resnet20, "resnet20-12fca82f.th", "resnet20-cifar10-akamaster"),
        (resnet56, "resnet56-4bfd9763.th", "resnet56-cifar10-akamaster"),
    ],
)
def test_akamaster_checkpoints_load_strictly(factory: Any, file: str, name: str) -> None:
    path = _akamaster_dir() / file
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state = {key.removeprefix("module."): value for key, value in checkpoint["state_dict"].items()}
    model = factory()
    model.load_state_dict(state, strict=True)  # raises on any missing or unexpected key
    # The converted weights in the mirror hold exactly these tensors (plus zero BatchNorm
    # batch counters).
    converted = load_file(str(MIRROR / name / "model.safetensors"))
    assert set(converted) == set(model.state_dict())
    for key, value in state.items():
        assert torch.equal(converted[key], value), key
