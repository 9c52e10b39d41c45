"""Attacks for evaluating guards: standard ones from independent libraries, adaptive ones of
guardnet's own, and a disk cache of their results.

Example:
    >>> import torch
    >>> from guardnet.eval.attacks import make_attack
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    >>> make_attack("pgd", net, eps=8 / 255).params()["steps"]
    50
"""

from guardnet.eval.attacks.adaptive import (
    ADAPTIVE_ATTACKS,
    DetectorLossPGD,
    GuardPGD,
    OrthogonalPGD,
    SelectivePGD,
    ViewPGD,
    make_adaptive_attack,
    project_out,
)
from guardnet.eval.attacks.base import Attack
from guardnet.eval.attacks.cache import AdversarialCache, tensor_fingerprint
from guardnet.eval.attacks.library import STANDARD_ATTACKS, LibraryAttack, make_attack

__all__ = [
    "ADAPTIVE_ATTACKS",
    "STANDARD_ATTACKS",
    "AdversarialCache",
    "Attack",
    "DetectorLossPGD",
    "GuardPGD",
    "LibraryAttack",
    "OrthogonalPGD",
    "SelectivePGD",
    "ViewPGD",
    "make_adaptive_attack",
    "make_attack",
    "project_out",
    "tensor_fingerprint",
]
