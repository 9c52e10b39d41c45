"""``guardnet demo``: an offline tour of the guard on shipped MNIST data.

Everything it needs ships inside the package: a clean validation fixture (for calibration), a
test fixture (for the numbers) and a small MNIST classifier trained by
``scripts/train_quick_classifiers.py``.
"""

from __future__ import annotations

import logging
import time

import torch
from torch import Tensor, nn

from guardnet.data import dataset_info, load_fixture
from guardnet.guard import GuardedModel, GuardResult, Normalize
from guardnet.hub import load_pretrained
from guardnet.layers import SAECLayer

__all__ = ["load_demo_classifier", "run_demo"]

_DEMO_WEIGHTS = "mnist-cnn"


def load_demo_classifier() -> nn.Module:
    """The shipped MNIST classifier (MnistCNN, normalisation excluded: it takes normalised input).

    Loaded with ``load_pretrained("mnist-cnn")`` from the folder shipped in the package (offline),
    safetensors with strict key matching.

    Returns:
        The MnistCNN in eval mode.

    Raises:
        WeightsError: The shipped weights are missing, damaged or do not match the architecture.
    """
    model, _ = load_pretrained(_DEMO_WEIGHTS)
    return model


def _pgd(classifier: nn.Module, images: Tensor, labels: Tensor, eps: float, seed: int) -> Tensor:
    # torchattacks imports torch.utils.cpp_extension, which warns about CUDA on CPU machines.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    import torchattacks

    torch.manual_seed(seed)
    attack = torchattacks.PGD(classifier, eps=eps, alpha=eps / 10, steps=40, random_start=True)
    return attack(images, labels)


def _row(name: str, result: GuardResult, labels: Tensor, guard_name: str = "saec") -> str:
    correct = result.labels == labels
    accepted = ~result.rejected
    scores = result.scores[guard_name]
    return (
        f"{name:<22} {len(labels):>5} {float(correct.float().mean()):>9.1%} "
        f"{float(result.rejected.float().mean()):>9.1%} "
        f"{float((correct & accepted).float().mean()):>13.1%} {float(scores.median()):>12.3e}"
    )


def run_demo(
    *,
    target_fpr: float = 0.05,
    noise: float = 0.3,
    eps: float = 0.3,
    limit: int | None = None,
    device: str = "cpu",
    seed: int = 0,
) -> None:
    """Run the demo and print its report."""
    info = dataset_info("mnist")
    val_images, _ = load_fixture("mnist-val")
    test_images, test_labels = load_fixture("mnist")
    if limit is not None:
        test_images, test_labels = test_images[:limit], test_labels[:limit]
    val_images, test_images, test_labels = (
        t.to(device) for t in (val_images, test_images, test_labels)
    )
    classifier = load_demo_classifier()
    guard = GuardedModel(
        classifier, [SAECLayer()], mean=info.mean, std=info.std, num_classes=info.num_classes
    ).to(device)

    print("guardnet demo: MNIST classifier (MnistCNN) guarded by SAEC")
    print(
        f"data: {len(val_images)} clean validation images (calibration), {len(test_images)} test "
        "images (shipped fixtures)\n"
    )
    report = guard.calibrate(val_images, target_fpr=target_fpr, progress=False)
    print(report, "\n")

    generator = torch.Generator().manual_seed(seed)
    uniform = torch.rand(test_images.shape, generator=generator).to(device)
    noisy = (test_images + (2 * uniform - 1) * noise).clamp(0, 1)
    sets = {"clean": test_images, f"uniform noise {noise:g}": noisy}
    try:
        normalized = nn.Sequential(Normalize(info.mean, info.std), classifier).to(device).eval()
        sets[f"PGD-Linf eps {eps:g}"] = _pgd(normalized, test_images, test_labels, eps, seed)
    except ImportError:
        print("(torchattacks is not installed: `pip install guardnet[eval]` adds the attack)\n")

    print(
        f"{'input':<22} {'n':>5} {'accuracy':>9} {'rejected':>9} {'correct&pass':>13} "
        f"{'median score':>12}"
    )
    results = {}
    for name, images in sets.items():
        results[name] = guard(images)
        print(_row(name, results[name], test_labels))

    clean = results["clean"]
    print("\nfirst 8 clean test images:")
    print(f"  labels    {clean.labels[:8].tolist()}")
    print(f"  truth     {test_labels[:8].tolist()}")
    print(f"  rejected  {[int(r) for r in clean.rejected[:8]]}")
    print(f"  scores    {[f'{s:.2e}' for s in clean.scores['saec'][:8].tolist()]}")

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

    guard_s = timed(guard, test_images)
    bare_s = timed(lambda x: guard.classify(x), test_images)
    n = len(test_images)
    print(
        f"\ntiming on {device}, batch {n}: guard {guard_s / n * 1e3:.3f} ms/image, bare "
        f"classifier {bare_s / n * 1e3:.3f} ms/image (SAEC + checks add "
        f"{(guard_s - bare_s) / n * 1e3:.3f} ms/image)"
    )
