"""Standard white-box attacks from independent libraries (torchattacks, foolbox).

They attack the bare classifier, as the seed papers do for their non-adaptive results; the
guard then judges the examples. Defaults follow the attacks' papers; every one is an argument.
Both libraries are optional (``pip install guardnet[eval]``) and imported only when an attack is
built.

=============  ===========  ====================================================================
name           library      defaults (the papers')
=============  ===========  ====================================================================
``fgsm``       torchattacks Goodfellow et al. 2015: one signed-gradient step of size ``eps``
``bim``        torchattacks Kurakin et al. 2017: step 1/255, min(255 eps + 4, 1.25 * 255 eps) steps
``pgd``        torchattacks Madry et al. 2018, L-inf: 50 steps of 2.5 eps / steps, random start
``pgdl2``      torchattacks the same in L2
``cw``         foolbox      Carlini & Wagner 2017, L2: 9 binary-search steps over c (from
                            1e-3), 1000 Adam steps of 0.01, confidence 0, early abort
``ead``        torchattacks Chen et al. 2018, elastic-net L1: 9 binary-search steps, 100
                            iterations, beta 1e-3, confidence 0
``deepfool``   foolbox      Moosavi-Dezfooli et al. 2016, L2: 50 steps, overshoot 0.02, the
                            10 most likely classes as candidates (as the authors' code does;
                            batched, so 43-class GTSRB stays affordable)
``apgd``       torchattacks Croce & Hein 2020: APGD-CE, 100 steps, L-inf
``autoattack`` torchattacks Croce & Hein 2020: the standard ensemble (APGD-CE, APGD-T, FAB-T,
                            Square), L-inf
=============  ===========  ====================================================================
"""

from __future__ import annotations

import importlib
from typing import Any

import torch
from torch import Tensor, nn

from guardnet.eval.attacks.base import Attack

__all__ = ["STANDARD_ATTACKS", "LibraryAttack", "make_attack"]


def _import(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"this attack needs {module}: pip install 'guardnet[eval]' (or pip install {module})"
        ) from error


def _bim_steps(eps: float) -> int:
    # Kurakin et al.: enough 1/255 steps to reach the boundary and a little more.
    return max(1, int(min(eps * 255 + 4, 1.25 * eps * 255)))


def _build_torchattacks(
    name: str, model: nn.Module, p: dict[str, Any], num_classes: int, seed: int
) -> Any:
    ta = _import("torchattacks")
    if name == "fgsm":
        return ta.FGSM(model, eps=p["eps"])
    if name == "bim":
        return ta.BIM(model, eps=p["eps"], alpha=p["alpha"], steps=p["steps"])
    if name == "pgd":
        return ta.PGD(model, eps=p["eps"], alpha=p["alpha"], steps=p["steps"], random_start=True)
    if name == "pgdl2":
        return ta.PGDL2(model, eps=p["eps"], alpha=p["alpha"], steps=p["steps"], random_start=True)
    if name == "ead":
        return ta.EADL1(
            model,
            kappa=p["confidence"],
            lr=p["lr"],
            binary_search_steps=p["binary_search_steps"],
            max_iterations=p["steps"],
            abort_early=True,
            initial_const=p["initial_const"],
            beta=p["beta"],
        )
    if name == "apgd":
        return ta.APGD(model, norm="Linf", eps=p["eps"], steps=p["steps"], loss="ce", seed=seed)
    if name == "autoattack":
        return ta.AutoAttack(
            model,
            norm="Linf",
            eps=p["eps"],
            version=p["version"],
            n_classes=num_classes,
            seed=seed,
        )
    raise KeyError(name)  # pragma: no cover - guarded by STANDARD_ATTACKS


#: name -> (library, default parameters, does it take ``eps``).
STANDARD_ATTACKS: dict[str, tuple[str, dict[str, Any], bool]] = {
    "fgsm": ("torchattacks", {}, True),
    "bim": ("torchattacks", {"alpha": 1 / 255, "steps": None}, True),
    "pgd": ("torchattacks", {"steps": 50, "alpha": None}, True),
    "pgdl2": ("torchattacks", {"steps": 50, "alpha": None}, True),
    "cw": (
        "foolbox",
        {
            "binary_search_steps": 9,
            "steps": 1000,
            "lr": 0.01,
            "confidence": 0.0,
            "initial_const": 1e-3,
        },
        False,
    ),
    "ead": (
        "torchattacks",
        {
            "binary_search_steps": 9,
            "steps": 100,
            "lr": 0.01,
            "confidence": 0.0,
            "initial_const": 1e-3,
            "beta": 1e-3,
        },
        False,
    ),
    "deepfool": ("foolbox", {"steps": 50, "overshoot": 0.02, "candidates": 10}, False),
    "apgd": ("torchattacks", {"steps": 100}, True),
    "autoattack": ("torchattacks", {"version": "standard"}, True),
}


class LibraryAttack(Attack):
    """One of :data:`STANDARD_ATTACKS` on a classifier, untargeted.

    Args:
        name: a key of :data:`STANDARD_ATTACKS`.
        model: the classifier (takes [0, 1] images; normalisation inside).
        eps: the budget (L-inf on [0, 1], or L2 for ``pgdl2``); required by the attacks that
            take one, refused by the others (minimum-norm attacks).
        num_classes: class count (AutoAttack's targeted parts need it); found from a forward
            pass when ``None``.
        batch_size, seed, progress: see :class:`Attack`.
        **overrides: any default of the attack, e.g. ``steps=100``.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
        >>> attack = LibraryAttack("fgsm", net, eps=0.1)
        >>> attack(torch.rand(2, 3, 2, 2), torch.tensor([0, 1])).shape
        torch.Size([2, 3, 2, 2])
    """

    def __init__(
        self,
        name: str,
        model: nn.Module,
        *,
        eps: float | None = None,
        num_classes: int | None = None,
        batch_size: int = 256,
        seed: int = 0,
        progress: bool = False,
        **overrides: Any,
    ) -> None:
        if name not in STANDARD_ATTACKS:
            raise ValueError(f"unknown attack {name!r}; choose from {sorted(STANDARD_ATTACKS)}")
        super().__init__(model, batch_size=batch_size, seed=seed, progress=progress)
        library, defaults, takes_eps = STANDARD_ATTACKS[name]
        if takes_eps and (eps is None or not eps > 0):
            raise ValueError(f"attack {name!r} needs a budget eps > 0, got {eps!r}")
        if not takes_eps and eps is not None:
            raise ValueError(f"attack {name!r} is a minimum-norm attack and takes no eps")
        unknown = set(overrides) - set(defaults)
        if unknown:
            raise ValueError(
                f"attack {name!r} has no parameter(s) {sorted(unknown)}; it takes "
                f"{sorted(defaults) or 'only eps'}"
            )
        params = {**defaults, **overrides}
        if takes_eps:
            params["eps"] = float(eps)  # type: ignore[arg-type]
        if name == "bim" and params["steps"] is None:
            params["steps"] = _bim_steps(params["eps"])
        if name in ("pgd", "pgdl2") and params["alpha"] is None:
            params["alpha"] = 2.5 * params["eps"] / params["steps"]
        self.name = name  # type: ignore[misc]
        self.library = library
        self._params = params
        self._num_classes = num_classes
        self._built: Any = None

    def params(self) -> dict[str, Any]:
        return {**self._params, "library": self.library}

    def _num_classes_of(self, images: Tensor) -> int:
        if self._num_classes is None:
            with torch.no_grad():
                self._num_classes = int(self.model(images[:1]).shape[1])
        return self._num_classes

    def perturb(self, images: Tensor, labels: Tensor, generator: torch.Generator) -> Tensor:
        if self.library == "foolbox":
            return self._foolbox(images, labels)
        if self._built is None:
            num_classes = self._num_classes_of(images)
            self._built = _build_torchattacks(
                self.name, self.model, self._params, num_classes, self.seed
            )
        return self._built(images, labels)

    def _foolbox(self, images: Tensor, labels: Tensor) -> Tensor:
        fb = _import("foolbox")
        p = self._params
        fmodel = fb.PyTorchModel(self.model, bounds=(0.0, 1.0))
        if self.name == "deepfool":
            attack = fb.attacks.L2DeepFoolAttack(
                steps=p["steps"], candidates=p["candidates"], overshoot=p["overshoot"]
            )
        else:
            attack = fb.attacks.L2CarliniWagnerAttack(
                binary_search_steps=p["binary_search_steps"],
                steps=p["steps"],
                stepsize=p["lr"],
                confidence=p["confidence"],
                initial_const=p["initial_const"],
                abort_early=True,
            )
        _, clipped, _ = attack(fmodel, images, labels, epsilons=None)
        if self.name != "cw":
            return clipped
        # foolbox's C&W returns an all-zero image where it found no adversarial example (and
        # its success flag is then computed on that zero image): keep the input there.
        failed = (clipped.flatten(1) == 0).all(dim=1) & (images.flatten(1) != 0).any(dim=1)
        return torch.where(failed.view(-1, 1, 1, 1), images, clipped)


def make_attack(name: str, model: nn.Module, **kwargs: Any) -> Attack:
    """Build a standard attack by name; see :class:`LibraryAttack` for the arguments."""
    return LibraryAttack(name, model, **kwargs)
