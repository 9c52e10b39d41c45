"""Measure SAEC on real data: score separation and TPR at a calibrated FPR, and its speed.

Protocol (per dataset):
- threshold: ``GuardedModel.calibrate`` on the clean *validation* split at ``--fpr``;
- FPR: on the clean test split; TPR: on test images with uniform noise (values kept as float,
  and also rounded to 8-bit levels as a saved image would be) and with PGD-L-inf examples from
  ``guardnet.eval.measure.pgd_examples`` against the quick classifier of
  ``benchmarks/train_quick_classifiers.py``;
- separation: AUROC of clean test vs each perturbed set;
- the paper's own calibration (clean training images vs noisy copies, best Youden J) is
  reported beside it;
- speed: images/s of the SAEC layer at batch 256 (torch.utils.benchmark).

Usage:
    python benchmarks/saec_detection.py --datasets mnist gtsrb cifar10 --models runs/quick \
        --json benchmarks/results/saec_detection.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
import torch.utils.benchmark as benchmark
from safetensors.torch import load_file
from torch import Tensor, nn

from guardnet import GuardedModel, SAECLayer
from guardnet.data import dataset_info, load_split
from guardnet.eval import auroc, tpr_at_threshold
from guardnet.eval.measure import pgd_examples
from guardnet.guard import Normalize
from guardnet.nets import MnistCNN, SmallConvNet

NOISE = {"mnist": [0.1, 0.2, 0.3], "colour": [4 / 255, 8 / 255, 16 / 255, 32 / 255]}
PGD_EPS = {"mnist": [0.1, 0.3], "colour": [8 / 255, 16 / 255, 32 / 255]}


def load_quick_model(dataset: str, models: Path) -> nn.Module:
    info = dataset_info(dataset)
    net = MnistCNN(info.num_classes) if dataset == "mnist" else SmallConvNet(info.num_classes)
    model = nn.Sequential(Normalize(info.mean, info.std), net)
    model.load_state_dict(load_file(str(models / dataset / "model.safetensors")), strict=True)
    return model.eval()


def eps_label(dataset: str, eps: float) -> str:
    return f"{eps:g}" if dataset == "mnist" else f"{round(eps * 255)}/255"


def speed(layer: SAECLayer, channels: int, size: int, batch: int = 256) -> float:
    x = torch.rand(batch, channels, size, size)
    timer = benchmark.Timer(
        stmt="layer.score_images(x)",
        globals={"layer": layer, "x": x},
        num_threads=torch.get_num_threads(),  # Timer's default is 1 thread
    )
    measurement = timer.blocked_autorange(min_run_time=2.0)
    return batch / measurement.median


def measure(dataset: str, args: argparse.Namespace) -> dict:
    info = dataset_info(dataset)
    kind = "mnist" if dataset == "mnist" else "colour"
    val = load_split(dataset, "val")
    test = load_split(dataset, "test")
    train = load_split(dataset, "train", limit=args.train_limit)
    model = load_quick_model(dataset, args.models)
    guard = GuardedModel(model, [SAECLayer()], num_classes=info.num_classes)
    layer = guard.layers["saec"]
    report = guard.calibrate(val.images, target_fpr=args.fpr, progress=False)
    thr = layer.threshold

    def scores(x: Tensor) -> Tensor:
        return torch.cat([layer.score_images(c) for c in x.split(1024)])

    clean = scores(test.images)
    gen = torch.Generator().manual_seed(args.seed)
    uniform = torch.rand(test.images.shape, generator=gen) * 2 - 1
    rows: list[dict] = [
        {
            "input": "clean test",
            "n": clean.numel(),
            "rejected": tpr_at_threshold(clean, thr, higher_is_suspicious=False),
        }
    ]
    for amp in NOISE[kind]:
        noisy = (test.images + uniform * amp).clamp(0, 1)
        for rounded in (False, True):
            x = noisy.mul(255).round().div(255) if rounded else noisy
            s = scores(x)
            rows.append(
                {
                    "input": f"uniform noise {eps_label(dataset, amp)}"
                    + (" (8-bit)" if rounded else ""),
                    "n": s.numel(),
                    "rejected": tpr_at_threshold(s, thr, higher_is_suspicious=False),
                    "auroc": auroc(clean, s, higher_is_suspicious=False),
                }
            )
    # Attacks on a seeded subset of the test split (PGD is the slow part).
    subset = torch.randperm(len(test), generator=torch.Generator().manual_seed(args.seed))
    subset = subset[: args.attack_limit]
    x_att, y_att = test.images[subset], test.labels[subset]
    with torch.no_grad():
        clean_acc = float((model(x_att).argmax(1) == y_att).float().mean())
    for eps in PGD_EPS[kind]:
        start = time.perf_counter()
        adv = pgd_examples(
            model, x_att, y_att, eps, steps=args.steps, seed=args.seed, alpha=eps / 8
        )
        with torch.no_grad():
            adv_acc = float((model(adv).argmax(1) == y_att).float().mean())
        seconds = time.perf_counter() - start
        for rounded in (False, True):
            x = adv.mul(255).round().div(255) if rounded else adv
            s = scores(x)
            rows.append(
                {
                    "input": f"PGD-Linf {eps_label(dataset, eps)} ({args.steps} steps)"
                    + (" (8-bit)" if rounded else ""),
                    "n": s.numel(),
                    "rejected": tpr_at_threshold(s, thr, higher_is_suspicious=False),
                    "auroc": auroc(clean[subset], s, higher_is_suspicious=False),
                    "classifier_acc_under_attack": adv_acc,
                    "attack_seconds": seconds,
                }
            )
    paper_layer = SAECLayer()
    paper = paper_layer.calibrate_with_noise(train.images, amplitude=NOISE[kind][1], seed=args.seed)
    paper_thr = paper_layer.threshold
    paper["test_fpr"] = tpr_at_threshold(clean, paper_thr, higher_is_suspicious=False)
    noisy = (test.images + uniform * NOISE[kind][1]).clamp(0, 1)
    paper["test_tpr_noise"] = tpr_at_threshold(scores(noisy), paper_thr, higher_is_suspicious=False)
    paper["amplitude"] = eps_label(dataset, NOISE[kind][1])
    return {
        "dataset": info.display_name if hasattr(info, "display_name") else dataset,
        "calibration": {
            "split": "val",
            "n": len(val),
            "target_fpr": args.fpr,
            "achieved_fpr": report.overall_fpr,
            "threshold": float(thr),
        },
        "classifier_clean_acc_attack_subset": clean_acc,
        "rows": rows,
        "paper_calibration_on_train": paper,
        "images_per_second_batch256": speed(layer, info.channels, info.image_size),
        "config": layer.config,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--datasets", nargs="+", default=["mnist", "gtsrb", "cifar10"])
    parser.add_argument("--models", type=Path, default=Path("runs/quick"))
    parser.add_argument("--fpr", type=float, default=0.05)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--attack-limit", type=int, default=1000)
    parser.add_argument("--train-limit", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    results = {
        "command": "python benchmarks/saec_detection.py "
        + " ".join(
            f"--{k.replace('_', '-')} {v}"
            for k, v in vars(args).items()
            if k not in ("datasets", "json")
        ),
        "torch": torch.__version__,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "datasets": {},
    }
    for dataset in args.datasets:
        start = time.perf_counter()
        out = measure(dataset, args)
        out["seconds"] = time.perf_counter() - start
        results["datasets"][dataset] = out
        print(
            f"\n== {out['dataset']} == (calibrated on {out['calibration']['n']} clean val "
            f"images at FPR {args.fpr:.0%}; achieved {out['calibration']['achieved_fpr']:.2%})"
        )
        print(f"{'input':<36} {'n':>6} {'rejected':>9} {'AUROC':>7}")
        for row in out["rows"]:
            auc = f"{row['auroc']:.4f}" if "auroc" in row else ""
            print(f"{row['input']:<36} {row['n']:>6} {row['rejected']:>9.1%} {auc:>7}")
        print("paper-style calibration on train:", out["paper_calibration_on_train"])
        print(f"speed: {out['images_per_second_batch256']:,.0f} images/s at batch 256")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
