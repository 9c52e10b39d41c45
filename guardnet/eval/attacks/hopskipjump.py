"""HopSkipJump on a guard's decision: a hard-label, decision-based L-inf attack.

Chen, Jordan and Wainwright, "HopSkipJumpAttack: A Query-Efficient Decision-Based Attack"
(IEEE S&P 2020). The attacker sees only the guard's verdict on a query: its label and whether it
rejected (:meth:`guardnet.GuardedModel.forward`). The attack succeeds on a query that *fools the
classifier and passes the guard*; it walks along the boundary of that region towards the clean
image:

1. start: per image, the closest (L-inf) successful point among the chunk's other images and
   ``init_samples`` uniform-noise images (clean images of other classes that the guard accepts
   are natural starts, as the paper's targeted variant starts from an image of the target
   class); images without one are returned unchanged;
2. binary search for the boundary along the L-inf path ``clip(start, x - a, x + a)``;
3. repeat ``iterations`` times: estimate the boundary's normal from the verdicts on
   ``init_evals * sqrt(t)`` (at most ``max_evals``) points drawn uniformly in a small cube
   around the boundary point (baseline-corrected Monte-Carlo estimate), step along its sign
   with a geometric step-size search (from ``dist / sqrt(t)``, halving up to ``step_tries``
   times until the step still succeeds), binary search back to the boundary.

The binary-search tolerance is ``theta = gamma / d**2`` (``d`` the number of values of an
image) and the probe radius ``d * theta * dist`` (0.1 at the first iteration), the paper's
L-inf settings. Images stop once their boundary point is within ``eps``; the others are
projected onto the ``eps`` ball at the end (and then usually fail). Every image of a chunk is
updated at once: the probes of all images go through the guard in batches of at most
``batch_size`` queries, with per-image step sizes and search intervals; no per-image Python loop.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from guardnet.errors import ConfigError
from guardnet.eval.attacks.adaptive import register_adaptive_attack
from guardnet.eval.attacks.query import GuardQueryAttack, linf_distance, project_linf
from guardnet.guard import GuardedModel

__all__ = ["HopSkipJump"]


# Most halvings of one binary search (a 2**-40 share of the start distance is far below any
# budget on [0, 1] images).
_MAX_HALVINGS = 40


def _expand(v: Tensor, like: Tensor) -> Tensor:
    return v.view(-1, *([1] * (like.ndim - 1)))


@register_adaptive_attack
class HopSkipJump(GuardQueryAttack):
    """HopSkipJump (L-inf, hard-label) on classifier and guard together.

    Args:
        guard: a calibrated :class:`guardnet.GuardedModel`.
        eps: the L-inf budget of the result.
        iterations: gradient-estimate / step / binary-search rounds.
        init_evals: probes of the first gradient estimate (``n_0``; the t-th uses
            ``init_evals * sqrt(t)``).
        max_evals: most probes of one gradient estimate.
        step_tries: most halvings of the geometric step-size search.
        gamma: binary-search tolerance factor (``theta = gamma / d**2``).
        init_samples: uniform-noise images tried as starting points besides the chunk's images.
        batch_size: images per chunk and most queries per forward pass.
        seed, progress: see :class:`~guardnet.eval.attacks.base.Attack`.

    Shape:
        Images (B, C, H, W) in [0, 1]; returns the same shape, within ``eps`` in L-inf.

    Example:
        >>> import torch
        >>> from guardnet import GuardedModel
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
        >>> guard = GuardedModel(net, [], num_classes=4)
        >>> attack = HopSkipJump(guard, eps=8 / 255, iterations=2, init_evals=10)
        >>> attack(torch.rand(3, 3, 8, 8), torch.tensor([0, 1, 2])).shape
        torch.Size([3, 3, 8, 8])
    """

    name: ClassVar[str] = "hopskipjump"

    def __init__(
        self,
        guard: GuardedModel,
        *,
        eps: float,
        iterations: int = 40,
        init_evals: int = 100,
        max_evals: int = 10_000,
        step_tries: int = 12,
        gamma: float = 1.0,
        init_samples: int = 100,
        batch_size: int = 256,
        seed: int = 0,
        progress: bool = False,
    ) -> None:
        super().__init__(guard, eps=eps, batch_size=batch_size, seed=seed, progress=progress)
        for key, value in (
            ("iterations", iterations),
            ("init_evals", init_evals),
            ("max_evals", max_evals),
            ("step_tries", step_tries),
        ):
            if value < 1:
                raise ConfigError(f"{key} must be >= 1, got {value}")
        if init_samples < 0:
            raise ConfigError(f"init_samples must be >= 0, got {init_samples}")
        if not gamma > 0:
            raise ConfigError(f"gamma must be > 0, got {gamma}")
        self.iterations = iterations
        self.init_evals = init_evals
        self.max_evals = max_evals
        self.step_tries = step_tries
        self.gamma = float(gamma)
        self.init_samples = init_samples

    def params(self) -> dict[str, Any]:
        return {
            **super().params(),
            "iterations": self.iterations,
            "init_evals": self.init_evals,
            "max_evals": self.max_evals,
            "step_tries": self.step_tries,
            "gamma": self.gamma,
            "init_samples": self.init_samples,
        }

    # ---------------------------------------------------------------- steps
    @torch.no_grad()
    def _start(
        self, images: Tensor, labels: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """Per image, the closest successful candidate (B, C, H, W) and whether one exists."""
        noise = torch.rand(
            (self.init_samples, *images.shape[1:]), generator=generator, device=images.device
        ).to(images.dtype)
        pool = torch.cat([images, noise])
        verdicts = [self.guard(chunk) for chunk in pool.split(self.batch_size)]
        pool_labels = torch.cat([v.classifier_labels for v in verdicts])
        accepted = ~torch.cat([v.rejected for v in verdicts])
        valid = (pool_labels[None, :] != labels[:, None]) & accepted[None, :]  # (B, M)
        dist = torch.cdist(images.flatten(1), pool.flatten(1), p=float("inf"))
        choice = dist.masked_fill(~valid, float("inf")).argmin(dim=1)
        return pool[choice], valid.any(dim=1)

    def _boundary(
        self, images: Tensor, labels: Tensor, adversarial: Tensor, theta: float
    ) -> tuple[Tensor, Tensor]:
        """Binary search on ``clip(adversarial, x - a, x + a)``: (boundary point, its a)."""
        high = linf_distance(adversarial, images)
        low = torch.zeros_like(high)
        tolerance = torch.minimum(high * theta, torch.full_like(high, theta))
        for _ in range(_MAX_HALVINGS):  # float precision ends a search for tiny theta
            if not bool(((high - low) > tolerance).any()):  # one host sync per halving
                break
            mid = (high + low) / 2
            ok = self.decide(project_linf(images, adversarial, mid), labels)
            high = torch.where(ok, mid, high)
            low = torch.where(ok, low, mid)
        return project_linf(images, adversarial, high), high

    def _gradient_sign(
        self,
        point: Tensor,
        labels: Tensor,
        radius: Tensor,
        evals: int,
        generator: torch.Generator,
    ) -> Tensor:
        """Sign of the Monte-Carlo estimate of the success region's normal at ``point``."""
        b = point.shape[0]
        per_forward = max(1, self.batch_size // b)
        sum_fv = torch.zeros_like(point)
        sum_v = torch.zeros_like(point)
        sum_f = point.new_zeros(b)
        done = 0
        while done < evals:
            n = min(per_forward, evals - done)
            v = torch.rand((b, n, *point.shape[1:]), generator=generator, device=point.device)
            v = (v * 2 - 1).to(point.dtype)
            probes = (point[:, None] + radius.view(b, 1, 1, 1, 1) * v).clamp(0.0, 1.0)
            ok = self.decide(probes.flatten(0, 1), labels.repeat_interleave(n)).view(b, n)
            f = ok.to(point.dtype) * 2 - 1  # +1 success, -1 not
            sum_fv += (f.view(b, n, 1, 1, 1) * v).sum(dim=1)
            sum_v += v.sum(dim=1)
            sum_f += f.sum(dim=1)
            done += n
        mean_f = sum_f / evals
        # Baseline: subtract the mean verdict, unless every probe agreed (then it is all there is).
        baseline = torch.where(mean_f.abs() == 1, torch.zeros_like(mean_f), mean_f)
        return (sum_fv - _expand(baseline, sum_v) * sum_v).sign()

    def _step(
        self, images: Tensor, point: Tensor, labels: Tensor, direction: Tensor, size: Tensor
    ) -> Tensor:
        """Geometric step-size search: the largest ``size / 2**i`` step that still succeeds."""
        accepted = torch.zeros(point.shape[0], dtype=torch.bool, device=point.device)
        out = point
        for _ in range(self.step_tries):
            candidate = (point + _expand(size, point) * direction).clamp(0.0, 1.0)
            ok = self.decide(candidate, labels) & ~accepted
            out = torch.where(_expand(ok, point), candidate, out)
            accepted = accepted | ok
            size = torch.where(accepted, size, size / 2)
            if bool(accepted.all()):  # one host sync per try
                break
        return out

    # ---------------------------------------------------------------- the attack
    def perturb(self, images: Tensor, labels: Tensor, generator: torch.Generator) -> Tensor:
        images = images.detach()
        d = images[0].numel()
        theta = self.gamma / d**2
        start, found = self._start(images, labels, generator)
        out = images.clone()
        index = found.nonzero().squeeze(1)
        if index.numel() == 0:
            return out
        x, y = images[index], labels[index]
        point, dist = self._boundary(x, y, start[index], theta)
        for t in range(1, self.iterations + 1):
            active = (dist > self.eps).nonzero().squeeze(1)  # one host sync per iteration
            if active.numel() == 0:
                break
            xa, ya, pa, da = x[active], y[active], point[active], dist[active]
            radius = torch.full_like(da, 0.1) if t == 1 else d * theta * da
            evals = min(int(self.init_evals * math.sqrt(t)), self.max_evals)
            direction = self._gradient_sign(pa, ya, radius, evals, generator)
            moved = self._step(xa, pa, ya, direction, da / math.sqrt(t))
            new_point, new_dist = self._boundary(xa, ya, moved, theta)
            closer = new_dist < da
            point[active] = torch.where(_expand(closer, pa), new_point, pa)
            dist[active] = torch.where(closer, new_dist, da)
        out[index] = project_linf(x, point, self.eps).clamp(0.0, 1.0)
        return out
