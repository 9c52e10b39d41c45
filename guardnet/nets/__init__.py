"""Classifier architectures (weights and their metadata live apart, see ``guardnet.hub``)."""

from guardnet.nets.small import MnistCNN, SmallConvNet

__all__ = ["MnistCNN", "SmallConvNet"]
