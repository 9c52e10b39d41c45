"""How well a ContraNet DMM's feature extractors tell the classes apart.

The DMM can only call ``(x, G(E(x), y_adv))`` a contradiction if F_real still sees the true
class of ``x`` (the attack fools the classifier, not F_real). This probe measures that with no
training at all: class centroids of the normalised F_real features of ``--train-limit``
training images, then the share of validation images whose nearest centroid is their label
(``f_real_centroid_accuracy``; chance is ``1 / K``), and the same for F_syn on the true-label
rebuilds (``f_syn_centroid_accuracy``).

With ``--classifier`` and ``--eps``, the probed images that the classifier gets right are also
attacked (PGD-L-inf, ``--steps`` steps, on the classifier only) and
``f_real_centroid_accuracy_pgd_<eps>`` is the share of the successful adversarial examples that
F_real still puts nearest their true class: what the DMM needs to flag them.

Usage:
    python benchmarks/contranet_dmm_probe.py --contranet runs/RUN/checkpoints/epoch-0004 \
        --dataset cifar10 --train-limit 3000 --limit 1000 \
        --classifier resnet20-cifar10jpeg-ft --eps 0.0078431 0.0313725
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from guardnet.data import load_split
from guardnet.data.datasets import SplitDataset
from guardnet.eval.measure import contranet_layer, pgd_examples
from guardnet.layers.contranet import ContraNetLayer
from guardnet.nets.contranet import to_unit_range
from guardnet.recipes import build_classifier


def centroids(extractor: nn.Module, reference: Tensor, labels: Tensor, k: int) -> Tensor:
    """(K, D) normalised class means of ``extractor``'s normalised features."""
    with torch.inference_mode():
        ref = F.normalize(extractor(reference), dim=1)
    return F.normalize(torch.zeros(k, ref.shape[1]).index_add_(0, labels, ref), dim=1)


@torch.inference_mode()
def centroid_accuracy(
    extractor: nn.Module,
    reference: Tensor,
    reference_labels: Tensor,
    probe: Tensor,
    probe_labels: Tensor,
    num_classes: int,
) -> float:
    """Nearest-class-centroid accuracy of ``probe`` in ``extractor``'s normalised features."""
    center = centroids(extractor, reference, reference_labels, num_classes)
    predicted = (F.normalize(extractor(probe), dim=1) @ center.T).argmax(dim=1)
    return (predicted == probe_labels).float().mean().item()


def adversarial_centroid_accuracy(
    layer: ContraNetLayer,
    classifier: nn.Module,
    train: SplitDataset,
    val: SplitDataset,
    eps_values: list[float],
    *,
    steps: int,
    seed: int = 0,
) -> dict[str, float]:
    """F_real's nearest-centroid accuracy on PGD examples of the classifier, per budget."""
    net, k, size = layer.net, layer.num_classes, layer.net.config.image_size
    f_real = net.dmm.f_real.eval()
    center = centroids(f_real, to_unit_range(train.images, size), train.labels, k)
    with torch.no_grad():
        right = classifier(val.images).argmax(dim=1) == val.labels
    x, y = val.images[right], val.labels[right]
    out: dict[str, float] = {}
    for eps in eps_values:
        adv = pgd_examples(classifier, x, y, eps, steps=steps, seed=seed)
        with torch.inference_mode():
            fooled = classifier(adv).argmax(dim=1) != y
            feats = F.normalize(f_real(to_unit_range(adv[fooled], size)), dim=1)
            hit = ((feats @ center.T).argmax(dim=1) == y[fooled]).float().mean().item()
        label = f"{eps:g}" if net.config.in_channels == 1 else f"{round(eps * 255)}/255"
        out[f"f_real_centroid_accuracy_pgd_{label}"] = round(hit, 4)
        out[f"pgd_{label}_fooled"] = int(fooled.sum())
    return out


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
    parser.add_argument("--classifier", default=None, help="also probe PGD examples of this")
    parser.add_argument("--eps", type=float, nargs="*", default=[], help="PGD budgets, 0-1")
    parser.add_argument("--steps", type=int, default=20, help="PGD steps")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.eps and not args.classifier:
        parser.error("--eps needs --classifier")
    if args.threads:
        torch.set_num_threads(args.threads)
    layer = contranet_layer(args.contranet)
    train = load_split(args.dataset, "train", limit=args.train_limit)
    val = load_split(args.dataset, "val", limit=args.limit)
    result = probe_dmm(layer, train, val)
    if args.classifier and args.eps:
        classifier = build_classifier(args.classifier)
        result |= adversarial_centroid_accuracy(
            layer, classifier, train, val, args.eps, steps=args.steps
        )
    print(json.dumps({"contranet": args.contranet, **result}, indent=1))


if __name__ == "__main__":
    main()
