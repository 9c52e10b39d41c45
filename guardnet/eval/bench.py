"""The cost of protection, measured: FLOPs, latency and memory of a guard against its classifier.

:func:`bench_guard` times the bare classifier (``guard.classify``) and the whole guard
(``guard(x)`` under ``torch.inference_mode``) in the same run, for several batch sizes, and adds
FLOP counts and hardware/version metadata; :func:`render_markdown` turns the result into a table.
``guardnet bench`` is a thin command-line wrapper.

Example:
    >>> from guardnet.eval.bench import count_flops
    >>> count_flops(torch.nn.Linear(4, 3), torch.zeros(2, 4))["total"]
    48
"""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from guardnet.guard import GuardedModel
from guardnet.layers.base import LayerInput, LayerKind
from guardnet.layers.saec import SAECLayer

__all__ = [
    "bench_guard",
    "count_flops",
    "hardware_metadata",
    "measure_latency",
    "peak_memory",
    "render_markdown",
    "saec_elementwise_ops",
]

_FLOP_NOTE = (
    "FLOPs from torch.utils.flop_counter.FlopCounterMode: 2 x multiply-accumulates of matmul and "
    "convolution ops only; elementwise ops, reductions, sort, histogram/bincount/scatter and "
    "comparisons count as zero."
)


def _module_depth(name: str) -> int:
    return name.count(".")


def count_flops(
    module_or_fn: nn.Module | Callable[[Tensor], Any],
    example_input: Tensor,
    *,
    max_depth: int = 2,
) -> dict[str, Any]:
    """FLOPs of one call, with ``FlopCounterMode`` (no gradients).

    FlopCounterMode reports FLOPs = 2 x MACs of matmul and convolution ops; everything else
    (elementwise, reductions, sort, histogram/bincount/scatter) counts as zero, which the
    ``notes`` field says.

    Args:
        module_or_fn: a module or a callable taking one tensor.
        example_input: the input it is called with (its batch size is counted in).
        max_depth: keep per-module totals for module names with at most this many dots.

    Returns:
        ``{"total": int, "per_module": {name: int}, "notes": [str]}``; module names are those
        FlopCounterMode gives (``"Global"`` is the total).
    """
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        module_or_fn(example_input)
    per_module = {
        name: int(sum(ops.values()))
        for name, ops in counter.get_flop_counts().items()
        if name != "Global" and _module_depth(name) <= max_depth
    }
    return {
        "total": int(counter.get_total_flops()),
        "per_module": per_module,
        "notes": [_FLOP_NOTE],
    }


class _DispatchFlopCounter(TorchDispatchMode):
    """Sums the FLOPs of ``torch.utils.flop_counter``'s formulas over every op dispatched,
    without FlopCounterMode's module hooks (which refuse ``torch.autograd.grad``)."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += int(formula(*args, **kwargs, out_val=out))
        return out


def count_flops_with_autograd(fn: Callable[[Tensor], Any], example_input: Tensor) -> int:
    """FLOPs of one call that runs backward passes itself (A2D's attacks), backward included.

    The same formulas as :func:`count_flops` (2 x MACs of matmuls and convolutions, their
    backward passes included), counted at the dispatcher.
    """
    counter = _DispatchFlopCounter()
    with counter:
        fn(example_input)
    return counter.total


def saec_elementwise_ops(layer: SAECLayer, input_shape: Sequence[int]) -> int:
    """Analytic estimate of SAEC's per-image work that FlopCounterMode counts as zero.

    For a (C, H, W) image, K kernels of size k x k (largest) and ``valid`` filtering
    (H' = H - k + 1, W' = W - k + 1; ``reflect``: H' = H, W' = W), counting one op per
    elementwise arithmetic operation or comparison::

        ops = 6 * C * H * W      (pseudo-saturation: channel mean, deviation, |.|^p, sum, root;
                                  0 when C == 1, where the intensity image is used as is)
            + 5 * K * H' * W'    (histogram: shift, scale, floor, range check, count)
            + 3 * K * bins       (histogram normalisation and variance)

    The high-pass convolution itself is a conv op that FlopCounterMode does count. This is an
    order-of-magnitude estimate, not a measurement.

    Args:
        layer: the SAEC layer.
        input_shape: (C, H, W) of one image.

    Returns:
        The estimated operations per image.
    """
    channels, height, width = (int(s) for s in input_shape)
    n_kernels = len(layer.kernels)
    size = int(layer.highpass.weight.shape[-1])  # the bank is padded to its largest kernel
    out_h, out_w = (
        (height, width) if layer.padding == "reflect" else (height - size + 1, width - size + 1)
    )
    saturation = 0 if channels == 1 else 6 * channels * height * width
    return saturation + 5 * n_kernels * out_h * out_w + 3 * n_kernels * layer.bins


def measure_latency(
    fn: Callable[[Tensor], Any],
    example_input: Tensor,
    *,
    min_run_time: float = 0.5,
    warmup: int = 2,
) -> dict[str, float]:
    """Wall-clock latency of ``fn(example_input)`` with ``torch.utils.benchmark.Timer``.

    The timer runs with ``torch.get_num_threads()`` threads (its own default is one), after
    ``warmup`` untimed calls, and uses ``blocked_autorange`` (CUDA is synchronised by the timer).

    Args:
        fn: the callable to time.
        example_input: its input; dimension 0 is the batch.
        min_run_time: seconds of timed runs at least.
        warmup: untimed calls first.

    Returns:
        ``median_s`` and ``iqr_s`` (per call, from the Measurement), ``mean_s``,
        ``images_per_s`` (batch / median) and ``runs`` (timed blocks of
        ``blocked_autorange``; each block runs the statement one or more times).
    """
    # Imported here: torch.utils.benchmark imports torch.utils.cpp_extension, which logs a CUDA
    # warning on CPU machines; importing guardnet.eval for its metrics does not need it.
    from torch.utils.benchmark import Timer

    for _ in range(warmup):
        fn(example_input)
    timer = Timer(
        stmt="fn(x)",
        globals={"fn": fn, "x": example_input},
        num_threads=torch.get_num_threads(),
    )
    measurement = timer.blocked_autorange(min_run_time=min_run_time)
    median = float(measurement.median)
    return {
        "median_s": median,
        "iqr_s": float(measurement.iqr),
        "mean_s": float(measurement.mean),
        "images_per_s": example_input.shape[0] / median,
        "runs": len(measurement.times),
    }


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence the C++ profiler's start/stop lines on file descriptor 2."""
    try:
        saved = os.dup(2)
    except OSError:  # pragma: no cover - no fd 2
        yield
        return
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def peak_memory(fn: Callable[[Tensor], Any], example_input: Tensor) -> int:
    """Peak memory of the tensors one call allocates, in bytes.

    On CUDA: ``torch.cuda.max_memory_allocated`` during the call minus the memory allocated
    before it. On CPU: the running sum of allocations and frees that ``torch.profiler`` records
    (``profile_memory=True``, events in time order), at its maximum. Both count tensor memory
    (not the allocator's cache, not Python objects); the input is not counted, the output is.

    Args:
        fn: the callable.
        example_input: its input.

    Returns:
        Bytes.
    """
    if example_input.device.type == "cuda":
        device = example_input.device
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn(example_input)
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - before)
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn(example_input)
    current = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        current += event.self_cpu_memory_usage
        peak = max(peak, current)
    return int(peak)


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def hardware_metadata(device: torch.device | str) -> dict[str, Any]:
    """Versions and hardware: torch, Python, CPU model, core and thread counts, device name."""
    from guardnet import __version__

    device = torch.device(device)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_model()
    return {
        "guardnet": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "device": str(device),
        "device_name": name,
    }


def bench_guard(
    guard: GuardedModel,
    *,
    input_shape: Sequence[int],
    batch_sizes: Sequence[int] = (1, 16, 64, 256),
    min_run_time: float = 0.5,
    device: torch.device | str = "cpu",
    seed: int = 0,
    images: Tensor | None = None,
) -> dict[str, Any]:
    """Cost of a calibrated guard against its bare classifier: latency, throughput, FLOPs.

    For each batch size, the bare classifier (``guard.classify``, normalisation included) and the
    whole guard (``guard(x)``: input checks, layers, classifier, thresholds) are timed in the same
    run on uniform random images in [0, 1] (content does not change the cost of SAEC or of the
    classifier). FLOPs per image do not depend on the batch size and are counted once, on one
    image.

    Args:
        guard: a calibrated guard (every rejecting layer has a threshold).
        input_shape: (C, H, W) of one image.
        batch_sizes: batch sizes to time.
        min_run_time: seconds of timed runs per measurement at least.
        device: where to run; the guard is moved there.
        seed: seed of the random images.
        images: real images to time on instead of random ones (repeated to fill a batch): a
            ``probe`` layer's cost (A2D's attack steps) depends on the content. FLOPs are then
            counted on the first image.

    Returns:
        ``{"metadata": {...}, "flops_per_image": {"classifier", "layers": {name: ...}, "guard",
        "notes"}, "batches": [{"batch_size", "classifier": latency, "guard": latency,
        "ratio", "overhead_ms_per_image", "peak_memory_bytes": {"classifier", "guard"}}]}``,
        latency dicts as in :func:`measure_latency`. JSON-serialisable.
    """
    device = torch.device(device)
    guard = guard.to(device).eval()
    shape = tuple(int(s) for s in input_shape)
    generator = torch.Generator().manual_seed(seed)

    def classify(x: Tensor) -> Tensor:
        with torch.inference_mode():
            return guard.classify(x)

    def run_guard(x: Tensor) -> Any:
        with torch.inference_mode():
            return guard(x)

    def batch_of(size: int) -> Tensor:
        if images is None:
            return torch.rand((size, *shape), generator=generator).to(device)
        repeats = -(-size // len(images))
        return images.repeat(repeats, 1, 1, 1)[:size].to(device)

    one = batch_of(1)
    # FlopCounterMode hooks modules for autograd: count under no_grad, not inference_mode (in
    # which parametrized weights, e.g. spectral norm, come out as inference tensors it rejects).
    classifier_flops = count_flops(guard.classify, one)
    if any(layer.kind is LayerKind.PROBE for layer in guard.layers.values()):
        guard_flops = {
            "total": count_flops_with_autograd(guard, one),
            "per_module": {},
            "notes": [_FLOP_NOTE],
        }
    else:
        guard_flops = count_flops(guard, one)
    layers: dict[str, Any] = {}
    notes = list(guard_flops["notes"])
    with torch.no_grad():
        logits = guard.classify(one)
    after_classifier = LayerInput(
        images=one, logits=logits, labels=logits.argmax(dim=1), classifier=guard.classify
    )
    for name, layer in guard.layers.items():
        inputs = LayerInput(images=one) if layer.kind is LayerKind.PRE else after_classifier
        if layer.kind is LayerKind.PROBE:
            total = count_flops_with_autograd(
                lambda x, layer=layer, inputs=inputs: layer(inputs), one
            )
            notes.append(
                f"{name}: a probe; its count includes the backward passes of its attacks "
                "(guardnet.eval.bench.count_flops_with_autograd) and depends on the image"
            )
            counted = {"total": total}
        else:
            counted = count_flops(lambda x, layer=layer, inputs=inputs: layer(inputs), one)
        entry: dict[str, Any] = {"counted": counted["total"]}
        if isinstance(layer, SAECLayer):
            entry["elementwise_estimate"] = saec_elementwise_ops(layer, shape)
            notes.append(
                f"{name}: 'counted' is its high-pass convolution only; 'elementwise_estimate' is "
                "the analytic count of its elementwise/histogram work "
                "(guardnet.eval.bench.saec_elementwise_ops)."
            )
        layers[name] = entry

    batches = []
    for batch_size in batch_sizes:
        x = batch_of(int(batch_size))
        bare = measure_latency(classify, x, min_run_time=min_run_time)
        whole = measure_latency(run_guard, x, min_run_time=min_run_time)
        batches.append(
            {
                "batch_size": int(batch_size),
                "classifier": bare,
                "guard": whole,
                "ratio": whole["median_s"] / bare["median_s"],
                "overhead_ms_per_image": 1e3 * (whole["median_s"] - bare["median_s"]) / batch_size,
                "peak_memory_bytes": {
                    "classifier": peak_memory(classify, x),
                    "guard": peak_memory(run_guard, x),
                },
            }
        )
    notes.append(
        "peak memory: tensors allocated by one call at their peak (CUDA allocator statistics; "
        "on CPU the torch.profiler allocation events); the guard splits batches larger than "
        f"its max_batch_size ({guard.max_batch_size}) into chunks, so its peak stops growing "
        "there."
    )
    if images is not None:
        notes.append(
            f"timed on {len(images)} real images repeated to fill each batch (a probe layer's "
            "cost depends on the content); FLOPs counted on the first, backward passes included"
        )
    return {
        "metadata": hardware_metadata(device),
        "input_shape": list(shape),
        "min_run_time_s": float(min_run_time),
        "flops_per_image": {
            "classifier": classifier_flops["total"],
            "layers": layers,
            "guard": guard_flops["total"],
            "notes": notes,
        },
        "batches": batches,
    }


def _si(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.3g}"


def _megabytes(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:.1f}"


def render_markdown(results: dict[str, Any] | Sequence[dict[str, Any]]) -> str:
    """Markdown tables of :func:`bench_guard` results (one or several, e.g. one per model).

    Args:
        results: a :func:`bench_guard` result, or a sequence of them; a ``"model"`` key, when
            present, titles each table.

    Returns:
        The markdown text: a FLOPs line and a latency table per result (medians; the IQR is 0
        when a measurement has a single timed block, as for slow large batches).
    """
    runs = [results] if isinstance(results, dict) else list(results)
    parts = []
    for result in runs:
        title = result.get("model", "guard")
        flops = result["flops_per_image"]
        layer_text = ", ".join(
            f"{name} {_si(entry['counted'])}"
            + (
                f" (+ ~{_si(entry['elementwise_estimate'])} elementwise, estimated)"
                if "elementwise_estimate" in entry
                else ""
            )
            for name, entry in flops["layers"].items()
        )
        parts.append(f"### {title}\n")
        parts.append(
            f"Input {tuple(result['input_shape'])}; FLOPs per image (FlopCounterMode, 2 x MACs): "
            f"classifier {_si(flops['classifier'])}, {layer_text}, whole guard "
            f"{_si(flops['guard'])}.\n"
        )
        parts.append(
            "| batch | classifier ms (IQR, blocks) | guard ms (IQR, blocks) | classifier img/s "
            "| guard img/s "
            "| guard / classifier | overhead ms/img | peak MB classifier / guard |"
        )
        parts.append("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for row in result["batches"]:
            bare, whole = row["classifier"], row["guard"]
            memory = row["peak_memory_bytes"]
            parts.append(
                f"| {row['batch_size']} "
                f"| {1e3 * bare['median_s']:.3f} ({1e3 * bare['iqr_s']:.3f}, {bare['runs']}) "
                f"| {1e3 * whole['median_s']:.3f} ({1e3 * whole['iqr_s']:.3f}, {whole['runs']}) "
                f"| {bare['images_per_s']:.0f} | {whole['images_per_s']:.0f} "
                f"| {row['ratio']:.2f}x | {row['overhead_ms_per_image']:.4f} "
                f"| {_megabytes(memory['classifier'])} / {_megabytes(memory['guard'])} |"
            )
        parts.append("")
    return "\n".join(parts)
