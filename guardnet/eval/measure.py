"""Measure a trained ContraNet on real data, and a classifier's accuracy on a split.

:func:`measure_contranet` is the protocol behind every ContraNet figure guardnet publishes
(``guardnet measure contranet``):

- thresholds: :meth:`GuardedModel.calibrate`'s joint FPR budget over every score, on the clean
  *validation* split, at each target FPR; never on test or attack data. ``budgets`` names how
  the joint budget is split over the scores: ``"equal"`` shares, or ``"runner_up"`` (chosen on
  the same clean validation images scored under the classifier's second most likely class);
- clean test split: bare accuracy, the guard's FPR and Acc_dec (correct and passed, or wrong
  and rejected, over all clean images);
- attacks on the correctly classified test images, against the classifier only: untargeted
  PGD-L-inf from a random start (guardnet's, step size ``max(eps / 4, 2.5 * eps / steps)``) and
  C&W-L2 (foolbox; one round at c = 1, confidence 0, lr 0.01). TPR = share
  of the *successful* adversarial examples the guard rejects; Acc_rob = 1 - (fooled and
  passed) / all attacked images; AUROC per score (clean test against successful examples).

Two guards are measured on the same examples: ContraNet alone after the classifier, and SAEC
before it with ContraNet after it. Attacks target the classifier only, so one set of
adversarial examples serves every budget, and an ``attack_cache`` folder lets several ContraNets
protecting one classifier share them.

:func:`classifier_accuracy` is the top-1 accuracy of a pretrained classifier on a split
(``guardnet measure classifier``), the figure the classifiers' model cards cite.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from guardnet.errors import CalibrationError, InputRangeError

if TYPE_CHECKING:
    from guardnet.guard import GuardedModel
    from guardnet.layers.contranet import ContraNetLayer

__all__ = [
    "BUDGETS",
    "classifier_accuracy",
    "contranet_layer",
    "cw_examples",
    "evaluate_guard",
    "measure_contranet",
    "pgd_examples",
    "summary_lines",
]

BUDGETS = ("equal", "runner_up")
"""How :func:`measure_contranet` may split the joint FPR budget over the scores."""

_ATTACK_BATCH = 250


def pgd_examples(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    eps: float,
    *,
    steps: int = 50,
    seed: int = 0,
    alpha: float | None = None,
) -> Tensor:
    """Untargeted PGD-L-inf examples of ``model`` from a random start (``make_attack("pgd")``).

    Seeded by ``seed``, so the random starts repeat.

    Args:
        model: the attacked classifier, taking [0, 1] images (normalisation inside).
        images: (N, C, H, W) images in [0, 1].
        labels: (N,) their true labels.
        eps: the L-inf budget on the [0, 1] scale.
        steps: PGD iterations.
        seed: seed of the random starts.
        alpha: the step size; default ``max(eps / 4, 2.5 * eps / steps)``.

    Returns:
        (N, C, H, W) adversarial examples in [0, 1].

    Example:
        >>> adv = pgd_examples(classifier, x, y, 8 / 255, steps=10)  # doctest: +SKIP
    """
    from guardnet.eval.attacks import make_attack

    step = max(eps / 4, 2.5 * eps / steps) if alpha is None else alpha
    attack = make_attack(
        "pgd", model, eps=eps, alpha=step, steps=steps, seed=seed, batch_size=_ATTACK_BATCH
    )
    return attack(images, labels)


def cw_examples(
    model: nn.Module, images: Tensor, labels: Tensor, *, steps: int = 100, seed: int = 0
) -> Tensor:
    """C&W-L2 examples (one round at c = 1, confidence 0, Adam lr 0.01) of ``model``.

    Args:
        model: the attacked classifier, taking [0, 1] images.
        images: (N, C, H, W) images in [0, 1].
        labels: (N,) their true labels.
        steps: optimisation steps.
        seed: the attack's seed.

    Returns:
        (N, C, H, W) adversarial examples in [0, 1].
    """
    from guardnet.eval.attacks import make_attack

    attack = make_attack(
        "cw",
        model,
        binary_search_steps=1,
        initial_const=1.0,
        steps=steps,
        lr=0.01,
        seed=seed,
        batch_size=_ATTACK_BATCH,
    )
    return attack(images, labels)


class _CachedAttack:
    """One of this module's attacks in the shape :class:`AdversarialCache` keys and runs."""

    def __init__(
        self,
        name: str,
        model: nn.Module,
        settings: dict[str, Any],
        make: Callable[[Tensor, Tensor], Tensor],
    ) -> None:
        self.name = name.replace("/", "_")  # part of a file name
        self.model = model
        self.settings = settings
        self.make = make

    def config(self) -> dict[str, Any]:
        return {"attack": self.name, "params": self.settings, "torch": torch.__version__}

    def __call__(self, images: Tensor, labels: Tensor) -> Tensor:
        return self.make(images, labels)


def _cached(
    directory: str | os.PathLike[str] | None,
    attack: _CachedAttack,
    images: Tensor,
    labels: Tensor,
) -> Tensor:
    """``attack(images, labels)``, or its earlier result for the same attack, model and inputs."""
    if directory is None:
        return attack(images, labels)
    from guardnet.eval.attacks.cache import AdversarialCache

    return AdversarialCache(directory).run(attack, images, labels)  # type: ignore[arg-type]


def evaluate_guard(
    guard: GuardedModel,
    images: Tensor,
    labels: Tensor,
    attacks: dict[str, tuple[Tensor, Tensor]],
) -> dict[str, Any]:
    """A calibrated guard's figures on clean images and on adversarial examples of its classifier.

    Args:
        guard: a calibrated :class:`~guardnet.GuardedModel`.
        images: (N, C, H, W) clean test images in [0, 1].
        labels: (N,) their labels.
        attacks: per attack name, (adversarial examples, their true labels); the examples come
            from correctly classified images, so a changed label is a successful example.

    Returns:
        ``clean_accuracy``, ``fpr``, ``acc_dec`` and ``per_score_fpr`` on the clean images, and
        per attack: ``attacked``, ``successful``, ``attack_success_rate``, ``tpr`` (NaN without a
        successful example), ``acc_rob``, ``per_score_tpr`` and ``auroc`` per score.
    """
    from guardnet.eval.metrics import auroc, detection_accuracy, robust_accuracy

    result = guard(images)
    correct = result.classifier_labels == labels
    out: dict[str, Any] = {
        "clean_accuracy": float(correct.float().mean()),
        "fpr": float(result.rejected.float().mean()),
        "acc_dec": detection_accuracy(correct, result.rejected),
        "per_score_fpr": {k: float(v.float().mean()) for k, v in result.layer_rejected.items()},
        "attacks": {},
    }
    nan = float("nan")
    for name, (adversarial, true_labels) in attacks.items():
        r = guard(adversarial)
        success = r.classifier_labels != true_labels
        n_success = int(success.sum())
        entry: dict[str, Any] = {
            "attacked": len(true_labels),
            "successful": n_success,
            "attack_success_rate": n_success / max(len(true_labels), 1),
            "tpr": float(r.rejected[success].float().mean()) if n_success else nan,
            "acc_rob": robust_accuracy(success, r.rejected),
            "per_score_tpr": {
                k: float(v[success].float().mean()) if n_success else nan
                for k, v in r.layer_rejected.items()
            },
            "auroc": {},
        }
        if n_success:
            for key, (layer, _) in guard.rejectors.items():
                entry["auroc"][key] = auroc(
                    result.scores[key],
                    r.scores[key][success],
                    higher_is_suspicious=layer.higher_is_suspicious,
                )
        out["attacks"][name] = entry
    return out


def _eps_label(eps: float, dataset: str) -> str:
    return f"{eps:g}" if dataset == "mnist" else f"{round(eps * 255)}/255"


def _check_options(
    eps: Sequence[float], target_fprs: Sequence[float], budgets: Sequence[str]
) -> None:
    if not eps:
        raise InputRangeError("eps must name at least one PGD budget")
    bad_eps = [e for e in eps if not 0 < e <= 1]
    if bad_eps:
        raise InputRangeError(f"eps must be in (0, 1] (the [0, 1] pixel scale), got {bad_eps}")
    if not target_fprs or any(not 0 < f < 1 for f in target_fprs):
        raise CalibrationError(f"target_fprs must be in (0, 1), got {list(target_fprs)}")
    unknown = [b for b in budgets if b not in BUDGETS]
    if not budgets or unknown:
        raise CalibrationError(f"budgets must be among {BUDGETS}, got {list(budgets)}")


def measure_contranet(
    contranet: str | os.PathLike[str],
    classifier: str,
    dataset: str,
    *,
    eps: Sequence[float],
    steps: int = 50,
    cw_steps: int = 100,
    target_fprs: Sequence[float] = (0.05,),
    budgets: Sequence[str] = ("equal",),
    val_limit: int | None = 2000,
    test_limit: int | None = 1000,
    seed: int = 0,
    attack_cache: str | os.PathLike[str] | None = None,
    grid: str | os.PathLike[str] | None = None,
    root: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Measure a ContraNet, alone and behind SAEC, against PGD and C&W on its classifier.

    The protocol is the module's (see :mod:`guardnet.eval.measure`). The first target FPR and
    the first budget rule give the headline (``calibration``, ``results``); every pair is in
    ``by_budget[rule][fpr]``.

    Args:
        contranet: a registered ContraNet name or a Hub folder.
        classifier: the registered classifier it protects (normalisation from its config).
        dataset: the dataset name (``guardnet.data.dataset_info``).
        eps: PGD-L-inf budgets on the [0, 1] scale.
        steps: PGD iterations.
        cw_steps: C&W-L2 steps; 0 skips C&W.
        target_fprs: validation FPR budgets.
        budgets: split rules among :data:`BUDGETS`, each measured.
        val_limit: seeded validation images for the thresholds (None: all).
        test_limit: seeded test images (None: all).
        seed: seed of the attacks.
        attack_cache: folder of adversarial examples shared by every measurement of the same
            attacks on the same classifier and images (safetensors; a mismatch recomputes).
        grid: also write ContraNet's rebuild grid of the first 8 test images here (PNG).
        root: data root (default: ``$GUARDNET_DATA``).

    Returns:
        A JSON-serialisable report: dataset, image counts, attack settings, the headline
        ``calibration`` and ``results`` (per guard, :func:`evaluate_guard`'s figures),
        ``by_target_fpr`` (the headline rule's), ``by_budget``, timings and versions.

    Raises:
        InputRangeError: ``eps`` is empty or outside (0, 1].
        CalibrationError: a target FPR outside (0, 1) or an unknown budget rule.

    Example:
        >>> report = measure_contranet("contranet-mnist", "mnist-cnn", "mnist", eps=[0.3])
        ... # doctest: +SKIP
        >>> report["results"]["contranet"]["attacks"]["pgd_linf_0.3"]["tpr"]  # doctest: +SKIP
        1.0
    """
    from guardnet import ContraNetLayer, GuardedModel, SAECLayer
    from guardnet.calibration import calibrate_guard, collect_clean_scores
    from guardnet.data import dataset_info, load_split
    from guardnet.guard import Normalize
    from guardnet.weights import from_pretrained

    _check_options(eps, target_fprs, budgets)
    began = time.perf_counter()
    info = dataset_info(dataset)
    val = load_split(info.name, "val", limit=val_limit, root=root)
    test = load_split(info.name, "test", limit=test_limit, root=root)
    net = from_pretrained(classifier)
    cfg = net.pretrained_config
    model = nn.Sequential(Normalize(cfg["mean"], cfg["std"]), net).eval()
    contranet_net = ContraNetLayer.from_pretrained(contranet).net
    guards = {
        "contranet": GuardedModel(model, [ContraNetLayer(contranet_net)], max_batch_size=500),
        "saec+contranet": GuardedModel(
            model, [SAECLayer(), ContraNetLayer(contranet_net)], max_batch_size=500
        ),
    }
    x, y = test.images, test.labels
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    xc, yc = x[correct], y[correct]

    attacks: dict[str, tuple[Tensor, Tensor]] = {}
    timings: dict[str, float] = {}
    plans = [
        (
            f"pgd_linf_{_eps_label(e, info.name)}",
            {"eps": e, "steps": steps, "seed": seed, "library": "guardnet"},
            lambda a, b, e=e: pgd_examples(model, a, b, e, steps=steps, seed=seed),
        )
        for e in eps
    ]
    if cw_steps:
        plans.append(
            (
                "cw_l2",
                {"steps": cw_steps, "seed": seed, "library": "foolbox"},
                lambda a, b: cw_examples(model, a, b, steps=cw_steps, seed=seed),
            )
        )
    for name, settings, make in plans:
        tick = time.perf_counter()
        attacks[name] = (
            _cached(attack_cache, _CachedAttack(name, model, settings, make), xc, yc),
            yc,
        )
        timings[name] = time.perf_counter() - tick

    # Clean validation scores once per guard (and under runner-up labels if that rule is asked
    # for); each budget rule and target FPR only moves the thresholds.
    val_scores = {
        name: collect_clean_scores(guard, val.images, batch_size=500, progress=False)
        for name, guard in guards.items()
    }
    runner_up_scores = {
        name: collect_clean_scores(
            guard, val.images, batch_size=500, progress=False, labels="runner_up"
        )
        for name, guard in guards.items()
        if "runner_up" in budgets
    }
    by_budget: dict[str, dict[str, Any]] = {}
    for rule in budgets:
        by_fpr = by_budget.setdefault(rule, {})
        for fpr in target_fprs:
            calibration = {
                name: calibrate_guard(
                    guard,
                    val.images,
                    target_fpr=fpr,
                    budget=None if rule == "equal" else rule,
                    scores=val_scores[name],
                    runner_up_scores=runner_up_scores.get(name),
                ).to_dict()
                for name, guard in guards.items()
            }
            results = {name: evaluate_guard(guard, x, y, attacks) for name, guard in guards.items()}
            by_fpr[f"{fpr:g}"] = {"calibration": calibration, "results": results}
    headline_fprs = by_budget[budgets[0]]
    headline = headline_fprs[f"{target_fprs[0]:g}"]
    if grid is not None:
        layer = guards["contranet"].layers["contranet"]
        layer.reconstruction_grid(x[:8], y[:8], other_labels=9, path=grid)
    return {
        "dataset": info.display_name,
        "contranet": os.fspath(contranet),
        "classifier": classifier,
        "target_fpr": target_fprs[0],
        "val_images": len(val),
        "test_images": len(test),
        "attacked_images": int(correct.sum()),
        "attack_settings": {
            "pgd": {"steps": steps, "random_start": True, "library": "guardnet"},
            "cw_l2": {"c": 1.0, "kappa": 0.0, "steps": cw_steps, "lr": 0.01, "library": "foolbox"},
        },
        "calibration": headline["calibration"],
        "results": headline["results"],
        "budget": budgets[0],
        "by_target_fpr": headline_fprs,
        "by_budget": by_budget,
        "attack_seconds": timings,
        "attack_cache": None if attack_cache is None else os.fspath(attack_cache),
        "seconds": time.perf_counter() - began,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
    }


def summary_lines(report: dict[str, Any]) -> list[str]:
    """The figures of a :func:`measure_contranet` report, one line per guard and attack."""
    lines = []
    for rule, points in report["by_budget"].items():
        for fpr, point in points.items():
            lines.append(f"validation FPR budget {fpr}, split {rule}")
            for name, res in point["results"].items():
                shares = point["calibration"][name]["budget"]
                if shares is not None:
                    lines.append(
                        f"{name}: shares " + ", ".join(f"{k} {v:g}" for k, v in shares.items())
                    )
                lines.append(
                    f"{name}: clean acc {res['clean_accuracy']:.2%}  FPR {res['fpr']:.2%}  "
                    f"Acc_dec {res['acc_dec']:.2%}"
                )
                for attack, a in res["attacks"].items():
                    lines.append(
                        f"  {attack:<16} success {a['attack_success_rate']:.1%}"
                        f"  TPR {a['tpr']:.2%}  Acc_rob {a['acc_rob']:.2%}  per score "
                        + " ".join(f"{k}={v:.1%}" for k, v in a["per_score_tpr"].items())
                    )
    return lines


def contranet_layer(source: str | os.PathLike[str]) -> ContraNetLayer:
    """A :class:`~guardnet.ContraNetLayer` from a name, a Hub folder or a training checkpoint.

    Args:
        source: a registered ContraNet name, a Hub folder (``RUN_DIR/model``), or a checkpoint
            folder of ``guardnet train contranet`` (``RUN_DIR/checkpoints/epoch-NNNN``, read
            with its EMA generator).

    Returns:
        The layer, uncalibrated.
    """
    from guardnet.layers.contranet import ContraNetLayer

    if (Path(source) / "checkpoint.json").is_file():
        from guardnet.train.contranet import contranet_from_checkpoint

        return ContraNetLayer(contranet_from_checkpoint(source))
    return ContraNetLayer.from_pretrained(source)


def classifier_accuracy(
    model: str | os.PathLike[str],
    *,
    dataset: str | None = None,
    split: str = "test",
    root: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    batch_size: int = 500,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Top-1 accuracy of a pretrained classifier on a dataset split.

    Images come from :func:`guardnet.data.load_split` in [0, 1] and are normalised with the
    config's ``mean`` / ``std``. The dataset's display name labels the result (CIFAR-10 here is
    "CIFAR-10 (JPEG q75)", never standard CIFAR-10).

    Args:
        model: a registered name, a weights folder or a Hub repo id.
        dataset: dataset name; default the config's.
        split: ``"train"``, ``"val"`` or ``"test"``.
        root: data root (default: ``$GUARDNET_DATA``).
        limit: a seeded subset of the split.
        batch_size: images per forward pass.
        device: where to run.

    Returns:
        ``model``, ``weights_sha256``, ``dataset``, ``dataset_display_name``, ``split``,
        ``limit``, ``n``, ``correct``, ``accuracy``, ``seconds``, ``device`` and ``torch``.

    Raises:
        DatasetError: the model and the dataset have different class counts.

    Example:
        >>> classifier_accuracy("mnist-cnn", limit=1000)["accuracy"]  # doctest: +SKIP
        0.993
    """
    from guardnet.data import dataset_info, load_split
    from guardnet.errors import DatasetError
    from guardnet.train import evaluate_accuracy
    from guardnet.weights import from_pretrained

    net = from_pretrained(model, device=device)
    config = net.pretrained_config
    info = dataset_info(dataset or config["dataset"])
    if config.get("num_classes") not in (None, info.num_classes):
        raise DatasetError(
            f"the model has {config['num_classes']} classes, {info.name} has {info.num_classes}"
        )
    data = load_split(info.name, split, root=root, limit=limit)
    start = time.perf_counter()
    accuracy = evaluate_accuracy(
        net,
        data.images,
        data.labels,
        batch_size=batch_size,
        mean=config["mean"],
        std=config["std"],
        device=device,
    )
    n = len(data.labels)
    return {
        "model": os.fspath(model),
        "weights_sha256": config.get("weights_sha256"),
        "dataset": info.name,
        "dataset_display_name": info.display_name,
        "split": split,
        "limit": limit,
        "n": n,
        "correct": round(accuracy * n),
        "accuracy": accuracy,
        "seconds": round(time.perf_counter() - start, 1),
        "device": str(device),
        "torch": torch.__version__,
    }
