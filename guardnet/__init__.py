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

from guardnet.calibration import CalibrationReport, LayerCalibration
from guardnet.errors import (
    CalibrationError,
    CalibrationWarning,
    CheckpointError,
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
from guardnet.guard import GuardAttackView, GuardedModel, GuardResult, Normalize
from guardnet.hub import from_pretrained, list_pretrained, load_pretrained, save_pretrained
from guardnet.layers import (
    ContraNetLayer,
    Layer,
    LayerInput,
    LayerKind,
    LayerOutput,
    SAECLayer,
    saec_score,
)
from guardnet.thresholds import threshold_at_fpr

__version__ = "0.1.0"

__all__ = [
    "CalibrationError",
    "CalibrationReport",
    "CalibrationWarning",
    "CheckpointError",
    "ContraNetLayer",
    "DataNotFoundError",
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
    "from_pretrained",
    "list_pretrained",
    "load_pretrained",
    "saec_score",
    "save_pretrained",
    "threshold_at_fpr",
]
