"""A2D on a shipped classifier: attack costs, AUROC per attack, detectors at a guard FPR.

Clean validation images fit the Box-Cox transforms (``--fit-limit``) and, disjoint from them,
set the thresholds (``--val-limit``); held-out test images (correctly classified) and
adversarial examples crafted on them by standard attacks measure detection. Writes one JSON
with every figure and the settings that made it.

Example:
    python benchmarks/a2d_measure.py --dataset mnist --classifier mnist-cnn \
        --json benchmarks/results/a2d_mnist.json
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch
from torch import Tensor

import guardnet
from guardnet import A2DLayer, GuardedModel
from guardnet.calibration import calibrate_guard
from guardnet.data.datasets import load_split
from guardnet.eval.attacks.bim import BIM
from guardnet.eval.attacks.fgsm import FGSM
from guardnet.eval.attacks.foolbox_attacks import CW, DeepFool
from guardnet.eval.attacks.jsma import JSMA
from guardnet.eval.metrics import auroc
from guardnet.recipes import build_classifier

PAPER_H = -1.2816  # the paper's Z-score threshold (10% FPR per detector under normality)


def images_of(dataset: str, split: str, limit: int, *, offset: int = 0) -> tuple[Tensor, Tensor]:
    data = load_split(dataset, split, limit=limit + offset)
    return data.images[offset : offset + limit], data.labels[offset : offset + limit]


def minimal(name: str, model: torch.nn.Module, x: Tensor, y: Tensor, eps: float) -> Tensor:
    """Per image, the first adversarial point of a growing attack (as foolbox 2's FGSM, with
    its epsilon search, and BIM stopped at the first misclassification): examples just across
    the boundary, like those the A2D paper evaluates."""
    out = x.clone()
    done = torch.zeros(len(x), dtype=torch.bool)
    if name == "fgsm_min":
        x_req = x.clone().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(model(x_req), y)
        (grad,) = torch.autograd.grad(loss, x_req)
        for e in torch.linspace(eps / 20, eps, 20).tolist():
            cand = (x + e * grad.sign()).clamp(0, 1)
            with torch.no_grad():
                new = (model(cand).argmax(1) != y) & ~done
            out[new], done = cand[new], done | new
        return out
    adv = x.clone()
    for _ in range(40):
        adv.requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(model(adv), y)
        (grad,) = torch.autograd.grad(loss, adv)
        adv = torch.min(torch.max(adv.detach() + eps / 20 * grad.sign(), x - eps), x + eps)
        adv = adv.clamp(0, 1)
        with torch.no_grad():
            new = (model(adv).argmax(1) != y) & ~done
        out[new], done = adv[new], done | new
    return out


def craft(name: str, model: torch.nn.Module, x: Tensor, y: Tensor, eps: float) -> Tensor:
    if name in ("fgsm_min", "bim_min"):
        return minimal(name, model, x, y, eps)
    if name == "fgsm":
        return FGSM(model, eps=eps)(x, y)
    if name == "bim":
        return BIM(model, eps=eps, alpha=eps / 10, steps=20)(x, y)
    if name == "cw":
        return CW(model, steps=100, binary_search_steps=5)(x, y)
    if name == "deepfool":
        return DeepFool(model)(x, y)
    if name == "jsma":
        return JSMA(model)(x, y)
    raise ValueError(name)


def copy_fit(source: A2DLayer, target: A2DLayer) -> None:
    """The Box-Cox fit of ``source`` into ``target`` (same attacks, another detector)."""
    for name in ("boxcox_lambda", "cost_mean", "cost_std"):
        getattr(target, name).copy_(getattr(source, name))


def timed_costs(layer: A2DLayer, x: Tensor, classify: Any, **kwargs: Any) -> tuple[Tensor, float]:
    start = time.perf_counter()
    with torch.enable_grad():
        costs = torch.cat([layer.costs(c, classify, **kwargs) for c in x.split(256)])
    return costs, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, choices=["mnist", "cifar10", "gtsrb"])
    parser.add_argument("--classifier", required=True, help="a registered model name")
    parser.add_argument("--attacks", nargs="+", default=["bim", "bim2", "jsma", "dba"])
    parser.add_argument(
        "--settings",
        type=json.loads,
        default=None,
        help="JSON: per attack, settings that replace the preset's",
    )
    parser.add_argument(
        "--adversarial",
        nargs="+",
        default=["fgsm_min", "bim_min", "fgsm", "bim", "cw", "deepfool"],
        help="fgsm/bim: the full budget (high confidence); *_min: stopped at the boundary; "
        "cw, deepfool, jsma: the attacks' own stopping rules",
    )
    parser.add_argument(
        "--eps", type=float, default=None, help="FGSM/BIM budget (default 0.1 MNIST, 8/255 colour)"
    )
    parser.add_argument("--fit-limit", type=int, default=300)
    parser.add_argument("--val-limit", type=int, default=300)
    parser.add_argument("--test-limit", type=int, default=200)
    parser.add_argument("--fpr", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    eps = args.eps if args.eps is not None else (0.1 if args.dataset == "mnist" else 8 / 255)

    model = build_classifier(args.classifier)  # [0, 1] images in
    for p in model.parameters():
        p.requires_grad_(True)
    fit_x, _ = images_of(args.dataset, "val", args.fit_limit)
    val_x, _ = images_of(args.dataset, "val", args.val_limit, offset=args.fit_limit)
    test_x, test_y = images_of(args.dataset, "test", args.test_limit)
    with torch.no_grad():
        correct = model(test_x).argmax(1) == test_y
    test_x, test_y = test_x[correct], test_y[correct]

    out: dict[str, Any] = {
        "dataset": args.dataset,
        "classifier": args.classifier,
        "attacks_as_defense": args.attacks,
        "settings": {},
        "fit_images": len(fit_x),
        "val_images": len(val_x),
        "test_images": len(test_x),
        "adversarial_eps": eps,
        "threads": args.threads,
        "guardnet": guardnet.__version__,
    }
    layer = A2DLayer(args.attacks, preset=args.dataset, settings=args.settings)
    guard = GuardedModel(model, [layer])
    out["settings"] = layer.settings
    fit_costs, fit_s = timed_costs(layer, fit_x, guard.classify)
    layer.fit_costs(fit_costs)
    val_costs, _ = timed_costs(layer, val_x, guard.classify)
    benign, benign_s = timed_costs(layer, test_x, guard.classify)
    out["seconds_per_benign_image"] = benign_s / max(1, len(test_x))
    out["boxcox_lambda"] = layer.boxcox_lambda.tolist()

    adversarial: dict[str, Tensor] = {}
    out["adversarial"] = {}
    for name in args.adversarial:
        start = time.perf_counter()
        adv = craft(name, model, test_x, test_y, eps)
        with torch.no_grad():
            fooled = model(adv).argmax(1) != test_y
        costs, cost_s = timed_costs(layer, adv[fooled], guard.classify)
        adversarial[name] = costs
        out["adversarial"][name] = {
            "success_rate": float(fooled.float().mean()),
            "num_adversarial": int(fooled.sum()),
            "craft_seconds": time.perf_counter() - start - cost_s,
        }

    # Table 3: mean cost (iterations or queries) per benign and per adversarial image
    out["mean_cost"] = {
        a: {
            "benign": float(benign[:, i].mean()),
            **{n: float(c[:, i].mean()) for n, c in adversarial.items() if len(c)},
        }
        for i, a in enumerate(args.attacks)
    }
    # Table 2: AUROC of every attack as defense against every adversarial attack
    z_benign = layer.z_scores(benign)
    out["auroc"] = {
        a: {
            n: auroc(z_benign[:, i], layer.z_scores(c)[:, i], higher_is_suspicious=False)
            for n, c in adversarial.items()
            if len(c)
        }
        for i, a in enumerate(args.attacks)
    }

    # Detectors at the guard's FPR: thresholds from the validation costs only
    detectors: dict[str, Any] = {}
    for detector in ("zscore", "vote"):
        if detector == "vote" and len(args.attacks) < 2:
            continue
        d_layer = A2DLayer(
            args.attacks, preset=args.dataset, settings=args.settings, detector=detector
        )
        copy_fit(layer, d_layer)
        d_guard = GuardedModel(model, [d_layer])
        keys = list(d_guard.rejectors)

        def as_scores(costs: Tensor, d_layer: A2DLayer = d_layer, keys: list = keys) -> dict:
            s = d_layer.scores_from_costs(costs)
            return {k: (s[:, i] if s.ndim == 2 else s) for i, k in enumerate(keys)}

        report = calibrate_guard(
            d_guard, None, target_fpr=args.fpr, scores=as_scores(val_costs), progress=False
        )

        def rejected(costs: Tensor, d_layer: A2DLayer = d_layer) -> Tensor:
            mask = d_layer.reject(d_layer.scores_from_costs(costs))
            return mask.any(1) if mask.ndim == 2 else mask

        entry: dict[str, Any] = {
            "thresholds": d_layer.threshold.tolist(),
            "val_fpr": report.overall_fpr,
            "test_fpr": float(rejected(benign).float().mean()),
            "tpr": {n: float(rejected(c).float().mean()) for n, c in adversarial.items() if len(c)},
        }
        # stop at the threshold: mean cost with and without, same decisions
        limits = d_layer.stop_limits()
        stopped, stopped_s = timed_costs(d_layer, test_x, guard.classify, limits=limits)
        assert torch.equal(rejected(stopped), rejected(benign)), "stop-at-threshold changed"
        entry["stop_limits"] = limits
        entry["mean_benign_cost_stopped"] = stopped.mean(0).tolist()
        entry["mean_benign_cost_full"] = benign.mean(0).tolist()
        entry["seconds_per_benign_image_stopped"] = stopped_s / max(1, len(test_x))
        detectors[detector] = entry
    # The paper's operating point (Table 7): h = -1.2816 on every detector, k = 2 of 4
    if len(args.attacks) == 4:
        z = {n: layer.z_scores(c) for n, c in adversarial.items() if len(c)}
        benign_ok = ((z_benign >= PAPER_H).sum(1) >= 2).float().mean()
        detectors["paper_vote_h_-1.2816_k2"] = {
            "benign_accuracy": float(benign_ok),
            "adversarial_accuracy": {
                n: float(((v >= PAPER_H).sum(1) < 2).float().mean()) for n, v in z.items()
            },
        }
    # K-NN (K = 100) on the validation benign costs and half of every attack's examples;
    # evaluated on the test benign costs and the other half
    if adversarial:
        fit_adv = torch.cat([c[::2] for c in adversarial.values() if len(c)])
        knn = A2DLayer(
            args.attacks, preset=args.dataset, settings=args.settings, detector="knn", knn_k=100
        )
        copy_fit(layer, knn)
        knn.fit_knn(val_costs, fit_adv)
        share_benign = knn.scores_from_costs(benign)
        detectors["knn_k100_majority"] = {
            "fit": f"{len(val_costs)} validation benign + {len(fit_adv)} adversarial (even rows)",
            "test_fpr": float((share_benign < 0.5).float().mean()),
            "tpr": {
                n: float((knn.scores_from_costs(c[1::2]) < 0.5).float().mean())
                for n, c in adversarial.items()
                if len(c[1::2])
            },
        }
    out["detectors"] = detectors
    out["seconds_fit"] = fit_s
    with open(args.json, "w") as f:
        json.dump(out, f, indent=2)
    print(json.dumps({k: out[k] for k in ("mean_cost", "auroc", "detectors")}, indent=1))


if __name__ == "__main__":
    main()
