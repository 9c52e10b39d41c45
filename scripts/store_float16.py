"""Rewrite a Hub-layout weights folder with some tensors stored as float16, in place.

The config (with a new ``weights_sha256``) and the model card are kept. The rounding can move
scores slightly, so measure the rewritten folder (``scripts/measure_contranet.py --contranet
FOLDER``) before shipping it. Prints the file size before and after.

Usage:
    python scripts/store_float16.py runs/contranet-gtsrb-ce/model --keys dmm.fc1.weight
"""

from __future__ import annotations

import argparse
from pathlib import Path

from guardnet.weights import (
    CONFIG_NAME,
    MODEL_CARD_NAME,
    WEIGHTS_NAME,
    from_pretrained,
    save_pretrained,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path, help="folder with config.json and model.safetensors")
    parser.add_argument(
        "--keys", nargs="+", required=True, help="state_dict keys to store as float16"
    )
    args = parser.parse_args()

    before = (args.folder / WEIGHTS_NAME).stat().st_size
    model = from_pretrained(args.folder)
    config = dict(model.pretrained_config)
    config.pop("weights_sha256", None)  # save_pretrained records the new file's
    card_path = args.folder / MODEL_CARD_NAME
    card = card_path.read_text() if card_path.is_file() else None
    save_pretrained(model, args.folder, config=config, model_card=card, float16_keys=args.keys)
    after = (args.folder / WEIGHTS_NAME).stat().st_size
    print(f"{args.folder / WEIGHTS_NAME}: {before:,} -> {after:,} bytes ({CONFIG_NAME} updated)")


if __name__ == "__main__":
    main()
