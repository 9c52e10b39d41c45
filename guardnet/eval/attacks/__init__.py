"""Attacks for evaluating guards: standard attacks on the classifier (guardnet's own gradient
attacks, foolbox's minimum-norm ones), adaptive attacks on the whole guard, and a disk cache of
their results. One attack per module, all on the :class:`Attack` base class; the batched functions
behind them (e.g. :func:`guardnet.eval.attacks.pgd.pgd`) live in their modules.

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
from guardnet.eval.attacks.apgd import APGD
from guardnet.eval.attacks.apgdt import APGDT
from guardnet.eval.attacks.autoattack import AutoAttack
from guardnet.eval.attacks.base import Attack
from guardnet.eval.attacks.bim import BIM
from guardnet.eval.attacks.cache import AdversarialCache, tensor_fingerprint
from guardnet.eval.attacks.fgsm import FGSM
from guardnet.eval.attacks.foolbox_attacks import CW, EADL1, DeepFool, FoolboxAttack
from guardnet.eval.attacks.hopskipjump import HopSkipJump
from guardnet.eval.attacks.jsma import JSMA
from guardnet.eval.attacks.library import STANDARD_ATTACKS, make_attack
from guardnet.eval.attacks.pgd import PGD
from guardnet.eval.attacks.pgdl2 import PGDL2
from guardnet.eval.attacks.query import GuardQueryAttack
from guardnet.eval.attacks.smooth import SmoothPGD
from guardnet.eval.attacks.square import SquareAttack

__all__ = [
    "ADAPTIVE_ATTACKS",
    "APGD",
    "APGDT",
    "BIM",
    "CW",
    "EADL1",
    "FGSM",
    "JSMA",
    "PGD",
    "PGDL2",
    "STANDARD_ATTACKS",
    "AdversarialCache",
    "Attack",
    "AutoAttack",
    "DeepFool",
    "DetectorLossPGD",
    "FoolboxAttack",
    "GuardPGD",
    "GuardQueryAttack",
    "HopSkipJump",
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
