"""From a name to files: a folder, the repository's mirror, or the Hugging Face Hub.

:func:`from_pretrained` takes one string and looks, in this order:

1. a local folder of that path (``config.json`` + ``model.safetensors``);
2. for a registered name (see :func:`~guardnet.weights.pretrained.list_pretrained`; its Hub repo id
   works too), the mirror of the Hub repos: the folder named by ``$GUARDNET_HUB_MIRROR``, else
   ``hub/`` at the root of a guardnet clone (beside the ``guardnet`` package);
3. the Hugging Face Hub through ``huggingface_hub.hf_hub_download`` (its cache, ``HF_HUB_OFFLINE``,
   ``HF_HUB_CACHE`` and ``HF_TOKEN`` apply): a registered name at the revision the registry pins,
   any other ``"org/name"`` at ``revision`` (default ``main``).

Files that come from outside the clone (the Hub, or ``$GUARDNET_HUB_MIRROR``) must have the sha256
the registry records for the name; the clone's own ``hub/`` is where those sha256s are taken from
(``tests/test_weights.py`` checks that they agree). Every weights file is also checked against the
``weights_sha256`` its config records.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from guardnet._utils import sha256_file
from guardnet.errors import WeightsError
from guardnet.weights.io import CONFIG_NAME, WEIGHTS_NAME, folder_files, load_files, read_config
from guardnet.weights.pretrained import (
    COMMIT_HASH,
    PRETRAINED,
    REPO_ID,
    PretrainedEntry,
    find_pretrained,
)

__all__ = [
    "MIRROR_ENV",
    "ResolvedFiles",
    "from_pretrained",
    "load_config",
    "mirror_root",
    "resolve_files",
]

#: Environment variable naming a folder that mirrors the Hub repos (``<folder>/<name>/...``).
MIRROR_ENV = "GUARDNET_HUB_MIRROR"
# hub/ at the root of a clone: guardnet/weights/resolve.py -> parents[2].
_CLONE_MIRROR = Path(__file__).resolve().parents[2] / "hub"


@dataclass(frozen=True)
class ResolvedFiles:
    """Where a model's files were found.

    Attributes:
        config: The ``config.json``.
        weights: The ``model.safetensors`` (None when only the config was asked for).
        origin: Where they come from, for messages (``"folder ..."``, ``"mirror ..."``,
            ``"Hub repo ... at ..."``).
        entry: The registry entry, for a registered name.
        weights_sha256: The sha256 the weights must have when the registry vouches for them
            (files from outside the clone), else None (the config's own record applies).
    """

    config: Path
    weights: Path | None
    origin: str
    entry: PretrainedEntry | None = None
    weights_sha256: str | None = None


def mirror_root() -> Path | None:
    """The folder mirroring the Hub repos: ``$GUARDNET_HUB_MIRROR``, else a clone's ``hub/``.

    Returns:
        The folder, or None when the variable is unset and guardnet does not run from a clone.

    Raises:
        WeightsError: ``$GUARDNET_HUB_MIRROR`` names something that is not a folder.
    """
    configured = os.environ.get(MIRROR_ENV)
    if configured:
        root = Path(configured).expanduser()
        if not root.is_dir():
            raise WeightsError(f"{MIRROR_ENV}={configured} is not a folder")
        return root
    return _CLONE_MIRROR if _CLONE_MIRROR.is_dir() else None


def _check_sha256(path: Path, expected: str, *, what: str, name: str) -> None:
    found = sha256_file(path)
    if found != expected:
        raise WeightsError(
            f"{what} has sha256 {found}, not the {expected} guardnet registers for {name!r}: the "
            "file was changed or damaged since it was registered (a Hub file: delete it from the "
            "Hugging Face cache and fetch it again; a newer revision: ask for it with revision=)"
        )


def _offline_hint(repo_id: str, cache_dir: str | os.PathLike[str] | None, name: str | None) -> str:
    cache = os.fspath(cache_dir) if cache_dir is not None else "HF_HUB_CACHE"
    hint = (
        f"To load without network, set HF_HUB_OFFLINE=1 (or pass local_files_only=True) with "
        f"{repo_id} already in the Hugging Face cache ({cache})"
    )
    if name is not None:
        hint += f", or set {MIRROR_ENV} to a folder holding {name}/ (a guardnet clone's hub/)"
    return hint + "."


def _hub_files(
    repo_id: str,
    filenames: tuple[str, ...],
    *,
    revision: str | None,
    cache_dir: str | os.PathLike[str] | None,
    local_files_only: bool | None,
    entry: PretrainedEntry | None,
) -> tuple[list[Path], str]:
    """Fetch ``filenames`` through the Hugging Face cache, all of one commit."""
    from huggingface_hub import hf_hub_download

    at = revision
    paths: list[Path] = []
    for filename in filenames:
        try:
            path = Path(
                hf_hub_download(
                    repo_id,
                    filename,
                    revision=at,
                    cache_dir=cache_dir,
                    local_files_only=bool(local_files_only),
                    library_name="guardnet",
                )
            )
        except Exception as exc:  # network, offline mode, missing repo/revision/file, auth
            name = entry.name if entry is not None else None
            local = "" if entry is not None else f" (and there is no folder {repo_id!r})"
            raise WeightsError(
                f"cannot fetch {filename} of Hub repo {repo_id!r} at revision {at or 'main'}"
                f"{local}: {type(exc).__name__}: {exc}. {_offline_hint(repo_id, cache_dir, name)}"
            ) from exc
        paths.append(path)
        # Cached files live in snapshots/<commit>/: pin the next files to the first one's commit,
        # so a push between two downloads cannot pair a config with other weights.
        if COMMIT_HASH.match(path.parent.name):
            at = path.parent.name
    return paths, f"Hub repo {repo_id!r} at {at or revision or 'main'}"


def resolve_files(
    name_or_path: str | os.PathLike[str],
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    local_files_only: bool | None = None,
    config_only: bool = False,
) -> ResolvedFiles:
    """Find a model's ``config.json`` and ``model.safetensors`` (see the module's order).

    Args:
        name_or_path: A folder, a registered name, or a Hub repo id (``"org/name"``).
        revision: Hub branch, tag or commit. For a registered name it replaces the pinned
            revision (and skips the mirror and the registry's sha256s, which describe that one).
        cache_dir: Hugging Face cache folder (default ``HF_HUB_CACHE``).
        local_files_only: True: never use the network, only the cache. None or False: follow
            huggingface_hub (offline when ``HF_HUB_OFFLINE=1``).
        config_only: Find only ``config.json`` (no weights download).

    Returns:
        The files and where they come from.

    Raises:
        WeightsError: Nothing of that name, a folder missing a file, a failed download (the
            message names the repo id and how to work offline), or a sha256 the registry does not
            record.
        ValueError: ``revision`` was given for a local folder.
    """
    filenames = (CONFIG_NAME,) if config_only else (CONFIG_NAME, WEIGHTS_NAME)
    path = Path(name_or_path)
    if path.is_dir():
        if revision is not None:
            raise ValueError(f"revision={revision!r} applies to Hub repos; {path} is a folder")
        files = folder_files(path, filenames)
        return ResolvedFiles(files[0], None if config_only else files[1], f"folder {path}")

    name = os.fspath(name_or_path)
    entry = find_pretrained(name)
    if entry is None:
        if not REPO_ID.match(name):
            raise WeightsError(
                f"{name!r} is not a folder, a registered name ({', '.join(sorted(PRETRAINED))}) "
                "or a Hub repo id ('org/name')"
            )
        paths, origin = _hub_files(
            name,
            filenames,
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            entry=None,
        )
        return ResolvedFiles(paths[0], None if config_only else paths[1], origin)

    if revision is not None and revision != entry.revision:  # another version than registered
        paths, origin = _hub_files(
            entry.hub_id,
            filenames,
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            entry=entry,
        )
        return ResolvedFiles(paths[0], None if config_only else paths[1], origin, entry)

    root = mirror_root()
    if root is not None and (root / entry.name).is_dir():
        files = folder_files(root / entry.name, filenames)
        from_clone = root == _CLONE_MIRROR
        if not from_clone:
            _check_sha256(files[0], entry.config_sha256, what=str(files[0]), name=entry.name)
        return ResolvedFiles(
            files[0],
            None if config_only else files[1],
            f"mirror {root / entry.name}",
            entry,
            None if from_clone else entry.weights_sha256,
        )

    paths, origin = _hub_files(
        entry.hub_id,
        filenames,
        revision=entry.revision,
        cache_dir=cache_dir,
        local_files_only=local_files_only,
        entry=entry,
    )
    _check_sha256(paths[0], entry.config_sha256, what=f"{CONFIG_NAME} of {origin}", name=entry.name)
    return ResolvedFiles(
        paths[0], None if config_only else paths[1], origin, entry, entry.weights_sha256
    )


def load_config(
    name_or_path: str | os.PathLike[str],
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    local_files_only: bool | None = None,
) -> dict[str, Any]:
    """A model's ``config.json`` (its architecture, data, normalisation and ``metrics``).

    Only the config is read (or downloaded), never the weights. Arguments as for
    :func:`from_pretrained`.

    Example:
        >>> load_config("mnist-cnn")["architecture"]
        'MnistCNN'
    """
    resolved = resolve_files(
        name_or_path,
        revision=revision,
        cache_dir=cache_dir,
        local_files_only=local_files_only,
        config_only=True,
    )
    return read_config(resolved.config)


def from_pretrained(
    name_or_path: str | os.PathLike[str],
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    local_files_only: bool | None = None,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """Load a model: a registered name, a local folder or a Hugging Face Hub repo id.

    The module's order of resolution applies: a folder, then (registered names) the mirror of the
    Hub repos, then the Hub at the registered revision with the registered sha256s checked. Only
    safetensors weights are read, and strictly: every key and shape must match the architecture.

    Args:
        name_or_path: A registered name (``guardnet models``), a folder holding ``config.json``
            and ``model.safetensors``, or a Hub repo id (``"org/name"``).
        revision: Hub branch, tag or commit hash; for a registered name, another version than the
            registered one (read from the Hub). Not for folders.
        cache_dir: Hugging Face cache folder (default ``HF_HUB_CACHE``).
        local_files_only: True: never use the network, only the cache. None or False: follow
            huggingface_hub (offline only when ``HF_HUB_OFFLINE=1``).
        device: Device the returned model is moved to.

    Returns:
        The model in eval mode; its config dict is ``model.pretrained_config``.

    Raises:
        WeightsError: Nothing of that name, a missing file, a failed download (naming the repo id
            and how to work offline), a file whose sha256 differs from the record, a damaged file,
            or weights that do not match the architecture (naming the keys).
        ValueError: ``revision`` was given for a local folder.

    Example:
        >>> import guardnet
        >>> model = guardnet.from_pretrained("mnist-cnn")  # a clone's hub/ mirror, or the Hub
        >>> model.pretrained_config["architecture"], model.training
        ('MnistCNN', False)
    """
    resolved = resolve_files(
        name_or_path, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only
    )
    assert resolved.weights is not None
    entry = resolved.entry
    if entry is not None:
        architecture = read_config(resolved.config).get("architecture")
        if architecture != entry.architecture:
            raise WeightsError(
                f"{entry.name!r}: the config's architecture {architecture!r} ({resolved.origin}) "
                f"is not the registered {entry.architecture!r}"
            )
    return load_files(
        resolved.config, resolved.weights, weights_sha256=resolved.weights_sha256, device=device
    )
