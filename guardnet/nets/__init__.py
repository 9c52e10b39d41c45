"""Classifier architectures (weights and their metadata live apart, see ``guardnet.weights``)."""

from guardnet.nets.reformer import Reformer, ReformerSet
from guardnet.nets.resnet_cifar import CifarResNet, resnet20, resnet56
from guardnet.nets.small import MnistCNN, SmallConvNet

__all__ = [
    "CifarResNet",
    "MnistCNN",
    "Reformer",
    "ReformerSet",
    "SmallConvNet",
    "resnet20",
    "resnet56",
]
