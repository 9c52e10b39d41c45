"""Architecture registry: the ``architecture`` name of a config -> the builder of its module.

Each architecture registers itself beside its definition (``@register_architecture("resnet20")``
in :mod:`guardnet.nets.resnet_cifar`), so this module imports no network: the built-in ones are
imported on first use of :func:`build_model` or :func:`list_architectures`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from torch import nn

from guardnet.errors import WeightsError

__all__ = ["ARCHITECTURES", "build_model", "list_architectures", "register_architecture"]

BuilderT = TypeVar("BuilderT", bound=Callable[..., nn.Module])

#: Builders by name; fill it with :func:`register_architecture`.
ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {}

# Modules whose import registers guardnet's own architectures.
_BUILTIN_MODULES = ("guardnet.nets", "guardnet.nets.contranet", "guardnet.layers.a2d")


def register_architecture(name: str) -> Callable[[BuilderT], BuilderT]:
    """Register a module class or factory under ``name`` for :func:`build_model`.

    Args:
        name: The ``architecture`` value of configs that use this builder.

    Returns:
        A decorator that registers its argument and returns it unchanged.

    Raises:
        ValueError: ``name`` is already registered to a different builder.

    Example:
        >>> @register_architecture("doctest-linear")
        ... def linear(num_classes: int = 10) -> nn.Module:
        ...     return nn.Linear(4, num_classes)
        >>> build_model({"architecture": "doctest-linear", "arch_args": {"num_classes": 3}})
        Linear(in_features=4, out_features=3, bias=True)
        >>> del ARCHITECTURES["doctest-linear"]
    """

    def decorator(builder: BuilderT) -> BuilderT:
        existing = ARCHITECTURES.get(name)
        if existing is not None and existing is not builder:
            raise ValueError(f"architecture {name!r} is already registered to {existing!r}")
        ARCHITECTURES[name] = builder
        return builder

    return decorator


def _import_builtins() -> None:
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def list_architectures() -> list[str]:
    """Names of the registered architectures, sorted.

    Example:
        >>> "resnet20" in list_architectures()
        True
    """
    _import_builtins()
    return sorted(ARCHITECTURES)


def build_model(config: Mapping[str, Any]) -> nn.Module:
    """Build a randomly initialised model from a config's ``architecture`` and ``arch_args``.

    Args:
        config: A mapping with ``"architecture"`` (a registered name) and optionally
            ``"arch_args"`` (keyword arguments of the builder; default none).

    Returns:
        The model (weights not loaded).

    Raises:
        WeightsError: The architecture is missing or unknown, or rejects its ``arch_args``.

    Example:
        >>> build_model({"architecture": "resnet20", "arch_args": {"num_classes": 10}}).depth
        20
    """
    name = config.get("architecture")
    if not isinstance(name, str):
        raise WeightsError(f"config needs an 'architecture' string, got {name!r}")
    _import_builtins()
    if name not in ARCHITECTURES:
        raise WeightsError(
            f"unknown architecture {name!r}; registered: {', '.join(sorted(ARCHITECTURES))} "
            "(register new ones with guardnet.register_architecture)"
        )
    arch_args = config.get("arch_args") or {}
    if not isinstance(arch_args, Mapping):
        raise WeightsError(f"config 'arch_args' must be an object, got {arch_args!r}")
    try:
        return ARCHITECTURES[name](**arch_args)
    except (TypeError, ValueError) as exc:
        raise WeightsError(
            f"cannot build {name!r} with arch_args {dict(arch_args)}: {exc}"
        ) from exc
