"""Training: resumable runs give the same weights, pickle-free checkpoints, the CLI end to end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import TinyClassifier
from safetensors import safe_open
from torch import Tensor, nn

import guardnet.data as classifier_module  # where the trainers read guardnet's splits
from guardnet.cli import main
from guardnet.data import SplitDataset, dataset_info, load_fixture, resolve_data_root
from guardnet.errors import DataNotFoundError
from guardnet.train import (
    LOG_NAME,
    CheckpointError,
    TrainSettings,
    default_augmentation,
    fit_classifier,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    train_classifier,
)
from guardnet.weights import from_pretrained

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def _tiny_data(n: int = 96) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, 32, 32, generator=generator), torch.randint(
        0, 10, (n,), generator=generator
    )


class _Interrupt(Exception):
    pass


class _CrashAfter:
    """An augmentation that raises on its ``calls``-th call: a run killed mid-epoch."""

    def __init__(self, augment: nn.Module, calls: int) -> None:
        self.augment, self.calls, self.count = augment, calls, 0

    def __call__(self, x: Tensor) -> Tensor:
        self.count += 1
        if self.count == self.calls:
            raise _Interrupt
        return self.augment(x)


def _train(
    run_dir: Path, settings: TrainSettings, *, augment: Any, resume: bool = False, init_seed: int
) -> tuple[nn.Module, list[dict[str, Any]]]:
    images, labels = _tiny_data()
    torch.manual_seed(init_seed)  # a resumed run must not depend on its fresh initial weights
    model = TinyClassifier(bn=True)  # BatchNorm buffers and dropout (global RNG) included
    result = train_classifier(
        model,
        images[:64],
        labels[:64],
        settings=settings,
        val_images=images[64:],
        val_labels=labels[64:],
        mean=MEAN,
        std=STD,
        augment=augment,
        run_dir=run_dir,
        resume=resume,
        run_info={"data": "tiny"},
        progress=False,
        log=lambda line: None,
    )
    return model, result.history


@pytest.mark.parametrize(
    ("optimizer", "schedule"), [("sgd", "onecycle"), ("adamw", "cosine")], ids=["sgd", "adamw"]
)
def test_resume_gives_the_weights_of_an_uninterrupted_run(
    tmp_path: Path, optimizer: str, schedule: str
) -> None:
    settings = TrainSettings(
        epochs=2, batch_size=16, lr=0.05, optimizer=optimizer, schedule=schedule, seed=3
    )
    augment = default_augmentation("gtsrb")  # random affine + colour jitter: per-image RNG
    straight, history = _train(tmp_path / "a", settings, augment=augment, init_seed=0)

    steps_per_epoch = 64 // 16
    with pytest.raises(_Interrupt):  # killed in the middle of epoch 2
        _train(
            tmp_path / "b", settings, augment=_CrashAfter(augment, steps_per_epoch + 2), init_seed=0
        )
    assert latest_checkpoint(tmp_path / "b").name == "epoch-0001"
    resumed, resumed_history = _train(
        tmp_path / "b", settings, augment=augment, resume=True, init_seed=123
    )

    straight_state, resumed_state = straight.state_dict(), resumed.state_dict()
    assert straight_state.keys() == resumed_state.keys()
    for key, value in straight_state.items():
        assert torch.equal(value, resumed_state[key]), key
    drop_time = [{k: v for k, v in r.items() if k != "seconds"} for r in history]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in resumed_history] == drop_time
    logged = [json.loads(line) for line in (tmp_path / "b" / LOG_NAME).read_text().splitlines()]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in logged] == drop_time


def test_checkpoints_are_safetensors_and_json_only(tmp_path: Path) -> None:
    settings = TrainSettings(epochs=2, batch_size=32, optimizer="adamw", seed=0)
    _train(tmp_path, settings, augment=default_augmentation("cifar10"), init_seed=0)
    folders = sorted((tmp_path / "checkpoints").iterdir())
    assert [f.name for f in folders] == ["epoch-0002"]  # older ones are replaced
    files = sorted(p.name for p in folders[0].iterdir())
    assert files == ["checkpoint.json", "checkpoint.safetensors"]
    for path in folders[0].iterdir():
        head = path.read_bytes()[:2]
        assert head[:1] != b"\x80" and head != b"PK"  # neither a pickle nor a torch.save zip

    # Readable with json + safetensors alone: every placeholder names a stored tensor.
    header = json.loads((folders[0] / "checkpoint.json").read_text())
    with safe_open(str(folders[0] / "checkpoint.safetensors"), framework="pt") as handle:
        stored = set(handle.keys())
    referenced: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "__tensor__" in node:
                referenced.add(node["__tensor__"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(header["state"])
    assert referenced == stored
    assert {"model.conv.weight", "rng.torch", "rng.shuffle"} <= stored
    assert any(key.startswith("optimizer.state.") for key in stored)
    assert header["epoch"] == 2 and header["state"]["history"][-1]["epoch"] == 2

    state = load_checkpoint(folders[0])
    assert isinstance(state["optimizer"]["param_groups"][0]["betas"], tuple)  # tuples survive
    assert all(isinstance(key, int) for key in state["optimizer"]["state"])  # int keys survive


def test_checkpoint_round_trip_and_damage_detection(tmp_path: Path) -> None:
    state = {"a": torch.arange(3), "nested": {1: (torch.ones(2), "x", None, 2.5)}, "n": 7}
    folder = save_checkpoint(tmp_path, state, epoch=4)
    loaded = load_checkpoint(folder)
    assert torch.equal(loaded["a"], state["a"]) and loaded["n"] == 7
    assert loaded["nested"][1][1:] == ("x", None, 2.5)
    with pytest.raises(CheckpointError, match="without pickle"):
        save_checkpoint(tmp_path, {"bad": object()}, epoch=5)
    (folder / "checkpoint.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_checkpoint(folder)


def test_existing_run_needs_resume_and_matching_settings(tmp_path: Path) -> None:
    settings = TrainSettings(epochs=1, batch_size=32, seed=0)
    _train(tmp_path, settings, augment=None, init_seed=0)
    with pytest.raises(CheckpointError, match="resume"):
        _train(tmp_path, settings, augment=None, init_seed=0)
    with pytest.raises(CheckpointError, match="lr"):
        _train(tmp_path, TrainSettings(epochs=1, batch_size=32, lr=0.1), augment=None, init_seed=0)


def test_fit_classifier_keeps_its_interface() -> None:
    images, labels = _tiny_data(64)
    history = fit_classifier(
        TinyClassifier(),
        images,
        labels,
        val_images=images[:16],
        val_labels=labels[:16],
        epochs=1,
        batch_size=32,
        progress=False,
        log=lambda line: None,
    )
    assert len(history) == 1 and {"loss", "train_acc", "val_acc", "seconds"} <= history[0].keys()


def test_gtsrb_augmentation_never_mirrors() -> None:
    import kornia.augmentation as K

    modules = list(default_augmentation("gtsrb").modules())
    assert not any(isinstance(m, (K.RandomHorizontalFlip, K.RandomVerticalFlip)) for m in modules)
    for name, shape in (("mnist", (4, 1, 28, 28)), ("cifar10", (4, 3, 32, 32))):
        assert default_augmentation(name)(torch.rand(shape)).shape == shape


# --------------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------------


def _fixture_split(name: str, split: str, *, limit: int | None = None, **_: Any) -> SplitDataset:
    """``load_split`` on the shipped MNIST fixtures (data-free tests; not a real split)."""
    images, labels = load_fixture("mnist" if split == "test" else "mnist-val")
    part = {"train": slice(0, 256), "val": slice(256, 500), "test": slice(0, 256)}[split]
    images, labels = images[part][:limit], labels[part][:limit]
    indices = torch.arange(labels.numel())
    return SplitDataset(images, labels, info=dataset_info(name), split=split, indices=indices)


def _check_run(run_dir: Path, argv: list[str]) -> dict[str, Any]:
    model = from_pretrained(run_dir / "model")
    config = model.pretrained_config
    assert config["architecture"] == "MnistCNN" and config["dataset"] == "mnist"
    assert config["num_classes"] == 10
    assert set(config["metrics"]) == {"mnist_test_accuracy", "mnist_val_accuracy"}
    card = (run_dir / "model" / "README.md").read_text()
    assert "guardnet " + " ".join(argv) in card  # the exact command line
    assert "wall time" in card and "MNIST test" in card
    assert len((run_dir / LOG_NAME).read_text().splitlines()) == 1
    assert not model.training
    return config


def test_cli_trains_mnist_on_fixtures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(classifier_module, "load_split", _fixture_split)
    argv = ["train", "classifier", "--dataset", "mnist", "--arch", "MnistCNN", "--epochs", "1"]
    argv += ["--batch-size", "64", "--out", str(tmp_path / "run"), "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "epoch 1/1" in out and "val_acc" in out
    assert out.strip().splitlines()[-2].startswith("MNIST test accuracy")  # the final number
    config = _check_run(tmp_path / "run", argv)
    assert config["mean"] == [0.1307] and config["std"] == [0.3081]
    assert config["license"] == "Apache-2.0"

    # Resuming a finished run re-evaluates and re-saves without training again.
    assert main([*argv, "--resume"]) == 0
    assert "resuming" in capsys.readouterr().out


def test_cli_fine_tunes_from_a_registered_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(classifier_module, "load_split", _fixture_split)
    argv = ["train", "classifier", "--dataset", "mnist", "--init", "mnist-cnn", "--epochs", "1"]
    argv += ["--optimizer", "sgd", "--lr", "0.001", "--schedule", "cosine", "--limit", "128"]
    argv += ["--out", str(tmp_path / "ft"), "--no-progress"]
    assert main(argv) == 0
    config = _check_run(tmp_path / "ft", argv)
    assert config["training"]["init"] == "mnist-cnn"
    assert config["metrics"]["mnist_test_accuracy"] > 0.9  # started from a trained model
    bad = ["train", "classifier", "--dataset", "mnist", "--arch", "resnet20"]
    assert main([*bad, "--init", "mnist-cnn", "--out", str(tmp_path / "x")]) == 2
    assert "MnistCNN" in capsys.readouterr().err


def test_cli_trains_on_real_mnist(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    try:
        resolve_data_root()
        argv = ["train", "classifier", "--dataset", "mnist", "--arch", "MnistCNN"]
        argv += ["--epochs", "1", "--limit", "256", "--eval-limit", "256"]
        argv += ["--out", str(tmp_path / "run"), "--no-progress"]
        code = main(argv)
    except DataNotFoundError:
        pytest.skip("no data root")
    if code != 0 and "not found" in capsys.readouterr().err:
        pytest.skip("MNIST files missing from the data root")
    assert code == 0
    _check_run(tmp_path / "run", argv)


def test_models_lists_the_registry(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "DATASET", "ARCHITECTURE", "KEY", "METRIC", "HUB", "REPO"]
    row = next(line for line in lines if line.startswith("mnist-cnn"))
    assert "MnistCNN" in row and "99.39%" in row and "guardnet/mnist-cnn" in row


def test_train_without_what_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train"]) == 1
    assert "classifier" in capsys.readouterr().out
