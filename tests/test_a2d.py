"""A2DLayer and its batched attack costs: reference loops, early stopping, Box-Cox, detectors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from guardnet import A2DLayer, GuardedModel
from guardnet.errors import CalibrationError, ConfigError, InputDTypeError, NotCalibratedError
from guardnet.layers.base import LayerInput
from guardnet.ops.attack_cost import NoGradientError, bim_cost, boundary_cost, jsma_cost
from guardnet.ops.boxcox import boxcox, fit_boxcox
from guardnet.ops.stateless_random import content_keys, stateless_normal, stateless_uniform
from guardnet.weights.io import write_folder

SETTINGS = {
    "bim": {"eps": 0.5, "step": 0.005, "limit": 40},
    "bim2": {"eps": 2.0, "step": 0.05, "limit": 40},
    "jsma": {"theta": 0.2, "limit": 40},
    "dba": {"limit": 80, "mse_target": 0.05},
}


class CountingLinear(nn.Module):
    """A linear classifier on 1x8x8 images that counts the rows it is asked about."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.fc = nn.Linear(64, 10)
        self.rows = 0

    def forward(self, x: Tensor) -> Tensor:
        self.rows += x.shape[0]
        return self.fc(x.flatten(1))


@pytest.fixture
def model() -> CountingLinear:
    return CountingLinear().eval()


def images(n: int, seed: int = 0) -> Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def predicted(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    with torch.no_grad():
        logits = model(x)
    return logits.argmax(1), logits.topk(2, dim=1).indices[:, 1]


# ---------------------------------------------------------------------- reference loops
def reference_bim_cost(
    model: nn.Module, image: Tensor, label: int, *, eps: float, step: float, limit: int, norm: str
) -> int:
    """One image, no early-stopping machinery: step, project, clip, look at the label."""
    x0 = image[None]
    adv = x0.clone()
    for t in range(limit):
        adv.requires_grad_(True)
        logits = model(adv)
        if int(logits.argmax(1)) != label:
            return t
        (grad,) = torch.autograd.grad(
            F.cross_entropy(logits, torch.tensor([label]), reduction="sum"), adv
        )
        adv = adv.detach()
        if norm == "linf":
            adv = torch.min(torch.max(adv + step * grad.sign(), x0 - eps), x0 + eps)
        else:
            adv = adv + step * grad / grad.norm().clamp_min(1e-12)
            delta = adv - x0
            delta = delta * min(1.0, eps / max(float(delta.norm()), 1e-12))
            adv = x0 + delta
        adv = adv.clamp(0, 1)
    return limit


@pytest.mark.parametrize(("norm", "eps", "step"), [("linf", 0.5, 0.005), ("l2", 2.0, 0.05)])
def test_batched_bim_cost_equals_the_one_image_loop(
    model: nn.Module, norm: str, eps: float, step: float
) -> None:
    x = images(16)
    labels, _ = predicted(model, x)
    batched = bim_cost(model, x, labels, eps=eps, step=step, limit=40, norm=norm)
    loop = [
        reference_bim_cost(model, x[i], int(labels[i]), eps=eps, step=step, limit=40, norm=norm)
        for i in range(16)
    ]
    assert batched.tolist() == [float(c) for c in loop]
    assert 1 < len(set(loop)), "the costs should differ between images"


@pytest.mark.parametrize("attack", ["jsma", "dba"])
def test_jsma_and_dba_costs_do_not_depend_on_the_batch(model: nn.Module, attack: str) -> None:
    x = images(12)
    labels, targets = predicted(model, x)

    def run(i: slice) -> Tensor:
        if attack == "jsma":
            return jsma_cost(model, x[i], labels[i], targets[i], limit=40, theta=0.2)
        return boundary_cost(model, x[i], labels[i], limit=80, mse_target=0.05)

    whole = run(slice(None))
    alone = torch.cat([run(slice(i, i + 1)) for i in range(12)])
    assert torch.equal(whole, alone)
    assert bool((whole < (40 if attack == "jsma" else 80)).any())


def test_jsma_moves_one_element_per_iteration_towards_the_target(model: nn.Module) -> None:
    x = images(4)
    labels, targets = predicted(model, x)
    cost = jsma_cost(model, x, labels, targets, limit=1, theta=0.2)
    assert cost.tolist() == [1.0] * 4  # nobody flips in zero iterations
    costs = jsma_cost(model, x, labels, targets, limit=40, theta=0.2)
    # L0: each iteration moves one element by theta, so a flip after t iterations changed at
    # most t elements; a tiny theta cannot flip anything in 3 iterations
    tiny = jsma_cost(model, x, labels, targets, limit=3, theta=1e-6)
    assert tiny.tolist() == [3.0] * 4
    assert bool((costs <= 40).all())


def test_early_stopping_spends_nothing_on_finished_samples(model: CountingLinear) -> None:
    x = images(32)
    labels, _ = predicted(model, x)
    model.rows = 0
    costs = bim_cost(model, x, labels, eps=0.5, step=0.005, limit=40)
    # every step asks about the samples still active, once: sum over samples of (cost + 1),
    # except that samples reaching the limit are not asked again at the end
    expected = int(torch.where(costs < 40, costs + 1, costs).sum())
    assert model.rows == expected < 32 * 40


def test_stateless_noise_is_per_key_and_counter() -> None:
    keys = content_keys(images(6), seed=3)
    a = stateless_uniform(keys, 5, (2, 3))
    assert torch.equal(a[2:4], stateless_uniform(keys[2:4], 5, (2, 3)))
    assert not torch.equal(a, stateless_uniform(keys, 6, (2, 3)))
    assert bool(((a > 0) & (a < 1)).all())
    assert not torch.equal(keys, content_keys(images(6), seed=4))
    normal = stateless_normal(torch.arange(4), 0, (5000,))
    assert abs(float(normal.mean())) < 0.05 and abs(float(normal.std()) - 1) < 0.05


def test_no_gradient_path_names_the_label_only_attack() -> None:
    class LabelOnly(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            with torch.no_grad():
                return F.one_hot((x.mean((1, 2, 3)) * 9.99).long(), 10).float()

    x = images(3)
    labels = LabelOnly()(x).argmax(1)
    with pytest.raises(NoGradientError, match="'dba'"):
        bim_cost(LabelOnly(), x, labels, eps=0.1, step=0.01, limit=5)
    # the label-only attack works on it
    assert boundary_cost(LabelOnly(), x, labels, limit=20).shape == (3,)


# ---------------------------------------------------------------------- Box-Cox
def test_boxcox_fit_matches_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    costs = torch.distributions.Gamma(2.0, 0.05).sample((400,)) + 1
    _, expected = stats.boxcox(costs.double().numpy())
    assert fit_boxcox(costs) == pytest.approx(expected, abs=2e-3)
    x = torch.tensor([1.0, 2.0, 9.0], dtype=torch.float64)
    assert torch.allclose(boxcox(x, 0.0), x.log())
    assert torch.allclose(boxcox(x, 2.0), (x**2 - 1) / 2)
    with pytest.raises(ValueError, match="positive"):
        fit_boxcox(torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="distinct"):
        fit_boxcox(torch.tensor([3.0, 3.0]))


def test_fitted_z_scores_of_clean_costs_are_standard() -> None:
    layer = A2DLayer(["bim", "jsma"], settings={k: SETTINGS[k] for k in ("bim", "jsma")})
    costs = torch.distributions.Gamma(3.0, 0.1).sample((500, 2)).round() + 1
    layer.fit_costs(costs)
    z = layer.z_scores(costs)
    assert torch.allclose(z.mean(0), torch.zeros(2), atol=1e-4)
    assert torch.allclose(z.std(0), torch.ones(2), atol=1e-4)
    order = costs[:, 0].argsort()
    assert bool((z[order, 0].diff() >= -1e-6).all()), "z must increase with the cost"


def test_fit_warns_when_every_clean_cost_is_equal() -> None:
    layer = A2DLayer(["bim"], settings={"bim": SETTINGS["bim"]})
    with pytest.warns(match="every clean cost is 40"):
        layer.fit_costs(torch.full((10, 1), 40.0))
    assert layer.is_fitted


# ---------------------------------------------------------------------- detectors
def test_vote_score_is_the_papers_k_of_n_rule() -> None:
    layer = A2DLayer(["bim", "bim2", "jsma", "dba"], detector="vote", settings=SETTINGS)
    layer.fit_costs(torch.rand(50, 4) * 30 + 1)
    costs = torch.rand(200, 4) * 30
    z = layer.z_scores(costs)
    score = layer.scores_from_costs(costs)
    for h in (-1.2816, -0.5, 0.0, 0.7):
        benign_votes = (z >= h).sum(1)
        rejected_by_rule = benign_votes < 2  # benign needs 2 of 4
        assert torch.equal(score < h, rejected_by_rule)


def test_knn_needs_reference_costs_and_votes_by_neighbours() -> None:
    layer = A2DLayer(
        ["bim", "jsma"], detector="knn", knn_k=5, settings={k: SETTINGS[k] for k in ("bim", "jsma")}
    )
    benign = torch.rand(40, 2) * 20 + 20
    layer.fit_costs(benign)
    with pytest.raises(NotCalibratedError, match="fit_knn"):
        layer.scores_from_costs(benign)
    adversarial = torch.rand(40, 2) * 3
    layer.fit_knn(benign, adversarial)
    scores = layer.scores_from_costs(torch.tensor([[30.0, 30.0], [1.0, 1.0]]))
    assert scores.tolist() == [1.0, 0.0]
    # the reference set is part of the saved state
    twin = A2DLayer.from_config(layer.get_config())
    twin.load_state_dict(layer.state_dict())
    assert torch.equal(twin.scores_from_costs(benign), layer.scores_from_costs(benign))


# ---------------------------------------------------------------------- the layer in a guard
def fitted_guard(model: nn.Module, **kwargs: object) -> GuardedModel:
    layer = A2DLayer(
        ["bim", "jsma", "dba"], settings={k: SETTINGS[k] for k in ("bim", "jsma", "dba")}, **kwargs
    )  # type: ignore[arg-type]
    guard = GuardedModel(model, [layer], num_classes=10)
    layer.fit(images(64, seed=1), guard.classify)
    return guard


def test_stop_at_threshold_changes_no_decision_and_saves_work(model: CountingLinear) -> None:
    guard = fitted_guard(model)
    guard.calibrate(images(64, seed=2), target_fpr=0.2, progress=False)
    x = images(48, seed=3)
    model.rows = 0
    stopped = guard(x)
    rows_stopped = model.rows
    guard.layers["a2d"].stop_at_threshold = False
    model.rows = 0
    full = guard(x)
    rows_full = model.rows
    assert torch.equal(stopped.rejected, full.rejected)
    for key in full.scores:
        assert torch.equal(stopped.layer_rejected[key], full.layer_rejected[key])
        rejected = full.layer_rejected[key]
        assert torch.equal(stopped.scores[key][rejected], full.scores[key][rejected])
        # accepted scores stop at the first accepted cost: never below the threshold
        assert bool((stopped.scores[key][~rejected] <= full.scores[key][~rejected] + 1e-6).all())
    assert rows_stopped < rows_full
    # compute_scores is always exact
    exact = guard.compute_scores(x)
    for key in full.scores:
        assert torch.equal(exact[key], full.scores[key])


def test_calibrated_guard_rejects_about_the_target_share_of_clean_images(
    model: nn.Module,
) -> None:
    guard = fitted_guard(model, detector="vote")
    report = guard.calibrate(images(200, seed=5), target_fpr=0.1, progress=False)
    assert report.overall_fpr <= 0.1 + 1e-9
    assert guard.score_keys == ["a2d"]


def test_chunking_equals_one_pass_and_inference_mode_works(model: nn.Module) -> None:
    guard = fitted_guard(model)
    guard.calibrate(images(64, seed=2), target_fpr=0.2, progress=False)
    x = images(20, seed=4)
    whole = guard(x)
    guard.max_batch_size = 7
    with torch.inference_mode():
        chunked = guard(x)
    assert torch.equal(whole.rejected, chunked.rejected)
    for key in whole.scores:
        assert torch.equal(whole.scores[key], chunked.scores[key])


def test_leaves_classifier_and_images_untouched(model: nn.Module) -> None:
    guard = fitted_guard(model)
    guard.calibrate(images(64, seed=2), target_fpr=0.2, progress=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = images(8, seed=6)
    x_copy = x.clone()
    with torch.no_grad():
        guard(x)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(x, x_copy)


def test_bad_settings_fail_at_construction() -> None:
    with pytest.raises(ConfigError, match="eps must be > 0"):
        A2DLayer(["bim"], settings={"bim": {"eps": 0.0}})
    with pytest.raises(ConfigError, match="step must be > 0"):
        A2DLayer(["bim2"], settings={"bim2": {"step": -1.0}})
    with pytest.raises(ConfigError, match="limit must be an integer >= 1"):
        A2DLayer(["dba"], settings={"dba": {"limit": 0}})
    with pytest.raises(ConfigError, match="unknown A2D attack"):
        A2DLayer(["fgsm"])
    with pytest.raises(ConfigError, match="unknown setting"):
        A2DLayer(["jsma"], settings={"jsma": {"eps": 0.1}})
    with pytest.raises(ConfigError, match="min_benign_votes"):
        A2DLayer(["bim", "jsma"], detector="vote", min_benign_votes=3)
    with pytest.raises(ConfigError, match="detector"):
        A2DLayer(["bim"], detector="mean")


def test_use_before_fitting_or_calibration_raises(model: nn.Module) -> None:
    layer = A2DLayer(["bim"], settings={"bim": SETTINGS["bim"]})
    guard = GuardedModel(model, [layer], num_classes=10)
    with pytest.raises(NotCalibratedError, match=r"layer.fit\("):
        guard.compute_scores(images(2))
    layer.fit(images(32, seed=1), guard.classify)
    with pytest.raises(NotCalibratedError, match="a2d"):
        guard(images(2))
    with pytest.raises(CalibrationError, match="costs must be"):
        layer.fit_costs(torch.zeros(5, 3))


def test_low_precision_is_refused_naming_the_fix(model: nn.Module) -> None:
    guard = fitted_guard(model)
    guard.calibrate(images(64, seed=2), target_fpr=0.2, progress=False)
    with pytest.raises(InputDTypeError, match=r"guard.float\(\)"):
        guard.half()(images(2).half())


def test_save_and_load_round_trip(model: nn.Module, tmp_path: object) -> None:
    guard = fitted_guard(model, detector="vote")
    guard.calibrate(images(64, seed=2), target_fpr=0.2, progress=False)
    layer = guard.layers["a2d"]
    twin = A2DLayer.from_config(layer.get_config())
    twin.load_state_dict(layer.state_dict())
    x = images(6, seed=9)
    inputs = LayerInput(
        images=x, logits=model(x).detach(), labels=model(x).argmax(1), classifier=guard.classify
    )
    assert torch.equal(twin(inputs).scores, layer(inputs).scores)
    assert math.isfinite(float(twin.threshold))


def test_hub_folder_round_trip(model: nn.Module, tmp_path: Path) -> None:
    guard = fitted_guard(model)
    guard.calibrate(images(64, seed=2), target_fpr=0.2, progress=False)
    layer = guard.layers["a2d"]
    config = {"architecture": "A2D", "arch_args": layer.get_config()}
    state = {k: v.clone() for k, v in layer.state_dict().items()}
    write_folder(tmp_path / "a2d", state, config, card=lambda c: "# card")
    loaded = A2DLayer.from_pretrained(tmp_path / "a2d", stop_at_threshold=False)
    assert loaded.get_config() == {**layer.get_config(), "stop_at_threshold": False}
    assert loaded.exact_forward_scores
    for key, value in layer.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    with pytest.raises(ConfigError, match="can override"):
        A2DLayer.from_pretrained(tmp_path / "a2d", attacks=["bim"])


def test_a_saved_guard_with_a2d_loads_back(tmp_path: Path) -> None:
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    guard = fitted_guard(classifier, detector="vote")
    guard.calibrate(images(64, seed=2), target_fpr=0.2, progress=False)
    guard.save_pretrained(tmp_path / "guard")
    loaded = GuardedModel.from_pretrained(tmp_path / "guard", classifier=classifier)
    x = images(10, seed=11)
    assert torch.equal(loaded(x).scores["a2d"], guard(x).scores["a2d"])


def test_bench_counts_the_attacks_flops_on_real_images(model: nn.Module) -> None:
    from guardnet.eval.bench import bench_guard

    guard = fitted_guard(model)
    guard.calibrate(images(64, seed=2), target_fpr=0.2, progress=False)
    result = bench_guard(
        guard, input_shape=(1, 8, 8), batch_sizes=(1, 4), min_run_time=0.01, images=images(8)
    )
    flops = result["flops_per_image"]
    # every attack step is a forward and a backward pass of the classifier
    assert flops["layers"]["a2d"]["counted"] > 2 * flops["classifier"]
    assert [b["batch_size"] for b in result["batches"]] == [1, 4]
    assert any("real images" in note for note in flops["notes"])
