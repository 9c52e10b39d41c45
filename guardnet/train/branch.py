"""Branch a ContraNet run before its DMM stages, so the DMM stages run again with other settings.

The ``dmm_pretrain`` and ``dmm`` stages of ``guardnet train contranet`` train only the DMM, so
the encoder, generators and discriminators (and their optimisers) of a checkpoint taken during
those stages are the ones the ``dis`` stage ended with. :func:`branch_contranet` writes a new
run folder (``OUT/checkpoints/epoch-UNITS`` and ``OUT/train_log.jsonl``) holding them with a
DMM and a DMM optimiser freshly built as a seeded trainer builds them (optionally with other
DMM sizes); resuming ``guardnet train contranet --out OUT`` with the new DMM settings then runs
the DMM stages again (``guardnet train branch-contranet``).

Two sources:

- ``source``: a checkpoint folder of the run, cut to its first ``units`` (pre-DMM) units; the
  other nets, optimisers and RNG streams are the checkpoint's.
- ``source_model``: shipped weights (a registered name or a Hub folder), for when no training
  checkpoint is left. A shipped ContraNet holds the encoder, the generator's EMA weights and
  Dis, which is all the DMM stages read; the rest of the state (the non-EMA generator, taken
  equal to the EMA one, D_phi, D_aux, the optimisers and RNG streams) is a seeded trainer's,
  and the log gets one record per pre-DMM unit naming the source. Such a branch can run the DMM
  stages only: its GAN, aux and Dis stages have ended. With ``keep_dmm`` the shipped DMM is
  kept too and its DMM stages count as done, so resuming with a longer ``dmm=N`` trains that
  DMM for more epochs (its Adam state is not shipped: the optimiser restarts from zero moments).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from guardnet.errors import CheckpointError, WeightsError
from guardnet.nets.contranet import ContraNet, ContraNetConfig
from guardnet.train.checkpoint import load_checkpoint, save_checkpoint
from guardnet.train.contranet_trainer import ContraNetTrainer
from guardnet.train.distributed import DistContext
from guardnet.train.settings import ContraNetTrainSettings, contranet_settings

__all__ = ["branch_contranet"]


def _seeded_trainer(config: ContraNetConfig, settings: ContraNetTrainSettings) -> ContraNetTrainer:
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


def _from_checkpoint(
    source: str | os.PathLike[str],
    units: int,
    dataset: str,
    arch_args: Mapping[str, Any],
    settings: Mapping[str, Any],
) -> tuple[dict[str, Any], int]:
    """The source checkpoint's state with a fresh DMM, cut to ``units`` units."""
    state = load_checkpoint(source)
    history = list(state["history"][:units])
    if len(history) != units or any(r["stage"].startswith("dmm") for r in history):
        raise CheckpointError(f"the first {units} units of {source} are not all pre-DMM")
    config = dataclasses.replace(ContraNetConfig(**state["config"]), **arch_args)
    plan = contranet_settings(dataset, **dict(settings))
    # The DMM and its optimiser are a seeded trainer's; the rest (other nets and optimisers,
    # RNG streams, EMA step count) is the source's.
    fresh = _seeded_trainer(config, plan).state(units)
    branched = {
        **state,
        "unit": units,
        "config": fresh["config"],
        "settings": fresh["settings"],
        "nets": {**state["nets"], "dmm": fresh["nets"]["dmm"]},
        "optimizers": {**state["optimizers"], "dmm": fresh["optimizers"]["dmm"]},
        "history": history,
    }
    return branched, units


def _from_model(
    source_model: str | os.PathLike[str],
    arch_args: Mapping[str, Any],
    settings: Mapping[str, Any],
    keep_dmm: bool,
) -> tuple[dict[str, Any], int]:
    """A seeded trainer's state holding the shipped encoder, generator and Dis (and DMM)."""
    from guardnet.weights import from_pretrained

    model = from_pretrained(source_model)
    meta = model.pretrained_config
    if not isinstance(model, ContraNet):
        raise WeightsError(f"{os.fspath(source_model)!r} is not a ContraNet")
    config = dataclasses.replace(model.config, **arch_args)
    plan = ContraNetTrainSettings(**(meta["train_settings"] | dict(settings)))
    if keep_dmm:
        # The units the shipped weights went through, whatever `settings` plans from here on.
        done = ContraNetTrainSettings(**meta["train_settings"]).schedule()
    else:
        done = [(s, e) for s, e in plan.schedule() if not s.startswith("dmm")]
    trainer = _seeded_trainer(config, plan)
    trainer.encoder.load_state_dict(model.encoder.state_dict(), strict=True)
    trainer.generator.load_state_dict(model.generator.state_dict(), strict=True)
    trainer.g_ema.load_state_dict(model.generator.state_dict(), strict=True)
    trainer.dis.load_state_dict(model.dis.state_dict(), strict=True)
    if keep_dmm:
        trainer.dmm.load_state_dict(model.dmm.state_dict(), strict=True)
    trainer.history = [
        {"unit": i, "stage": stage, "epoch": epoch + 1, "source_model": os.fspath(source_model)}
        for i, (stage, epoch) in enumerate(done, start=1)
    ]
    return trainer.state(len(done)), len(done)


def branch_contranet(
    out: str | os.PathLike[str],
    *,
    source: str | os.PathLike[str] | None = None,
    source_model: str | os.PathLike[str] | None = None,
    units: int | None = None,
    dataset: str | None = None,
    arch_args: Mapping[str, Any] | None = None,
    settings: Mapping[str, Any] | None = None,
    keep_dmm: bool = False,
) -> tuple[Path, int]:
    """Write a ContraNet run folder that resumes at its DMM stages (see the module docstring).

    Give exactly one of ``source`` and ``source_model``.

    Args:
        out: the new run folder.
        source: a checkpoint folder of a ``guardnet train contranet`` run.
        source_model: shipped ContraNet weights, a registered name or a Hub folder.
        units: the pre-DMM units to keep from ``source`` (required with it).
        dataset: for the dataset's default training settings (required with ``source``).
        arch_args: DMM field overrides of the ContraNet config (``dmm_*`` keys only).
        settings: training-setting overrides (e.g. ``{"dmm_pretrain_loss": "ce"}``).
        keep_dmm: keep the shipped DMM and count its stages as done (``source_model`` only,
            without ``arch_args``).

    Returns:
        The written checkpoint folder and the number of units it holds.

    Raises:
        CheckpointError: the options do not fit together, or the first ``units`` units of
            ``source`` are not all pre-DMM.
        WeightsError: ``source_model`` is not a ContraNet.

    Example:
        >>> branch_contranet("runs/gtsrb-more-dmm", source_model="contranet-gtsrb",
        ...                  keep_dmm=True)  # doctest: +SKIP
        (PosixPath('runs/gtsrb-more-dmm/checkpoints/epoch-0004'), 4)
    """
    arch_args = dict(arch_args or {})
    settings = dict(settings or {})
    if (source is None) == (source_model is None):
        raise CheckpointError("give exactly one of source and source_model")
    if keep_dmm and (source is not None or arch_args):
        raise CheckpointError("keep_dmm needs source_model and no arch_args")
    not_dmm = sorted(k for k in arch_args if not k.startswith("dmm_"))
    if not_dmm:
        raise CheckpointError(f"arch_args may only change DMM fields, got {not_dmm}")
    if source is not None:
        if units is None or dataset is None:
            raise CheckpointError("a branch from a checkpoint (source) needs units and dataset")
        state, done = _from_checkpoint(source, units, dataset, arch_args, settings)
    else:
        assert source_model is not None
        state, done = _from_model(source_model, arch_args, settings, keep_dmm)
    run = Path(out)
    written = save_checkpoint(run, state, epoch=done, protect=[done])
    lines = [json.dumps(record) for record in state["history"]]
    (run / "train_log.jsonl").write_text("\n".join(lines) + "\n")
    return written, done
