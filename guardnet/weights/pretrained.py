"""The registry of published weights: a name -> its Hub repository, pinned revision and sha256s.

An entry says where a model lives and which files it is; what the model measures (accuracy, TPR,
FPR, ...) lives in its own ``config.json`` (``metrics``) and model card, never here. The sha256s
are those of the files in the repository's mirror ``hub/<name>/`` (a test checks they agree), so
a download from the Hub is accepted only if it is exactly what was registered.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from guardnet.errors import WeightsError

__all__ = [
    "PRETRAINED",
    "PretrainedEntry",
    "find_pretrained",
    "get_pretrained",
    "list_pretrained",
    "register_pretrained",
]

COMMIT_HASH = re.compile(r"^[0-9a-f]{40}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# "org/name": letters, digits, "-", "_", "." (not leading), as on the Hugging Face Hub.
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


@dataclass(frozen=True)
class PretrainedEntry:
    """A published model: where its files live and which files they are.

    Attributes:
        name: Registry key, e.g. ``"mnist-cnn"``; also the mirror folder ``hub/<name>``.
        hub_id: Hugging Face Hub repo id, e.g. ``"guardnet/mnist-cnn"``.
        revision: The Hub commit (40 hex digits) the files were pushed as; None while the repo
            is not published, in which case a download reads the repo's ``main`` (still checked
            against the sha256s below).
        config_sha256: sha256 of the repo's ``config.json``.
        weights_sha256: sha256 of its ``model.safetensors`` (the config records the same).
        dataset: Dataset the model was trained on (a :func:`guardnet.data.dataset_info` name).
        architecture: The config's architecture name.
        license: SPDX licence identifier of the weights.
        description: One line about the model.

    Raises:
        ValueError: A malformed repo id, revision or sha256.
    """

    name: str
    hub_id: str
    revision: str | None
    config_sha256: str
    weights_sha256: str
    dataset: str
    architecture: str
    license: str = "Apache-2.0"
    description: str = ""

    def __post_init__(self) -> None:
        if not REPO_ID.match(self.hub_id):
            raise ValueError(f"{self.name}: hub_id {self.hub_id!r} is not 'org/name'")
        if self.revision is not None and not COMMIT_HASH.match(self.revision):
            raise ValueError(
                f"{self.name}: revision must be a 40-hex commit hash (pinned) or None, got "
                f"{self.revision!r}"
            )
        for field_name in ("config_sha256", "weights_sha256"):
            if not _SHA256.match(getattr(self, field_name)):
                raise ValueError(f"{self.name}: {field_name} must be 64 lowercase hex digits")

    @property
    def sha256(self) -> dict[str, str]:
        """Expected sha256 by file name."""
        return {"config.json": self.config_sha256, "model.safetensors": self.weights_sha256}


PRETRAINED: dict[str, PretrainedEntry] = {}


def register_pretrained(entry: PretrainedEntry) -> PretrainedEntry:
    """Add ``entry`` to :data:`PRETRAINED`.

    Args:
        entry: The entry; its name must be new.

    Returns:
        The entry.

    Raises:
        ValueError: The name is taken.
    """
    if entry.name in PRETRAINED:
        raise ValueError(f"pretrained model {entry.name!r} is already registered")
    PRETRAINED[entry.name] = entry
    return entry


def list_pretrained() -> list[PretrainedEntry]:
    """All registered pretrained models, sorted by name (no file is read).

    Example:
        >>> "mnist-cnn" in [entry.name for entry in list_pretrained()]
        True
    """
    return [PRETRAINED[name] for name in sorted(PRETRAINED)]


def find_pretrained(name_or_repo_id: str) -> PretrainedEntry | None:
    """The entry registered under a name or a Hub repo id, else None."""
    entry = PRETRAINED.get(name_or_repo_id)
    if entry is not None:
        return entry
    return next((e for e in PRETRAINED.values() if e.hub_id == name_or_repo_id), None)


def get_pretrained(name: str) -> PretrainedEntry:
    """The entry registered under ``name`` (or its Hub repo id).

    Raises:
        WeightsError: Nothing is registered under it; the message lists the names.
    """
    entry = find_pretrained(name)
    if entry is None:
        raise WeightsError(
            f"unknown pretrained model {name!r}; registered: {', '.join(sorted(PRETRAINED))}"
        )
    return entry


# Figures for each model: its config.json ("metrics") and model card in hub/<name>/.
register_pretrained(
    PretrainedEntry(
        name="a2d-mnist",
        hub_id="guardnet/a2d-mnist",
        revision=None,
        config_sha256="d3be40b9f07f9562792637c3ac97b8e26bd3927cf4ba457c5f123163eda6b8b5",
        weights_sha256="89702d619f31bd4f0af83895f95e3240e1f2cbe11d0988613a972a38d0eb4099",
        dataset="mnist",
        architecture="A2D",
        license="Apache-2.0",
        description="A2D (BIM_d, JSMA_d) fitted on mnist-cnn's clean validation costs.",
    )
)
register_pretrained(
    PretrainedEntry(
        name="contranet-mnist",
        hub_id="guardnet/contranet-mnist",
        revision=None,
        config_sha256="544abf0eaeb6233c8b8c1d4731ffc63ea95cc92f64dd436e47e15710c0f4fb56",
        weights_sha256="07f84d6412b7872c3732ed0273b2d1ddf7729fa3124827b7d1035a94802ca538",
        dataset="mnist",
        architecture="ContraNet",
        license="Apache-2.0",
        description="ContraNet detector nets for MNIST (G width 32), trained by guardnet.",
    )
)
register_pretrained(
    PretrainedEntry(
        name="contranet-gtsrb",
        hub_id="guardnet/contranet-gtsrb",
        revision=None,
        config_sha256="b5377d0c48ffd6ef98cbc60e20c84d3d3069d7bad66e744a1e0cc425b40df723",
        weights_sha256="3174bbf7f22380dc80235249b57cabef0c403b548e5b2b756b9a8a77dacab87d",
        dataset="gtsrb",
        architecture="ContraNet",
        license="Apache-2.0",
        description="ContraNet detector nets for GTSRB (G width 32), trained by guardnet.",
    )
)
register_pretrained(
    PretrainedEntry(
        name="contranet-cifar10",
        hub_id="guardnet/contranet-cifar10",
        revision=None,
        config_sha256="834586cdc9985606a18e9f06d58b14cfefaa75891fb7394736c5a3e83634c449",
        weights_sha256="739b37f88a4ec26ac16a2f9f6481766f488ab90fabc9e32fbc4767d071eec228",
        dataset="cifar10",
        architecture="ContraNet",
        license="Apache-2.0",
        description=(
            "ContraNet detector nets for CIFAR-10 (JPEG q75; G width 32, label in G's stem), "
            "trained by guardnet."
        ),
    )
)
register_pretrained(
    PretrainedEntry(
        name="det-mnist",
        hub_id="guardnet/det-mnist",
        revision=None,
        config_sha256="b6de8dac42062882d208888b8dfddedccfc32b95673121bee9de381af5410a08",
        weights_sha256="ef17bc2afe800f3feed275cd266a72dfa03851defcadc334202c4a404624f1e2",
        dataset="mnist",
        architecture="ReformerSet",
        license="Apache-2.0",
        description="DeT reformers for MNIST (R0 and a Reformer List of two), trained by guardnet.",
    )
)
register_pretrained(
    PretrainedEntry(
        name="det-cifar10",
        hub_id="guardnet/det-cifar10",
        revision=None,
        config_sha256="62a8ba3c6aa66dc24b353163e5ee7f20d933675461987556d1d4503bbfd95667",
        weights_sha256="1f71196d84d892b4a5cdb4abfe0b38be7e7b2d24484fc552d71984f7290f4771",
        dataset="cifar10",
        architecture="ReformerSet",
        license="Apache-2.0",
        description=(
            "DeT reformers for CIFAR-10 (JPEG q75; R0 and a Reformer List of three), "
            "trained by guardnet."
        ),
    )
)
register_pretrained(
    PretrainedEntry(
        name="mnist-cnn",
        hub_id="guardnet/mnist-cnn",
        revision=None,
        config_sha256="53ee4ba1f39558956047750f612b8155c3fd8268fa5bee1001d9585a03c5d90a",
        weights_sha256="c7381b44c3e6734ecff4e33c9cf4873a34f38bf6a1812238b5bc6f4f0f460722",
        dataset="mnist",
        architecture="MnistCNN",
        license="Apache-2.0",
        description="MNIST reference classifier (MnistCNN, 1.2 M parameters) trained by guardnet.",
    )
)
register_pretrained(
    PretrainedEntry(
        name="resnet20-cifar10-akamaster",
        hub_id="guardnet/resnet20-cifar10-akamaster",
        revision=None,
        config_sha256="f5e904eeee5de3b3b4adac4bfcafdbc6d37a752333b632ce056169f21f90bc36",
        weights_sha256="f0eeece61ed33b2a1c786c6fc0c677a52deda489a5f8b43aa4983c2d522a5610",
        dataset="cifar10-exact",
        architecture="resnet20",
        license="BSD-2-Clause",
        description=(
            "ResNet20 (option A) trained on exact CIFAR-10 by Yerlan Idelbayev "
            "(pytorch_resnet_cifar10), converted to safetensors."
        ),
    )
)
register_pretrained(
    PretrainedEntry(
        name="resnet56-cifar10-akamaster",
        hub_id="guardnet/resnet56-cifar10-akamaster",
        revision=None,
        config_sha256="abcba61f33699ab7086813ce999cd02416d8245ea927caa969139bb59747a4c6",
        weights_sha256="ee40d632df9c8935a080db036868ee0f161c0b171d921ddd135c9a4300625ae7",
        dataset="cifar10-exact",
        architecture="resnet56",
        license="BSD-2-Clause",
        description=(
            "ResNet56 (option A) trained on exact CIFAR-10 by Yerlan Idelbayev "
            "(pytorch_resnet_cifar10), converted to safetensors."
        ),
    )
)
register_pretrained(
    PretrainedEntry(
        name="resnet20-cifar10jpeg-ft",
        hub_id="guardnet/resnet20-cifar10jpeg-ft",
        revision=None,
        config_sha256="4470f9cd14aaf0f172c7b08cd12189d3870f751a56c61f1deb8cecf3585d0faa",
        weights_sha256="92a39a1086038e13724d6b3adb5701af7e8269a8b3ed005cb174ced14e7b7028",
        dataset="cifar10",
        architecture="resnet20",
        license="BSD-2-Clause",
        description=(
            "resnet20-cifar10-akamaster fine-tuned by guardnet on the CIFAR-10 (JPEG q75) train "
            "split (8 epochs); BSD-2-Clause as the weights it starts from."
        ),
    )
)
register_pretrained(
    PretrainedEntry(
        name="resnet20-gtsrb",
        hub_id="guardnet/resnet20-gtsrb",
        revision=None,
        config_sha256="30e5321b5d0c4bcde0583e874fd024be5f6955f77f64819fb8ecbdf9c7422c57",
        weights_sha256="c2b6cfdebd07784035aba7e3d99bad3faaad672e5252e8779c19fa881ab0902b",
        dataset="gtsrb",
        architecture="resnet20",
        license="Apache-2.0",
        description=(
            "CIFAR-style ResNet20 (option A) for the 43 GTSRB classes at 32x32, trained by "
            "guardnet from scratch (15 epochs). GTSRB's research-use terms apply to the data."
        ),
    )
)
