"""Training loops for classifiers and guard components."""

from guardnet.train.classifier import (
    TrainResult,
    TrainSettings,
    default_augmentation,
    evaluate_accuracy,
    fit_classifier,
    train_classifier,
)

__all__ = [
    "TrainResult",
    "TrainSettings",
    "default_augmentation",
    "evaluate_accuracy",
    "fit_classifier",
    "train_classifier",
]
