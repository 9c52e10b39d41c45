"""Branch a ContraNet run before its DMM stages, with a fresh DMM, from any later checkpoint.

The ``dmm_pretrain`` and ``dmm`` stages train only the DMM, so encoder, generators and
discriminators (and their optimisers) in a checkpoint taken during those stages are the ones the
``dis`` stage ended with. This writes ``OUT/checkpoints/epoch-UNITS`` holding them, a DMM and a
DMM optimiser freshly built as a trainer seeded like the run builds them (optionally with other
DMM sizes), the first ``UNITS`` log records and the checkpoint's RNG streams; resuming
``guardnet train contranet --out OUT`` with the new DMM settings then runs the DMM stages again.

``--source-model`` starts from shipped weights instead (a registered name or a Hub folder, e.g.
``contranet-gtsrb``), for when no training checkpoint is left. A shipped ContraNet holds the
encoder, the generator's EMA weights and Dis, which is all the DMM stages read; the rest of the
state (the non-EMA generator, taken equal to the EMA one, D_phi, D_aux, the optimisers and RNG
streams) is a seeded trainer's, and the log gets one record per pre-DMM unit naming the source.
Such a branch can run the DMM stages only: its GAN, aux and Dis stages have ended.

``--keep-dmm`` (with ``--source-model``) keeps the shipped DMM too and counts its DMM stages as
done, so resuming with a longer ``dmm=N`` trains that DMM for more epochs. Its Adam state is
not shipped, so the optimiser restarts from zero moments.

Usage:
    python scripts/branch_contranet_fresh_dmm.py \
        --source runs/contranet-gtsrb/checkpoints/epoch-0006 --out runs/contranet-gtsrb-supcon \
        --units 4 --dataset gtsrb \
        --arch-args '{"dmm_hidden": 384}' --settings '{"dmm_pretrain_loss": "supcon"}'
    python scripts/branch_contranet_fresh_dmm.py --source-model contranet-gtsrb \
        --out runs/contranet-gtsrb-supcon --arch-args '{"dmm_hidden": 384}' \
        --settings '{"dmm_pretrain_loss": "supcon"}'
    python scripts/branch_contranet_fresh_dmm.py --source-model contranet-gtsrb \
        --out runs/contranet-gtsrb-more-dmm --keep-dmm
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from guardnet.nets.contranet import ContraNet, ContraNetConfig
from guardnet.train import (
    ContraNetTrainSettings,
    contranet_settings,
    load_checkpoint,
    save_checkpoint,
)
from guardnet.train.contranet_trainer import ContraNetTrainer
from guardnet.train.distributed import DistContext


def seeded_trainer(config: ContraNetConfig, settings: ContraNetTrainSettings) -> ContraNetTrainer:
    """A trainer built as ``guardnet train contranet`` builds it (same seed, CPU)."""
    return ContraNetTrainer(
        config,
        settings,
        torch.zeros(2, config.in_channels, 32, 32),
        torch.zeros(2, dtype=torch.long),
        None,
        torch.device("cpu"),
        DistContext(),
        False,
    )


def from_checkpoint(args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    """The source checkpoint's state with a fresh DMM, cut to ``--units`` units."""
    if args.units is None or args.dataset is None:
        raise SystemExit("--source needs --units and --dataset")
    source = load_checkpoint(args.source)
    history = list(source["history"][: args.units])
    if len(history) != args.units or any(r["stage"].startswith("dmm") for r in history):
        raise SystemExit(f"the first {args.units} units of {args.source} are not all pre-DMM")
    config = dataclasses.replace(ContraNetConfig(**source["config"]), **args.arch_args)
    settings = contranet_settings(args.dataset, **args.settings)
    # The DMM and its optimiser are a seeded trainer's; the rest (other nets and optimisers,
    # RNG streams, EMA step count) is the source's.
    fresh = seeded_trainer(config, settings).state(args.units)
    state = {
        **source,
        "unit": args.units,
        "config": fresh["config"],
        "settings": fresh["settings"],
        "nets": {**source["nets"], "dmm": fresh["nets"]["dmm"]},
        "optimizers": {**source["optimizers"], "dmm": fresh["optimizers"]["dmm"]},
        "history": history,
    }
    return state, args.units


def from_model(args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    """A seeded trainer's state holding the shipped encoder, generator and Dis."""
    from guardnet.weights import from_pretrained

    model = from_pretrained(args.source_model)
    meta = model.pretrained_config
    if not isinstance(model, ContraNet):
        raise SystemExit(f"{args.source_model!r} is not a ContraNet")
    config = dataclasses.replace(model.config, **args.arch_args)
    settings = ContraNetTrainSettings(**(meta["train_settings"] | args.settings))
    if args.keep_dmm:
        # The units the shipped weights went through, whatever --settings plans from here on.
        done = ContraNetTrainSettings(**meta["train_settings"]).schedule()
    else:
        done = [(s, e) for s, e in settings.schedule() if not s.startswith("dmm")]
    trainer = seeded_trainer(config, settings)
    trainer.encoder.load_state_dict(model.encoder.state_dict(), strict=True)
    trainer.generator.load_state_dict(model.generator.state_dict(), strict=True)
    trainer.g_ema.load_state_dict(model.generator.state_dict(), strict=True)
    trainer.dis.load_state_dict(model.dis.state_dict(), strict=True)
    if args.keep_dmm:
        trainer.dmm.load_state_dict(model.dmm.state_dict(), strict=True)
    trainer.history = [
        {"unit": i, "stage": stage, "epoch": epoch + 1, "source_model": args.source_model}
        for i, (stage, epoch) in enumerate(done, start=1)
    ]
    return trainer.state(len(done)), len(done)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--source", help="a checkpoint folder of the run")
    source.add_argument("--source-model", help="shipped ContraNet weights: a name or folder")
    parser.add_argument("--out", required=True, help="the new run folder")
    parser.add_argument("--units", type=int, help="units before dmm_pretrain (--source)")
    parser.add_argument("--dataset", help="for the dataset's default settings (--source)")
    parser.add_argument("--arch-args", type=json.loads, default={}, help="DMM size overrides")
    parser.add_argument("--settings", type=json.loads, default={}, help="setting overrides")
    parser.add_argument(
        "--keep-dmm", action="store_true", help="keep the shipped DMM (--source-model only)"
    )
    args = parser.parse_args()
    if args.keep_dmm and (args.source or args.arch_args):
        raise SystemExit("--keep-dmm needs --source-model and no --arch-args")
    if any(not k.startswith("dmm_") for k in args.arch_args):
        raise SystemExit(f"--arch-args may only change DMM fields, got {sorted(args.arch_args)}")

    state, units = from_checkpoint(args) if args.source else from_model(args)
    out = Path(args.out)
    written = save_checkpoint(out, state, epoch=units, protect=[units])
    lines = [json.dumps(r) for r in state["history"]]
    (out / "train_log.jsonl").write_text("\n".join(lines) + "\n")
    print(f"wrote {written} and {out / 'train_log.jsonl'} ({units} units)")


if __name__ == "__main__":
    main()
