"""How much a ContraNet's rebuilds follow the label they are conditioned on.

ContraNet detects an adversarial example only if ``G(E(x), y)`` draws class ``y``: when the
classifier is fooled into ``y_adv``, the rebuild under ``y_adv`` should then contradict ``x``.
This benchmark measures that on clean validation images, before any DMM epoch is spent on a run:

- ``true_label_agreement``: the protected classifier labels ``G(E(x), y_true)`` as ``y_true``;
- ``wrong_label_agreement``: it labels ``G(E(x), y_wrong)`` as ``y_wrong`` (a random other
  class; chance is ``1 / K``): the generator draws the class it is asked for;
- ``wrong_label_keeps_true``: it still sees ``y_true`` in the wrong-label rebuild: the latent,
  not the label, decides the class;
- ``rebuild_error``: mean |x - G(E(x), y_true)| and ``label_shift``: mean
  |G(E(x), y_true) - G(E(x), y_wrong)| on [0, 1] images.

It reads a Hub folder (``RUN_DIR/model``, a shipped name) or a training checkpoint folder
(``RUN_DIR/checkpoints/epoch-NNNN``, using the EMA generator).

Usage:
    python benchmarks/contranet_label_fidelity.py --contranet runs/contranet-cifar10/model \
        --classifier resnet20-cifar10jpeg-ft --dataset cifar10 --limit 1000
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from guardnet.data import load_split
from guardnet.eval.measure import contranet_layer
from guardnet.layers.contranet import ContraNetLayer
from guardnet.nets.contranet import from_unit_range, to_unit_range
from guardnet.recipes import build_classifier


@torch.inference_mode()
def label_fidelity(
    layer: ContraNetLayer,
    classifier: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    seed: int = 0,
    batch_size: int = 500,
) -> dict[str, float]:
    k = layer.num_classes
    offsets = torch.randint(1, k, labels.shape, generator=torch.Generator().manual_seed(seed))
    wrong = (labels + offsets) % k
    # Per image: true agree, wrong agree, wrong keeps true, rebuild error, label shift.
    rows = []
    for start in range(0, labels.shape[0], batch_size):
        x, y, yw = (t[start : start + batch_size] for t in (images, labels, wrong))
        rebuilt_true, rebuilt_wrong = layer.rebuild(x, y), layer.rebuild(x, yw)
        # The input as ContraNet sees it (32x32), to compare with its rebuild.
        x32 = from_unit_range(to_unit_range(x, layer.net.config.image_size))
        # The classifier sees the rebuild at its own input size (MNIST: 32 -> 28, approximate).
        pred_true = classifier(F.interpolate(rebuilt_true, size=x.shape[-2:])).argmax(1)
        pred_wrong = classifier(F.interpolate(rebuilt_wrong, size=x.shape[-2:])).argmax(1)
        rows.append(
            torch.stack(
                [
                    (pred_true == y).float(),
                    (pred_wrong == yw).float(),
                    (pred_wrong == y).float(),
                    (x32 - rebuilt_true).abs().mean(dim=(1, 2, 3)),
                    (rebuilt_true - rebuilt_wrong).abs().mean(dim=(1, 2, 3)),
                ],
                dim=1,
            )
        )
    means = torch.cat(rows).mean(dim=0).tolist()
    names = (
        "true_label_agreement",
        "wrong_label_agreement",
        "wrong_label_keeps_true",
        "rebuild_error",
        "label_shift",
    )
    rates = {n: round(m, 4) for n, m in zip(names, means, strict=True)}
    return {"images": labels.shape[0], "chance": 1 / k, **rates}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--contranet", required=True, help="Hub folder, name or checkpoint folder")
    parser.add_argument("--classifier", required=True, help="registered classifier name")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--limit", type=int, default=1000, help="validation images")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    layer = contranet_layer(args.contranet)
    classifier = build_classifier(args.classifier)
    val = load_split(args.dataset, "val", limit=args.limit)
    result = label_fidelity(layer, classifier, val.images, val.labels, seed=args.seed)
    print(json.dumps({"contranet": args.contranet, **result}, indent=1))


if __name__ == "__main__":
    main()
