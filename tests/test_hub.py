"""Tests of guardnet.hub (weights format, strict loading, offline Hub cache, registry) and of the
CIFAR ResNets.

The Hub tests never touch the network: they build a Hugging Face cache in the Hub's own layout in
a temporary folder, switch huggingface_hub to offline mode and fail on any socket use. The
akamaster test reads the original checkpoints from the data root and skips when it is absent.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

import guardnet
from guardnet.data import resolve_data_root
from guardnet.errors import DataNotFoundError, GuardnetError, WeightsError
from guardnet.hub import (
    ARCHITECTURES,
    PRETRAINED,
    PretrainedEntry,
    build_model,
    from_pretrained,
    list_pretrained,
    load_pretrained,
    load_state_dict_strict,
    register_architecture,
    save_pretrained,
)
from guardnet.nets import CifarResNet, MnistCNN, resnet20, resnet56
from guardnet.nets.contranet import ContraNet
from guardnet.nets.resnet_cifar import BasicBlock, PadShortcut

# Tiny arch_args and inputs per registered architecture (every registered name needs a case).
ROUND_TRIP_CASES: dict[str, tuple[dict[str, Any], tuple[int, ...]]] = {
    "MnistCNN": ({"num_classes": 10, "in_channels": 1}, (2, 1, 28, 28)),
    "SmallConvNet": ({"num_classes": 5, "in_channels": 3}, (2, 3, 16, 16)),
    "CifarResNet": ({"depth": 8, "num_classes": 4, "width": 8}, (2, 3, 16, 16)),
    "resnet20": ({"num_classes": 10}, (2, 3, 16, 16)),
    "resnet56": ({"num_classes": 10}, (1, 3, 8, 8)),
    "ContraNet": (
        {"num_classes": 4, "in_channels": 1, "g_ch": 2, "d_ch": 2, "dmm_backbone": "cnn"},
        (2, 1, 32, 32),
    ),
}
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
    "source": "tests/test_hub.py",
    "metrics": {},
}
COMMIT_A = "a" * 40
COMMIT_B = "0123456789abcdef0123456789abcdef01234567"


def _randomised(model: nn.Module) -> nn.Module:
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


def _tiny(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return _randomised(build_model(TINY_CONFIG))


def _outputs(model: nn.Module, shape: tuple[int, ...]) -> Tensor:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        if isinstance(model, ContraNet):  # rebuild and score under labels 0, 1, ...
            return model(x.tanh(), torch.arange(shape[0]) % model.num_classes)[1]
        return model(x)


def _rewrite_weights(folder: Path, state: dict[str, Tensor]) -> None:
    """Replace the weights and drop the recorded sha256, so only the key checks can object."""
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    config.pop("weights_sha256", None)
    (folder / "config.json").write_text(json.dumps(config))


def _hub_cache(cache: Path, repo_id: str, snapshots: dict[str, Path], main: str) -> None:
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


# --------------------------------------------------------------------------------------------
# Architecture registry and round trips
# --------------------------------------------------------------------------------------------


def test_every_registered_architecture_has_a_round_trip_case() -> None:
    assert set(ARCHITECTURES) == set(ROUND_TRIP_CASES)


@pytest.mark.parametrize("architecture", sorted(ROUND_TRIP_CASES))
def test_save_load_round_trip(architecture: str, tmp_path: Path) -> None:
    arch_args, shape = ROUND_TRIP_CASES[architecture]
    config = {**TINY_CONFIG, "architecture": architecture, "arch_args": arch_args}
    model = _randomised(build_model(config))
    folder = save_pretrained(model, tmp_path / architecture, config=config)

    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
    ]
    with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
        assert handle.metadata() == {"format": "pt"}
        assert set(handle.keys()) == set(model.state_dict())
    loaded, loaded_config = from_pretrained(folder)
    assert type(loaded) is type(model)
    assert not loaded.training
    assert loaded_config["arch_args"] == arch_args
    assert len(loaded_config["weights_sha256"]) == 64
    assert torch.equal(_outputs(loaded, shape), _outputs(model, shape))


def test_save_pretrained_writes_card_and_config(tmp_path: Path) -> None:
    model = _tiny()
    save_pretrained(model, tmp_path / "custom", config=TINY_CONFIG, model_card="# custom card")
    assert (tmp_path / "custom" / "README.md").read_text() == "# custom card\n"
    save_pretrained(model, tmp_path / "default", config=TINY_CONFIG)
    card = (tmp_path / "default" / "README.md").read_text()
    assert card.startswith("---\nlicense: apache-2.0\nlibrary_name: guardnet\n")
    written = json.loads((tmp_path / "default" / "config.json").read_text())
    assert {k: v for k, v in written.items() if k != "weights_sha256"} == TINY_CONFIG
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "default").iterdir()}
    assert modes["model.safetensors"] == modes["config.json"]  # not owner-only


def test_save_pretrained_rejects_config_that_does_not_rebuild_the_model(tmp_path: Path) -> None:
    config = {**TINY_CONFIG, "arch_args": {**TINY_CONFIG["arch_args"], "num_classes": 7}}
    with pytest.raises(WeightsError, match=r"linear\.weight"):
        save_pretrained(_tiny(), tmp_path / "bad", config=config)
    assert not (tmp_path / "bad").exists()
    with pytest.raises(WeightsError, match="JSON"):
        save_pretrained(_tiny(), tmp_path / "bad", config={**TINY_CONFIG, "x": object()})


def test_float16_keys_halve_those_tensors_and_load_back_into_float32(tmp_path: Path) -> None:
    model = _tiny()
    full = save_pretrained(model, tmp_path / "full", config=TINY_CONFIG)
    half = save_pretrained(
        model, tmp_path / "half", config=TINY_CONFIG, float16_keys="linear.weight"
    )
    stored = load_file(str(half / "model.safetensors"))
    assert stored["linear.weight"].dtype == torch.float16
    assert stored["linear.bias"].dtype == torch.float32
    saved_bytes = stored["linear.weight"].numel() * 2
    size = (full / "model.safetensors").stat().st_size - (half / "model.safetensors").stat().st_size
    assert size == pytest.approx(saved_bytes, abs=64)  # the header's dtype strings differ a little
    loaded, _ = from_pretrained(half)
    assert loaded.linear.weight.dtype == torch.float32
    reference = model.linear.weight.detach()
    assert torch.equal(loaded.linear.weight, reference.half().float())
    assert not torch.equal(loaded.linear.weight, reference)  # rounded, so truly stored as float16
    assert torch.allclose(
        _outputs(loaded, (2, 3, 16, 16)), _outputs(model, (2, 3, 16, 16)), atol=1e-2
    )


def test_float16_keys_are_checked(tmp_path: Path) -> None:
    model = _tiny()
    with pytest.raises(WeightsError, match=r"does not have: linear\.nope"):
        save_pretrained(model, tmp_path / "a", config=TINY_CONFIG, float16_keys=["linear.nope"])
    with pytest.raises(WeightsError, match=r"not floating point: .*num_batches_tracked"):
        save_pretrained(
            model, tmp_path / "b", config=TINY_CONFIG, float16_keys=["bn1.num_batches_tracked"]
        )
    with torch.no_grad():
        model.linear.weight[0, 0] = 1e5
    with pytest.raises(WeightsError, match=r"beyond float16's range .*linear\.weight"):
        save_pretrained(model, tmp_path / "c", config=TINY_CONFIG, float16_keys=["linear.weight"])
    assert not any(tmp_path.iterdir())


def test_build_model_errors() -> None:
    with pytest.raises(WeightsError, match=r"unknown architecture 'nope'.*resnet20"):
        build_model({"architecture": "nope"})
    with pytest.raises(WeightsError, match="'architecture'"):
        build_model({"arch_args": {}})
    with pytest.raises(WeightsError, match="cannot build 'CifarResNet'"):
        build_model({"architecture": "CifarResNet", "arch_args": {"depth": 21}})
    with pytest.raises(WeightsError, match="cannot build 'resnet20'"):
        build_model({"architecture": "resnet20", "arch_args": {"bogus": 1}})
    with pytest.raises(ValueError, match="already registered"):
        register_architecture("resnet20")(resnet56)
    assert register_architecture("resnet20")(resnet20) is resnet20  # same builder: no-op


# --------------------------------------------------------------------------------------------
# Strict loading and damaged files
# --------------------------------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    return save_pretrained(_tiny(), tmp_path / "tiny", config=TINY_CONFIG)


def test_missing_key_raises_naming_it(saved: Path) -> None:
    state = load_file(str(saved / "model.safetensors"))
    del state["layer2.0.bn1.running_var"], state["linear.bias"]
    _rewrite_weights(saved, state)
    with pytest.raises(WeightsError, match="missing keys") as info:
        from_pretrained(saved)
    assert "layer2.0.bn1.running_var" in str(info.value)
    assert "linear.bias" in str(info.value)
    assert str(saved / "model.safetensors") in str(info.value)


def test_unexpected_key_raises_naming_it(saved: Path) -> None:
    state = load_file(str(saved / "model.safetensors"))
    state["head.extra.weight"] = torch.zeros(2)
    _rewrite_weights(saved, state)
    with pytest.raises(WeightsError, match=r"unexpected keys: head\.extra\.weight"):
        from_pretrained(saved)


def test_wrong_shape_raises_naming_key_and_shapes(saved: Path) -> None:
    state = load_file(str(saved / "model.safetensors"))
    state["linear.weight"] = torch.zeros(5, 16)
    _rewrite_weights(saved, state)
    with pytest.raises(WeightsError, match=r"wrong shapes: linear\.weight \(file \(5, 16\), model"):
        from_pretrained(saved)


def test_load_state_dict_strict_lists_many_keys_briefly() -> None:
    model = resnet56()
    with pytest.raises(WeightsError, match=r"missing keys: .*and \d+ more"):
        load_state_dict_strict(model, {})


def test_truncated_file_raises(saved: Path) -> None:
    weights = saved / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(WeightsError, match="corrupted or truncated") as info:
        from_pretrained(saved)  # caught by the sha256 recorded in config.json
    assert str(weights) in str(info.value)
    config = json.loads((saved / "config.json").read_text())
    del config["weights_sha256"]
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsError, match="cannot read the safetensors file") as info:
        from_pretrained(saved)  # caught by safetensors itself
    assert str(weights) in str(info.value)


def test_corrupted_files_raise(saved: Path) -> None:
    weights = saved / "model.safetensors"
    original = weights.read_bytes()
    flipped = bytearray(original)
    flipped[-10] ^= 0xFF  # one byte of tensor data: only the sha256 can tell
    weights.write_bytes(bytes(flipped))
    with pytest.raises(WeightsError, match="weights_sha256"):
        from_pretrained(saved)
    config = json.loads((saved / "config.json").read_text())
    del config["weights_sha256"]
    (saved / "config.json").write_text(json.dumps(config))
    weights.write_bytes(b"\x13\x00\x00\x00\x00\x00\x00\x00{not json}" + original[20:])
    with pytest.raises(WeightsError, match="corrupted or truncated"):
        from_pretrained(saved)
    (saved / "config.json").write_text("{broken")
    with pytest.raises(WeightsError, match="cannot read the model config"):
        from_pretrained(saved)


def test_pickles_and_incomplete_folders_are_refused(tmp_path: Path) -> None:
    torch.save(_tiny().state_dict(), tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(json.dumps(TINY_CONFIG))
    with pytest.raises(WeightsError, match=r"model\.safetensors missing"):
        from_pretrained(tmp_path)


def test_bad_names_and_arguments(saved: Path) -> None:
    with pytest.raises(WeightsError, match="neither a folder nor a Hub repo id"):
        from_pretrained("no/such/folder")
    with pytest.raises(WeightsError, match=r"use guardnet\.load_pretrained"):
        from_pretrained("mnist-cnn")
    with pytest.raises(ValueError, match="revision"):
        from_pretrained(saved, revision="main")
    with pytest.raises(WeightsError, match=r"unknown pretrained model 'nope'.*mnist-cnn"):
        load_pretrained("nope")
    assert issubclass(WeightsError, GuardnetError)


# --------------------------------------------------------------------------------------------
# Hub repos, offline, from a Hugging Face cache in the Hub's layout
# --------------------------------------------------------------------------------------------


def test_hub_repo_loads_offline_from_cache(tmp_path: Path, no_network: list[str]) -> None:
    old, new = _tiny(seed=0), _tiny(seed=1)
    old_folder = save_pretrained(old, tmp_path / "old", config=TINY_CONFIG)
    new_folder = save_pretrained(new, tmp_path / "new", config=TINY_CONFIG)
    cache = tmp_path / "hf-cache"
    _hub_cache(cache, "org/tiny", {COMMIT_A: old_folder, COMMIT_B: new_folder}, main=COMMIT_B)
    shape = (2, 3, 16, 16)
    expected_new, expected_old = _outputs(new, shape), _outputs(old, shape)
    assert not torch.equal(expected_new, expected_old)

    model, config = from_pretrained("org/tiny", cache_dir=cache)  # refs/main -> COMMIT_B
    assert not model.training and config["architecture"] == "CifarResNet"
    assert torch.equal(_outputs(model, shape), expected_new)
    model, _ = from_pretrained("org/tiny", cache_dir=cache, revision=COMMIT_A)
    assert torch.equal(_outputs(model, shape), expected_old)
    model, _ = from_pretrained("org/tiny", cache_dir=cache, revision="main", local_files_only=True)
    assert torch.equal(_outputs(model, shape), expected_new)


def test_hub_repo_missing_from_cache_fails_offline(tmp_path: Path, no_network: list[str]) -> None:
    from huggingface_hub.errors import OfflineModeIsEnabled

    with pytest.raises(WeightsError, match=r"'org/absent'.*Hugging Face cache") as info:
        from_pretrained("org/absent", cache_dir=tmp_path)
    causes, error = [], info.value.__cause__
    while error is not None:
        causes.append(error)
        error = error.__cause__
    # huggingface_hub refused the network because of HF_HUB_OFFLINE (not a failed connection).
    assert any(isinstance(cause, OfflineModeIsEnabled) for cause in causes)


def test_hub_damaged_cached_weights_raise(tmp_path: Path, no_network: list[str]) -> None:
    folder = save_pretrained(_tiny(), tmp_path / "tiny", config=TINY_CONFIG)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    _hub_cache(tmp_path / "cache", "org/tiny", {COMMIT_A: folder}, main=COMMIT_A)
    with pytest.raises(WeightsError, match="corrupted or truncated") as info:
        from_pretrained("org/tiny", cache_dir=tmp_path / "cache")
    assert f"snapshots/{COMMIT_A}/model.safetensors" in str(info.value).replace(os.sep, "/")


def test_load_pretrained_uses_the_hub_when_nothing_ships(
    tmp_path: Path, no_network: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _tiny()
    folder = save_pretrained(model, tmp_path / "tiny", config=TINY_CONFIG)
    _hub_cache(tmp_path / "cache", "org/tiny", {COMMIT_A: folder}, main=COMMIT_A)
    entry = PretrainedEntry(
        name="tiny-test",
        hub_id="org/tiny",
        local_folder=None,
        dataset="cifar10",
        architecture="CifarResNet",
    )
    monkeypatch.setitem(PRETRAINED, entry.name, entry)
    loaded, _ = load_pretrained("tiny-test", cache_dir=tmp_path / "cache")
    assert torch.equal(_outputs(loaded, (1, 3, 8, 8)), _outputs(model, (1, 3, 8, 8)))
    # A shipped model asked for by revision goes to the Hub (not cached here: offline error).
    with pytest.raises(WeightsError, match="guardnet/mnist-cnn"):
        load_pretrained("mnist-cnn", revision=COMMIT_A, cache_dir=tmp_path / "cache")
    wrong = dataclasses.replace(entry, name="wrong-arch", architecture="resnet20")
    monkeypatch.setitem(PRETRAINED, wrong.name, wrong)
    with pytest.raises(WeightsError, match="architecture"):
        load_pretrained("wrong-arch", cache_dir=tmp_path / "cache")


# --------------------------------------------------------------------------------------------
# Shipped pretrained models
# --------------------------------------------------------------------------------------------


def test_registry_and_public_api() -> None:
    names = [entry.name for entry in list_pretrained()]
    assert names == sorted(names)
    assert {"mnist-cnn", "resnet20-cifar10-akamaster", "resnet56-cifar10-akamaster"} <= set(names)
    for name in ("from_pretrained", "save_pretrained", "load_pretrained", "list_pretrained"):
        assert name in guardnet.__all__ and callable(getattr(guardnet, name))


def test_demo_classifier_comes_from_the_registry() -> None:
    from guardnet.demo import load_demo_classifier

    model = load_demo_classifier()
    assert isinstance(model, MnistCNN) and not model.training


# --------------------------------------------------------------------------------------------
# CIFAR ResNets
# --------------------------------------------------------------------------------------------


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
    # The shipped conversion holds exactly these tensors (plus zero BatchNorm batch counters).
    shipped = PRETRAINED[name].local_path
    assert shipped is not None
    converted = load_file(str(shipped / "model.safetensors"))
    assert set(converted) == set(model.state_dict())
    for key, value in state.items():
        assert torch.equal(converted[key], value), key
