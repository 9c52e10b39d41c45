"""How well a ContraNet DMM's feature extractors tell the classes apart.

The DMM can only call ``(x, G(E(x), y_adv))`` a contradiction if F_real still sees the true
class of ``x`` (the attack fools the classifier, not F_real). This probe measures that with no
training at all: class centroids of the normalised F_real features of ``--train-limit``
training images, then the share of validation images whose nearest centroid is their label
(``f_real_centroid_accuracy``; chance is ``1 / K``), and the same for F_syn on the true-label
rebuilds (``f_syn_centroid_accuracy``).

Usage:
    python scripts/contranet_dmm_probe.py --contranet runs/RUN/checkpoints/epoch-0004 \
        --dataset cifar10 --train-limit 3000 --limit 1000
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from contranet_label_fidelity import load_layer

from guardnet.data import load_split
from guardnet.data.datasets import SplitDataset
from guardnet.layers.contranet import ContraNetLayer
from guardnet.nets.contranet import to_unit_range


@torch.inference_mode()
def centroid_accuracy(
    extractor: torch.nn.Module,
    reference: Tensor,
    reference_labels: Tensor,
    probe: Tensor,
    probe_labels: Tensor,
    num_classes: int,
) -> float:
    """Nearest-class-centroid accuracy of ``probe`` in ``extractor``'s normalised features."""
    ref = F.normalize(extractor(reference), dim=1)
    sums = torch.zeros(num_classes, ref.shape[1]).index_add_(0, reference_labels, ref)
    centroids = F.normalize(sums, dim=1)
    predicted = (F.normalize(extractor(probe), dim=1) @ centroids.T).argmax(dim=1)
    return (predicted == probe_labels).float().mean().item()


@torch.inference_mode()
def probe_dmm(layer: ContraNetLayer, train: SplitDataset, val: SplitDataset) -> dict[str, float]:
    net, k = layer.net, layer.num_classes
    size = net.config.image_size
    x_train, x_val = to_unit_range(train.images, size), to_unit_range(val.images, size)
    # Rebuilds under the true label, in ContraNet's [-1, 1] space as the DMM sees them.
    rebuilt_train = to_unit_range(layer.rebuild(train.images, train.labels), size)
    rebuilt_val = to_unit_range(layer.rebuild(val.images, val.labels), size)
    real = centroid_accuracy(net.dmm.f_real, x_train, train.labels, x_val, val.labels, k)
    syn = centroid_accuracy(net.dmm.f_syn, rebuilt_train, train.labels, rebuilt_val, val.labels, k)
    return {
        "chance": round(1 / k, 4),
        "f_real_centroid_accuracy": round(real, 4),
        "f_syn_centroid_accuracy": round(syn, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--contranet", required=True, help="Hub folder, name or checkpoint folder")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--train-limit", type=int, default=3000, help="images for the centroids")
    parser.add_argument("--limit", type=int, default=1000, help="validation images probed")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    layer = load_layer(args.contranet)
    train = load_split(args.dataset, "train", limit=args.train_limit)
    val = load_split(args.dataset, "val", limit=args.limit)
    result = probe_dmm(layer, train, val)
    print(json.dumps({"contranet": args.contranet, **result}, indent=1))


if __name__ == "__main__":
    main()
