"""DeT: correct the label by noise, denoising autoencoders, random sampling and voting.

The DeT paper (a transferability-based defense; ``docs/det.md``) reforms every input instead of
only rejecting it:

1. **preliminary denoising**: Gaussian noise at the reformers' training level, then one
   reformer ``R0`` rebuilds the input: ``x''``;
2. **random sampling**: ``N`` points ``clip(x'' + eps * N(0, 1))`` (not differentiable, on
   purpose);
3. **twice denoising**: each of the ``k`` reformers of the Reformer List (not ``R0``) rebuilds
   all ``N`` samples;
4. **voting**: the classifier labels every rebuilt sample; each reformer's majority label is
   its vote; the majority of the ``k`` votes is the output. Ties (within a reformer's samples
   and between votes) are broken at random, by draws keyed on the image and the layer's seed.

Two extensions of guardnet's, not the paper's: the layer's logits are the vote fractions
(``votes / k`` per class), and, off by default (``reject=True``), a rejection score: the share
of the ``k * N`` sample labels that disagree with the final label, calibrated like every other
threshold.

All noise comes from :mod:`guardnet.ops.stateless_random`, keyed by each image's content and
``seed``: an image gets the same draws alone, in any batch and in any chunk. The ``B x N x k``
rebuilt images go through reformers and classifier in chunks of ``chunk_size`` images.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from guardnet.errors import ConfigError, InputShapeError
from guardnet.layers._loading import load_layer_module
from guardnet.layers.base import Layer, LayerInput, LayerKind, LayerOutput
from guardnet.layers.registry import register_layer
from guardnet.nets.reformer import ReformerSet
from guardnet.ops.stateless_random import content_keys, stateless_normal, stateless_uniform

__all__ = ["DeTReformer"]

# Counters of the stateless draws: one stream per purpose.
_NOISE, _SAMPLES, _VOTER_TIES, _FINAL_TIES = 0, 1, 1000, 2000


@register_layer("det")
class DeTReformer(Layer):
    """DeT as a guard layer (``reform``: replaces the classifier's logits and labels).

    Args:
        reformers: trained reformers (a :class:`~guardnet.nets.reformer.ReformerSet`).
        first: index of ``R0``, the preliminary reformer.
        voters: indices of the Reformer List (default: every reformer but ``first``).
        noise: standard deviation of the preliminary Gaussian noise (the reformers' training
            level).
        eps: standard deviation of the sampling noise around ``x''``.
        num_samples: ``N``, samples per input.
        reject: also reject inputs whose samples disagree (guardnet's extension; needs
            calibration).
        seed: keys every draw.
        chunk_size: rebuilt images per reformer/classifier call.
        num_classes: the classes of the data the reformers were trained on (checked against
            the classifier; ``None``: any).
        input_size: (C, H, W) the reformers were trained on (``None``: any of their channels).
        fresh_noise: draw new noise on every call instead of keying it on the image: a
            randomised defense, for evaluating it under EOT (an attacker averaging over its
            randomness); off for serving, where the same image always gets the same answer.

    Shape:
        - Input: images (B, C, H, W) in [0, 1] and the classifier.
        - Output: scores (B,) (sample disagreement), logits (B, K) vote fractions, labels (B,).

    Example:
        >>> from guardnet.nets.reformer import REFORMER_STYLES
        >>> from guardnet import GuardedModel
        >>> nets = ReformerSet([{"in_channels": 1, **REFORMER_STYLES["plain"]}] * 3)
        >>> layer = DeTReformer(nets, num_samples=4)
        >>> classifier = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
        >>> result = GuardedModel(classifier, [layer])(torch.rand(2, 1, 8, 8))
        >>> result.labels.shape, result.logits.sum(1)
        (torch.Size([2]), tensor([1., 1.]))
    """

    kind: ClassVar[LayerKind] = LayerKind.REFORM
    higher_is_suspicious: ClassVar[bool] = True
    differentiable: ClassVar[bool] = False
    default_name: ClassVar[str] = "det"

    def __init__(
        self,
        reformers: ReformerSet,
        *,
        first: int = 0,
        voters: Sequence[int] | None = None,
        noise: float = 0.1,
        eps: float = 0.1,
        num_samples: int = 16,
        reject: bool = False,
        seed: int = 0,
        chunk_size: int = 4096,
        num_classes: int | None = None,
        input_size: Sequence[int] | None = None,
        fresh_noise: bool = False,
    ) -> None:
        if not isinstance(reformers, ReformerSet):
            raise TypeError(f"reformers must be a ReformerSet, got {type(reformers).__name__}")
        n = len(reformers)
        if not 0 <= first < n:
            raise ConfigError(f"first must index one of the {n} reformers, got {first}")
        voters = [i for i in range(n) if i != first] if voters is None else list(voters)
        if len(voters) < 1:
            raise ConfigError("DeT needs k >= 1 voting reformers besides R0")
        if any(not 0 <= v < n for v in voters) or len(set(voters)) != len(voters):
            raise ConfigError(f"voters must be distinct indices below {n}, got {voters}")
        if first in voters:
            raise ConfigError(f"R0 (index {first}) cannot also vote")
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ConfigError(f"num_samples (N) must be an integer >= 1, got {num_samples!r}")
        if not eps >= 0 or not noise >= 0:
            raise ConfigError(f"eps and noise must be >= 0, got eps={eps}, noise={noise}")
        if chunk_size < 1:
            raise ConfigError(f"chunk_size must be >= 1, got {chunk_size}")
        self.rejects = reject  # type: ignore[misc]
        super().__init__()
        self.reformers = reformers
        self.first = first
        self.voters = voters
        self.noise = float(noise)
        self.eps = float(eps)
        self.num_samples = num_samples
        self.seed = seed
        self.chunk_size = chunk_size
        self.num_classes = num_classes
        self.input_size = None if input_size is None else tuple(int(s) for s in input_size)
        self.fresh_noise = fresh_noise
        self._calls = 0

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike[str],
        *,
        revision: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        local_files_only: bool | None = None,
        device: str | torch.device = "cpu",
        **kwargs: Any,
    ) -> DeTReformer:
        """Load shipped reformers (a registered name such as ``"det-mnist"``, a folder written
        by ``guardnet train reformers`` or a Hub repo id) with the DeT settings of their
        config (``"det"``: first, voters, noise, eps, num_samples); ``kwargs`` override them.

        Raises:
            WeightsError: the folder does not hold a ReformerSet.
        """
        nets = load_layer_module(
            name_or_path,
            ReformerSet,
            "DeT reformers",
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            device=device,
        )
        config = nets.pretrained_config
        settings: dict[str, Any] = dict(config.get("det", {}))
        settings.setdefault("noise", config.get("train_settings", {}).get("noise", 0.1))
        settings.setdefault("num_classes", config.get("num_classes"))
        settings.setdefault("input_size", config.get("input_size"))
        settings.update(kwargs)
        return cls(nets, **settings)

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments, ``reformers`` as their architecture (see
        :meth:`Layer.get_config`)."""
        return {
            "reformers": {"architecture": "ReformerSet", "arch_args": self.reformers.arch_args()},
            "first": self.first,
            "voters": list(self.voters),
            "noise": self.noise,
            "eps": self.eps,
            "num_samples": self.num_samples,
            "reject": bool(self.rejects),
            "seed": self.seed,
            "chunk_size": self.chunk_size,
            "num_classes": self.num_classes,
            "input_size": None if self.input_size is None else list(self.input_size),
            "fresh_noise": self.fresh_noise,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> DeTReformer:
        kwargs = dict(config)
        nets = kwargs.pop("reformers")
        if isinstance(nets, Mapping):
            nets = ReformerSet(**nets["arch_args"])
        return cls(nets, **kwargs)

    def extra_repr(self) -> str:
        return (
            f"first={self.first}, voters={self.voters}, N={self.num_samples}, eps={self.eps}, "
            f"noise={self.noise}"
        )

    # ------------------------------------------------------------------ the algorithm
    def _check(self, images: Tensor) -> None:
        if images.shape[1] != self.reformers.in_channels:
            raise InputShapeError(
                f"DeT's reformers take {self.reformers.in_channels}-channel images, got "
                f"{images.shape[1]} channels (shape {tuple(images.shape)})"
            )
        if self.input_size is not None and tuple(images.shape[1:]) != self.input_size:
            raise InputShapeError(
                f"DeT's reformers were trained on {self.input_size} images, got "
                f"{tuple(images.shape[1:])}"
            )

    def _keys(self, images: Tensor) -> Tensor:
        seed = self.seed
        if self.fresh_noise:
            self._calls += 1
            seed = seed + 7919 * self._calls
        return content_keys(images, seed)

    def samples(self, images: Tensor, keys: Tensor) -> Tensor:
        """(B, N, C, H, W): noise, ``R0``, then ``N`` samples around the rebuild."""
        shape = tuple(images.shape[1:])
        noise = stateless_normal(keys, _NOISE, shape, dtype=images.dtype)
        rebuilt = self.reformers[self.first]((images + self.noise * noise).clamp(0, 1))
        spread = stateless_normal(keys, _SAMPLES, (self.num_samples, *shape), dtype=images.dtype)
        return (rebuilt[:, None] + self.eps * spread).clamp(0, 1)

    def sample_logits(self, samples: Tensor, classifier: Any) -> Tensor:
        """(k, B, N, K) classifier logits of every voter's rebuild of every sample, computed in
        chunks of ``chunk_size`` images."""
        batch, n = samples.shape[:2]
        flat = samples.flatten(0, 1)
        per_voter = []
        for index in self.voters:
            reformer = self.reformers[index]
            chunks = [classifier(reformer(c)) for c in flat.split(self.chunk_size)]
            logits = torch.cat(chunks)
            per_voter.append(logits.view(batch, n, logits.shape[-1]))
        return torch.stack(per_voter)

    def vote(self, sample_labels: Tensor, keys: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
        """Final labels (B,) and vote fractions (B, K) from (k, B, N) sample labels."""
        k = sample_labels.shape[0]
        counts = F.one_hot(sample_labels, num_classes).sum(2).to(torch.float32)  # (k, B, K)
        # Uniform jitter below 1 breaks ties between equal integer counts, and only those.
        voter_jitter = torch.stack(
            [stateless_uniform(keys, _VOTER_TIES + j, (num_classes,)) for j in range(k)]
        ).to(counts.device)
        votes = (counts + 0.5 * voter_jitter).argmax(2)  # (k, B)
        tally = F.one_hot(votes, num_classes).sum(0).to(torch.float32)  # (B, K)
        final_jitter = stateless_uniform(keys, _FINAL_TIES, (num_classes,)).to(tally.device)
        labels = (tally + 0.5 * final_jitter).argmax(1)
        return labels, tally / k

    def forward(self, inputs: LayerInput) -> LayerOutput:
        if inputs.classifier is None:
            raise ValueError("DeTReformer runs after the classifier and needs its handle")
        images = inputs.images
        self._check(images)
        keys = self._keys(images)
        net_dtype = next(self.reformers.parameters()).dtype
        with torch.no_grad():
            samples = self.samples(images.to(net_dtype), keys)
            logits = self.sample_logits(samples, inputs.classifier)
        num_classes = logits.shape[-1]
        if self.num_classes is not None and num_classes != self.num_classes:
            raise ConfigError(
                f"DeT's reformers were trained on {self.num_classes}-class data but the "
                f"classifier gives {num_classes} classes"
            )
        sample_labels = logits.argmax(-1)  # (k, B, N)
        labels, fractions = self.vote(sample_labels, keys, num_classes)
        disagreement = (sample_labels != labels[None, :, None]).float().mean((0, 2))
        # The disagreement stays in float32 (a float16 guard would round 1/3 and compare it with
        # a float32 threshold); the logits follow the guard's dtype.
        return LayerOutput(scores=disagreement, logits=fractions.to(images.dtype), labels=labels)

    def bpda_forward(self, inputs: LayerInput) -> LayerOutput:
        """The exact vote with a gradient: through noise, ``R0``, the samples, every voter and
        the classifier, of the mean softmax over samples and voters (straight-through: the
        values are the vote fractions)."""
        if inputs.classifier is None:
            raise ValueError("DeTReformer runs after the classifier and needs its handle")
        images = inputs.images
        self._check(images)
        keys = self._keys(images)
        net_dtype = next(self.reformers.parameters()).dtype
        samples = self.samples(images.to(net_dtype), keys)
        logits = self.sample_logits(samples, inputs.classifier)
        num_classes = logits.shape[-1]
        sample_labels = logits.detach().argmax(-1)
        labels, fractions = self.vote(sample_labels, keys, num_classes)
        probabilities = logits.softmax(-1).mean((0, 2))  # (B, K)
        # (b - b.detach()) is exactly zero, so the values are exactly the hard ones.
        surrogate = fractions.to(probabilities.dtype) + (probabilities - probabilities.detach())
        disagreement = (sample_labels != labels[None, :, None]).float().mean((0, 2))
        # The disagreement's gradient: that of 1 - the mean probability of the final label.
        soft = 1 - probabilities.gather(1, labels[:, None]).squeeze(1)
        scores = disagreement.to(soft.dtype) + (soft - soft.detach())
        return LayerOutput(scores=scores, logits=surrogate.to(images.dtype), labels=labels)
