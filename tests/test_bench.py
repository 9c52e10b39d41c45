"""``guardnet bench``: FLOP counts match analytic counts; the harness returns documented keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from guardnet.cli import main
from guardnet.eval.bench import bench_guard, count_flops, render_markdown, saec_elementwise_ops
from guardnet.guard import GuardedModel
from guardnet.layers import SAECLayer
from tests.helpers import TinyClassifier


def test_count_flops_linear_is_two_macs() -> None:
    batch, fan_in, fan_out = 5, 7, 3
    result = count_flops(nn.Linear(fan_in, fan_out), torch.zeros(batch, fan_in))
    assert result["total"] == 2 * fan_in * fan_out * batch
    assert result["notes"]


def test_count_flops_conv_matches_analytic_count() -> None:
    batch, c_in, c_out, k, size = 2, 3, 4, 3, 10
    conv = nn.Conv2d(c_in, c_out, k)  # valid: output (size - k + 1)^2
    out = size - k + 1
    result = count_flops(conv, torch.zeros(batch, c_in, size, size))
    assert result["total"] == 2 * batch * c_out * out * out * c_in * k * k


def test_saec_elementwise_estimate_follows_its_formula() -> None:
    layer = SAECLayer()
    k = int(layer.highpass.weight.shape[-1])
    n = len(layer.kernels)
    side = 32 - k + 1
    assert saec_elementwise_ops(layer, (3, 32, 32)) == (
        6 * 3 * 32 * 32 + 5 * n * side * side + 3 * n * layer.bins
    )
    assert saec_elementwise_ops(layer, (1, 32, 32)) == 5 * n * side * side + 3 * n * layer.bins


def _tiny_guard() -> GuardedModel:
    torch.manual_seed(0)
    saec = SAECLayer()
    saec.set_threshold(1e-4)
    return GuardedModel(TinyClassifier(), [saec], mean=[0.5] * 3, std=[0.25] * 3)


def test_bench_guard_returns_documented_keys() -> None:
    result = bench_guard(
        _tiny_guard(), input_shape=(3, 16, 16), batch_sizes=(1, 3), min_run_time=0.01
    )
    json.dumps(result)  # JSON-serialisable
    assert result["metadata"]["threads"] == torch.get_num_threads()
    assert {"torch", "cpu_model", "device", "device_name"} <= set(result["metadata"])
    flops = result["flops_per_image"]
    assert flops["classifier"] > 0 and flops["guard"] >= flops["classifier"]
    assert flops["layers"]["saec"]["counted"] > 0
    assert flops["layers"]["saec"]["elementwise_estimate"] > 0
    assert [row["batch_size"] for row in result["batches"]] == [1, 3]
    for row in result["batches"]:
        for part in ("classifier", "guard"):
            assert row[part]["median_s"] > 0 and row[part]["images_per_s"] > 0
            assert row[part]["iqr_s"] >= 0
        assert row["ratio"] > 0
        memory = row["peak_memory_bytes"]
        assert memory["classifier"] > 0 and memory["guard"] >= memory["classifier"]
    text = render_markdown(result)
    assert "| 1 |" in text and "| 3 |" in text


def test_cli_bench_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    md = tmp_path / "bench.md"
    argv = ["bench", "--model", "mnist-cnn", "--batch-sizes", "1", "4", "--min-run-time", "0.05"]
    threads = torch.get_num_threads()
    assert main([*argv, "--threads", "1", "--json", str(out), "--markdown", str(md)]) == 0
    assert torch.get_num_threads() == threads  # restored after the run
    results = json.loads(out.read_text())
    assert results[0]["metadata"]["threads"] == 1
    assert [r["model"] for r in results] == ["mnist-cnn"]
    assert [row["batch_size"] for row in results[0]["batches"]] == [1, 4]
    assert "mnist-cnn" in md.read_text()


def test_peak_memory_matches_the_tensors_a_call_allocates() -> None:
    from guardnet.eval.bench import peak_memory

    conv = nn.Conv2d(3, 16, 3, padding=1).eval()
    for batch in (2, 8):
        x = torch.rand(batch, 3, 16, 16)
        with torch.inference_mode():
            peak = peak_memory(conv, x)
        assert peak >= 4 * batch * 16 * 16 * 16  # the output, float32
        assert peak < 4 * 4 * batch * 16 * 16 * 16  # and not much more


def test_guard_memory_is_bounded_by_chunking() -> None:
    from guardnet.eval.bench import peak_memory

    guard = _tiny_guard()
    guard.max_batch_size = 16
    with torch.inference_mode():
        small = peak_memory(guard, torch.rand(16, 3, 16, 16))
        large = peak_memory(guard, torch.rand(128, 3, 16, 16))
    # 8x the images: the per-chunk work is the same, only the gathered outputs grow.
    assert large < 3 * small


@pytest.mark.slow  # times and counts the authors' full-size ContraNet
def test_cli_bench_guard_recipe_with_the_authors_architecture(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    argv = ["bench", "--guard", "mnist-contranet", "--compare-authors", "--batch-sizes", "2"]
    assert main([*argv, "--min-run-time", "0.01", "--threads", "1", "--json", str(out)]) == 0
    ours, authors = json.loads(out.read_text())
    assert ours["model"] == "mnist-contranet" and "authors'" in authors["model"]
    # Same classifier, a much larger ContraNet: the FLOP counts say so.
    assert ours["flops_per_image"]["classifier"] == authors["flops_per_image"]["classifier"]
    theirs = authors["flops_per_image"]["layers"]["contranet"]["counted"]
    assert theirs > 10 * ours["flops_per_image"]["layers"]["contranet"]["counted"]
    assert ours["batches"][0]["peak_memory_bytes"]["guard"] > 0
