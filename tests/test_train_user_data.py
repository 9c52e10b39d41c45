"""Training on a user's own images: ImageFolder trees and Datasets, options objects, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import TensorDataset

from guardnet.cli import main
from guardnet.errors import DataNotFoundError, DatasetError
from guardnet.train import (
    ClassifierTrainingOptions,
    ContraNetTrainingOptions,
    TrainSettings,
    image_folder_training_data,
    images_from_dataset,
    load_training_data,
    run_classifier_training,
)
from guardnet.weights import from_pretrained

# Two classes a tiny net can tell apart: dark and bright images, of assorted sizes and modes.
_COLOURS = {"dark": (30, 60, 20), "bright": (230, 200, 240)}
_SIZES = ((40, 30), (25, 25), (64, 48), (33, 50))


def _image_folder(
    root: Path, counts: dict[str, int], classes: tuple[str, ...] = ("bright", "dark")
):
    """An ImageFolder tree ``root/<split>/<class>/<i>.png`` with ``counts[split]`` per class."""
    for split, count in counts.items():
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                size = _SIZES[i % len(_SIZES)]
                image = Image.new("RGB", size, _COLOURS[name])
                if i % 3 == 1:
                    image = image.convert("L")  # a grey image among the colour ones
                elif i % 3 == 2:
                    image = image.convert("RGBA")
                image.save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data") / "photos"
    return _image_folder(root, {"train": 8, "val": 3, "test": 2})


class TestImages:
    def test_any_size_and_mode_becomes_one_input_size(self) -> None:
        pairs = [
            (Image.new("RGB", (64, 48), (255, 0, 0)), 0),
            (Image.new("L", (10, 30), 128), 1),
            (Image.new("RGBA", (32, 32), (0, 0, 255, 7)), 2),
            (torch.full((3, 8, 8), 255, dtype=torch.uint8), 0),
            (torch.full((20, 20), 0.5), 1),
            (torch.tensor([0.0, 0.0, 1.0]).view(3, 1, 1).expand(3, 6, 6), 2),
        ]
        images, labels = images_from_dataset(pairs, image_size=16, channels=3)
        assert images.shape == (6, 3, 16, 16) and images.dtype == torch.float32
        assert labels.tolist() == [0, 1, 2, 0, 1, 2] and labels.dtype == torch.int64
        # Constant images stay constant through the resize; grey is copied to every channel.
        expected = [(1, 0, 0), (128 / 255,) * 3, (0, 0, 1), (1, 1, 1), (0.5,) * 3, (0, 0, 1)]
        for image, colour in zip(images, expected, strict=True):
            want = torch.tensor(colour, dtype=torch.float32).view(3, 1, 1).expand(3, 16, 16)
            torch.testing.assert_close(image, want)
        grey, _ = images_from_dataset(pairs, image_size=8, channels=1)
        assert grey.shape == (6, 1, 8, 8)
        # PIL images convert with PIL's own RGB -> L (to whole bytes), tensors with the same
        # luma weights (0.299, 0.587, 0.114).
        for index, value in ((0, 76 / 255), (2, 29 / 255), (5, 0.114)):
            torch.testing.assert_close(grey[index], torch.full((1, 8, 8), value))

    def test_a_tensor_dataset_converts_as_a_whole_like_item_by_item(self) -> None:
        raw = torch.randint(0, 256, (6, 3, 20, 24), dtype=torch.uint8)
        labels = torch.arange(6) % 2
        whole = images_from_dataset(TensorDataset(raw, labels), image_size=12, channels=1)
        items = images_from_dataset(list(zip(raw, labels, strict=True)), image_size=12, channels=1)
        torch.testing.assert_close(whole[0], items[0])
        assert torch.equal(whole[1], items[1])

    @pytest.mark.parametrize(
        ("items", "message"),
        [
            ([], "is empty"),
            ([("not an image", 0)], "is a str; expected a PIL image or a tensor"),
            ([(torch.rand(3, 4, 4),)], r"not an \(image, label\) pair"),
            ([(torch.rand(3, 4, 4) * 2, 0)], r"lie in \[.*\]; float images must be in \[0, 1\]"),
            ([(torch.rand(5, 4, 4), 0)], "expected .*C 1, 3 or 4"),
            ([(torch.rand(3, 4, 4), -1)], "negative labels"),
        ],
    )
    def test_bad_items_are_named(self, items: list, message: str) -> None:
        with pytest.raises(DatasetError, match=message):
            images_from_dataset(items, image_size=4, channels=3, what="train")


class TestImageFolder:
    def test_splits_classes_and_statistics(self, photos: Path) -> None:
        data = image_folder_training_data(photos, image_size=12, channels=3)
        info = data.info
        assert (info.name, info.num_classes, info.class_names) == ("photos", 2, ("bright", "dark"))
        assert (info.channels, info.image_size, info.train_size, info.test_size) == (3, 12, 16, 4)
        assert not data.builtin and data.has_test and "ImageFolder" in data.source
        train = data.split("train")
        assert train.images.shape == (16, 3, 12, 12) and train.labels.bincount().tolist() == [8, 8]
        # The statistics are the training images': here the mean of the two colours per channel
        # (the grey copies of each colour pull the channels towards its luma).
        torch.testing.assert_close(torch.tensor(info.mean), train.images.mean(dim=(0, 2, 3)),
                                   atol=1e-4, rtol=0)  # fmt: skip
        assert len(data.split("val")) == 6 and len(data.split("test")) == 4
        # A limit keeps a seeded subset, the same every time, in the original order.
        first, again = data.split("train", limit=5), data.split("train", limit=5)
        assert torch.equal(first.indices, again.indices) and len(first) == 5
        assert bool((first.indices.diff() > 0).all())
        assert torch.equal(first.images, train.images[first.indices])

    def test_missing_and_mismatched_folders_are_named(self, tmp_path: Path) -> None:
        with pytest.raises(DataNotFoundError, match=r"needs .*/train/<class>/<image>"):
            image_folder_training_data(tmp_path / "nothing", image_size=8, channels=3)
        only_train = _image_folder(tmp_path / "a", {"train": 2})
        with pytest.raises(DataNotFoundError, match=r"a/val not found"):
            image_folder_training_data(only_train, image_size=8, channels=3)
        other = _image_folder(tmp_path / "b", {"train": 2})
        _image_folder(tmp_path / "b", {"val": 1}, classes=("dark",))
        with pytest.raises(DatasetError, match=r"class folders \['dark'\].*every split"):
            image_folder_training_data(other, image_size=8, channels=3)
        data = image_folder_training_data(_image_folder(tmp_path / "c", {"train": 2, "val": 1}),
                                          image_size=8, channels=1)  # fmt: skip
        assert not data.has_test
        with pytest.raises(DatasetError, match="has no test split"):
            data.split("test")


class TestOptions:
    def test_one_source_of_data(self, photos: Path) -> None:
        pairs = [(torch.rand(3, 4, 4), 0), (torch.rand(3, 4, 4), 1)]
        with pytest.raises(ValueError, match="give the training data"):
            ContraNetTrainingOptions(out="x")
        with pytest.raises(ValueError, match="one source of training data, got dataset and"):
            ContraNetTrainingOptions(out="x", dataset="mnist", data_dir=photos)
        with pytest.raises(ValueError, match="train_data and val_data go together"):
            ContraNetTrainingOptions(out="x", train_data=pairs)
        with pytest.raises(ValueError, match="size your own images"):
            ContraNetTrainingOptions(out="x", dataset="mnist", image_size=28)
        with pytest.raises(ValueError, match="channels must be 1 or 3"):
            ClassifierTrainingOptions(out="x", data_dir=photos, arch="resnet20", channels=2)
        with pytest.raises(ValueError, match="give an architecture"):
            ClassifierTrainingOptions(out="x", data_dir=photos)
        with pytest.raises(ValueError, match="preset"):
            ContraNetTrainingOptions(out="x", data_dir=photos, preset="large")
        options = ContraNetTrainingOptions(out="x", train_data=pairs, val_data=pairs)
        assert options.data_kind == "datasets" and options.resume and options.eval_limit == 2000

    def test_datasets_train_a_classifier_without_test_images(self, tmp_path: Path) -> None:
        generator = torch.Generator().manual_seed(0)
        labels = torch.arange(24) % 3
        images = (labels.view(-1, 1, 1, 1) * 100 + torch.randint(0, 30, (24, 1, 40, 40),
                  generator=generator)).to(torch.uint8)  # fmt: skip
        train, val = (
            TensorDataset(images[:18], labels[:18]),
            TensorDataset(images[18:], labels[18:]),
        )
        lines: list[str] = []
        options = ClassifierTrainingOptions(
            out=tmp_path / "run", train_data=train, val_data=val, dataset_name="levels",
            arch="SmallConvNet", image_size=16, channels=1, progress=False, log=lines.append,
            settings=TrainSettings(epochs=1, batch_size=6),
        )  # fmt: skip
        data = load_training_data(options, image_size=16, channels=1)
        assert data.info.num_classes == 3 and data.split("train").images.shape == (18, 1, 16, 16)
        summary = run_classifier_training(options)
        assert summary["test_accuracy"] is None and 0.0 <= summary["val_accuracy"] <= 1.0
        config = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
        assert config["dataset"] == "levels" and config["input_size"] == [1, 16, 16]
        assert set(config["metrics"]) == {"levels_val_accuracy"}
        assert config["class_names"] == ["0", "1", "2"]
        assert not any("test accuracy" in line for line in lines)
        card = (tmp_path / "run" / "model" / "README.md").read_text()
        assert "a TensorDataset (train 18, val 6 images)" in card and " test (" not in card


def test_cli_trains_both_models_on_an_image_folder(photos: Path, tmp_path: Path, capsys) -> None:
    """``--data-dir``: a classifier, then a ContraNet protecting it, at the classifier's size."""
    from guardnet.layers import ContraNetLayer

    classifier_argv = ["train", "classifier", "--data-dir", str(photos), "--arch", "SmallConvNet"]
    classifier_argv += ["--image-size", "20", "--epochs", "1", "--batch-size", "8"]
    classifier_argv += ["--out", str(tmp_path / "clf"), "--no-progress"]
    assert main(classifier_argv) == 0
    out = capsys.readouterr().out
    assert "photos validation accuracy" in out and "photos test accuracy" in out
    model = from_pretrained(tmp_path / "clf" / "model")
    config = model.pretrained_config
    assert config["input_size"] == [3, 20, 20] and config["class_names"] == ["bright", "dark"]
    assert set(config["metrics"]) == {"photos_test_accuracy", "photos_val_accuracy"}
    assert config["training"]["augmentation"] == "none"
    assert model(torch.zeros(1, 3, 20, 20)).shape == (1, 2)

    contranet_argv = ["train", "contranet", "--data-dir", str(photos)]
    contranet_argv += ["--classifier", str(tmp_path / "clf" / "model")]
    contranet_argv += ["--arch-args", '{"g_ch": 2, "d_ch": 2, "dmm_backbone": "cnn"}']
    contranet_argv += ["--epochs", "gan=1", "dis=1", "dmm_pretrain=1", "dmm=1"]
    contranet_argv += ["--settings", '{"batch_size": 8, "adv_steps": 1}']
    contranet_argv += ["--out", str(tmp_path / "cn"), "--no-progress"]
    assert main(contranet_argv) == 0
    assert "[dmm 1/1]" in capsys.readouterr().out
    folder = tmp_path / "cn" / "model"
    config = json.loads((folder / "config.json").read_text())
    # The classifier's input size, not a default: the DMM attacks the classifier on it.
    assert config["input_size"] == [3, 20, 20] and config["num_classes"] == 2
    assert config["dataset"] == "photos" and config["train_images"] == 16
    assert config["train_settings"]["adv_eps"] == [2 / 255, 4 / 255, 8 / 255, 16 / 255]
    assert set(config["metrics"]) == {
        f"photos_val_{k}" for k in ("l2", "ssim", "dmm_pair", "dis_pair", "ssim_pair")
    }
    assert "ImageFolder" in (folder / "README.md").read_text()
    layer = ContraNetLayer.from_pretrained(folder)
    assert layer.num_classes == 2

    both = ["train", "contranet", "--dataset", "mnist", "--data-dir", str(photos)]
    with pytest.raises(SystemExit):
        main(both)
    assert "not allowed with argument" in capsys.readouterr().err
    missing = ["train", "classifier", "--data-dir", str(tmp_path / "none"), "--arch", "resnet20"]
    assert main(missing) == 2
    assert "none/train not found" in capsys.readouterr().err
