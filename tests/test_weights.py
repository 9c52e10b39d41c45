"""Tests of guardnet.weights: the weights format, strict loading, resolution (folder, mirror, Hub
cache), pinned revisions and sha256 checks, and every registered model.

The Hub tests never touch the network: they build a Hugging Face cache in the Hub's own layout in
a temporary folder, switch huggingface_hub to offline mode and fail on any socket use.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from weights_helpers import (
    COMMIT_A,
    COMMIT_B,
    TINY_CONFIG,
    hub_cache,
    outputs,
    randomised,
    sha256,
    tiny,
    tiny_folder,
    use_hf_cache,
)

import guardnet
from guardnet.errors import GuardnetError, WeightsError
from guardnet.nets import resnet20, resnet56
from guardnet.weights import (
    ARCHITECTURES,
    MIRROR_ENV,
    PRETRAINED,
    PretrainedEntry,
    build_model,
    from_pretrained,
    get_pretrained,
    list_architectures,
    list_pretrained,
    load_config,
    load_state_dict_strict,
    mirror_root,
    register_architecture,
    save_pretrained,
)
from guardnet.weights import resolve as resolve_module

REPO = Path(__file__).resolve().parents[1]

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
    "Reformer": ({"in_channels": 1, "channels": 3, "depth": 2, "pool": True}, (2, 1, 8, 8)),
    "ReformerSet": (
        {"reformers": [{"in_channels": 3, "kernel_size": 5}, {"in_channels": 3, "depth": 2}]},
        (2, 3, 8, 8),
    ),
    "A2D": ({"attacks": ["bim", "dba"], "detector": "vote"}, (1, 1, 8, 8)),
}


def _rewrite_weights(folder: Path, state: dict[str, Tensor]) -> None:
    """Replace the weights and drop the recorded sha256, so only the key checks can object."""
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    config.pop("weights_sha256", None)
    (folder / "config.json").write_text(json.dumps(config))


# --------------------------------------------------------------------------------------------
# Architecture registry and round trips
# --------------------------------------------------------------------------------------------


def test_every_registered_architecture_has_a_round_trip_case() -> None:
    assert list_architectures() == sorted(ROUND_TRIP_CASES)


def test_architectures_register_beside_their_definitions() -> None:
    from guardnet.nets.contranet import ContraNet
    from guardnet.nets.resnet_cifar import CifarResNet
    from guardnet.nets.small import MnistCNN, SmallConvNet

    list_architectures()
    assert ARCHITECTURES["resnet20"] is resnet20 and ARCHITECTURES["resnet56"] is resnet56
    assert ARCHITECTURES["CifarResNet"] is CifarResNet
    assert ARCHITECTURES["MnistCNN"] is MnistCNN and ARCHITECTURES["SmallConvNet"] is SmallConvNet
    assert ARCHITECTURES["ContraNet"] is ContraNet


def test_registry_module_imports_no_network() -> None:
    """The registry must not import guardnet.nets (which imports it): no import cycle."""
    import ast

    source = (REPO / "guardnet" / "weights" / "registry.py").read_text()
    imported = [
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    ]
    assert not [name for name in imported if name and name.startswith("guardnet.nets")]


@pytest.mark.parametrize("architecture", sorted(ROUND_TRIP_CASES))
def test_save_load_round_trip(architecture: str, tmp_path: Path) -> None:
    arch_args, shape = ROUND_TRIP_CASES[architecture]
    config = {**TINY_CONFIG, "architecture": architecture, "arch_args": arch_args}
    model = randomised(build_model(config))
    folder = save_pretrained(model, tmp_path / architecture, config=config)

    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
    ]
    with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
        assert handle.metadata() == {"format": "pt"}
        assert set(handle.keys()) == set(model.state_dict())
    loaded = from_pretrained(folder)
    assert type(loaded) is type(model)
    assert not loaded.training
    assert loaded.pretrained_config["arch_args"] == arch_args
    assert loaded.pretrained_config["weights_sha256"] == sha256(folder / "model.safetensors")
    assert torch.equal(outputs(loaded, shape), outputs(model, shape))


def test_save_pretrained_writes_card_and_config(tmp_path: Path) -> None:
    model = tiny()
    save_pretrained(model, tmp_path / "custom", config=TINY_CONFIG, model_card="# custom card")
    assert (tmp_path / "custom" / "README.md").read_text() == "# custom card\n"
    save_pretrained(model, tmp_path / "default", config=TINY_CONFIG)
    card = (tmp_path / "default" / "README.md").read_text()
    assert card.startswith("---\nlicense: apache-2.0\nlibrary_name: guardnet\n")
    assert "| cifar10_test_accuracy | 0.25 |" in card
    assert 'guardnet.from_pretrained("' in card  # the usage snippet names the one loader
    written = json.loads((tmp_path / "default" / "config.json").read_text())
    assert {k: v for k, v in written.items() if k != "weights_sha256"} == TINY_CONFIG
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "default").iterdir()}
    assert modes["model.safetensors"] == modes["config.json"]  # not owner-only


def test_save_pretrained_rejects_config_that_does_not_rebuild_the_model(tmp_path: Path) -> None:
    config = {**TINY_CONFIG, "arch_args": {**TINY_CONFIG["arch_args"], "num_classes": 7}}
    with pytest.raises(WeightsError, match=r"linear\.weight"):
        save_pretrained(tiny(), tmp_path / "bad", config=config)
    assert not (tmp_path / "bad").exists()
    with pytest.raises(WeightsError, match="JSON"):
        save_pretrained(tiny(), tmp_path / "bad", config={**TINY_CONFIG, "x": object()})


def test_float16_keys_halve_those_tensors_and_load_back_into_float32(tmp_path: Path) -> None:
    model = tiny()
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
    loaded = from_pretrained(half)
    assert loaded.linear.weight.dtype == torch.float32
    reference = model.linear.weight.detach()
    assert torch.equal(loaded.linear.weight, reference.half().float())
    assert not torch.equal(loaded.linear.weight, reference)  # rounded, so truly stored as float16
    assert torch.allclose(outputs(loaded), outputs(model), atol=1e-2)


def test_float16_keys_are_checked(tmp_path: Path) -> None:
    model = tiny()
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
    return save_pretrained(tiny(), tmp_path / "tiny", config=TINY_CONFIG)


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
    with pytest.raises(WeightsError, match=r"weights_sha256 recorded in its config\.json"):
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
    torch.save(tiny().state_dict(), tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(json.dumps(TINY_CONFIG))
    with pytest.raises(WeightsError, match=r"model\.safetensors missing"):
        from_pretrained(tmp_path)


def test_bad_names_and_arguments(saved: Path) -> None:
    with pytest.raises(WeightsError, match=r"not a folder, a registered name \(.*mnist-cnn"):
        from_pretrained("no/such/folder")
    with pytest.raises(ValueError, match="revision"):
        from_pretrained(saved, revision="main")
    with pytest.raises(WeightsError, match=r"unknown pretrained model 'nope'.*mnist-cnn"):
        get_pretrained("nope")
    assert issubclass(WeightsError, GuardnetError)


def test_entries_refuse_unpinned_revisions_and_bad_sha256() -> None:
    good = dict(
        name="x",
        hub_id="org/x",
        revision=None,
        config_sha256="0" * 64,
        weights_sha256="1" * 64,
        dataset="mnist",
        architecture="MnistCNN",
    )
    assert PretrainedEntry(**good).sha256 == {
        "config.json": "0" * 64,
        "model.safetensors": "1" * 64,
    }
    assert PretrainedEntry(**{**good, "revision": COMMIT_A}).revision == COMMIT_A
    with pytest.raises(ValueError, match="40-hex commit"):
        PretrainedEntry(**{**good, "revision": "main"})
    with pytest.raises(ValueError, match="config_sha256"):
        PretrainedEntry(**{**good, "config_sha256": "abc"})
    with pytest.raises(ValueError, match="not 'org/name'"):
        PretrainedEntry(**{**good, "hub_id": "x"})


# --------------------------------------------------------------------------------------------
# Hub repos, offline, from a Hugging Face cache in the Hub's layout
# --------------------------------------------------------------------------------------------


def test_hub_repo_loads_offline_from_cache(tmp_path: Path, no_network: list[str]) -> None:
    old_folder, old = tiny_folder(tmp_path / "old", seed=0)
    new_folder, new = tiny_folder(tmp_path / "new", seed=1)
    cache = tmp_path / "hf-cache"
    hub_cache(cache, "org/tiny", {COMMIT_A: old_folder, COMMIT_B: new_folder}, main=COMMIT_B)
    expected_new, expected_old = outputs(new), outputs(old)
    assert not torch.equal(expected_new, expected_old)

    model = from_pretrained("org/tiny", cache_dir=cache)  # refs/main -> COMMIT_B
    assert not model.training and model.pretrained_config["architecture"] == "CifarResNet"
    assert torch.equal(outputs(model), expected_new)
    model = from_pretrained("org/tiny", cache_dir=cache, revision=COMMIT_A)
    assert torch.equal(outputs(model), expected_old)
    model = from_pretrained("org/tiny", cache_dir=cache, revision="main", local_files_only=True)
    assert torch.equal(outputs(model), expected_new)


def test_hf_hub_cache_variable_with_hf_hub_offline(
    tmp_path: Path, no_network: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """HF_HUB_OFFLINE=1 and HF_HUB_CACHE pointing at a pre-filled cache: no cache_dir needed."""
    folder, model = tiny_folder(tmp_path / "tiny")
    cache = tmp_path / "prefilled"
    hub_cache(cache, "org/tiny", {COMMIT_A: folder}, main=COMMIT_A)
    use_hf_cache(monkeypatch, cache)
    assert torch.equal(outputs(from_pretrained("org/tiny")), outputs(model))
    assert load_config("org/tiny")["metrics"] == TINY_CONFIG["metrics"]


def test_hub_repo_missing_from_cache_fails_offline(tmp_path: Path, no_network: list[str]) -> None:
    from huggingface_hub.errors import OfflineModeIsEnabled

    with pytest.raises(WeightsError, match=r"'org/absent'.*HF_HUB_OFFLINE=1") as info:
        from_pretrained("org/absent", cache_dir=tmp_path)
    assert "no folder 'org/absent'" in str(info.value)
    causes, error = [], info.value.__cause__
    while error is not None:
        causes.append(error)
        error = error.__cause__
    # huggingface_hub refused the network because of HF_HUB_OFFLINE (not a failed connection).
    assert any(isinstance(cause, OfflineModeIsEnabled) for cause in causes)


def test_hub_damaged_cached_weights_raise(tmp_path: Path, no_network: list[str]) -> None:
    folder, _ = tiny_folder(tmp_path / "tiny")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    hub_cache(tmp_path / "cache", "org/tiny", {COMMIT_A: folder}, main=COMMIT_A)
    with pytest.raises(WeightsError, match="corrupted or truncated") as info:
        from_pretrained("org/tiny", cache_dir=tmp_path / "cache")
    assert f"snapshots/{COMMIT_A}/model.safetensors" in str(info.value).replace(os.sep, "/")


# --------------------------------------------------------------------------------------------
# Registered names: folder > mirror > Hub, pinned revisions, registered sha256s
# --------------------------------------------------------------------------------------------


def _entry(folder: Path, **changes: Any) -> PretrainedEntry:
    """A registry entry whose sha256s are those of ``folder``'s files."""
    fields: dict[str, Any] = dict(
        name="tiny-test",
        hub_id="org/tiny",
        revision=None,
        config_sha256=sha256(folder / "config.json"),
        weights_sha256=sha256(folder / "model.safetensors"),
        dataset="cifar10",
        architecture="CifarResNet",
    )
    return PretrainedEntry(**(fields | changes))


@pytest.fixture
def no_mirror(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No clone mirror and no $GUARDNET_HUB_MIRROR; returns a path to use as the clone mirror."""
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    clone_mirror = tmp_path / "clone" / "hub"
    monkeypatch.setattr(resolve_module, "_CLONE_MIRROR", clone_mirror)
    assert mirror_root() is None
    return clone_mirror


def test_resolution_order_folder_then_mirror_then_hub_cache(
    tmp_path: Path, no_network: list[str], no_mirror: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub_folder, hub_model = tiny_folder(tmp_path / "on-the-hub", seed=0)
    mirror_folder, mirror_model = tiny_folder(no_mirror / "tiny-test", seed=1)
    local_folder, local_model = tiny_folder(tmp_path / "cwd" / "tiny-test", seed=2)
    hub_cache(tmp_path / "cache", "org/tiny", {COMMIT_A: hub_folder}, main=COMMIT_A)
    monkeypatch.setitem(PRETRAINED, "tiny-test", _entry(hub_folder))
    monkeypatch.chdir(tmp_path / "cwd")
    cache = tmp_path / "cache"

    # (a) a folder of that path
    assert torch.equal(outputs(from_pretrained("tiny-test", cache_dir=cache)), outputs(local_model))
    # (b) the clone's hub/ mirror (not checked against the registry: it is the registry's source)
    os.rename(local_folder, tmp_path / "elsewhere")
    assert mirror_root() == no_mirror
    model = from_pretrained("tiny-test", cache_dir=cache)
    assert torch.equal(outputs(model), outputs(mirror_model))
    # ... also when asked for by its Hub repo id
    assert torch.equal(outputs(from_pretrained("org/tiny", cache_dir=cache)), outputs(mirror_model))
    # (c) the Hub (here its offline cache)
    mirror_folder.rename(tmp_path / "gone")
    model = from_pretrained("tiny-test", cache_dir=cache)
    assert torch.equal(outputs(model), outputs(hub_model))
    assert model.pretrained_config["metrics"] == TINY_CONFIG["metrics"]


Versions = tuple[tuple[Path, nn.Module], tuple[Path, nn.Module]]


@pytest.fixture
def two_versions(tmp_path: Path) -> Versions:
    """Two weights folders of the tiny model with different weights."""
    return tiny_folder(tmp_path / "v1", seed=0), tiny_folder(tmp_path / "v2", seed=1)


@pytest.mark.usefixtures("no_network", "no_mirror")
def test_registered_revision_is_pinned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, two_versions: Versions
) -> None:
    (pinned_folder, pinned), (newer_folder, newer) = two_versions
    cache = tmp_path / "cache"
    hub_cache(cache, "org/tiny", {COMMIT_A: pinned_folder, COMMIT_B: newer_folder}, main=COMMIT_B)
    monkeypatch.setitem(PRETRAINED, "tiny-test", _entry(pinned_folder, revision=COMMIT_A))

    model = from_pretrained("tiny-test", cache_dir=cache)  # main moved on: the pin holds
    assert torch.equal(outputs(model), outputs(pinned))
    # Another revision on request (the registry's sha256s describe the pinned one only).
    model = from_pretrained("tiny-test", cache_dir=cache, revision=COMMIT_B)
    assert torch.equal(outputs(model), outputs(newer))


@pytest.mark.usefixtures("no_network", "no_mirror")
def test_hub_files_that_differ_from_the_registry_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, two_versions: Versions
) -> None:
    (registered_folder, _), (other_folder, _) = two_versions
    cache = tmp_path / "cache"
    hub_cache(cache, "org/tiny", {COMMIT_B: other_folder}, main=COMMIT_B)
    monkeypatch.setitem(PRETRAINED, "tiny-test", _entry(registered_folder))  # unpinned: main
    with pytest.raises(WeightsError, match=r"config\.json of Hub repo 'org/tiny'.*sha256") as info:
        from_pretrained("tiny-test", cache_dir=cache)
    assert sha256(registered_folder / "config.json") in str(info.value)
    with pytest.raises(WeightsError, match="sha256"):
        load_config("tiny-test", cache_dir=cache)

    # The right config but other weights (a damaged download): the registry's sha256 refuses it.
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "config.json").write_bytes((registered_folder / "config.json").read_bytes())
    (damaged / "model.safetensors").write_bytes((other_folder / "model.safetensors").read_bytes())
    hub_cache(tmp_path / "cache2", "org/tiny", {COMMIT_A: damaged}, main=COMMIT_A)
    with pytest.raises(WeightsError, match="weights_sha256 recorded in the registry"):
        from_pretrained("tiny-test", cache_dir=tmp_path / "cache2")


def test_registered_name_offline_and_uncached_names_repo_and_switches(
    tmp_path: Path, no_network: list[str], no_mirror: Path
) -> None:
    with pytest.raises(WeightsError) as info:
        from_pretrained("mnist-cnn", cache_dir=tmp_path / "empty")
    message = str(info.value)
    assert "'guardnet/mnist-cnn'" in message
    assert "HF_HUB_OFFLINE=1" in message
    assert f"{MIRROR_ENV} to a folder holding mnist-cnn/" in message


def test_env_mirror_is_checked_against_the_registry(
    tmp_path: Path, no_network: list[str], no_mirror: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registered_folder, registered = tiny_folder(tmp_path / "mirror" / "tiny-test", seed=0)
    monkeypatch.setitem(PRETRAINED, "tiny-test", _entry(registered_folder))
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path / "mirror"))
    assert torch.equal(outputs(from_pretrained("tiny-test")), outputs(registered))
    tiny_folder(tmp_path / "mirror" / "tiny-test", seed=1)  # replaced by other weights
    with pytest.raises(WeightsError, match=r"not the .* guardnet registers for 'tiny-test'"):
        from_pretrained("tiny-test")
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path / "absent"))
    with pytest.raises(WeightsError, match=f"{MIRROR_ENV}=.*absent is not a folder"):
        from_pretrained("tiny-test")


def test_registered_architecture_must_match(
    tmp_path: Path, no_network: list[str], no_mirror: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, _ = tiny_folder(no_mirror / "tiny-test")
    monkeypatch.setitem(PRETRAINED, "tiny-test", _entry(folder, architecture="resnet20"))
    with pytest.raises(WeightsError, match=r"architecture 'CifarResNet'.*registered 'resnet20'"):
        from_pretrained("tiny-test")


# --------------------------------------------------------------------------------------------
# Every registered model, from the repository's mirror
# --------------------------------------------------------------------------------------------

MIRROR = REPO / "hub"


@pytest.mark.parametrize("entry", list_pretrained(), ids=lambda e: e.name)
def test_registered_model_matches_its_mirror_folder(entry: PretrainedEntry) -> None:
    """The registry's sha256s are those of hub/<name>, so a Hub download of it is accepted."""
    folder = MIRROR / entry.name
    assert sha256(folder / "config.json") == entry.config_sha256, (
        f"hub/{entry.name}/config.json changed: record its sha256 in guardnet/weights/pretrained.py"
    )
    assert sha256(folder / "model.safetensors") == entry.weights_sha256
    config = json.loads((folder / "config.json").read_text())
    assert config["weights_sha256"] == entry.weights_sha256
    assert (config["architecture"], config["dataset"], config["license"]) == (
        entry.architecture,
        entry.dataset,
        entry.license,
    )
    assert entry.hub_id.endswith("/" + entry.name)
    # Figures live in the config (and its card), each a number.
    assert config["metrics"] and all(isinstance(v, float | int) for v in config["metrics"].values())


def test_every_mirror_folder_is_registered() -> None:
    folders = sorted(p.name for p in MIRROR.iterdir() if p.is_dir())
    assert folders == sorted(PRETRAINED)


@pytest.mark.parametrize("entry", list_pretrained(), ids=lambda e: e.name)
def test_registered_models_load_offline(entry: PretrainedEntry, no_network: list[str]) -> None:
    folder = MIRROR / entry.name
    # ContraNet ships four nets (encoder, generator, Dis, DMM): a larger budget.
    limit = 25_000_000 if entry.architecture == "ContraNet" else 6_000_000
    assert (folder / "model.safetensors").stat().st_size < limit
    model = from_pretrained(entry.name)
    config = model.pretrained_config
    assert not model.training
    assert config == json.loads((folder / "config.json").read_text())
    channels, height, width = config["input_size"]
    if config["architecture"] == "ContraNet":
        from guardnet.nets.contranet import to_unit_range

        x = to_unit_range(torch.rand(2, channels, height, width))
        with torch.no_grad():
            rebuilt, scores = model(x, torch.tensor([0, 1]))
        assert rebuilt.shape == (2, channels, 32, 32) and scores.shape == (2, 3)
    elif config["architecture"] == "ReformerSet":  # DeT's reformers: [0, 1] rebuilds
        with torch.no_grad():
            rebuilt = model(torch.rand(2, channels, height, width))
        assert rebuilt.shape == (len(model), 2, channels, height, width)
        assert bool(((rebuilt >= 0) & (rebuilt <= 1)).all())
    elif config["architecture"] == "A2D":  # a fitted layer: costs become finite scores
        scores = model.scores_from_costs(torch.full((2, len(model.attacks)), 10.0))
        assert scores.shape == (2, len(model.attacks)) and bool(scores.isfinite().all())
    else:
        assert outputs(model, (2, channels, height, width)).shape == (2, config["num_classes"])
    card = (folder / "README.md").read_text()
    if entry.license != "Apache-2.0":
        assert (folder / "LICENSE.txt").is_file()
    if "cifar10_jpeg_q75_test_accuracy" in config["metrics"]:
        measured = config["metrics"]["cifar10_jpeg_q75_test_accuracy"]
        assert any(
            "CIFAR-10 (JPEG q75) test" in line and "10,000" in line and f"{measured:.2%}" in line
            for line in card.splitlines()
        ), "the model card must state the measured CIFAR-10 (JPEG q75) test accuracy"
        result = json.loads((folder / "eval_cifar10_jpeg_q75_test.json").read_text())
        assert result["accuracy"] == measured
        assert result["weights_sha256"] == config["weights_sha256"]


def test_registry_and_public_api() -> None:
    names = [entry.name for entry in list_pretrained()]
    assert names == sorted(names)
    assert {"mnist-cnn", "resnet20-cifar10-akamaster", "resnet56-cifar10-akamaster"} <= set(names)
    for name in ("from_pretrained", "save_pretrained", "list_pretrained", "register_architecture"):
        assert name in guardnet.__all__ and callable(getattr(guardnet, name))
    for gone in ("load_pretrained", "load_model"):
        assert not hasattr(guardnet, gone)


def test_demo_classifier_comes_from_the_registry() -> None:
    from guardnet.demo import load_demo_classifier
    from guardnet.nets import MnistCNN

    model = load_demo_classifier()
    assert isinstance(model, MnistCNN) and not model.training


def test_contranet_layer_and_classifier_recipe_use_the_resolver(
    tmp_path: Path, no_network: list[str], no_mirror: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ContraNetLayer.from_pretrained and recipes.build_classifier resolve registered names too."""
    from guardnet.layers import ContraNetLayer
    from guardnet.recipes import build_classifier

    arch_args, _ = ROUND_TRIP_CASES["ContraNet"]
    config = {**TINY_CONFIG, "architecture": "ContraNet", "arch_args": arch_args}
    contranet = save_pretrained(build_model(config), no_mirror / "tiny-cn", config=config)
    classifier, model = tiny_folder(no_mirror / "tiny-test")
    monkeypatch.setitem(PRETRAINED, "tiny-test", _entry(classifier))
    monkeypatch.setitem(
        PRETRAINED,
        "tiny-cn",
        _entry(contranet, name="tiny-cn", hub_id="org/tiny-cn", architecture="ContraNet"),
    )
    layer = ContraNetLayer.from_pretrained("tiny-cn")
    assert layer.net.pretrained_config["arch_args"] == arch_args
    with pytest.raises(WeightsError, match="'CifarResNet', not a ContraNet"):
        ContraNetLayer.from_pretrained("tiny-test")
    pipeline = build_classifier("tiny-test")
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(pipeline(x), model((x - 0.5) / 0.25))
