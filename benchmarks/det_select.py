"""Choose DeT's R0, Reformer List, k, N and eps on validation data, and measure transferability.

From a ``guardnet train reformers`` run (its final cross-trained reformers and, when kept, the
plain-trained ones of its last plain epoch):

1. clean validation accuracy of ``classifier(R_i(x + noise))`` for every reformer;
2. transferability: PGD examples crafted through ``classifier o R_i`` (validation images),
   accuracy of ``classifier o R_j`` on them, for every ordered pair, before and after cross
   training (DeT's Fig. 4 uses C&W; ``--cw-kappas`` adds that curve for the first pair);
3. R0 = the most accurate reformer; for every k, the Reformer List of k others whose clean
   accuracy is within ``--max-drop`` of the best and whose mean pairwise transfer accuracy is
   highest (lowest transferability);
4. for the chosen list, DeT's validation accuracy on clean images and on black-box PGD
   examples of the bare classifier over a grid of k, N and eps; the choice maximises the mean
   of the two with clean accuracy within ``--max-drop`` of the bare classifier's.

Writes one JSON with every figure and the choice (``det`` settings to ship).

Example:
    python benchmarks/det_select.py --run runs/reformers-mnist --dataset mnist \
        --classifier mnist-cnn --eps-attack 0.3 --json benchmarks/results/det_select_mnist.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from guardnet import DeTReformer
from guardnet.data.datasets import load_split
from guardnet.eval.attacks.foolbox_attacks import CW
from guardnet.eval.attacks.pgd import PGD
from guardnet.layers.base import LayerInput
from guardnet.nets.reformer import ReformerSet
from guardnet.recipes import build_classifier
from guardnet.train.checkpoint import load_checkpoint


class Through(nn.Module):
    """``classifier(reformer(x))``."""

    def __init__(self, reformer: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.reformer, self.classifier = reformer, classifier

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.reformer(x))


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return float((torch.cat([model(c) for c in x.split(500)]).argmax(1) == y).float().mean())


def plain_reformers(run: Path, final: ReformerSet) -> ReformerSet | None:
    """The reformers of the run's last plain epoch, if its checkpoint was kept."""
    config = json.loads((run / "model" / "config.json").read_text())
    epoch = config["train_settings"]["epochs"]
    folder = run / "checkpoints" / f"epoch-{epoch:04d}"
    if not folder.is_dir() or not config["train_settings"]["cross_epochs"]:
        return None
    plain = ReformerSet(**final.arch_args())
    plain.load_state_dict(load_checkpoint(folder)["reformers"])
    return plain.eval()


def transfer_matrix(
    nets: ReformerSet, classifier: nn.Module, x: Tensor, y: Tensor, eps: float, steps: int
) -> list[list[float]]:
    """[i][j]: accuracy of classifier o R_j on PGD examples crafted through classifier o R_i."""
    n = len(nets)
    out = [[0.0] * n for _ in range(n)]
    for i in range(n):
        adv = PGD(Through(nets[i], classifier).eval(), eps=eps, steps=steps)(x, y)
        for j in range(n):
            out[i][j] = accuracy(Through(nets[j], classifier), adv, y)
    return out


def det_accuracy(
    nets: ReformerSet,
    first: int,
    voters: list[int],
    classifier: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    noise: float,
    eps: float,
    n: int,
) -> float:
    layer = DeTReformer(nets, first=first, voters=voters, noise=noise, eps=eps, num_samples=n)
    labels = []
    for chunk in x.split(200):
        with torch.no_grad():
            labels.append(layer(LayerInput(images=chunk, classifier=classifier)).labels)
    return float((torch.cat(labels) == y).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, type=Path)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--classifier", required=True)
    parser.add_argument("--eps-attack", type=float, required=True, help="PGD budget (L-inf)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--val-limit", type=int, default=500)
    parser.add_argument("--transfer-limit", type=int, default=200)
    parser.add_argument("--max-drop", type=float, default=0.01)
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--ns", type=int, nargs="+", default=[1, 4, 16, 32])
    parser.add_argument("--eps-grid", type=float, nargs="+", default=[0.0, 0.05, 0.1, 0.2])
    parser.add_argument("--cw-kappas", type=float, nargs="*", default=[])
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
    final = DeTReformer.from_pretrained(args.run / "model").reformers.eval()
    noise = json.loads((args.run / "model" / "config.json").read_text())["train_settings"]["noise"]
    plain = plain_reformers(args.run, final)
    data = load_split(args.dataset, "val", limit=args.val_limit)
    x, y = data.images, data.labels
    names = final.names
    out: dict[str, Any] = {
        "run": str(args.run),
        "classifier": args.classifier,
        "names": names,
        "noise": noise,
        "val_images": len(x),
        "attack_eps": args.eps_attack,
    }
    out["bare_accuracy"] = accuracy(classifier, x, y)

    class Noised(nn.Module):
        def __init__(self, reformer: nn.Module) -> None:
            super().__init__()
            self.reformer = reformer

        def forward(self, image: Tensor) -> Tensor:
            g = torch.Generator().manual_seed(0)
            noisy = image + noise * torch.randn(image.shape, generator=g)
            return self.reformer(noisy.clamp(0, 1))

    clean = {
        n: accuracy(Through(Noised(r), classifier), x, y)
        for n, r in zip(names, final.reformers, strict=True)
    }
    out["clean_accuracy_cross_trained"] = clean
    tx, ty = x[: args.transfer_limit], y[: args.transfer_limit]
    after = transfer_matrix(final, classifier, tx, ty, args.eps_attack, args.steps)
    out["transfer_accuracy_cross_trained"] = after
    if plain is not None:
        out["clean_accuracy_plain"] = {
            n: accuracy(Through(Noised(r), classifier), x, y)
            for n, r in zip(names, plain.reformers, strict=True)
        }
        out["transfer_accuracy_plain"] = transfer_matrix(
            plain, classifier, tx, ty, args.eps_attack, args.steps
        )
    if args.cw_kappas:
        curves: dict[str, list[float]] = {}
        for label, nets in (("cross_trained", final), ("plain", plain)):
            if nets is None:
                continue
            curve = []
            for kappa in args.cw_kappas:
                adv = CW(
                    Through(nets[0], classifier).eval(),
                    steps=100,
                    binary_search_steps=5,
                    lr=args.cw_lr,
                    initial_const=args.cw_const,
                    confidence=kappa,
                )(tx[:100], ty[:100])
                curve.append(accuracy(Through(nets[1], classifier), adv, ty[:100]))
            curves[label] = curve
        out["cw_transfer_r0_to_r1"] = {"kappas": args.cw_kappas, **curves}

    # selection
    best = max(clean.values())
    first = max(range(len(names)), key=lambda i: clean[names[i]])
    eligible = [
        i for i in range(len(names)) if i != first and clean[names[i]] >= best - args.max_drop
    ]
    lists: dict[int, list[int]] = {}
    for k in args.ks:
        if k > len(eligible):
            continue

        def score(group: tuple[int, ...]) -> float:
            pairs = [(a, b) for a in group for b in group if a != b]
            return (
                sum(after[a][b] for a, b in pairs) / len(pairs)
                if pairs
                else after[group[0]][group[0]]
            )

        lists[k] = list(max(itertools.combinations(eligible, k), key=score))
    out["first"] = first
    out["lists"] = {str(k): v for k, v in lists.items()}

    # k, N, eps on validation: clean and black-box PGD of the bare classifier
    adv = PGD(classifier, eps=args.eps_attack, steps=args.steps)(x, y)
    out["bare_accuracy_pgd"] = accuracy(classifier, adv, y)
    grid = []
    for k, voters in lists.items():
        for n in args.ns:
            for eps in args.eps_grid:
                row = {
                    "k": k,
                    "voters": voters,
                    "N": n,
                    "eps": eps,
                    "clean": det_accuracy(
                        final, first, voters, classifier, x, y, noise=noise, eps=eps, n=n
                    ),
                    "pgd_black_box": det_accuracy(
                        final, first, voters, classifier, adv, y, noise=noise, eps=eps, n=n
                    ),
                }
                grid.append(row)
                print(json.dumps(row), flush=True)
    out["grid"] = grid
    ok = [r for r in grid if r["clean"] >= out["bare_accuracy"] - args.max_drop] or grid
    choice = max(ok, key=lambda r: (r["clean"] + r["pgd_black_box"]) / 2)
    out["choice"] = {
        "first": first,
        "voters": choice["voters"],
        "num_samples": choice["N"],
        "eps": choice["eps"],
        "noise": noise,
    }
    out["seconds"] = time.perf_counter() - start
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out["choice"]))


if __name__ == "__main__":
    main()
