"""Pretrained weights: one loader, one saver, the registries, the Hub.

* :mod:`~guardnet.weights.registry`: architecture names -> builders (each architecture registers
  itself beside its definition in :mod:`guardnet.nets`).
* :mod:`~guardnet.weights.io`: weights folders in the Hub layout (``config.json``,
  ``model.safetensors``, ``README.md``), strict safetensors loading, sha256 checks.
* :mod:`~guardnet.weights.cards`: model cards.
* :mod:`~guardnet.weights.pretrained`: the published names, their Hub repos, pinned revisions
  and sha256s (figures live in each model's config and card, not here).
* :mod:`~guardnet.weights.resolve`: :func:`from_pretrained`, a name -> a folder, the repository's
  ``hub/`` mirror or the Hub.
* :mod:`~guardnet.weights.publish`: ``guardnet hub push``.

Example:
    >>> import guardnet
    >>> model = guardnet.from_pretrained("mnist-cnn")
    >>> model.pretrained_config["architecture"], model.training
    ('MnistCNN', False)
"""

from guardnet.weights.cards import MODEL_CARD_USAGE, default_model_card
from guardnet.weights.io import (
    CONFIG_NAME,
    MODEL_CARD_NAME,
    WEIGHTS_NAME,
    load_state_dict_strict,
    save_pretrained,
)
from guardnet.weights.pretrained import (
    PRETRAINED,
    PretrainedEntry,
    get_pretrained,
    list_pretrained,
    register_pretrained,
)
from guardnet.weights.registry import (
    ARCHITECTURES,
    build_model,
    list_architectures,
    register_architecture,
)
from guardnet.weights.resolve import MIRROR_ENV, from_pretrained, load_config, mirror_root

__all__ = [
    "ARCHITECTURES",
    "CONFIG_NAME",
    "MIRROR_ENV",
    "MODEL_CARD_NAME",
    "MODEL_CARD_USAGE",
    "PRETRAINED",
    "WEIGHTS_NAME",
    "PretrainedEntry",
    "build_model",
    "default_model_card",
    "from_pretrained",
    "get_pretrained",
    "list_architectures",
    "list_pretrained",
    "load_config",
    "load_state_dict_strict",
    "mirror_root",
    "register_architecture",
    "register_pretrained",
    "save_pretrained",
]
