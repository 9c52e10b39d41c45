"""Training loops for classifiers and guard components."""

from guardnet.train.classifier import evaluate_accuracy, fit_classifier

__all__ = ["evaluate_accuracy", "fit_classifier"]
