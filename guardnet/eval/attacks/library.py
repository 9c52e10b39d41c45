"""The standard white-box attacks by name: :func:`make_attack` and :data:`STANDARD_ATTACKS`.

They attack the bare classifier, as the seed papers do for their non-adaptive results; the
guard then judges the examples. Gradient attacks are guardnet's own (batched, on any device);
the minimum-norm attacks come from foolbox 3, optional (``pip install guardnet[eval]``) and
imported only when one runs. Defaults follow the attacks' papers; every one is an argument.

==============  ========  ===================================================================
name            source    defaults (the papers')
==============  ========  ===================================================================
``fgsm``        guardnet  Goodfellow et al. 2015: one signed-gradient step of size ``eps``
``bim``         guardnet  Kurakin et al. 2017: steps of 1/255, ``int(min(255 eps + 4,
                          1.25 * 255 eps))`` of them (at least 1), from the clean image
``pgd``         guardnet  Madry et al. 2018, L-inf: 50 steps of ``2.5 eps / 50``, random start
``pgdl2``       guardnet  the same in L2
``apgd``        guardnet  Croce & Hein 2020: APGD-CE, 100 steps, L-inf, checkpoints at 22, 41,
                          57, 70, 80, 87, 93, 99, momentum 0.75, rho 0.75
``apgdt``       guardnet  Croce & Hein 2020: APGD-T, targeted DLR, 9 target classes x 100 steps
``autoattack``  guardnet  Croce & Hein 2020: APGD-CE then APGD-T on the survivors (the
                          standard ensemble's FAB-T and Square left out), L-inf
``cw``          foolbox   Carlini & Wagner 2017, L2: 9 binary-search steps over c (from
                          1e-3), 1000 Adam steps of 0.01, confidence 0, early abort
``ead``         foolbox   Chen et al. 2018, elastic net with the L1 decision rule: 9
                          binary-search steps, 100 iterations, beta 1e-3, confidence 0
``deepfool``    foolbox   Moosavi-Dezfooli et al. 2016, L2: 50 steps, overshoot 0.02, the
                          10 most likely classes as candidates (as the authors' code does;
                          batched, so 43-class GTSRB stays affordable)
``jsma``        guardnet  Papernot et al. 2016, L0 (foolbox 2's defaults, as the A2D paper):
                          one element moved by 0.1 per iteration, at most 7 times each, up
                          to 2,000 iterations, towards the second most likely class, stopped
                          at the first misclassification
==============  ========  ===================================================================

The step rules of ``bim`` and ``pgd`` are those of torchattacks 3.5 with the same arguments, so
figures measured with it stay comparable (``tests/test_attacks.py`` checks the rules).
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from guardnet.eval.attacks.apgd import APGD
from guardnet.eval.attacks.apgdt import APGDT
from guardnet.eval.attacks.autoattack import AutoAttack
from guardnet.eval.attacks.base import Attack
from guardnet.eval.attacks.bim import BIM
from guardnet.eval.attacks.fgsm import FGSM
from guardnet.eval.attacks.foolbox_attacks import CW, EADL1, DeepFool
from guardnet.eval.attacks.jsma import JSMA
from guardnet.eval.attacks.pgd import PGD
from guardnet.eval.attacks.pgdl2 import PGDL2

__all__ = ["STANDARD_ATTACKS", "make_attack"]

_CLASSES: tuple[type[Attack], ...] = (
    FGSM,
    BIM,
    PGD,
    PGDL2,
    APGD,
    APGDT,
    AutoAttack,
    CW,
    EADL1,
    DeepFool,
    JSMA,
)
_COMMON = frozenset({"self", "model", "eps", "batch_size", "seed", "progress"})


def _signature(cls: type[Attack]) -> tuple[dict[str, Any], bool]:
    parameters = inspect.signature(cls.__init__).parameters
    defaults = {k: p.default for k, p in parameters.items() if k not in _COMMON}
    return defaults, "eps" in parameters


#: name -> (source, default parameters, does it take ``eps``); read from the classes.
STANDARD_ATTACKS: dict[str, tuple[str, dict[str, Any], bool]] = {
    cls.name: (getattr(cls, "library", "guardnet"), *_signature(cls)) for cls in _CLASSES
}
_BY_NAME: dict[str, type[Attack]] = {cls.name: cls for cls in _CLASSES}


def make_attack(name: str, model: nn.Module, *, eps: float | None = None, **kwargs: Any) -> Attack:
    """Build a standard attack on a classifier by name, untargeted.

    Args:
        name: a key of :data:`STANDARD_ATTACKS`.
        model: the classifier (takes [0, 1] images; normalisation inside).
        eps: the budget (L-inf on [0, 1], or L2 for ``pgdl2``); required by the attacks that
            take one, refused by the others (minimum-norm attacks).
        **kwargs: ``batch_size``, ``seed``, ``progress`` (see :class:`Attack`) and any default
            of the attack, e.g. ``steps=100``.

    Returns:
        The attack; call it on ``(images, labels)``.

    Raises:
        ValueError: unknown name or parameter, or a missing / unwanted ``eps``.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
        >>> attack = make_attack("pgd", net, eps=8 / 255, steps=10)
        >>> attack(torch.rand(2, 3, 2, 2), torch.tensor([0, 1])).shape
        torch.Size([2, 3, 2, 2])
    """
    if name not in STANDARD_ATTACKS:
        raise ValueError(f"unknown attack {name!r}; choose from {sorted(STANDARD_ATTACKS)}")
    _, defaults, takes_eps = STANDARD_ATTACKS[name]
    if takes_eps and (eps is None or not eps > 0):
        raise ValueError(f"attack {name!r} needs a budget eps > 0, got {eps!r}")
    if not takes_eps and eps is not None:
        raise ValueError(f"attack {name!r} is a minimum-norm attack and takes no eps")
    unknown = set(kwargs) - set(defaults) - (_COMMON - {"self", "model", "eps"})
    if unknown:
        raise ValueError(
            f"attack {name!r} has no parameter(s) {sorted(unknown)}; it takes "
            f"{sorted(defaults) or 'only eps'}"
        )
    if takes_eps:
        kwargs["eps"] = eps
    return _BY_NAME[name](model, **kwargs)
