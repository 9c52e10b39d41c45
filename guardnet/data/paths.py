"""Where guardnet looks for datasets and where it keeps its caches.

The data root is never inside the repository: the datasets are large and come with their own terms.
It is found, in order, from an explicit argument, the ``GUARDNET_DATA`` environment variable, or a
``../shared/data`` folder next to the current working directory.
"""

from __future__ import annotations

import os
from pathlib import Path

from guardnet.errors import DataNotFoundError

__all__ = [
    "CACHE_ENV_VAR",
    "DATA_ENV_VAR",
    "DEFAULT_RELATIVE_ROOT",
    "EXPECTED_FILES",
    "missing_data_message",
    "resolve_cache_dir",
    "resolve_data_root",
]

DATA_ENV_VAR = "GUARDNET_DATA"
CACHE_ENV_VAR = "GUARDNET_CACHE"
DEFAULT_RELATIVE_ROOT = Path("..") / "shared" / "data"

# Layout under the data root, per dataset (relative paths; globs where several files are needed).
EXPECTED_FILES: dict[str, tuple[str, ...]] = {
    "mnist": (
        "mnist/MNIST/raw/train-images-idx3-ubyte.gz",
        "mnist/MNIST/raw/train-labels-idx1-ubyte.gz",
        "mnist/MNIST/raw/t10k-images-idx3-ubyte.gz",
        "mnist/MNIST/raw/t10k-labels-idx1-ubyte.gz",
    ),
    "cifar10": ("cifar10-jpeg/cifar10_jpeg_q75.npz",),
    "gtsrb": ("gtsrb32/gtsrb_32x32.npz",),
}


def missing_data_message(problem: str) -> str:
    """Build the message of a :class:`~guardnet.errors.DataNotFoundError`.

    Args:
        problem: First line: what was not found, and where guardnet looked.

    Returns:
        ``problem`` followed by how to set the data root and the expected layout under it.

    Example:
        >>> print(missing_data_message("no data root").splitlines()[0])
        no data root
    """
    layout = "\n".join(
        f"  {name:8s} <root>/{path}" for name, paths in EXPECTED_FILES.items() for path in paths
    )
    return (
        f"{problem}\n"
        f"Set the data root with the `root=` argument or the {DATA_ENV_VAR} environment variable "
        f"(e.g. `export {DATA_ENV_VAR}=/path/to/data`), or run from a folder that has "
        f"{DEFAULT_RELATIVE_ROOT.as_posix()} next to it. Expected files under the root:\n"
        f"{layout}\n"
        "With internet access, `download=True` fetches the standard MNIST / GTSRB (and "
        "'cifar10-exact') through torchvision into the root instead."
    )


def resolve_data_root(
    root: str | os.PathLike[str] | None = None, *, must_exist: bool = True
) -> Path:
    """Find the folder that holds the datasets.

    Order: ``root`` if given, else ``$GUARDNET_DATA`` if set, else ``../shared/data`` relative to
    the current working directory if that folder exists. A root the user named explicitly
    (argument or environment variable) is never silently replaced by the fallback.

    Args:
        root: Explicit data root.
        must_exist: If True (default), raise when no existing folder is found. If False (used for
            ``download=True``), return the folder to download into instead: the named root even if
            missing, else ``../shared/data`` if present, else ``<cache dir>/data``.

    Returns:
        The data root as an absolute path.

    Raises:
        DataNotFoundError: ``must_exist`` is True and no existing folder was found; the message says
            how to set the root and which files are expected where.

    Example:
        >>> root = resolve_data_root("../shared/data")  # doctest: +SKIP
        >>> (root / "gtsrb32" / "gtsrb_32x32.npz").is_file()  # doctest: +SKIP
        True
    """
    if root is not None:
        candidate, origin = Path(root), "the `root` argument"
    elif os.environ.get(DATA_ENV_VAR):
        candidate, origin = Path(os.environ[DATA_ENV_VAR]), f"${DATA_ENV_VAR}"
    else:
        fallback = Path.cwd() / DEFAULT_RELATIVE_ROOT
        if fallback.is_dir():
            return fallback.resolve()
        if not must_exist:
            return resolve_cache_dir() / "data"
        raise DataNotFoundError(
            missing_data_message(
                f"No data root: no `root` argument, {DATA_ENV_VAR} is not set, and {fallback} "
                "does not exist."
            )
        )
    candidate = candidate.expanduser()
    if must_exist and not candidate.is_dir():
        raise DataNotFoundError(
            missing_data_message(f"Data root {candidate} (from {origin}) is not a folder.")
        )
    return candidate.resolve()


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Folder for guardnet's on-disk caches (e.g. decoded CIFAR-10 JPEGs).

    Args:
        cache_dir: Explicit folder; else ``$GUARDNET_CACHE``; else ``~/.cache/guardnet``.

    Returns:
        The cache folder (not created here; writers create it when they need it).

    Example:
        >>> resolve_cache_dir("/tmp/gn-cache")
        PosixPath('/tmp/gn-cache')
    """
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get(CACHE_ENV_VAR):
        return Path(os.environ[CACHE_ENV_VAR]).expanduser()
    return Path.home() / ".cache" / "guardnet"
