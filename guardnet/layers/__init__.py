"""Defense layers and the protocol they share."""

from guardnet.layers.a2d import A2DLayer
from guardnet.layers.base import Layer, LayerInput, LayerKind, LayerOutput
from guardnet.layers.contranet import ContraNetLayer
from guardnet.layers.det import DeTReformer
from guardnet.layers.registry import (
    LAYER_TYPES,
    build_layer,
    layer_config,
    layer_type,
    register_layer,
)
from guardnet.layers.saec import SAECLayer, saec_score

__all__ = [
    "LAYER_TYPES",
    "A2DLayer",
    "ContraNetLayer",
    "DeTReformer",
    "Layer",
    "LayerInput",
    "LayerKind",
    "LayerOutput",
    "SAECLayer",
    "build_layer",
    "layer_config",
    "layer_type",
    "register_layer",
    "saec_score",
]
