"""``guardnet demo``: an offline tour of the guard on shipped MNIST data.

The data ship inside the package: a clean validation fixture (for calibration) and a test
fixture (for the numbers). The weights (the ``mnist-cnn`` classifier and the ``contranet-mnist``
detector) load with :func:`guardnet.from_pretrained`: offline from a clone's ``hub/`` mirror or a
pre-filled Hugging Face cache, else from the Hub.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from guardnet.data import dataset_info, load_fixture
from guardnet.eval.attacks import make_attack
from guardnet.eval.metrics import detection_accuracy, robust_accuracy
from guardnet.guard import GuardedModel, GuardResult, Normalize
from guardnet.layers import ContraNetLayer, SAECLayer
from guardnet.weights import from_pretrained

__all__ = ["load_demo_classifier", "run_demo"]

_DEMO_WEIGHTS = "mnist-cnn"
_DEMO_CONTRANET = "contranet-mnist"


def load_demo_classifier() -> nn.Module:
    """The shipped MNIST classifier (MnistCNN, normalisation excluded: it takes normalised input).

    Loaded with ``from_pretrained("mnist-cnn")``: from a clone's ``hub/`` mirror (offline), else
    from the Hugging Face Hub or its cache; safetensors with strict key matching.

    Returns:
        The MnistCNN in eval mode.

    Raises:
        WeightsError: The weights cannot be found or fetched, are damaged or do not match the
            architecture.
    """
    return from_pretrained(_DEMO_WEIGHTS)


def _rates(result: GuardResult, labels: Tensor) -> dict[str, float]:
    correct = result.classifier_labels == labels
    fooled = ~correct
    return {
        "accuracy": float(correct.float().mean()),
        "rejected": float(result.rejected.float().mean()),
        "acc_dec": detection_accuracy(correct, result.rejected),
        # Successful attacks the guard catches (on clean data: misclassified ones rejected).
        "tpr": float(result.rejected[fooled].float().mean()) if bool(fooled.any()) else 0.0,
        "acc_rob": robust_accuracy(fooled, result.rejected),
    }


def run_demo(
    *,
    target_fpr: float = 0.05,
    budget: str = "equal",
    noise: float = 0.3,
    eps: tuple[float, ...] = (0.1, 0.3),
    limit: int | None = None,
    device: str = "cpu",
    seed: int = 0,
    grid: str | None = None,
) -> None:
    """Run the demo and print its report.

    The guard is MixDefense's: SAEC before the classifier, ContraNet after it (both shipped,
    trained on MNIST), thresholds from a joint 5% FPR budget on the clean validation fixture.

    Args:
        target_fpr: the joint false-positive budget on the clean validation fixture.
        budget: how the budget is split over the scores: ``"equal"`` shares, or ``"runner_up"``
            (chosen on the validation images under their runner-up labels, see
            :meth:`GuardedModel.calibrate`).
        noise: amplitude of the uniform noise row (0-1 scale).
        eps: PGD-L-inf budgets of the attack rows (0-1 scale); the attack is
            ``make_attack("pgd", ...)`` with its defaults (50 steps of ``2.5 eps / 50``, random
            start), on the bare classifier.
        limit: use only the first ``limit`` test images.
        device: torch device to run on.
        seed: seed of the noise and of PGD's random start.
        grid: where to write the rebuild grid PNG (default: the temp directory).

    Raises:
        ValueError: ``budget`` is neither ``"equal"`` nor ``"runner_up"``.
    """
    if budget not in ("equal", "runner_up"):
        raise ValueError(f"budget must be 'equal' or 'runner_up', got {budget!r}")
    info = dataset_info("mnist")
    val_images, _ = load_fixture("mnist-val")
    test_images, test_labels = load_fixture("mnist")
    if limit is not None:
        test_images, test_labels = test_images[:limit], test_labels[:limit]
    val_images, test_images, test_labels = (
        t.to(device) for t in (val_images, test_images, test_labels)
    )
    if device == "cpu":
        torch.set_flush_denormal(True)
    classifier = load_demo_classifier()
    contranet = ContraNetLayer.from_pretrained(_DEMO_CONTRANET)
    guard = GuardedModel(
        classifier,
        [SAECLayer(), contranet],
        mean=info.mean,
        std=info.std,
        num_classes=info.num_classes,
    ).to(device)

    print("guardnet demo: MNIST classifier (MnistCNN) guarded by SAEC -> classifier -> ContraNet")
    print(
        f"data: {len(val_images)} clean validation images (calibration), {len(test_images)} test "
        "images (shipped fixtures)\n"
    )
    report = guard.calibrate(
        val_images,
        target_fpr=target_fpr,
        budget="runner_up" if budget == "runner_up" else None,
        progress=False,
    )
    print(report)
    expected = report.test_interval(len(test_images))
    if expected is not None:
        print(
            f"  95% of calibrations reject {expected[0]:.1%}-{expected[1]:.1%} of "
            f"{len(test_images)} new clean images"
        )
    print()

    generator = torch.Generator().manual_seed(seed)
    uniform = torch.rand(test_images.shape, generator=generator).to(device)
    noisy = (test_images + (2 * uniform - 1) * noise).clamp(0, 1)
    sets = {"clean": test_images, f"uniform noise {noise:g}": noisy}
    normalized = nn.Sequential(Normalize(info.mean, info.std), classifier).to(device)
    for e in eps:
        attack = make_attack("pgd", normalized, eps=e, seed=seed)
        sets[f"PGD-Linf eps {e:g}"] = attack(test_images, test_labels)

    names = list(guard.rejectors)
    print(
        f"{'input':<20} {'n':>5} {'acc':>7} {'rejected':>9} {'Acc_dec':>8} {'TPR':>7} "
        f"{'Acc_rob':>8}   rejected by " + " ".join(f"{n.split('.')[-1]:>6}" for n in names)
    )
    results = {}
    for name, images in sets.items():
        result = results[name] = guard(images)
        r = _rates(result, test_labels)
        per = " ".join(f"{float(result.layer_rejected[n].float().mean()):>6.1%}" for n in names)
        # Acc_dec is a clean-data metric, TPR an attack metric: each only on its rows.
        tpr = "" if name == "clean" else f"{r['tpr']:.1%}"
        acc_dec = f"{r['acc_dec']:.1%}" if name == "clean" else ""
        print(
            f"{name:<20} {len(test_labels):>5} {r['accuracy']:>7.1%} {r['rejected']:>9.1%} "
            f"{acc_dec:>8} {tpr:>7} {r['acc_rob']:>8.1%}   {'':>12}{per}"
        )
    print(
        "\nacc: bare classifier accuracy; Acc_dec: correct and passed, or wrong and rejected; "
        "TPR: share of misclassified inputs rejected; Acc_rob: 1 - share that fool the "
        "classifier and pass the guard."
    )

    clean = results["clean"]
    print("\nfirst 8 clean test images:")
    print(f"  labels    {clean.labels[:8].tolist()}")
    print(f"  truth     {test_labels[:8].tolist()}")
    print(f"  rejected  {[int(r) for r in clean.rejected[:8]]}")

    # Timing: the whole guard against the bare classifier, same batch, after a warm-up.
    def timed(fn, x: Tensor) -> float:
        fn(x)
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            with torch.inference_mode():
                fn(x)
            if x.is_cuda:
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
        return best

    batch = test_images[:256]
    guard_s = timed(guard, batch)
    bare_s = timed(lambda x: guard.classify(x), batch)
    n = len(batch)
    print(
        f"\ntiming on {device}, batch {n}: guard {guard_s / n * 1e3:.3f} ms/image, bare "
        f"classifier {bare_s / n * 1e3:.3f} ms/image"
    )

    path = Path(grid) if grid else Path(tempfile.gettempdir()) / "guardnet-demo-rebuilds.png"
    contranet.reconstruction_grid(test_images[:8], test_labels[:8], other_labels=9, path=path)
    print(
        f"\nreconstruction grid: {path}\n  each row: a test image, its rebuild under its true "
        "label, then under the 9 other labels"
    )
