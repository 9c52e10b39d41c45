"""Serve a guard: batching, device placement, fail-closed handling and per-layer scores.

* ``max_batch_size`` splits large batches into chunks, so memory stays bounded whatever the
  caller sends.
* The guard lives on one device; inputs must be moved there (the guard never copies them behind
  your back and raises ``DeviceMismatchError`` instead).
* Fail closed, twice: bad input (wrong shape or dtype, NaN, values outside [0, 1]) raises a
  ``guardnet.GuardnetError`` naming the problem, which the service answers as rejected; and with
  ``fail_closed=True`` an exception inside a layer rejects the affected inputs (the message in
  ``result.errors``) instead of crashing the serving loop.
* ``torch.inference_mode()`` around the call; the guard keeps its own eval mode either way.
* Every result carries each layer's scores and reject masks, to log why an input was rejected.

Run: ``python examples/production_inference.py`` (``--smoke`` for a quick run).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch
from torch import Tensor

import guardnet
from guardnet.data import load_fixture


@dataclass
class Answer:
    """What the service returns per image: a label, or a refusal with its reason."""

    label: int | None
    reason: str


def serve(guard: guardnet.GuardedModel, images: Tensor) -> list[Answer]:
    """Classify a request's images; reject everything the guard rejects or cannot check."""
    device = next(guard.parameters()).device
    try:
        with torch.inference_mode():
            result = guard(images.to(device))
    except guardnet.GuardnetError as error:  # fail closed, and say why
        return [Answer(None, f"invalid input: {error}")] * len(images)
    names = result.layer_names
    first = result.rejected_by().tolist()  # index into names of the first rejecting score
    labels = result.labels.tolist()

    def refusal(by: int) -> str:
        layer = names[by].split(".")[0]  # score keys are "layer" or "layer.score"
        error = result.errors.get(layer)  # set only when that layer raised (fail_closed)
        return f"rejected by {names[by]}" + (f" (layer error: {error})" if error else "")

    return [
        Answer(None, refusal(by)) if by >= 0 else Answer(label, "accepted")
        for label, by in zip(labels, first, strict=True)
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a quick run on a few images")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"

    guard = guardnet.GuardedModel.from_pretrained("mnist-mixdefense").to(device)
    guard.max_batch_size = 64 if args.smoke else 256  # chunks bound the memory of big requests
    guard.fail_closed = True  # a layer that raises rejects its chunk instead of the whole call
    val_images, _ = load_fixture("mnist-val")
    guard.calibrate(val_images[: 200 if args.smoke else None], target_fpr=0.05, progress=False)

    images, labels = load_fixture("mnist")
    images, labels = images[: 100 if args.smoke else None], labels[: 100 if args.smoke else None]
    noisy = (images + torch.empty_like(images).uniform_(-0.3, 0.3)).clamp(0, 1)
    request = torch.cat([images[:6], noisy[:2]])
    for i, answer in enumerate(serve(guard, request)):
        print(f"image {i}: label {answer.label}, {answer.reason}")

    # A malformed request (values in [0, 255]) is refused whole, with the reason.
    print(serve(guard, request * 255)[0].reason)

    # Scores for monitoring: per score key, one value per image.
    with torch.inference_mode():
        result = guard(images.to(device))
    print(result.summary())
    accepted = result.accepted.cpu()
    accuracy = (result.labels.cpu() == labels)[accepted].float().mean()
    print(f"accuracy on accepted images: {accuracy:.1%}")
    for key, scores in result.scores.items():
        print(f"  {key:<16} median score {scores.median():.4g}")


if __name__ == "__main__":
    main()
