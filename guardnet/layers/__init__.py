"""Defense layers and the protocol they share."""

from guardnet.layers.base import Layer, LayerInput, LayerKind, LayerOutput
from guardnet.layers.contranet import ContraNetLayer
from guardnet.layers.saec import SAECLayer, saec_score

__all__ = [
    "ContraNetLayer",
    "Layer",
    "LayerInput",
    "LayerKind",
    "LayerOutput",
    "SAECLayer",
    "saec_score",
]
