"""The layer-type registry: rebuild a layer from ``{"type": ..., **config}`` without weights.

Every layer class that can be saved registers itself beside its definition with
:func:`register_layer`. A saved guard stores each layer as its type and its
:meth:`~guardnet.layers.Layer.get_config`; loading rebuilds the layer empty with
:func:`build_layer` and fills it from the guard's one state dict (thresholds included).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from guardnet.errors import ConfigError
from guardnet.layers.base import Layer

__all__ = ["LAYER_TYPES", "build_layer", "layer_config", "layer_type", "register_layer"]

LayerT = TypeVar("LayerT", bound=type[Layer])

#: Layer type name -> layer class.
LAYER_TYPES: dict[str, type[Layer]] = {}


def register_layer(name: str) -> Callable[[LayerT], LayerT]:
    """Register a :class:`~guardnet.layers.Layer` class under the type ``name``.

    Args:
        name: the ``"type"`` that layer configs and guard recipes use for this class.

    Returns:
        A class decorator that registers its argument and returns it unchanged.

    Raises:
        ValueError: ``name`` is taken by another class.
        TypeError: the decorated object is not a ``Layer`` subclass.

    Example:
        >>> from guardnet.layers import LayerKind, LayerOutput
        >>> @register_layer("doctest-constant")
        ... class ConstantLayer(Layer):
        ...     kind = LayerKind.PRE
        ...     def __init__(self, *, value: float = 0.0) -> None:
        ...         super().__init__()
        ...         self.value = value
        ...     def get_config(self) -> dict:
        ...         return {"value": self.value}
        ...     def forward(self, inputs):
        ...         return LayerOutput(scores=inputs.images.new_full((len(inputs.images),), 1.0))
        >>> build_layer({"type": "doctest-constant", "value": 2.0}).value
        2.0
        >>> del LAYER_TYPES["doctest-constant"]
    """

    def decorator(cls: LayerT) -> LayerT:
        if not (isinstance(cls, type) and issubclass(cls, Layer)):
            raise TypeError(f"register_layer({name!r}) decorates Layer classes, got {cls!r}")
        existing = LAYER_TYPES.get(name)
        if existing is not None and existing is not cls:
            raise ValueError(f"layer type {name!r} is already registered to {existing.__name__}")
        LAYER_TYPES[name] = cls
        return cls

    return decorator


def layer_type(layer: Layer) -> str:
    """The registered type name of ``layer``'s class.

    Raises:
        ConfigError: the class is not registered (subclasses must register themselves).
    """
    for name, cls in LAYER_TYPES.items():
        if type(layer) is cls:
            return name
    raise ConfigError(
        f"{type(layer).__name__} is not a registered layer type "
        f"(registered: {', '.join(sorted(LAYER_TYPES))}); decorate the class with "
        "guardnet.layers.register_layer(name) and give it a get_config() to save it"
    )


def layer_config(layer: Layer) -> dict[str, Any]:
    """``{"type": ..., **layer.get_config()}``: what :func:`build_layer` rebuilds the layer from."""
    kind = layer_type(layer)
    config = layer.get_config()
    if "type" in config:
        raise ConfigError(f"{type(layer).__name__}.get_config() must not use the key 'type'")
    return {"type": kind, **config}


def build_layer(config: Mapping[str, Any]) -> Layer:
    """A layer built from ``{"type": ..., **config}``, untrained and uncalibrated.

    Args:
        config: a registered ``"type"`` and the keyword arguments of that class's
            :meth:`~guardnet.layers.Layer.from_config`.

    Raises:
        ConfigError: the type is missing or unknown, or the class rejects the config.
    """
    kind = config.get("type")
    if kind not in LAYER_TYPES:
        raise ConfigError(
            f"unknown layer type {kind!r}; registered: {', '.join(sorted(LAYER_TYPES))}"
        )
    cls = LAYER_TYPES[kind]
    kwargs = {k: v for k, v in config.items() if k != "type"}
    try:
        return cls.from_config(kwargs)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"cannot build a {kind!r} layer from {kwargs}: {exc}") from exc
