"""Central error types.

Every error guardnet raises on purpose derives from :class:`GuardnetError`, and the input errors
also derive from the built-in type a PyTorch user would expect (``ValueError``/``TypeError``), so
``except ValueError`` keeps working in code that does not know about guardnet. Warnings guardnet
issues on purpose have their own classes too, so a user can filter or escalate them.
"""

from __future__ import annotations

__all__ = [
    "CalibrationError",
    "CalibrationWarning",
    "CheckpointError",
    "ConfigError",
    "DataNotFoundError",
    "DatasetError",
    "DeviceMismatchError",
    "GuardnetError",
    "InputDTypeError",
    "InputRangeError",
    "InputShapeError",
    "InputValueError",
    "NotCalibratedError",
    "WeightsError",
]


class GuardnetError(Exception):
    """Base class of all errors raised by guardnet."""


class InputShapeError(GuardnetError, ValueError):
    """A tensor has the wrong rank, channel count, batch size or class count."""


class InputDTypeError(GuardnetError, TypeError):
    """A tensor has the wrong dtype (e.g. integer images where float is required)."""


class InputValueError(GuardnetError, ValueError):
    """A tensor holds NaN or Inf values."""


class InputRangeError(GuardnetError, ValueError):
    """Image values fall outside the [0, 1] range guardnet works in."""


class DeviceMismatchError(GuardnetError, RuntimeError):
    """The input lives on a different device from the model."""


class NotCalibratedError(GuardnetError, RuntimeError):
    """A layer that rejects inputs has no threshold yet."""


class CalibrationError(GuardnetError, ValueError):
    """Calibration data or options cannot produce thresholds."""


class CalibrationWarning(UserWarning):
    """Calibration set thresholds but cannot keep its promise well.

    For example, too few clean images for the target rate and the number of thresholds, so some
    threshold rejects nothing.
    """


class CheckpointError(GuardnetError, RuntimeError):
    """A training checkpoint is missing, damaged, or belongs to a different run."""


class ConfigError(GuardnetError, ValueError):
    """A layer config, guard recipe or saved guard's config cannot build what it describes."""


class WeightsError(GuardnetError, RuntimeError):
    """Weights are missing, corrupted, or do not match the architecture."""


class DataNotFoundError(GuardnetError, FileNotFoundError):
    """A dataset is not where guardnet was told to look for it."""


class DatasetError(GuardnetError, ValueError):
    """A dataset name or split option is invalid, or a data file is malformed."""
