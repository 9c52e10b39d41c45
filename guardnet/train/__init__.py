"""Training of classifiers and of guardnet's ContraNet detector, resumable and seeded.

Modules, one concern each:

* :mod:`~guardnet.train.run`: the run commands, data in, Hub folder out
  (:func:`run_classifier_training`, :func:`run_contranet_training`), each taking one options
  object from :mod:`~guardnet.train.options` (:class:`ClassifierTrainingOptions`,
  :class:`ContraNetTrainingOptions`).
* :mod:`~guardnet.train.data`: the images a run reads: a guardnet dataset, your own
  ``ImageFolder`` tree or Datasets of ``(image, label)`` pairs, resized to the model's input.
* :mod:`~guardnet.train.settings`: the hyper-parameters (:class:`TrainSettings`,
  :class:`ContraNetTrainSettings`).
* :mod:`~guardnet.train.classifier`: the classifier loop (:func:`train_classifier`).
* :mod:`~guardnet.train.contranet`: ContraNet's loop over its stages (:func:`train_contranet`),
  with :mod:`~guardnet.train.contranet_trainer` (networks, state, batches),
  :mod:`~guardnet.train.contranet_stages` (one epoch of each stage),
  :mod:`~guardnet.train.losses` and :mod:`~guardnet.train.adversarial` (wrong labels, PGD).
* Shared by both trainers: :mod:`~guardnet.train.checkpoint` (pickle-free checkpoints),
  :mod:`~guardnet.train.distributed` (devices, ``torchrun``), :mod:`~guardnet.train.augment`
  (batched kornia augmentation), :mod:`~guardnet.train.cards` (model cards).

Example:
    >>> from guardnet.train import ClassifierTrainingOptions, TrainSettings
    >>> options = ClassifierTrainingOptions(
    ...     out="runs/mnist-cnn", dataset="mnist", arch="MnistCNN", settings=TrainSettings(epochs=8)
    ... )
    >>> # run_classifier_training(options) trains and writes runs/mnist-cnn/model
"""

from guardnet.train.adversarial import joint_loss, joint_pgd_linf, pgd_linf, wrong_labels
from guardnet.train.augment import AUGMENTED_DATASETS, default_augmentation, diff_augmentation
from guardnet.train.checkpoint import (
    CHECKPOINT_DIR,
    LOG_NAME,
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from guardnet.train.classifier import (
    TrainResult,
    evaluate_accuracy,
    fit_classifier,
    train_classifier,
)
from guardnet.train.contranet import (
    ContraNetTrainResult,
    contranet_from_checkpoint,
    evaluate_contranet,
    train_contranet,
)
from guardnet.train.contranet_trainer import ema_decay_at
from guardnet.train.data import (
    TrainingData,
    dataset_training_data,
    image_folder_training_data,
    images_from_dataset,
    load_training_data,
)
from guardnet.train.distributed import resolve_device
from guardnet.train.options import ClassifierTrainingOptions, ContraNetTrainingOptions
from guardnet.train.run import run_classifier_training, run_contranet_training
from guardnet.train.settings import (
    CONTRANET_DATASET_DEFAULTS,
    PRETRAIN_LOSSES,
    STAGES,
    ContraNetTrainSettings,
    TrainSettings,
    contranet_settings,
)

__all__ = [
    "AUGMENTED_DATASETS",
    "CHECKPOINT_DIR",
    "CONTRANET_DATASET_DEFAULTS",
    "LOG_NAME",
    "PRETRAIN_LOSSES",
    "STAGES",
    "CheckpointError",
    "ClassifierTrainingOptions",
    "ContraNetTrainResult",
    "ContraNetTrainSettings",
    "ContraNetTrainingOptions",
    "TrainResult",
    "TrainSettings",
    "TrainingData",
    "contranet_from_checkpoint",
    "contranet_settings",
    "dataset_training_data",
    "default_augmentation",
    "diff_augmentation",
    "ema_decay_at",
    "evaluate_accuracy",
    "evaluate_contranet",
    "fit_classifier",
    "image_folder_training_data",
    "images_from_dataset",
    "joint_loss",
    "joint_pgd_linf",
    "latest_checkpoint",
    "load_checkpoint",
    "load_training_data",
    "pgd_linf",
    "resolve_device",
    "run_classifier_training",
    "run_contranet_training",
    "save_checkpoint",
    "train_classifier",
    "train_contranet",
    "wrong_labels",
]
