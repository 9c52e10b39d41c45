"""guardnet: drop-in ``torch.nn`` middleware that guards image classifiers against adversarial
examples.

Example:
    >>> import torch, guardnet
    >>> classifier = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    >>> guard = guardnet.GuardedModel(classifier, [guardnet.SAECLayer()], num_classes=10)
    >>> _ = guard.calibrate(torch.rand(100, 3, 32, 32), target_fpr=0.05, progress=False)
    >>> result = guard(torch.rand(8, 3, 32, 32))
    >>> result.labels.shape, result.rejected.shape
    (torch.Size([8]), torch.Size([8]))
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# The public names and the modules that define them. They are imported on first access
# (PEP 562 module ``__getattr__``), so that importing a torch-free part of the package, such as
# the command line for ``guardnet --version``, does not import torch. The same names appear in
# the ``TYPE_CHECKING`` block below (for type checkers and editors) and in ``__all__``;
# tests/test_cli.py checks that the three agree.
_EXPORTS: dict[str, tuple[str, ...]] = {
    "guardnet.calibration": ("CalibrationReport", "LayerCalibration"),
    "guardnet.errors": (
        "CalibrationError",
        "CalibrationWarning",
        "CheckpointError",
        "ConfigError",
        "DataNotFoundError",
        "DeviceMismatchError",
        "GuardnetError",
        "InputDTypeError",
        "InputRangeError",
        "InputShapeError",
        "InputValueError",
        "NotCalibratedError",
        "WeightsError",
    ),
    "guardnet.guard": (
        "GuardAttackView",
        "GuardedModel",
        "GuardResult",
        "Normalize",
        "build_guard",
    ),
    "guardnet.layers": (
        "A2DLayer",
        "ContraNetLayer",
        "DeTReformer",
        "Layer",
        "LayerInput",
        "LayerKind",
        "LayerOutput",
        "SAECLayer",
        "saec_score",
    ),
    "guardnet.pretrained": ("from_pretrained",),
    "guardnet.thresholds": ("threshold_at_fpr",),
    "guardnet.weights": (
        "list_pretrained",
        "register_architecture",
        "save_pretrained",
    ),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

if TYPE_CHECKING:
    from guardnet.calibration import CalibrationReport, LayerCalibration
    from guardnet.errors import (
        CalibrationError,
        CalibrationWarning,
        CheckpointError,
        ConfigError,
        DataNotFoundError,
        DeviceMismatchError,
        GuardnetError,
        InputDTypeError,
        InputRangeError,
        InputShapeError,
        InputValueError,
        NotCalibratedError,
        WeightsError,
    )
    from guardnet.guard import GuardAttackView, GuardedModel, GuardResult, Normalize, build_guard
    from guardnet.layers import (
        A2DLayer,
        ContraNetLayer,
        DeTReformer,
        Layer,
        LayerInput,
        LayerKind,
        LayerOutput,
        SAECLayer,
        saec_score,
    )
    from guardnet.pretrained import from_pretrained
    from guardnet.thresholds import threshold_at_fpr
    from guardnet.weights import (
        list_pretrained,
        register_architecture,
        save_pretrained,
    )

__all__ = [
    "A2DLayer",
    "CalibrationError",
    "CalibrationReport",
    "CalibrationWarning",
    "CheckpointError",
    "ConfigError",
    "ContraNetLayer",
    "DataNotFoundError",
    "DeTReformer",
    "DeviceMismatchError",
    "GuardAttackView",
    "GuardResult",
    "GuardedModel",
    "GuardnetError",
    "InputDTypeError",
    "InputRangeError",
    "InputShapeError",
    "InputValueError",
    "Layer",
    "LayerCalibration",
    "LayerInput",
    "LayerKind",
    "LayerOutput",
    "Normalize",
    "NotCalibratedError",
    "SAECLayer",
    "WeightsError",
    "__version__",
    "build_guard",
    "from_pretrained",
    "list_pretrained",
    "register_architecture",
    "saec_score",
    "save_pretrained",
    "threshold_at_fpr",
]


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first access, then keep it in this module."""
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
