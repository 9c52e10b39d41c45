"""Write DeT's chosen reformers (R0 first, then the Reformer List) as a Hub folder with a card.

The choice comes from ``benchmarks/det_select.py`` (validation data only); the folder holds
just the chosen reformers and, in ``config.json``'s ``"det"``, the settings
:meth:`DeTReformer.from_pretrained <guardnet.DeTReformer.from_pretrained>` builds the layer with.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from guardnet.data.datasets import dataset_info
from guardnet.errors import WeightsError
from guardnet.nets.reformer import ReformerSet
from guardnet.weights.io import write_folder

__all__ = ["ship_det"]


def _card(config: dict[str, Any]) -> str:
    det = config["det"]
    names = config["arch_args"]["names"]
    rows = "\n".join(
        f"| `{name}` | {'R0 (preliminary)' if i == det['first'] else 'Reformer List'} | "
        f"{json.dumps(config['arch_args']['reformers'][i])} |"
        for i, name in enumerate(names)
    )
    measured = config.get("measured") or ["Not measured with this folder yet."]
    measured_text = "\n".join(f"- {line}" for line in measured)
    return f"""---
license: apache-2.0
library_name: guardnet
tags: [adversarial-defense, det, reformer, {config["dataset"]}]
---

# {config["name"]}: DeT reformers for `{config["classifier"]}`

The reformers of guardnet's `DeTReformer` (the DeT paper's transferability-based defense) for
{config["dataset_title"]}: Gaussian noise (std {det["noise"]}) and R0 denoise the input,
{det["num_samples"]} samples around the rebuild (std {det["eps"]}) go through each of the
{len(det["voters"])} reformers of the Reformer List, the classifier labels every rebuild, each
reformer votes its majority label and the majority of the votes is the output (ties at random,
seeded). Denoising autoencoders after MagNet's, trained by `guardnet train reformers` with DeT's
cross training; R0, the list, N and eps chosen on validation images.

```python
import guardnet
guard = guardnet.from_pretrained("{config["recipe"]}")  # classifier + DeT
```

| reformer | role | architecture |
| --- | --- | --- |
{rows}

## Measured

{measured_text}

## Limitations

- A DeT guard runs the classifier {det["num_samples"]} x {len(det["voters"])} times per input.
- The reformers are trained for `{config["classifier"]}`'s data and input size only.
- Sampling is not differentiable, but the reformers and the classifier are: an attacker who
  differentiates through them and averages over the noise (BPDA + EOT) is the threat to quote
  (see "Measured").

## Training

```bash
{config["train_command"]}
```
"""


def ship_det(
    run_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    selection: Mapping[str, Any],
    name: str,
    recipe: str,
    classifier: str,
    measured: Sequence[str] = (),
) -> dict[str, Any]:
    """Write the chosen reformers of a ``guardnet train reformers`` run to ``out``.

    Args:
        run_dir: the training run (holds ``model/``).
        out: the folder to write.
        selection: ``det_select.py``'s output (its ``"choice"``: first, voters, num_samples,
            eps, noise).
        name: the registered name it ships under.
        recipe: the guard recipe that uses it.
        classifier: the classifier the choice was made for.
        measured: Markdown lines for the card's "Measured" section.

    Returns:
        The written config.
    """
    from guardnet.weights import from_pretrained

    source = Path(run_dir) / "model"
    nets = from_pretrained(source)
    if not isinstance(nets, ReformerSet):
        raise WeightsError(f"{source} does not hold reformers")
    run_config = nets.pretrained_config
    choice = selection["choice"]
    order = [int(choice["first"]), *[int(v) for v in choice["voters"]]]
    chosen = ReformerSet(
        [nets.arch_args()["reformers"][i] for i in order],
        names=[nets.names[i] for i in order],
    )
    for target, index in zip(chosen.reformers, order, strict=True):
        target.load_state_dict(nets[index].state_dict())
    info = dataset_info(run_config["dataset"])
    dataset = run_config["dataset"]
    chosen_row = next(
        (
            row
            for row in selection.get("grid", ())
            if row["voters"] == list(choice["voters"])
            and row["N"] == choice["num_samples"]
            and row["eps"] == choice["eps"]
        ),
        None,
    )
    metrics: dict[str, float] = {}
    if chosen_row is not None:
        metrics = {
            f"{dataset}_val_det_accuracy": round(float(chosen_row["clean"]), 4),
            f"{dataset}_val_det_pgd_black_box_accuracy": round(
                float(chosen_row["pgd_black_box"]), 4
            ),
        }
    config: dict[str, Any] = {
        "architecture": "ReformerSet",
        "arch_args": chosen.arch_args(),
        "name": name,
        "recipe": recipe,
        "classifier": classifier,
        "dataset": run_config["dataset"],
        "dataset_title": info.display_name,
        "num_classes": info.num_classes,
        "input_size": run_config["input_size"],
        "det": {
            "first": 0,
            "voters": list(range(1, len(order))),
            "noise": float(choice["noise"]),
            "eps": float(choice["eps"]),
            "num_samples": int(choice["num_samples"]),
        },
        "train_settings": run_config["train_settings"],
        "train_command": run_config.get("command", ""),
        "selection": {k: v for k, v in selection.items() if k != "grid"},
        "measured": list(measured),
        "license": "Apache-2.0",
        "source": "trained by guardnet (guardnet train reformers), chosen by det_select.py",
        "metrics": metrics,
    }
    if metrics:
        config["headline_metric"] = f"{dataset}_val_det_accuracy"
    state = {k: v.detach().cpu().contiguous().clone() for k, v in chosen.state_dict().items()}
    write_folder(Path(out), state, config, card=_card)
    return config
