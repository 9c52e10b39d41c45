"""Upload a guardnet weights folder to a Hugging Face Hub model repository (release step).

The folder must be loadable (it is checked with ``guardnet.from_pretrained`` first) and is
uploaded as is: config.json, model.safetensors, README.md (the model card) and any licence or
evaluation files beside them. Needs a token with write access (``hf auth login`` or ``HF_TOKEN``).

Usage:
    python scripts/push_to_hub.py hub/mnist-cnn guardnet/mnist-cnn
    python scripts/push_to_hub.py hub/resnet20-cifar10-akamaster \
        guardnet/resnet20-cifar10-akamaster --private
"""

from __future__ import annotations

import argparse
from pathlib import Path

from huggingface_hub import HfApi

from guardnet.weights import from_pretrained


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("folder", type=Path, help="weights folder (config.json, model.safetensors)")
    parser.add_argument("repo_id", help="Hub repository, e.g. guardnet/mnist-cnn")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument(
        "--revision", default=None, help="existing branch to push to (default: main)"
    )
    parser.add_argument("--message", default=None, help="commit message")
    args = parser.parse_args()

    from_pretrained(args.folder)  # refuse to publish a folder that does not load strictly
    api = HfApi()
    api.create_repo(args.repo_id, repo_type="model", private=args.private, exist_ok=True)
    commit = api.upload_folder(
        repo_id=args.repo_id,
        repo_type="model",
        folder_path=args.folder,
        revision=args.revision,
        commit_message=args.message or f"Upload {args.folder.name} (guardnet)",
        ignore_patterns=["*.partial", ".*"],
    )
    print(f"uploaded {args.folder} -> {commit.commit_url}")


if __name__ == "__main__":
    main()
