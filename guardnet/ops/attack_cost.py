"""Batched attack costs with per-sample early stopping: A2D's robustness probes.

"Attack as Defense" (Zhao et al., ISSTA 2021) measures how hard an input is to attack: the
number of iterations (or queries) an attack needs before the predicted label changes. Each
function here runs one attack on a whole batch; a sample leaves the active set at the step its
label changes, so finished samples cost nothing more, and the loop ends when none is left or at
``limit``. A sample that has not flipped by ``limit`` gets the cost ``limit``.

Every function reads the batch's state once per step to shrink the active set (one host sync
per step for the whole batch, not per sample).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from guardnet.errors import GuardnetError
from guardnet.ops.stateless_random import content_keys, stateless_normal, stateless_uniform

__all__ = [
    "NoGradientError",
    "bim_cost",
    "boundary_cost",
    "jsma_cost",
    "saliency_map_attack",
]

Classifier = Callable[[Tensor], Tensor]


class NoGradientError(GuardnetError, RuntimeError):
    """The classifier gives no gradient with respect to its input."""


def _logits_with_input_grad(classifier: Classifier, images: Tensor, attack: str) -> Tensor:
    logits = classifier(images)
    if not logits.requires_grad:
        raise NoGradientError(
            f"the attack {attack!r} needs the classifier's gradient with respect to its input, "
            "but its logits do not require grad (a label-only or non-differentiable model?): "
            "use the label-only attack 'dba' instead"
        )
    return logits


def _check_limit(limit: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ValueError(f"limit must be an integer >= 0, got {limit!r}")


def _flat_norm(x: Tensor) -> Tensor:
    return x.flatten(1).norm(dim=1).view(-1, *([1] * (x.ndim - 1)))


def bim_cost(
    classifier: Classifier,
    images: Tensor,
    labels: Tensor,
    *,
    eps: float,
    step: float,
    limit: int,
    norm: str = "linf",
) -> Tensor:
    """Steps of untargeted BIM until the label leaves ``labels`` (A2D's BIM_d / BIM2_d).

    Each step ascends the cross-entropy of ``labels`` (L-inf: the gradient's sign times
    ``step``; L2: the gradient scaled to L2 norm ``step``), projects onto the ``eps`` ball
    around ``images`` and clips to [0, 1] (Kurakin et al., 2017).

    Args:
        classifier: maps [0, 1] images to logits; must be differentiable in its input.
        images: (B, C, H, W) images in [0, 1].
        labels: (B,) the labels to move away from (normally the predicted ones).
        eps: the radius of the ball (> 0).
        step: the step size (> 0).
        limit: the most steps; also the cost of a sample that never flips.
        norm: ``"linf"`` or ``"l2"``.

    Returns:
        (B,) float costs: the number of steps after which the label first differs (0 when it
        already differs), or ``limit``.

    Raises:
        NoGradientError: the classifier's logits do not require grad.
    """
    if norm not in ("linf", "l2"):
        raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
    _check_limit(limit)
    costs = images.new_full((images.shape[0],), float(limit))
    index = torch.arange(images.shape[0], device=images.device)
    origin = images.detach()
    adv = origin.clone()
    target = labels
    for t in range(limit):
        if index.numel() == 0:
            break
        adv.requires_grad_(True)
        logits = _logits_with_input_grad(classifier, adv, "bim" if norm == "linf" else "bim2")
        flipped = logits.argmax(1) != target
        (grad,) = torch.autograd.grad(F.cross_entropy(logits, target, reduction="sum"), adv)
        adv = adv.detach()
        if bool(flipped.any()):
            costs[index[flipped]] = float(t)
            keep = ~flipped
            index, adv, origin, grad, target = (v[keep] for v in (index, adv, origin, grad, target))
        if norm == "linf":
            adv = adv + step * grad.sign()
            adv = torch.minimum(torch.maximum(adv, origin - eps), origin + eps)
        else:
            adv = adv + step * grad / _flat_norm(grad).clamp_min(1e-12)
            delta = adv - origin
            delta = delta * (eps / _flat_norm(delta).clamp_min(1e-12)).clamp(max=1.0)
            adv = origin + delta
        adv = adv.clamp(0.0, 1.0)
    return costs


def saliency_map_attack(
    classifier: Classifier,
    images: Tensor,
    labels: Tensor,
    targets: Tensor,
    *,
    limit: int,
    theta: float = 0.1,
    max_changes_per_feature: int = 7,
) -> tuple[Tensor, Tensor]:
    """A single-feature Jacobian saliency-map attack, run until the label leaves ``labels``
    (Papernot et al., "The Limitations of Deep Learning in Adversarial Settings", EuroS&P 2016).

    Each iteration computes the gradient ``a`` of the target logit and ``b`` of the sum of the
    other logits, picks the input element with the most negative ``a * b`` (raising the target
    while lowering the rest) among those that may still move, and moves it by ``theta`` in the
    direction of ``a``. An element moves at most ``max_changes_per_feature`` times and never
    past [0, 1]. A sample stops at the first iteration whose label differs from ``labels``
    (whether or not it is the target), so it stays just across the boundary.

    Args:
        classifier: maps [0, 1] images to logits; must be differentiable in its input.
        images: (B, C, H, W) images in [0, 1].
        labels: (B,) the labels to move away from.
        targets: (B,) the class to push towards.
        limit: the most iterations.
        theta: how far one iteration moves the chosen element.
        max_changes_per_feature: how often one element may move.

    Returns:
        ``(adversarial, iterations)``: (B, C, H, W) the images when their label first differed
        (after ``limit`` moves for the others), and (B,) float counts of iterations until then
        (``limit`` for the others).

    Raises:
        NoGradientError: the classifier's logits do not require grad.
    """
    _check_limit(limit)
    batch = images.shape[0]
    costs = images.new_full((batch,), float(limit))
    result = torch.empty_like(images)  # every row is written: when it flips, or at the end
    index = torch.arange(batch, device=images.device)
    adv = images.detach().clone()
    changes = torch.zeros(adv.shape, dtype=torch.int32, device=adv.device).flatten(1)
    source, target = labels, targets
    for t in range(limit):
        if index.numel() == 0:
            break
        adv.requires_grad_(True)
        logits = _logits_with_input_grad(classifier, adv, "jsma")
        flipped = logits.argmax(1) != source
        target_logit = logits.gather(1, target[:, None]).sum()
        (alpha,) = torch.autograd.grad(target_logit, adv, retain_graph=True)
        (total,) = torch.autograd.grad(logits.sum(), adv)
        adv = adv.detach()
        if bool(flipped.any()):
            costs[index[flipped]] = float(t)
            result[index[flipped]] = adv[flipped]
            keep = ~flipped
            index, adv, alpha, total, changes, source, target = (
                v[keep] for v in (index, adv, alpha, total, changes, source, target)
            )
        a = alpha.flatten(1)
        b = total.flatten(1) - a
        flat = adv.flatten(1)
        direction = a.sign()
        room = torch.where(direction > 0, flat < 1.0, flat > 0.0) & (direction != 0)
        movable = room & (changes < max_changes_per_feature) & (a * b < 0)
        saliency = torch.where(movable, a * b, torch.full_like(a, float("inf")))
        chosen = saliency.argmin(1, keepdim=True)
        can_move = movable.gather(1, chosen)
        shift = theta * direction.gather(1, chosen) * can_move
        flat = flat.scatter_add(1, chosen, shift).clamp(0.0, 1.0)
        changes = changes.scatter_add(1, chosen, can_move.to(changes.dtype))
        adv = flat.view_as(adv)
    result[index] = adv.detach()
    return result, costs


def jsma_cost(
    classifier: Classifier,
    images: Tensor,
    labels: Tensor,
    targets: Tensor,
    *,
    limit: int,
    theta: float = 0.1,
    max_changes_per_feature: int = 7,
) -> Tensor:
    """Iterations of :func:`saliency_map_attack` until the label leaves ``labels`` (A2D's
    JSMA_d, which targets the second most likely class); arguments as there, ``limit`` also
    being the cost of a sample that never flips.

    Returns:
        (B,) float costs: iterations until the label first differs, or ``limit``.
    """
    return saliency_map_attack(
        classifier,
        images,
        labels,
        targets,
        limit=limit,
        theta=theta,
        max_changes_per_feature=max_changes_per_feature,
    )[1]


def _is_adversarial(classifier: Classifier, images: Tensor, labels: Tensor) -> Tensor:
    return classifier(images).argmax(1) != labels


def _mse(a: Tensor, b: Tensor) -> Tensor:
    return (a - b).flatten(1).pow(2).mean(1)


def boundary_cost(
    classifier: Classifier,
    images: Tensor,
    labels: Tensor,
    *,
    limit: int,
    mse_target: float = 0.02,
    seed: int = 0,
    init_draws: int = 20,
    init_search_steps: int = 10,
    spherical_step: float = 0.01,
    source_step: float = 0.01,
    step_adaptation: float = 1.5,
    adapt_every: int = 10,
) -> Tensor:
    """Queries of a label-only boundary attack until the adversarial image's mean squared
    distance to the input falls below ``mse_target`` (A2D's DBA_d; Brendel et al., ICLR 2018).

    Starts from a noise image whose label differs. Draw ``d`` (of at most ``init_draws``) has
    amplitude ``a = (d + 1) / init_draws`` and cycles through three families: the input plus
    uniform noise in [-a, a], dark noise in [0, a] and bright noise in [1 - a, 1]. (Pure
    uniform noise, the usual start, often gets one label for every draw (an MNIST CNN calls
    all of it "8"), which leaves inputs of that label without a start.) It then bisects
    the blend between start and input (``init_search_steps`` queries) and walks along the
    boundary: each step proposes one candidate (a random orthogonal step of relative size
    ``spherical_step`` on the sphere around the input, then a step of relative size
    ``source_step`` towards it), queries its label, and keeps it when it is still adversarial.
    Every ``adapt_every`` steps both step sizes grow by ``step_adaptation`` when more than half
    of the proposals were kept and shrink when fewer than a fifth were. Every query counts
    one; the classifier is only asked for labels.

    Noise comes from :mod:`guardnet.ops.stateless_random`, keyed by each image's content and
    ``seed``: an image's cost does not depend on the batch it arrives in.

    Args:
        classifier: maps [0, 1] images to logits (only their argmax is used).
        images: (B, C, H, W) images in [0, 1].
        labels: (B,) the labels to move away from.
        limit: the most queries; also the cost of a sample that does not get close enough.
        mse_target: stop when the mean squared distance to the input is below this.
        seed: keys the noise.
        init_draws: noise images tried per sample to find an adversarial start.
        init_search_steps: bisection steps of the blend.
        spherical_step: initial orthogonal step, relative to the distance to the input.
        source_step: initial step towards the input, relative to the distance.
        step_adaptation: factor by which both steps grow or shrink.
        adapt_every: steps between adaptations.

    Returns:
        (B,) float costs: queries used, or ``limit``.
    """
    _check_limit(limit)
    batch = images.shape[0]
    shape = tuple(images.shape[1:])
    costs = images.new_full((batch,), float(limit))
    if batch == 0 or limit == 0:
        return costs
    view = (-1, *[1] * len(shape))
    with torch.no_grad():
        keys = content_keys(images, seed)
        origin = images.detach()
        # 1. an adversarial starting point: noise of growing amplitude for the samples that
        # have none yet; each sample pays for its own draws
        start = origin.clone()
        found = torch.zeros(batch, dtype=torch.bool, device=images.device)
        spent = origin.new_zeros(batch)
        for draw in range(min(init_draws, limit)):
            amplitude = (draw + 1) / init_draws
            uniform = stateless_uniform(keys, draw, shape, dtype=origin.dtype)
            family = draw % 3
            if family == 0:  # noise around the input
                noise = (origin + amplitude * (2 * uniform - 1)).clamp(0.0, 1.0)
            elif family == 1:  # dark noise
                noise = amplitude * uniform
            else:  # bright noise
                noise = 1 - amplitude * uniform
            adversarial = _is_adversarial(classifier, noise, labels) & ~found
            start = torch.where(adversarial.view(view), noise, start)
            spent = spent + (~found).to(spent.dtype)
            found |= adversarial
            if bool(found.all()):
                break
        # 2. bisect the blend between input and noise: `high` stays adversarial
        low = origin.new_zeros(batch)
        high = origin.new_ones(batch)
        for _ in range(init_search_steps):
            mid = (low + high) / 2
            blend = origin + mid.view(view) * (start - origin)
            adversarial = _is_adversarial(classifier, blend, labels)
            high = torch.where(adversarial, mid, high)
            low = torch.where(adversarial, low, mid)
        spent = spent + init_search_steps
        adv = origin + high.view(view) * (start - origin)
        done = found & (_mse(adv, origin) < mse_target) & (spent <= limit)
        costs = torch.where(done, spent, costs)
        active = found & ~done & (spent < limit)
        index = torch.arange(batch, device=images.device)
        index, adv, origin, target, sample_keys, spent = (
            v[active] for v in (index, adv, origin, labels, keys, spent)
        )
        spherical = origin.new_full((index.numel(),), spherical_step)
        toward = origin.new_full((index.numel(),), source_step)
        kept = origin.new_zeros(index.numel())
        step_number = 0
        # 3. walk along the boundary towards the input
        while index.numel():
            delta = origin - adv
            distance = _flat_norm(delta)
            direction = delta / distance.clamp_min(1e-12)
            noise = stateless_normal(
                sample_keys, 1_000_000 + step_number, shape, dtype=origin.dtype
            )
            along = (noise * direction).flatten(1).sum(1).view(view)
            noise = noise - along * direction
            noise = noise * (spherical.view(view) * distance / _flat_norm(noise).clamp_min(1e-12))
            # a random step on the sphere of the current distance, then towards the input
            offset = adv + noise - origin
            offset = offset * (distance / _flat_norm(offset).clamp_min(1e-12))
            candidate = (origin + offset * (1 - toward.view(view))).clamp(0.0, 1.0)
            accepted = _is_adversarial(classifier, candidate, target)
            spent = spent + 1
            step_number += 1
            adv = torch.where(accepted.view(view), candidate, adv)
            kept = kept + accepted.to(kept.dtype)
            if step_number % adapt_every == 0:
                rate = kept / adapt_every
                grow = torch.full_like(rate, step_adaptation)
                factor = torch.where(
                    rate > 0.5, grow, torch.where(rate < 0.2, 1 / grow, torch.ones_like(rate))
                )
                spherical, toward = spherical * factor, (toward * factor).clamp(max=0.5)
                kept = torch.zeros_like(kept)
            close = _mse(adv, origin) < mse_target
            finished = close | (spent >= limit)
            if bool(finished.any()):
                costs[index[close]] = spent[close]
                keep = ~finished
                index, adv, origin, target, sample_keys, spherical, toward, kept, spent = (
                    v[keep]
                    for v in (
                        index,
                        adv,
                        origin,
                        target,
                        sample_keys,
                        spherical,
                        toward,
                        kept,
                        spent,
                    )
                )
    return costs
