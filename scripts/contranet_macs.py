"""MACs and parameters per image of ContraNet's inference path (encoder, generator, Dis, DMM).

Counted with ``torch.utils.flop_counter.FlopCounterMode`` (FLOPs / 2) at batch 1, for guardnet's
small preset and a same-size build of the authors' architecture.

Usage:
    python scripts/contranet_macs.py --num-classes 10 --in-channels 3
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from guardnet.nets.contranet import ContraNetConfig, build_contranet


def _macs(module: torch.nn.Module, *inputs: torch.Tensor) -> float:
    with FlopCounterMode(display=False) as counter:
        module(*inputs)
    return counter.get_total_flops() / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--in-channels", type=int, default=3)
    args = parser.parse_args()
    torch.set_flush_denormal(True)  # random MobileNetV2 weights produce denormals: slow on CPU
    for preset in ("small", "authors"):
        cfg = getattr(ContraNetConfig, preset)(args.num_classes, args.in_channels)
        nets = build_contranet(cfg).eval()
        x = torch.rand(1, args.in_channels, 32, 32) * 2 - 1
        y = torch.zeros(1, dtype=torch.long)
        with torch.no_grad():
            counts = {
                "encoder": _macs(nets["encoder"], x),
                "generator": _macs(nets["generator"], torch.randn(1, cfg.latent_dim), y),
                "dis": _macs(nets["dis"], x, y),
                "dmm": _macs(nets["dmm"], x, x, y),
            }
        params = {n: sum(p.numel() for p in nets[n].parameters()) for n in counts}
        total = sum(counts.values())
        print(
            f"{preset}: "
            + ", ".join(
                f"{n} {counts[n] / 1e6:.1f} MMACs / {params[n] / 1e6:.3f} M params" for n in counts
            )
            + f"; layer total {total / 1e9:.3f} GMACs per image"
        )


if __name__ == "__main__":
    main()
