"""Publish the mirror's folders to their Hub repos (``guardnet hub push``).

:func:`upload_set` says exactly what would be uploaded (for each registered name: the repo id and
every file with its size and sha256) after checking that the folder loads strictly and holds the
files the registry records; :func:`push` writes that set as a JSON manifest and, unless it is a dry
run, uploads each folder with ``huggingface_hub.HfApi().upload_folder`` (one commit per repo,
remote files outside the set removed). The commit hashes it reports are the revisions to pin in
:mod:`guardnet.weights.pretrained`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from guardnet._utils import sha256_file
from guardnet.errors import WeightsError
from guardnet.weights.io import CONFIG_NAME
from guardnet.weights.pretrained import PRETRAINED, get_pretrained
from guardnet.weights.resolve import from_pretrained, mirror_root

__all__ = ["describe", "push", "upload_set"]


def _folder_listing(folder: Path) -> list[dict[str, Any]]:
    """Every file under ``folder`` (hidden files and ``.partial`` leftovers excepted), sorted."""
    files = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts) or path.suffix == ".partial":
            continue
        if path.is_file():
            files.append(
                {
                    "path": relative.as_posix(),
                    "size": path.stat().st_size,
                    "sha256": sha256_file(path),
                }
            )
    return files


def upload_set(
    names: Sequence[str] | None = None, *, mirror: str | os.PathLike[str] | None = None
) -> list[dict[str, Any]]:
    """What :func:`push` uploads: one record per registered name, checked first.

    Args:
        names: Registered names (default: all of them).
        mirror: The folder holding ``<name>/`` for each name (default
            :func:`~guardnet.weights.resolve.mirror_root`).

    Returns:
        ``[{"name", "repo_id", "registered_revision", "folder", "files": [{"path", "size",
        "sha256"}, ...]}, ...]`` in the order of ``names``.

    Raises:
        WeightsError: An unknown name, no mirror, a folder that does not load strictly, or files
            whose sha256 or architecture differ from the registry (update the entry first).
    """
    root = Path(mirror) if mirror is not None else mirror_root()
    if root is None or not root.is_dir():
        raise WeightsError(
            f"no mirror of the Hub repos to publish from (got {root}); run from a guardnet clone "
            "(hub/) or pass mirror="
        )
    records = []
    for name in names if names is not None else sorted(PRETRAINED):
        entry = get_pretrained(name)
        folder = root / entry.name
        model = from_pretrained(folder)  # refuses a folder that does not load strictly
        config = model.pretrained_config
        files = _folder_listing(folder)
        found = {item["path"]: item["sha256"] for item in files}
        for filename, expected in entry.sha256.items():
            if found.get(filename) != expected:
                raise WeightsError(
                    f"{folder / filename} has sha256 {found.get(filename)}, the registry records "
                    f"{expected} for {entry.name!r}: set the entry's config_sha256 / "
                    "weights_sha256 to the files to publish (guardnet/weights/pretrained.py)"
                )
        for key in ("architecture", "license", "dataset"):
            if config.get(key) != getattr(entry, key):
                raise WeightsError(
                    f"{folder / CONFIG_NAME} says {key}={config.get(key)!r}, the registry "
                    f"{getattr(entry, key)!r} for {entry.name!r}"
                )
        records.append(
            {
                "name": entry.name,
                "repo_id": entry.hub_id,
                "registered_revision": entry.revision,
                "folder": str(folder),
                "files": files,
            }
        )
    return records


def push(
    names: Sequence[str] | None = None,
    *,
    dry_run: bool = True,
    out: str | os.PathLike[str] | None = None,
    mirror: str | os.PathLike[str] | None = None,
    token: str | None = None,
    commit_message: str | None = None,
) -> dict[str, Any]:
    """Upload mirror folders to their Hub repos, or (``dry_run``) only say what would be uploaded.

    Args:
        names: Registered names (default: all of them).
        dry_run: True: upload nothing, write the manifest only (no network, no token needed).
        out: Where to write the manifest as JSON (default: not written).
        mirror: See :func:`upload_set`.
        token: Hugging Face token (default: huggingface_hub's own, e.g. ``HF_TOKEN``).
        commit_message: The Hub commit message (default names the files' config sha256).

    Returns:
        The manifest ``{"dry_run", "repos": upload_set(...)}``; after an upload each repo also has
        ``"commit"``: the revision to pin in the registry entry.

    Raises:
        WeightsError: See :func:`upload_set`; an upload that fails (the message names the repo).

    Example:
        >>> manifest = push(["mnist-cnn"], dry_run=True)  # doctest: +SKIP
        >>> [f["path"] for f in manifest["repos"][0]["files"]]  # doctest: +SKIP
        ['README.md', 'config.json', 'model.safetensors']
    """
    manifest: dict[str, Any] = {"dry_run": dry_run, "repos": upload_set(names, mirror=mirror)}
    if not dry_run:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        for repo in manifest["repos"]:
            config = next(f for f in repo["files"] if f["path"] == CONFIG_NAME)
            message = commit_message or (
                f"guardnet {repo['name']}: config.json sha256 {config['sha256'][:12]}"
            )
            try:
                api.create_repo(repo["repo_id"], repo_type="model", exist_ok=True)
                info = api.upload_folder(
                    repo_id=repo["repo_id"],
                    folder_path=repo["folder"],
                    repo_type="model",
                    allow_patterns=[f["path"] for f in repo["files"]],
                    delete_patterns="*",
                    commit_message=message,
                )
            except Exception as exc:  # network, auth, permissions
                raise WeightsError(
                    f"cannot upload {repo['folder']} to Hub repo {repo['repo_id']!r}: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            repo["commit"] = info.oid
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def describe(manifest: dict[str, Any]) -> str:
    """A few lines for people: per repo its files and size, and what was (or would be) done."""
    lines = []
    for repo in manifest["repos"]:
        size = sum(f["size"] for f in repo["files"])
        names = ", ".join(f["path"] for f in repo["files"])
        done = (
            f"commit {repo['commit']} (pin it as the entry's revision)"
            if "commit" in repo
            else "dry run: not uploaded"
        )
        lines.append(
            f"{repo['repo_id']}: {len(repo['files'])} files, {size:,} bytes ({names}); {done}"
        )
    return "\n".join(lines)
