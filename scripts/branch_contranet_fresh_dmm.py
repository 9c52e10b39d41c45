"""Branch a ContraNet run before its DMM stages, with a fresh DMM, from any later checkpoint.

The ``dmm_pretrain`` and ``dmm`` stages train only the DMM, so encoder, generators and
discriminators (and their optimisers) in a checkpoint taken during those stages are the ones the
``dis`` stage ended with. This writes ``OUT/checkpoints/epoch-UNITS`` holding them, a DMM and a
DMM optimiser freshly built as a trainer seeded like the run builds them (optionally with other
DMM sizes), the first ``UNITS`` log records and the checkpoint's RNG streams; resuming
``guardnet train contranet --out OUT`` with the new DMM settings then runs the DMM stages again.

Usage:
    python scripts/branch_contranet_fresh_dmm.py \
        --source runs/contranet-gtsrb/checkpoints/epoch-0006 --out runs/contranet-gtsrb-supcon \
        --units 4 --dataset gtsrb \
        --arch-args '{"dmm_hidden": 384}' --settings '{"dmm_pretrain_loss": "supcon"}'
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from guardnet.nets.contranet import ContraNetConfig
from guardnet.train.classifier import load_checkpoint, save_checkpoint
from guardnet.train.contranet import DATASET_DEFAULTS, ContraNetTrainSettings, _Dist, _Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", required=True, help="a checkpoint folder of the run")
    parser.add_argument("--out", required=True, help="the new run folder")
    parser.add_argument("--units", type=int, required=True, help="units before dmm_pretrain")
    parser.add_argument("--dataset", required=True, help="for the dataset's default settings")
    parser.add_argument("--arch-args", type=json.loads, default={}, help="DMM size overrides")
    parser.add_argument("--settings", type=json.loads, default={}, help="setting overrides")
    args = parser.parse_args()

    source = load_checkpoint(args.source)
    history = list(source["history"][: args.units])
    if len(history) != args.units or any(r["stage"].startswith("dmm") for r in history):
        raise SystemExit(f"the first {args.units} units of {args.source} are not all pre-DMM")
    if any(not k.startswith("dmm_") for k in args.arch_args):
        raise SystemExit(f"--arch-args may only change DMM fields, got {sorted(args.arch_args)}")
    config = dataclasses.replace(ContraNetConfig(**source["config"]), **args.arch_args)
    settings = ContraNetTrainSettings(**(DATASET_DEFAULTS.get(args.dataset, {}) | args.settings))
    # A trainer seeded like the run builds the DMM and its optimiser as the run did; the rest
    # of the state (other nets and optimisers, RNG streams, EMA step count) is the source's.
    fresh = _Trainer(
        config,
        settings,
        torch.zeros(2, config.in_channels, 32, 32),
        torch.zeros(2, dtype=torch.long),
        None,
        torch.device("cpu"),
        _Dist(),
        False,
    ).state(args.units)
    state = {
        **source,
        "unit": args.units,
        "config": fresh["config"],
        "settings": fresh["settings"],
        "nets": {**source["nets"], "dmm": fresh["nets"]["dmm"]},
        "optimizers": {**source["optimizers"], "dmm": fresh["optimizers"]["dmm"]},
        "history": history,
    }
    out = Path(args.out)
    written = save_checkpoint(out, state, epoch=args.units, protect=[args.units])
    lines = [json.dumps(r) for r in history]
    (out / "train_log.jsonl").write_text("\n".join(lines) + "\n")
    print(f"wrote {written} and {out / 'train_log.jsonl'} ({args.units} units)")


if __name__ == "__main__":
    main()
