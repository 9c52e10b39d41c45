"""How far PGD examples of one classifier fool another (transfer), per budget.

ContraNet's DMM must see an adversarial input's true class with F_real, a net the attacker
never touched; this measures how much an attack on the protected classifier carries over to
an independently trained net. Attacks: PGD-L-inf (``--steps`` steps, random
start) on the seeded test images that the source classifier gets right.

Usage:
    python benchmarks/transfer_attack.py --dataset cifar10 --source resnet20-cifar10jpeg-ft \
        --target resnet56-cifar10-akamaster --eps 0.0078431 0.0156863 0.0313725 --limit 500
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from guardnet.data import load_split
from guardnet.eval.measure import pgd_examples
from guardnet.recipes import build_classifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--source", required=True, help="the attacked classifier")
    parser.add_argument("--target", required=True, help="the classifier the examples go to")
    parser.add_argument("--eps", type=float, nargs="+", required=True, help="budgets, 0-1")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--limit", type=int, default=500, help="seeded test images")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    test = load_split(args.dataset, "test", limit=args.limit)
    source, target = build_classifier(args.source), build_classifier(args.target)
    x, y = test.images, test.labels
    with torch.no_grad():
        right = source(x).argmax(dim=1) == y
        report = {
            "dataset": args.dataset,
            "source": args.source,
            "target": args.target,
            "test_images": y.shape[0],
            "source_clean_accuracy": round(right.float().mean().item(), 4),
            "target_clean_accuracy": round((target(x).argmax(dim=1) == y).float().mean().item(), 4),
            "attacked": int(right.sum()),
            "steps": args.steps,
            "budgets": {},
        }
    x, y = x[right], y[right]
    for eps in args.eps:
        tick = time.perf_counter()
        adv = pgd_examples(source, x, y, eps, steps=args.steps, seed=args.seed)
        with torch.no_grad():
            report["budgets"][f"{eps:g}"] = {
                "source_fooled": round((source(adv).argmax(dim=1) != y).float().mean().item(), 4),
                "target_accuracy": round((target(adv).argmax(dim=1) == y).float().mean().item(), 4),
                "seconds": round(time.perf_counter() - tick, 1),
            }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
