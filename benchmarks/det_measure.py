"""DeT on held-out test images: clean, black-box and gray-box accuracy (the paper's tables).

- clean: the bare classifier and the classifier behind DeT (shipped settings);
- black-box (paper Table 2): FGSM, BIM, DeepFool and C&W-L2 examples crafted on the bare
  classifier, classified with and without DeT;
- gray-box (paper Fig. 5 and 6): C&W-L2 examples crafted through one reformer of the Reformer
  List and the classifier (the attacker knows both), classified by DeT and by that reformer
  alone in front of the classifier (MagNet's reformer).

The white-box (BPDA + EOT) evaluation is ``guardnet eval`` on the guard (see docs/det.md).

Example:
    python benchmarks/det_measure.py --det det-mnist --classifier mnist-cnn --dataset mnist \
        --fgsm 0.1 --bim 0.05 0.1 --cw-kappas 0 20 --gray-kappas 0 10 20 30 40 \
        --json benchmarks/results/det_mnist.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from guardnet import DeTReformer
from guardnet.data.datasets import load_split
from guardnet.eval.attacks.bim import BIM
from guardnet.eval.attacks.fgsm import FGSM
from guardnet.eval.attacks.foolbox_attacks import CW, DeepFool
from guardnet.layers.base import LayerInput
from guardnet.recipes import build_classifier


class Through(nn.Module):
    def __init__(self, reformer: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.reformer, self.classifier = reformer, classifier

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.reformer(x))


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return float((torch.cat([model(c) for c in x.split(500)]).argmax(1) == y).float().mean())


def det_accuracy(layer: DeTReformer, classifier: nn.Module, x: Tensor, y: Tensor) -> float:
    labels = []
    with torch.no_grad():
        for chunk in x.split(100):
            labels.append(layer(LayerInput(images=chunk, classifier=classifier)).labels)
    return float((torch.cat(labels) == y).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--det", required=True, help="shipped DeT reformers (name or folder)")
    parser.add_argument("--classifier", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--test-limit", type=int, default=500)
    parser.add_argument("--fgsm", type=float, nargs="*", default=[])
    parser.add_argument("--bim", type=float, nargs="*", default=[])
    parser.add_argument("--deepfool", action="store_true")
    parser.add_argument("--cw-kappas", type=float, nargs="*", default=[])
    parser.add_argument("--gray-kappas", type=float, nargs="*", default=[])
    parser.add_argument("--gray-limit", type=int, default=200)
    parser.add_argument("--cw-steps", type=int, default=100)
    parser.add_argument(
        "--cw-lr", type=float, default=0.1, help="C&W's Adam step (0.01 fails at high kappa)"
    )
    parser.add_argument("--cw-const", type=float, default=1.0, help="C&W's initial constant")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    classifier = build_classifier(args.classifier)  # [0, 1] images in
    layer = DeTReformer.from_pretrained(args.det).eval()
    cw_args = {
        "steps": args.cw_steps,
        "binary_search_steps": 5,
        "lr": args.cw_lr,
        "initial_const": args.cw_const,
    }
    data = load_split(args.dataset, "test", limit=args.test_limit)
    x, y = data.images, data.labels
    out: dict[str, Any] = {
        "det": args.det,
        "settings": layer.get_config() | {"reformers": layer.reformers.names},
        "classifier": args.classifier,
        "dataset": args.dataset,
        "test_images": len(x),
        "cw": cw_args,
        "clean": {"bare": accuracy(classifier, x, y), "det": det_accuracy(layer, classifier, x, y)},
    }
    print(json.dumps(out["clean"]), flush=True)
    black: dict[str, Any] = {}
    crafted: list[tuple[str, Tensor]] = []
    crafted += [(f"fgsm_{e:g}", FGSM(classifier, eps=e)(x, y)) for e in args.fgsm]
    crafted += [
        (f"bim_{e:g}", BIM(classifier, eps=e, alpha=e / 10, steps=20)(x, y)) for e in args.bim
    ]
    if args.deepfool:
        crafted.append(("deepfool", DeepFool(classifier)(x, y)))
    for kappa in args.cw_kappas:
        adv = CW(classifier, confidence=kappa, **cw_args)(x, y)
        crafted.append((f"cw_kappa_{kappa:g}", adv))
    for name, adv in crafted:
        black[name] = {
            "bare": accuracy(classifier, adv, y),
            "det": det_accuracy(layer, classifier, adv, y),
        }
        print(name, json.dumps(black[name]), flush=True)
    out["black_box"] = black
    if args.gray_kappas:
        gx, gy = x[: args.gray_limit], y[: args.gray_limit]
        known = layer.reformers[layer.voters[0]]
        gray: dict[str, Any] = {
            "known_reformer": layer.reformers.names[layer.voters[0]],
            "images": len(gx),
        }
        for kappa in args.gray_kappas:
            adv = CW(Through(known, classifier).eval(), confidence=kappa, **cw_args)(gx, gy)
            gray[f"kappa_{kappa:g}"] = {
                "reformer_alone": accuracy(Through(known, classifier), adv, gy),
                "det": det_accuracy(layer, classifier, adv, gy),
                "bare": accuracy(classifier, adv, gy),
            }
            print("gray", kappa, json.dumps(gray[f"kappa_{kappa:g}"]), flush=True)
        out["gray_box"] = gray
    out["seconds"] = time.perf_counter() - start
    out["threads"] = args.threads
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
