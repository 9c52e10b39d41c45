"""The effect of DeT's cross training on transferability, per pair of the Reformer List (Fig. 4).

For every ordered pair (i, j) of the shipped Reformer List: C&W-L2 examples crafted through
``classifier o R_i`` on validation images, and the accuracy of ``classifier o R_j`` on them,
per kappa, with the reformers of the run's last plain epoch ("before") and the cross-trained
ones ("after"). Also the attack's own success (``classifier o R_i`` fooled), so a failed attack
is not read as low transferability.

Example:
    python benchmarks/det_cross_effect.py --run runs/reformers-mnist --det det-mnist \
        --classifier mnist-cnn --dataset mnist --kappas 0 20 40 \
        --json benchmarks/results/det_cross_effect_mnist.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from guardnet.data.datasets import load_split
from guardnet.eval.attacks.foolbox_attacks import CW
from guardnet.nets.reformer import ReformerSet
from guardnet.recipes import build_classifier
from guardnet.train.checkpoint import load_checkpoint
from guardnet.weights import from_pretrained


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, type=Path, help="the reformer training run")
    parser.add_argument("--det", required=True, help="the shipped DeT reformers (their list)")
    parser.add_argument("--classifier", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--kappas", type=float, nargs="+", default=[0, 10, 20, 30, 40])
    parser.add_argument("--limit", type=int, default=100, help="validation images")
    parser.add_argument("--cw-steps", type=int, default=100)
    parser.add_argument("--cw-lr", type=float, default=0.1)
    parser.add_argument("--cw-const", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    classifier = build_classifier(args.classifier)
    after = from_pretrained(args.run / "model")
    config = after.pretrained_config
    plain = ReformerSet(**after.arch_args())
    epoch = config["train_settings"]["epochs"]
    plain.load_state_dict(
        load_checkpoint(args.run / "checkpoints" / f"epoch-{epoch:04d}")["reformers"]
    )
    plain.eval()
    shipped = from_pretrained(args.det)
    voters = shipped.pretrained_config["det"]["voters"]
    names = [shipped.names[v] for v in voters]
    index = [after.names.index(n) for n in names]
    data = load_split(args.dataset, "val", limit=args.limit)
    x, y = data.images, data.labels
    cw = {
        "steps": args.cw_steps,
        "binary_search_steps": 5,
        "lr": args.cw_lr,
        "initial_const": args.cw_const,
    }
    out: dict[str, Any] = {
        "run": str(args.run),
        "det": args.det,
        "reformer_list": names,
        "images": len(x),
        "cw": cw,
        "kappas": args.kappas,
        "pairs": [],
    }
    for i, j in itertools.permutations(range(len(index)), 2):
        for label, nets in (("before", plain), ("after", after)):
            source = nn.Sequential(nets[index[i]], classifier).eval()  # classifier o R_i
            target = nn.Sequential(nets[index[j]], classifier).eval()
            row: dict[str, Any] = {
                "crafted_through": names[i],
                "judged_by": names[j],
                "training": label,
                "success": [],
                "accuracy": [],
            }
            for kappa in args.kappas:
                adv = CW(source, confidence=kappa, **cw)(x, y)
                with torch.no_grad():
                    row["success"].append(float((source(adv).argmax(1) != y).float().mean()))
                    row["accuracy"].append(float((target(adv).argmax(1) == y).float().mean()))
            out["pairs"].append(row)
            print(json.dumps(row), flush=True)
    out["seconds"] = time.perf_counter() - start
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
