"""Measure a trained ContraNet, alone and in the full SAEC + ContraNet guard, on real data.

Protocol:
- thresholds: ``GuardedModel.calibrate`` (joint FPR budget over every score) on the clean
  *validation* split at each ``--fpr`` budget (the first is the headline; the others reuse the
  same adversarial examples); never on test or attack data. ``--budget`` names how the joint
  budget is split over the scores: ``equal`` shares, or ``runner_up`` (chosen on the same clean
  validation images rebuilt under the classifier's second most likely class);
- clean test split: bare accuracy, the guard's FPR and Acc_dec (correct and passed, or wrong and
  rejected, over all clean images);
- attacks (torchattacks, an independent library) on the correctly classified test images:
  untargeted PGD-L-inf with ``--steps`` steps (step size eps/4 ... 2.5 * eps / steps), and
  C&W-L2 (confidence 0); TPR = share of *successful* adversarial examples the guard rejects;
  Acc_rob = 1 - (fooled and passed) / all attacked images; AUROC per score (clean test vs
  successful adversarial examples).

Usage:
    python scripts/measure_contranet.py --dataset mnist --contranet runs/contranet-mnist/model \
        --classifier mnist-cnn --eps 0.1 0.3 --json benchmarks/results/contranet_mnist.json

``--attack-cache DIR`` keeps the adversarial examples (safetensors, keyed by the attack settings,
the classifier's weights and the attacked images), so that several ContraNets protecting one
classifier are measured on the same examples without re-running the attacks.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from guardnet import ContraNetLayer, GuardedModel, SAECLayer
from guardnet.calibration import calibrate_guard, collect_clean_scores
from guardnet.data import dataset_info, load_split
from guardnet.eval import auroc, detection_accuracy, robust_accuracy
from guardnet.guard import Normalize
from guardnet.weights import from_pretrained


def batched(attack, x: Tensor, y: Tensor, size: int = 250) -> Tensor:
    return torch.cat([attack(a, b) for a, b in zip(x.split(size), y.split(size), strict=True)])


def pgd_examples(
    model: nn.Module, x: Tensor, y: Tensor, eps: float, *, steps: int, seed: int
) -> Tensor:
    """Untargeted torchattacks PGD-L-inf from a random start, step size eps/4 ... 2.5 eps/steps."""
    import torchattacks

    torch.manual_seed(seed)
    alpha = max(eps / 4, 2.5 * eps / steps)
    attack = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True)
    return batched(attack, x, y)


class _ScriptAttack:
    """One of this script's attacks in the shape :class:`AdversarialCache` keys and runs."""

    def __init__(self, name: str, model: nn.Module, settings: dict, make) -> None:
        self.name = name.replace("/", "_")  # part of a file name
        self.model = model
        self.settings = settings
        self.make = make

    def config(self) -> dict:
        return {"attack": self.name, "params": self.settings, "torch": torch.__version__}

    def __call__(self, images: Tensor, labels: Tensor) -> Tensor:
        return self.make(images, labels)


def cached_examples(
    directory: str | None, name: str, settings: dict, model: nn.Module, x: Tensor, y: Tensor, make
) -> Tensor:
    """``make(x, y)``, or its earlier result for the same attack, model weights and inputs.

    Attacks target the classifier only, so every ContraNet measured against one classifier can
    share them (guardnet's :class:`AdversarialCache`: safetensors, a mismatch recomputes).
    """
    if directory is None:
        return make(x, y)
    from guardnet.eval.attacks.cache import AdversarialCache

    return AdversarialCache(directory).run(_ScriptAttack(name, model, settings, make), x, y)


def evaluate(guard: GuardedModel, clean: Tensor, labels: Tensor, attacks: dict) -> dict:
    result = guard(clean)
    correct = result.classifier_labels == labels
    out = {
        "clean_accuracy": float(correct.float().mean()),
        "fpr": float(result.rejected.float().mean()),
        "acc_dec": detection_accuracy(correct, result.rejected),
        "per_score_fpr": {k: float(v.float().mean()) for k, v in result.layer_rejected.items()},
        "attacks": {},
    }
    clean_scores = result.scores
    for name, (adv, adv_labels) in attacks.items():
        r = guard(adv)
        # Attacks ran on correctly classified images: fooled = a successful example.
        success = r.classifier_labels != adv_labels
        n_success = int(success.sum())
        entry = {
            "attacked": len(adv_labels),
            "successful": n_success,
            "attack_success_rate": n_success / max(len(adv_labels), 1),
            "tpr": float(r.rejected[success].float().mean()) if n_success else float("nan"),
            "acc_rob": robust_accuracy(success, r.rejected),
            "per_score_tpr": {
                k: float(v[success].float().mean()) if n_success else float("nan")
                for k, v in r.layer_rejected.items()
            },
            "auroc": {},
        }
        if n_success:
            for key, (layer, _) in guard.rejectors.items():
                entry["auroc"][key] = auroc(
                    clean_scores[key],
                    r.scores[key][success],
                    higher_is_suspicious=layer.higher_is_suspicious,
                )
        out["attacks"][name] = entry
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--contranet", required=True, help="pretrained name or folder")
    parser.add_argument("--classifier", required=True, help="pretrained classifier name")
    parser.add_argument("--eps", type=float, nargs="+", required=True, help="PGD budgets, 0-1")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--cw-steps", type=int, default=100, help="0 skips C&W")
    parser.add_argument(
        "--fpr", type=float, nargs="+", default=[0.05], help="validation FPR budgets"
    )
    parser.add_argument(
        "--budget",
        nargs="+",
        choices=["equal", "runner_up"],
        default=["equal"],
        help="how the joint budget is split over the scores (each is measured; the first is "
        "the headline): equal shares, or chosen on the clean validation images under their "
        "runner-up labels (GuardedModel.calibrate(budget='runner_up'))",
    )
    parser.add_argument("--val-limit", type=int, default=2000)
    parser.add_argument("--test-limit", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    parser.add_argument("--grid", default=None, help="write a reconstruction grid PNG here")
    parser.add_argument(
        "--attack-cache",
        default=None,
        help="folder of adversarial examples reused across ContraNets of one classifier",
    )
    args = parser.parse_args()
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    import torchattacks

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    began = time.perf_counter()
    info = dataset_info(args.dataset)
    val = load_split(info.name, "val", limit=args.val_limit)
    test = load_split(info.name, "test", limit=args.test_limit)
    classifier = from_pretrained(args.classifier)
    cfg = classifier.pretrained_config
    model = nn.Sequential(Normalize(cfg["mean"], cfg["std"]), classifier).eval()
    net = ContraNetLayer.from_pretrained(args.contranet).net

    guards = {
        "contranet": GuardedModel(model, [ContraNetLayer(net)], max_batch_size=500),
        "saec+contranet": GuardedModel(
            model, [SAECLayer(), ContraNetLayer(net)], max_batch_size=500
        ),
    }
    x, y = test.images, test.labels
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    xc, yc = x[correct], y[correct]
    attacks: dict[str, tuple[Tensor, Tensor]] = {}
    timings = {}
    for eps in args.eps:
        label = f"{eps:g}" if info.name == "mnist" else f"{round(eps * 255)}/255"
        name = f"pgd_linf_{label}"
        tick = time.perf_counter()
        adv = cached_examples(
            args.attack_cache,
            name,
            {"eps": eps, "steps": args.steps, "seed": args.seed},
            model,
            xc,
            yc,
            lambda a, b, eps=eps: pgd_examples(model, a, b, eps, steps=args.steps, seed=args.seed),
        )
        attacks[name] = (adv, yc)
        timings[name] = time.perf_counter() - tick
    if args.cw_steps:

        def carlini_wagner(images: Tensor, labels: Tensor) -> Tensor:
            torch.manual_seed(args.seed)
            attack = torchattacks.CW(model, c=1.0, kappa=0.0, steps=args.cw_steps, lr=0.01)
            return batched(attack, images, labels)

        tick = time.perf_counter()
        attacks["cw_l2"] = (
            cached_examples(
                args.attack_cache,
                "cw_l2",
                {"steps": args.cw_steps, "seed": args.seed},
                model,
                xc,
                yc,
                carlini_wagner,
            ),
            yc,
        )
        timings["cw_l2"] = time.perf_counter() - tick

    # Attacks target the classifier only, so one set of adversarial examples serves every budget.
    # Validation scores are computed once per guard (under runner-up labels too if asked for).
    val_scores = {
        name: collect_clean_scores(guard, val.images, batch_size=500, progress=False)
        for name, guard in guards.items()
    }
    runner_up_scores = {
        name: collect_clean_scores(
            guard, val.images, batch_size=500, progress=False, labels="runner_up"
        )
        for name, guard in guards.items()
        if "runner_up" in args.budget
    }
    by_budget: dict[str, dict] = {}
    for rule in args.budget:
        by_fpr = by_budget.setdefault(rule, {})
        for fpr in args.fpr:
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
            results = {name: evaluate(guard, x, y, attacks) for name, guard in guards.items()}
            by_fpr[f"{fpr:g}"] = {"calibration": calibration, "results": results}
    by_fpr = by_budget[args.budget[0]]
    headline = by_fpr[f"{args.fpr[0]:g}"]
    report = {
        "dataset": info.display_name,
        "contranet": args.contranet,
        "classifier": args.classifier,
        "target_fpr": args.fpr[0],
        "val_images": len(val),
        "test_images": len(test),
        "attacked_images": int(correct.sum()),
        "attack_settings": {
            "pgd": {"steps": args.steps, "random_start": True, "library": "torchattacks"},
            "cw_l2": {"c": 1.0, "kappa": 0.0, "steps": args.cw_steps, "lr": 0.01},
        },
        "calibration": headline["calibration"],
        "results": headline["results"],
        "budget": args.budget[0],
        "by_target_fpr": by_fpr,
        "by_budget": by_budget,
        "attack_seconds": timings,
        "attack_cache": args.attack_cache,
        "seconds": time.perf_counter() - began,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
    }
    for rule, fpr_key, point in (
        (r, f, p) for r, points in by_budget.items() for f, p in points.items()
    ):
        print(f"validation FPR budget {fpr_key}, split {rule}")
        for name, res in point["results"].items():
            shares = point["calibration"][name]["budget"]
            if shares is not None:
                print(f"{name}: shares " + ", ".join(f"{k} {v:g}" for k, v in shares.items()))
            print(
                f"{name}: clean acc {res['clean_accuracy']:.2%}  FPR {res['fpr']:.2%}  "
                f"Acc_dec {res['acc_dec']:.2%}"
            )
            for attack_name, a in res["attacks"].items():
                print(
                    f"  {attack_name:<16} success {a['attack_success_rate']:.1%}"
                    f"  TPR {a['tpr']:.2%}  Acc_rob {a['acc_rob']:.2%}  per score "
                    + " ".join(f"{k}={v:.1%}" for k, v in a["per_score_tpr"].items())
                )
    if args.grid:
        layer = guards["contranet"].layers["contranet"]
        layer.reconstruction_grid(x[:8], y[:8], other_labels=9, path=args.grid)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
