"""Saving a calibrated guard and loading it back: ``GuardedModel.save_pretrained`` /
``from_pretrained``, and the layer configs they rest on."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from helpers import PixelScoreLayer, TinyClassifier
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

import guardnet
import guardnet.weights.resolve
from guardnet import (
    A2DLayer,
    ContraNetLayer,
    DeTReformer,
    GuardedModel,
    Normalize,
    NotCalibratedError,
    SAECLayer,
    WeightsError,
)
from guardnet._utils import sha256_file
from guardnet.errors import ConfigError
from guardnet.guard import build_guard
from guardnet.layers import (
    LAYER_TYPES,
    Layer,
    LayerInput,
    LayerKind,
    LayerOutput,
    build_layer,
    layer_config,
    register_layer,
)
from guardnet.nets.contranet import ContraNet
from guardnet.nets.reformer import REFORMER_STYLES, ReformerSet
from guardnet.recipes import GUARD_RECIPES
from guardnet.weights import ARCHITECTURES, register_architecture, save_pretrained

TINY = "guardio-tiny"
FILES = ["README.md", "config.json", "model.safetensors"]

# Small calibration sets keep these round trips fast; the CalibrationWarning they raise is tested
# in test_calibration.py.
pytestmark = pytest.mark.filterwarnings("ignore::guardnet.errors.CalibrationWarning")


@pytest.fixture
def tiny_architecture() -> Iterator[str]:
    """``TinyClassifier`` registered as a guardnet architecture for the test."""
    register_architecture(TINY)(TinyClassifier)
    yield TINY
    del ARCHITECTURES[TINY]


#: A ContraNet small enough to build and run in milliseconds.
SMALL_NET = {"latent_dim": 8, "shared_dim": 8, "g_ch": 2, "d_ch": 2, "dmm_backbone": "cnn"}


def small_contranet() -> ContraNetLayer:
    net = ContraNet(num_classes=10, in_channels=1, dmm_hidden=8, encoder_features=8, **SMALL_NET)
    return ContraNetLayer(net)


def pretrained_classifier(seed: int = 0) -> nn.Module:
    """A "pretrained" tiny classifier behind its normalisation, as a guard recipe builds one."""
    torch.manual_seed(seed)
    model = TinyClassifier(in_channels=1, num_classes=10)
    model.pretrained_config = {
        "architecture": TINY,
        "arch_args": {"in_channels": 1, "num_classes": 10},
        "mean": [0.5],
        "std": [0.25],
        "dataset": "toy",
    }
    return nn.Sequential(Normalize([0.5], [0.25]), model)


def images(n: int, seed: int) -> Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def assert_same_results(a: GuardedModel, b: GuardedModel, x: Tensor) -> None:
    ra, rb = a(x), b(x)
    for field in ("labels", "rejected", "logits", "classifier_labels"):
        assert torch.equal(getattr(ra, field), getattr(rb, field)), field
    assert list(ra.scores) == list(rb.scores)
    for key in ra.scores:
        assert torch.equal(ra.scores[key], rb.scores[key]), key
        assert torch.equal(ra.layer_rejected[key], rb.layer_rejected[key]), key


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


@pytest.fixture
def calibrated(tiny_architecture: str) -> GuardedModel:
    guard = GuardedModel(pretrained_classifier(), [SAECLayer(), small_contranet()])
    guard.calibrate(images(64, seed=1), target_fpr=0.1, budget="runner_up", progress=False)
    return guard


@pytest.fixture
def saved(calibrated: GuardedModel, tmp_path: Path) -> Path:
    return calibrated.save_pretrained(tmp_path / "guard")


def rewrite(folder: Path, *, state: dict[str, Tensor] | None = None, **config_changes) -> None:
    """Change a saved guard's weights or config, keeping the recorded sha256 right."""
    config = json.loads((folder / "config.json").read_text())
    if state is not None:
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
        config["weights_sha256"] = sha256_file(folder / "model.safetensors")
    config.update(config_changes)
    (folder / "config.json").write_text(json.dumps(config))


# --------------------------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------------------------


def test_round_trip_gives_identical_results(calibrated: GuardedModel, saved: Path) -> None:
    assert sorted(p.name for p in saved.iterdir()) == FILES
    loaded = GuardedModel.from_pretrained(saved)
    assert not loaded.training and loaded.classifier is not calibrated.classifier
    assert_same_state(loaded, calibrated)  # weights, thresholds and score scales
    assert_same_results(loaded, calibrated, images(40, seed=2))
    assert loaded.calibration_report == calibrated.calibration_report
    assert loaded.calibration_report is not None and loaded.calibration_report.budget
    assert loaded.pretrained_config["guardnet_type"] == "guard"
    again = loaded.save_pretrained(saved.parent / "again")  # a loaded guard saves the same
    assert (again / "model.safetensors").read_bytes() == (saved / "model.safetensors").read_bytes()
    assert (again / "config.json").read_text() == (saved / "config.json").read_text()


def test_config_holds_the_recipe(calibrated: GuardedModel, saved: Path) -> None:
    config = json.loads((saved / "config.json").read_text())
    assert config["guardnet_type"] == "guard" and config["format_version"] == 1
    classifier = config["classifier"]
    assert classifier["architecture"] == TINY and classifier["weights_included"]
    assert classifier["arch_args"] == {"in_channels": 1, "num_classes": 10}
    assert classifier["normalize"] == {"mean": [0.5], "std": [0.25]}
    assert [(e["name"], e["type"]) for e in config["layers"]] == [
        ("saec", "saec"),
        ("contranet", "contranet"),
    ]
    assert config["layers"][1]["config"]["net"]["arch_args"]["g_ch"] == 2
    assert config["num_classes"] == 10 and config["calibration"]["target_fpr"] == 0.1
    assert config["recipe"] is None
    assert config["weights_sha256"] == sha256_file(saved / "model.safetensors")
    state = load_file(str(saved / "model.safetensors"))
    assert set(state) == set(calibrated.state_dict())
    assert torch.equal(state["layers.saec.threshold"], calibrated.layers["saec"].threshold)


def test_card_shows_thresholds_calibration_and_loading(
    calibrated: GuardedModel, saved: Path
) -> None:
    card = (saved / "README.md").read_text()
    threshold = float(calibrated.layers["contranet"].threshold[0])
    assert f"| contranet | contranet | contranet.dmm | {threshold:.6g} | low |" in card
    report = calibrated.calibration_report
    assert report is not None
    assert "target_fpr=0.1, mode='joint', budget='runner_up')` on 64 clean images" in card
    assert report.num_samples == 64 and report.runner_up_rejection_rate is not None
    assert f"runner-up labels it rejects {report.runner_up_rejection_rate:.2%}" in card
    assert f"rejects {report.overall_fpr:.2%}" in card
    assert 'GuardedModel.from_pretrained("<this folder or org/repo>")' in card


def test_options_and_uncalibrated_guards_round_trip(tiny_architecture: str, tmp_path: Path) -> None:
    guard = GuardedModel(
        pretrained_classifier(),
        {"noise": SAECLayer(bins=64, kernels="kv")},
        cascade=True,
        max_batch_size=7,
        validate_inputs=False,
        fail_closed=True,
    )
    folder = guard.save_pretrained(tmp_path / "g")
    assert json.loads((folder / "config.json").read_text())["fail_closed"] is True
    loaded = GuardedModel.from_pretrained(folder)
    assert list(loaded.layers) == ["noise"] and loaded.layers["noise"].get_config() == (
        guard.layers["noise"].get_config()
    )
    assert (loaded.cascade, loaded.max_batch_size, loaded.validate_inputs) == (True, 7, False)
    assert loaded.fail_closed is True
    # Off by default, also in configs written before the option existed.
    GuardedModel(pretrained_classifier(), [SAECLayer()]).save_pretrained(tmp_path / "plain")
    config = json.loads((tmp_path / "plain" / "config.json").read_text())
    assert config["fail_closed"] is False
    del config["fail_closed"]
    (tmp_path / "plain" / "config.json").write_text(json.dumps(config))
    assert GuardedModel.from_pretrained(tmp_path / "plain").fail_closed is False
    assert loaded.calibration_report is None
    assert "Not calibrated" in (tmp_path / "g" / "README.md").read_text()
    with pytest.raises(NotCalibratedError):
        loaded(images(2, seed=0))


def test_loading_builds_from_the_config_without_fetching(
    saved: Path, calibrated: GuardedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("loading a saved guard fetched weights")

    for name in ("from_pretrained", "_hub_files"):
        monkeypatch.setattr(guardnet.weights.resolve, name, refuse)
    monkeypatch.setattr(ContraNetLayer, "from_pretrained", refuse)
    assert_same_results(GuardedModel.from_pretrained(saved), calibrated, images(8, seed=3))


def test_hub_repo_ids_are_fetched_through_the_hub_loader(
    saved: Path, calibrated: GuardedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def hub_files(
        repo_id: str, filenames: tuple[str, ...], **kwargs: object
    ) -> tuple[list[Path], str]:
        calls.append((repo_id, kwargs["revision"]))
        return [saved / name for name in filenames], f"Hub repo {repo_id!r}"

    monkeypatch.setattr(guardnet.weights.resolve, "_hub_files", hub_files)
    loaded = GuardedModel.from_pretrained("org/my-guard", revision="v1")
    assert calls == [("org/my-guard", "v1")]
    assert_same_state(loaded, calibrated)


def test_shipped_recipe_round_trip(tmp_path: Path) -> None:
    guard = GuardedModel.from_pretrained("mnist-mixdefense")  # a recipe: uncalibrated
    assert guard.recipe is GUARD_RECIPES["mnist-mixdefense"]
    with pytest.raises(NotCalibratedError):
        guard(images(1, seed=0))
    guard.calibrate(images(24, seed=4), target_fpr=0.1, progress=False)
    folder = guard.save_pretrained(tmp_path / "mnist-guard")
    config = json.loads((folder / "config.json").read_text())
    assert config["classifier"]["architecture"] == "MnistCNN"
    assert config["classifier"]["license"] == "Apache-2.0"
    assert config["recipe"]["name"] == "mnist-mixdefense"
    loaded = GuardedModel.from_pretrained(folder)
    assert loaded.recipe == guard.recipe
    assert_same_results(loaded, guard, images(6, seed=5))


def test_build_guard_returns_the_guard() -> None:
    guard = build_guard("mnist-saec", max_batch_size=3)
    assert isinstance(guard, GuardedModel) and guard.max_batch_size == 3
    assert guard.recipe is GUARD_RECIPES["mnist-saec"] and list(guard.layers) == ["saec"]


def test_unknown_names_and_misplaced_arguments() -> None:
    with pytest.raises(WeightsError, match=r"neither a saved guard's folder.*mnist-mixdefense"):
        GuardedModel.from_pretrained("no-such-guard")
    with pytest.raises(ValueError, match="classifier= applies to saved guards"):
        GuardedModel.from_pretrained("mnist-saec", classifier=nn.Identity())


# --------------------------------------------------------------------------------------------
# A user's classifier (not a registered architecture)
# --------------------------------------------------------------------------------------------


@pytest.fixture
def user_guard() -> GuardedModel:
    guard = GuardedModel(
        TinyClassifier(in_channels=1, num_classes=10), [SAECLayer()], mean=[0.5], std=[0.25]
    )
    guard.calibrate(images(32, seed=6), target_fpr=0.1, progress=False)
    return guard


def test_user_classifier_is_not_saved_and_must_be_given(
    user_guard: GuardedModel, tmp_path: Path
) -> None:
    folder = user_guard.save_pretrained(tmp_path / "g")
    config = json.loads((folder / "config.json").read_text())
    assert config["classifier"]["architecture"] is None
    assert config["classifier"]["class"] == "helpers.TinyClassifier"
    assert not config["classifier"]["weights_included"]
    assert not [k for k in load_file(str(folder / "model.safetensors")) if "classifier" in k]
    assert "classifier=model" in (folder / "README.md").read_text()
    with pytest.raises(WeightsError, match=r"helpers\.TinyClassifier.*classifier=model"):
        GuardedModel.from_pretrained(folder)

    loaded = GuardedModel.from_pretrained(folder, classifier=user_guard.classifier)
    assert loaded.classifier is user_guard.classifier
    assert_same_results(loaded, user_guard, images(16, seed=7))
    # Another module is used as given: the folder has no classifier weights to put in it.
    other = TinyClassifier(in_channels=1, num_classes=10)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    loaded = GuardedModel.from_pretrained(folder, classifier=other)
    assert loaded.classifier is other
    assert all(torch.equal(v, before[k]) for k, v in other.state_dict().items())


def test_user_classifier_weights_can_be_included(user_guard: GuardedModel, tmp_path: Path) -> None:
    folder = user_guard.save_pretrained(tmp_path / "g", include_classifier=True)
    assert json.loads((folder / "config.json").read_text())["classifier"]["weights_included"]
    with pytest.raises(WeightsError, match="classifier="):
        GuardedModel.from_pretrained(folder)
    fresh = TinyClassifier(in_channels=1, num_classes=10)  # other random weights
    loaded = GuardedModel.from_pretrained(folder, classifier=fresh)
    assert loaded.classifier is fresh
    assert_same_state(loaded, user_guard)
    assert_same_results(loaded, user_guard, images(16, seed=8))
    with pytest.raises(WeightsError, match=r"missing keys: classifier\.weight; unexpected keys"):
        GuardedModel.from_pretrained(folder, classifier=nn.Conv2d(1, 8, 3, bias=False))


def test_classifier_argument_replaces_a_rebuildable_one(
    calibrated: GuardedModel, saved: Path
) -> None:
    mine = pretrained_classifier(seed=5)
    loaded = GuardedModel.from_pretrained(saved, classifier=mine)
    assert loaded.classifier is mine
    assert_same_state(loaded, calibrated)  # the folder's classifier weights went into it


def test_rebuildable_classifier_saved_without_weights_needs_the_argument(
    calibrated: GuardedModel, tmp_path: Path
) -> None:
    folder = calibrated.save_pretrained(tmp_path / "g", include_classifier=False)
    with pytest.raises(WeightsError, match=r"its weights were not saved.*classifier=model"):
        GuardedModel.from_pretrained(folder)
    loaded = GuardedModel.from_pretrained(folder, classifier=calibrated.classifier)
    assert_same_results(loaded, calibrated, images(8, seed=9))


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


def test_unexpected_key_is_named(saved: Path) -> None:
    state = load_file(str(saved / "model.safetensors"))
    rewrite(saved, state={**state, "layers.saec.extra": torch.zeros(1)})
    with pytest.raises(WeightsError, match=r"unexpected keys: layers\.saec\.extra"):
        GuardedModel.from_pretrained(saved)


def test_missing_threshold_is_named(saved: Path) -> None:
    state = load_file(str(saved / "model.safetensors"))
    del state["layers.contranet.threshold"]
    rewrite(saved, state=state)
    with pytest.raises(WeightsError, match=r"missing keys: layers\.contranet\.threshold"):
        GuardedModel.from_pretrained(saved)


def test_layer_config_that_does_not_match_the_weights(saved: Path) -> None:
    config = json.loads((saved / "config.json").read_text())
    config["layers"][1]["config"]["net"]["arch_args"]["g_ch"] = 3
    rewrite(saved, layers=config["layers"])
    with pytest.raises(WeightsError, match=r"wrong shapes: layers\.contranet\.net"):
        GuardedModel.from_pretrained(saved)


def test_damaged_weights_fail_the_sha256_check(saved: Path) -> None:
    data = bytearray((saved / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (saved / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="weights_sha256"):
        GuardedModel.from_pretrained(saved)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"guardnet_type": "model"}, "not a saved guard .guardnet_type is 'model'"),
        ({"format_version": 99}, "format_version 99"),
        ({"layers": [{"name": "x", "type": "nope", "config": {}}]}, "unknown layer type 'nope'"),
    ],
)
def test_wrong_format_or_config_is_refused(saved: Path, changes: dict, message: str) -> None:
    rewrite(saved, **changes)
    with pytest.raises((WeightsError, ConfigError), match=message):
        GuardedModel.from_pretrained(saved)


def test_model_folders_and_incomplete_folders_are_refused(tmp_path: Path, saved: Path) -> None:
    from guardnet.nets.small import MnistCNN

    model_folder = save_pretrained(
        MnistCNN(), tmp_path / "model", config={"architecture": "MnistCNN", "arch_args": {}}
    )
    with pytest.raises(WeightsError, match=r"holds one model .* guardnet\.from_pretrained"):
        GuardedModel.from_pretrained(model_folder)
    (saved / "model.safetensors").unlink()
    with pytest.raises(WeightsError, match=r"model\.safetensors missing"):
        GuardedModel.from_pretrained(saved)


def test_unsaveable_layers_and_stale_classifier_configs_are_named(
    calibrated: GuardedModel, tmp_path: Path
) -> None:
    guard = GuardedModel(TinyClassifier(in_channels=1), [PixelScoreLayer()])
    with pytest.raises(ConfigError, match=r"layer 'pixel'.*not a registered layer type"):
        guard.save_pretrained(tmp_path / "a")
    model = calibrated.classifier[1]
    model.fc = nn.Linear(8, 5)  # no longer what its pretrained_config describes
    with pytest.raises(ConfigError, match=r"pretrained_config.*classifier\.1\.fc\.weight"):
        calibrated.save_pretrained(tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


class NoConfigLayer(Layer):
    kind = LayerKind.PRE
    default_name = "noconfig"

    def forward(self, inputs: LayerInput) -> LayerOutput:
        return LayerOutput(scores=inputs.images.flatten(1).mean(dim=1))


def test_a_registered_layer_without_get_config_is_named(tmp_path: Path) -> None:
    register_layer("guardio-noconfig")(NoConfigLayer)
    try:
        guard = GuardedModel(TinyClassifier(in_channels=1), [NoConfigLayer()])
        with pytest.raises(ConfigError, match=r"layer 'noconfig'.*does not define get_config"):
            guard.save_pretrained(tmp_path / "a")
    finally:
        del LAYER_TYPES["guardio-noconfig"]


# --------------------------------------------------------------------------------------------
# Layer configs
# --------------------------------------------------------------------------------------------


def _probe_classifier() -> nn.Module:
    """A seeded linear classifier of 28x28 grey images (pooled to 8x8) for A2D and DeT."""
    torch.manual_seed(5)
    return nn.Sequential(nn.AdaptiveAvgPool2d(8), nn.Flatten(), nn.Linear(64, 10)).eval()


PROBE_CLASSIFIER = _probe_classifier()


def _a2d_example() -> A2DLayer:
    layer = A2DLayer(
        ["bim", "jsma"],
        settings={"bim": {"eps": 0.5, "step": 0.005, "limit": 40}, "jsma": {"limit": 30}},
        detector="vote",
        min_benign_votes=1,
    )
    layer.fit(images(16, seed=4), PROBE_CLASSIFIER)
    return layer


def _det_example() -> DeTReformer:
    torch.manual_seed(6)
    nets = ReformerSet([{"in_channels": 1, **REFORMER_STYLES[s]} for s in ("plain", "wide")])
    return DeTReformer(nets, num_samples=2, eps=0.1, seed=3, reject=True)


#: One non-default example per registered layer type.
LAYER_EXAMPLES: dict[str, Callable[[], Layer]] = {
    "a2d": _a2d_example,
    "det": _det_example,
    "saec": lambda: SAECLayer(p=4.0, kernels=("kv",), bins=32, value_range=(-0.1, 0.1)),
    "contranet": lambda: ContraNetLayer(
        ContraNet(
            num_classes=10,
            in_channels=1,
            dmm_width=0.25,
            dmm_input_mean=(0.5,),
            dmm_input_std=(0.25,),
            **{**SMALL_NET, "dmm_backbone": "resnet20"},
        ),
        sample=True,
        seed=3,
    ),
}


def test_every_layer_type_has_an_example() -> None:
    assert set(LAYER_EXAMPLES) == set(LAYER_TYPES)


@pytest.mark.parametrize("kind", sorted(LAYER_EXAMPLES))
def test_get_config_round_trip(kind: str) -> None:
    layer = LAYER_EXAMPLES[kind]().eval()
    layer.set_threshold(0.5, score_scale=2.0)
    config = layer_config(layer)
    assert config["type"] == kind
    assert json.loads(json.dumps(config)) == config  # JSON-serialisable as it is
    rebuilt = build_layer(json.loads(json.dumps(config))).eval()
    assert type(rebuilt) is type(layer) and layer_config(rebuilt) == config
    assert bool(rebuilt.threshold.isnan().all())  # built uncalibrated, weights not loaded
    expected = {k: v.shape for k, v in layer.state_dict().items()}
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == expected
    rebuilt.load_state_dict(layer.state_dict())
    x = images(3, seed=10)
    inputs = LayerInput(images=x, labels=torch.tensor([1, 2, 3]), classifier=PROBE_CLASSIFIER)
    with torch.no_grad():
        assert torch.equal(rebuilt(inputs).scores, layer(inputs).scores)


def test_build_layer_errors() -> None:
    with pytest.raises(ConfigError, match="unknown layer type 'x'"):
        build_layer({"type": "x"})
    with pytest.raises(ConfigError, match="cannot build a 'saec' layer"):
        build_layer({"type": "saec", "bins": 1})
    with pytest.raises(ConfigError, match="needs 'net'"):
        build_layer({"type": "contranet"})


def test_the_package_loader_reads_models_recipes_and_saved_guards(
    saved: Path, calibrated: GuardedModel
) -> None:
    model = guardnet.from_pretrained("mnist-cnn")
    assert not isinstance(model, GuardedModel) and model.pretrained_config["dataset"] == "mnist"
    recipe_guard = guardnet.from_pretrained("mnist-saec")
    assert isinstance(recipe_guard, GuardedModel) and recipe_guard.recipe.name == "mnist-saec"
    with pytest.raises(NotCalibratedError):
        recipe_guard(images(1, seed=0))
    loaded = guardnet.from_pretrained(saved)
    assert isinstance(loaded, GuardedModel)
    assert_same_results(loaded, calibrated, images(8, seed=5))
