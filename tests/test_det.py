"""DeTReformer: voting, tie-breaking, determinism, chunking, gradients, bad input, training."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from guardnet import DeTReformer, GuardedModel
from guardnet.cli import main
from guardnet.errors import ConfigError, InputShapeError
from guardnet.layers.base import LayerInput
from guardnet.nets.reformer import REFORMER_STYLES, Reformer, ReformerSet
from guardnet.train.reformer import (
    ReformerTrainingOptions,
    cross_training_step,
    train_reformers,
)


def reformers(
    channels: int = 1, styles: tuple[str, ...] = ("pooled", "plain", "wide")
) -> ReformerSet:
    torch.manual_seed(0)
    return ReformerSet([{"in_channels": channels, **REFORMER_STYLES[s]} for s in styles])


def images(n: int, seed: int = 0) -> Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def classifier() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))


def layer_input(x: Tensor, model: nn.Module) -> LayerInput:
    with torch.no_grad():
        logits = model(x)
    return LayerInput(images=x, logits=logits, labels=logits.argmax(1), classifier=model)


def test_vote_takes_each_reformers_majority_then_the_majority_of_votes() -> None:
    layer = DeTReformer(reformers(), num_samples=5)
    keys = torch.arange(2)
    # two voters, five samples, three classes
    sample_labels = torch.tensor(
        [
            [[0, 0, 1, 1, 1], [2, 2, 2, 0, 0]],  # voter 1: votes 1 and 2
            [[1, 1, 1, 0, 2], [2, 1, 1, 1, 2]],  # voter 2: votes 1 and 1
        ]
    )
    labels, fractions = layer.vote(sample_labels, keys, 3)
    assert labels[0] == 1
    assert fractions[0].tolist() == [0.0, 1.0, 0.0]
    assert fractions[1].tolist() == [0.0, 0.5, 0.5]
    assert labels[1] in (1, 2)  # a tie between the two votes


def test_ties_are_broken_at_random_but_reproducibly() -> None:
    layer = DeTReformer(reformers(), num_samples=2)
    # every image: two voters, one votes 3, the other 7: a tie in every row
    sample_labels = torch.tensor([[[3, 3]] * 400, [[7, 7]] * 400])
    keys = torch.arange(400)
    labels, fractions = layer.vote(sample_labels, keys, 10)
    assert set(labels.tolist()) == {3, 7}
    share = float((labels == 3).float().mean())
    assert 0.4 < share < 0.6
    again, _ = layer.vote(sample_labels, keys, 10)
    assert torch.equal(labels, again)
    assert bool((fractions[:, 3] == 0.5).all())


def test_forward_is_deterministic_per_seed_and_per_image() -> None:
    model = classifier()
    x = images(12)
    layer = DeTReformer(reformers(), num_samples=4, eps=0.3, seed=5)
    first = layer(layer_input(x, model))
    second = layer(layer_input(x, model))
    assert torch.equal(first.labels, second.labels)
    assert torch.equal(first.scores, second.scores)
    # an image's result does not depend on the batch it arrives in
    alone = layer(layer_input(x[3:4], model))
    assert torch.equal(alone.logits, first.logits[3:4])
    other = DeTReformer(reformers(), num_samples=4, eps=0.3, seed=6)
    assert not torch.equal(other.samples(x, other._keys(x)), layer.samples(x, layer._keys(x)))


def test_chunking_equals_one_pass() -> None:
    model = classifier()
    x = images(10)
    whole = DeTReformer(reformers(), num_samples=6, eps=0.3, chunk_size=10_000)
    small = DeTReformer(reformers(), num_samples=6, eps=0.3, chunk_size=7)
    a, b = whole(layer_input(x, model)), small(layer_input(x, model))
    assert torch.equal(a.labels, b.labels)
    assert torch.equal(a.logits, b.logits)
    guard = GuardedModel(model, [whole], max_batch_size=3)
    result = guard(x)
    assert torch.equal(result.labels, a.labels)


def test_logits_are_vote_fractions_and_labels_are_replaced_in_a_guard() -> None:
    model = classifier()
    layer = DeTReformer(reformers(), num_samples=4, eps=0.3)
    guard = GuardedModel(model, [layer])
    x = images(16)
    result = guard(x)
    assert torch.allclose(result.logits.sum(1), torch.ones(16))
    k = len(layer.voters)
    assert bool(((result.logits * k).round() == result.logits * k).all())
    assert torch.equal(result.classifier_labels, model(x).argmax(1))
    assert torch.equal(result.labels, layer(layer_input(x, model)).labels)
    assert not bool(result.rejected.any())  # reject=False: correction only
    assert "det" in result.scores


def test_the_attack_view_gets_a_gradient_through_reformers_and_classifier() -> None:
    model = classifier()
    layer = DeTReformer(reformers(), num_samples=3, eps=0.1, reject=True)
    guard = GuardedModel(model, [layer])
    guard.calibrate(images(40, seed=3), target_fpr=0.2, progress=False)
    x = images(4).requires_grad_(True)
    logits, margins = guard.attack_view().logits_and_margins(x)
    exact = guard(x.detach())
    assert torch.allclose(logits.detach(), exact.logits)
    assert margins.shape == (4, 1) and margins.requires_grad
    (logits[:, 0].sum() + margins.sum()).backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


def test_fresh_noise_draws_new_samples_per_call() -> None:
    layer = DeTReformer(reformers(), num_samples=2, eps=0.3)
    x = images(3)
    layer.fresh_noise = True
    a = layer.samples(x, layer._keys(x))
    b = layer.samples(x, layer._keys(x))
    assert not torch.equal(a, b)


def test_bad_inputs_fail_clearly() -> None:
    nets = reformers()
    with pytest.raises(ConfigError, match="num_samples"):
        DeTReformer(nets, num_samples=0)
    with pytest.raises(ConfigError, match="eps"):
        DeTReformer(nets, eps=-0.1)
    with pytest.raises(ConfigError, match="k >= 1"):
        DeTReformer(nets, voters=[])
    with pytest.raises(ConfigError, match="cannot also vote"):
        DeTReformer(nets, first=1, voters=[1, 2])
    model = classifier()
    with pytest.raises(InputShapeError, match="1-channel"):
        DeTReformer(nets)(
            layer_input(torch.rand(2, 3, 8, 8), nn.Sequential(nn.Flatten(), nn.Linear(192, 10)))
        )
    with pytest.raises(InputShapeError, match=r"\(1, 28, 28\)"):
        DeTReformer(nets, input_size=(1, 28, 28))(layer_input(images(2), model))
    with pytest.raises(ConfigError, match="43-class"):
        DeTReformer(nets, num_classes=43)(layer_input(images(2), model))
    with pytest.raises(InputShapeError, match="even height"):
        Reformer(1, **REFORMER_STYLES["pooled"])(torch.rand(1, 1, 7, 7))


@pytest.mark.parametrize("style", sorted(REFORMER_STYLES))
def test_every_style_rebuilds_colour_images_in_range(style: str) -> None:
    torch.manual_seed(0)
    net = Reformer(3, **REFORMER_STYLES[style]).eval()
    x = torch.rand(2, 3, 8, 8)
    out = net(x)
    assert out.shape == x.shape
    assert out.min() >= 0 and out.max() <= 1
    out.sum().backward()
    # A residual reformer starts at the identity (zero last convolution): only that layer has
    # a gradient at first; every other style trains all its parameters from the first step.
    trained = list(net.net[-1].parameters()) if net.residual else list(net.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trained)


def test_config_round_trip() -> None:
    layer = DeTReformer(reformers(), first=2, voters=[0, 1], num_samples=3, eps=0.2, seed=4)
    twin = DeTReformer.from_config(layer.get_config())
    twin.load_state_dict(layer.state_dict())
    x = images(5)
    model = classifier()
    assert torch.equal(twin(layer_input(x, model)).logits, layer(layer_input(x, model)).logits)


def test_cross_training_updates_only_the_trained_reformer_per_half_step() -> None:
    nets = reformers(styles=("plain", "plain"))
    optimizers = [torch.optim.SGD(r.parameters(), lr=0.1) for r in nets.reformers]
    before = [[p.clone() for p in r.parameters()] for r in nets.reformers]
    x = images(8)
    noisy = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    # after the first half only R[1] may have moved: freeze R[0]'s optimizer and check
    frozen = torch.optim.SGD(nets[0].parameters(), lr=0.0)
    losses = cross_training_step(nets, [frozen, optimizers[1]], x, noisy)
    assert len(losses) == 2
    assert all(torch.equal(a, b) for a, b in zip(before[0], nets[0].parameters(), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(before[1], nets[1].parameters(), strict=True))


def test_training_is_seeded_and_resumable(tmp_path: Path) -> None:
    train, val = torch.rand(64, 1, 8, 8), torch.rand(16, 1, 8, 8)
    options = ReformerTrainingOptions(
        dataset="toy", styles=("plain", "wide"), epochs=1, cross_epochs=1, batch_size=16
    )
    full = train_reformers(options, train, val, tmp_path / "a", progress=False, log=lambda s: None)

    class Interrupted(Exception):
        pass

    def stop_in_second_epoch(line: str) -> None:
        if '"epoch": 2' in line:
            raise Interrupted  # before epoch 2's checkpoint is written

    with pytest.raises(Interrupted):
        train_reformers(
            options, train, val, tmp_path / "b", progress=False, log=stop_in_second_epoch
        )
    resumed = train_reformers(
        options, train, val, tmp_path / "b", resume=True, progress=False, log=lambda s: None
    )
    errors = [h["val_rebuild_error"] for h in resumed["history"]]
    assert errors == [h["val_rebuild_error"] for h in full["history"]]
    assert [h["phase"] for h in full["history"]] == ["plain", "cross"]
    loaded = DeTReformer.from_pretrained(tmp_path / "a" / "model", num_samples=2)
    assert len(loaded.voters) == 1
    # same seed, same weights
    other = train_reformers(options, train, val, tmp_path / "c", progress=False, log=lambda s: None)
    assert other["history"][-1]["val_rebuild_error"] == full["history"][-1]["val_rebuild_error"]


def test_cross_lr_sets_the_cross_epochs_rate_and_may_change_before_them(tmp_path: Path) -> None:
    from guardnet.train.checkpoint import latest_checkpoint, load_checkpoint

    train, val = torch.rand(32, 1, 8, 8), torch.rand(8, 1, 8, 8)
    quiet = {"progress": False, "log": lambda s: None}
    plain = ReformerTrainingOptions(
        dataset="toy", styles=("plain", "wide"), epochs=1, cross_epochs=0, batch_size=16
    )
    train_reformers(plain, train, val, tmp_path / "run", **quiet)
    state = load_checkpoint(latest_checkpoint(tmp_path / "run"))
    assert [o["param_groups"][0]["lr"] for o in state["optimizers"]] == [1e-2, 1e-3]
    # the plain epoch is done, so the cross settings may still change on resume
    crossed = dataclasses.replace(plain, cross_epochs=1, cross_lr=1e-3)
    result = train_reformers(crossed, train, val, tmp_path / "run", resume=True, **quiet)
    assert [h["phase"] for h in result["history"]] == ["plain", "cross"]
    state = load_checkpoint(latest_checkpoint(tmp_path / "run"))
    assert [o["param_groups"][0]["lr"] for o in state["optimizers"]] == [1e-3, 1e-4]
    # ... but not once a cross epoch has run
    with pytest.raises(ValueError, match="other options"):
        train_reformers(
            dataclasses.replace(crossed, cross_epochs=2, cross_lr=1e-2),
            train, val, tmp_path / "run", resume=True, **quiet,
        )  # fmt: skip
    with pytest.raises(ValueError, match="cross_lr"):
        ReformerTrainingOptions(dataset="toy", styles=("plain",), cross_lr=0.0)


def test_ship_writes_the_chosen_reformers_in_order(tmp_path: Path) -> None:
    options = ReformerTrainingOptions(
        dataset="mnist",
        styles=("plain", "wide", "plain"),
        epochs=1,
        cross_epochs=0,
        batch_size=16,
    )
    train_reformers(
        options,
        torch.rand(32, 1, 8, 8),
        torch.rand(8, 1, 8, 8),
        tmp_path / "run",
        progress=False,
        log=lambda s: None,
    )
    selection = {
        "choice": {"first": 2, "voters": [1, 0], "num_samples": 5, "eps": 0.2, "noise": 0.1},
        "grid": [
            {"k": 2, "voters": [1, 0], "N": 5, "eps": 0.2, "clean": 0.9, "pgd_black_box": 0.8},
            {"k": 2, "voters": [1, 0], "N": 1, "eps": 0.2, "clean": 0.5, "pgd_black_box": 0.4},
        ],
    }
    (tmp_path / "selection.json").write_text(json.dumps(selection))
    # through the command line
    code = main(
        [
            "ship", "det", "--run", str(tmp_path / "run"),
            "--selection", str(tmp_path / "selection.json"),
            "--name", "det-toy", "--recipe", "toy-det", "--classifier", "toy",
            "--out", str(tmp_path / "det"),
        ]
    )  # fmt: skip
    assert code in (0, None)
    config = json.loads((tmp_path / "det" / "config.json").read_text())
    assert config["arch_args"]["names"] == ["plain-2", "wide-1", "plain-0"]
    # the chosen grid row's validation figures are the folder's metrics
    assert config["metrics"] == {
        "mnist_val_det_accuracy": 0.9,
        "mnist_val_det_pgd_black_box_accuracy": 0.8,
    }
    assert config["headline_metric"] == "mnist_val_det_accuracy"
    assert config["license"] == "Apache-2.0" and config["source"]
    layer = DeTReformer.from_pretrained(tmp_path / "det")
    assert (layer.first, layer.voters, layer.num_samples, layer.eps) == (0, [1, 2], 5, 0.2)
    assert layer.num_classes == 10
    run = DeTReformer.from_pretrained(tmp_path / "run" / "model")
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(layer.reformers[0](x), run.reformers[2](x))
    assert "R0 (preliminary)" in (tmp_path / "det" / "README.md").read_text()
