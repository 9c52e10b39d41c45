"""Time one DMM training step with shared inputs (``x_index``) against repeated inputs.

A DMM step of ``guardnet train contranet`` scores every input twice (under its true label and
under a wrong or the attack's label). Passing each input once with ``x_index`` lets F_real embed
it once; repeating the inputs is what the trainer did before. The script checks that both give
the same logits and gradients, then times forward + backward + nothing else with
torch.utils.benchmark (train mode, the shipped DMM's weights, random images).

Usage:
    python benchmarks/bench_dmm_step.py --contranet contranet-cifar10 --batch 64 \
        --adv-fraction 0.5 --threads 2
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from guardnet.eval.bench import hardware_metadata, measure_latency
from guardnet.weights import from_pretrained


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--contranet", default="contranet-cifar10", help="name or folder")
    parser.add_argument("--batch", type=int, default=64, help="clean images per step")
    parser.add_argument("--adv-fraction", type=float, default=0.5, help="share given PGD copies")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--min-run-time", type=float, default=5.0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    net = from_pretrained(args.contranet)
    dmm = net.dmm.train()
    channels, classes = net.config.in_channels, net.config.num_classes
    gen = torch.Generator().manual_seed(0)
    n_adv = round(args.batch * args.adv_fraction)
    inputs = torch.rand(args.batch + n_adv, channels, 32, 32, generator=gen) * 2 - 1
    clean = torch.arange(args.batch)
    adv = torch.arange(args.batch, args.batch + n_adv)
    index = torch.cat([clean, clean, adv, adv])
    pairs = index.numel()
    rebuilt = torch.rand(pairs, channels, 32, 32, generator=gen) * 2 - 1
    labels = torch.randint(0, classes, (pairs,), generator=gen)
    target = torch.randint(0, 2, (pairs,), generator=gen)
    state = {k: v.clone() for k, v in dmm.state_dict().items()}

    def step(shared: bool) -> torch.Tensor:
        dmm.zero_grad(set_to_none=True)
        if shared:
            logits = dmm(inputs, rebuilt, labels, x_index=index)
        else:
            logits = dmm(inputs.index_select(0, index), rebuilt, labels)
        F.cross_entropy(logits, target).backward()
        return logits.detach()

    results = {}
    for shared in (False, True):
        dmm.load_state_dict(state)
        logits = step(shared)
        grads = [p.grad.clone() for p in dmm.parameters()]
        results[shared] = (logits, grads)
    (a, ga), (b, gb) = results[False], results[True]
    logit_diff = (a - b).abs().max().item()
    grad_diff = max((u - v).abs().max().item() for u, v in zip(ga, gb, strict=True))

    timing = {}
    for name, shared in (("repeated", False), ("shared", True)):
        dmm.load_state_dict(state)
        timing[name] = measure_latency(
            lambda _x, s=shared: step(s), inputs, min_run_time=args.min_run_time
        )
    report = {
        "contranet": args.contranet,
        "pairs": pairs,
        "distinct_inputs": inputs.shape[0],
        "max_logit_diff": logit_diff,
        "max_grad_diff": grad_diff,
        "median_s": {k: v["median_s"] for k, v in timing.items()},
        "speedup": timing["repeated"]["median_s"] / timing["shared"]["median_s"],
        "threads": args.threads,
        **hardware_metadata("cpu"),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
