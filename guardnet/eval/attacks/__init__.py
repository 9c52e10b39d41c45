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
    register_adaptive_attack,
)
from guardnet.eval.attacks.base import Attack
from guardnet.eval.attacks.cache import AdversarialCache, tensor_fingerprint
from guardnet.eval.attacks.hopskipjump import HopSkipJump
from guardnet.eval.attacks.library import STANDARD_ATTACKS, LibraryAttack, make_attack
from guardnet.eval.attacks.query import GuardQueryAttack
from guardnet.eval.attacks.smooth import SmoothPGD
from guardnet.eval.attacks.square import SquareAttack

__all__ = [
    "ADAPTIVE_ATTACKS",
    "STANDARD_ATTACKS",
    "AdversarialCache",
    "Attack",
    "DetectorLossPGD",
    "GuardPGD",
    "GuardQueryAttack",
    "HopSkipJump",
    "LibraryAttack",
    "OrthogonalPGD",
    "SelectivePGD",
    "SmoothPGD",
    "SquareAttack",
    "ViewPGD",
    "make_adaptive_attack",
    "make_attack",
    "project_out",
    "register_adaptive_attack",
    "tensor_fingerprint",
]
