"""Compare ContraNets on one attack's cached examples, and test a label-contrast score.

Analysis only, never a calibration: it reports each score's AUROC (clean test images against
the attack's successful examples) and the TPR at a fixed *test* FPR (threshold at the clean test
quantile), which compares two nets at exactly the same operating point. Shipped figures use
thresholds from clean validation data (``scripts/measure_contranet.py``).

It also scores every image under the classifier's top-k labels and tries a contrast score: the
DMM's logit under the predicted label minus its best logit under the next ``k - 1`` labels.
The idea: an attacked image should still look consistent with its true class, if that class is
among the runner-ups.

Usage:
    python scripts/contranet_label_contrast.py --dataset gtsrb --classifier resnet20-gtsrb \
        --contranet contranet-gtsrb --test-limit 1000 \
        --adversarial runs/measure-cache/pgd_linf_8_255-<key>.safetensors
"""

from __future__ import annotations

import argparse

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from guardnet import ContraNetLayer
from guardnet.data import load_split
from guardnet.eval import auroc
from guardnet.eval.metrics import oracle_tpr_at_fpr
from guardnet.guard import Normalize
from guardnet.layers.base import LayerInput
from guardnet.weights import from_pretrained

SCORES = ("dmm", "dis", "ssim")


def topk_scores(
    model: nn.Module, layer: ContraNetLayer, images: Tensor, k: int, batch: int = 250
) -> tuple[Tensor, Tensor]:
    """The classifier's top-k labels (N, k) and ContraNet's scores under each (N, k, 3)."""
    labels, scores = [], []
    with torch.inference_mode():
        for chunk in images.split(batch):
            top = model(chunk).topk(k, dim=1).indices
            per_label = [layer(LayerInput(images=chunk, labels=top[:, j])).scores for j in range(k)]
            labels.append(top)
            scores.append(torch.stack(per_label, dim=1))
    return torch.cat(labels), torch.cat(scores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--classifier", required=True)
    parser.add_argument("--contranet", required=True, help="pretrained name or folder")
    parser.add_argument("--adversarial", required=True, help="measure_contranet.py cache file")
    parser.add_argument("--test-limit", type=int, default=1000)
    parser.add_argument("--top-k", type=int, default=4)
    parser.add_argument("--test-fpr", type=float, nargs="+", default=[0.05, 0.03])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)

    test = load_split(args.dataset, "test", limit=args.test_limit)
    classifier = from_pretrained(args.classifier)
    cfg = classifier.pretrained_config
    model = nn.Sequential(Normalize(cfg["mean"], cfg["std"]), classifier).eval()
    layer = ContraNetLayer.from_pretrained(args.contranet).eval()
    with torch.no_grad():
        correct = model(test.images).argmax(1) == test.labels
    true = test.labels[correct]  # the cache holds attacks on the correctly classified images
    adversarial = load_file(args.adversarial)["adversarial"]
    if len(adversarial) != len(true):
        raise SystemExit(f"{len(adversarial)} cached examples for {len(true)} attacked images")

    _, clean = topk_scores(model, layer, test.images, args.top_k)
    adv_labels, adv = topk_scores(model, layer, adversarial, args.top_k)
    success = adv_labels[:, 0] != true
    adv = adv[success]
    rank = (adv_labels[success] == true[success, None]).float().mean(0)
    print(f"successful examples: {int(success.sum())} of {len(true)}")
    print("true label at rank 1.." + str(args.top_k), [f"{float(r):.1%}" for r in rank])

    def logit(s: Tensor) -> Tensor:
        return torch.logit(s.clamp(1e-6, 1 - 1e-6))

    for i, name in enumerate(SCORES):
        fpr = "  ".join(
            f"TPR@{f:.0%} test FPR "
            f"{oracle_tpr_at_fpr(clean[:, 0, i], adv[:, 0, i], f, higher_is_suspicious=False):.1%}"
            for f in args.test_fpr
        )
        print(
            f"{name}: AUROC {auroc(clean[:, 0, i], adv[:, 0, i], higher_is_suspicious=False):.3f}"
            f"  {fpr}"
        )
    for k in range(2, args.top_k + 1):

        def contrast(s: Tensor, k: int = k) -> Tensor:
            return logit(s[:, 0, 0]) - logit(s[:, 1:k, 0]).max(1).values

        print(
            f"dmm contrast against ranks 2..{k}: AUROC "
            f"{auroc(contrast(clean), contrast(adv), higher_is_suspicious=False):.3f}"
        )


if __name__ == "__main__":
    main()
