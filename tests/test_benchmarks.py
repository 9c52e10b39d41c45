"""``benchmarks/``: standalone scripts importing only guardnet, and a README for every result."""

from __future__ import annotations

import ast
import re
import runpy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
SCRIPTS = sorted(BENCHMARKS.glob("*.py"))
RESULTS = sorted(p.name for p in (BENCHMARKS / "results").iterdir())
README = (BENCHMARKS / "README.md").read_text()
# What a benchmark may import besides the standard library and guardnet.
THIRD_PARTY = {"torch", "torchvision", "safetensors", "numpy", "tqdm"}


def test_scripts_folder_is_gone() -> None:
    assert not (ROOT / "scripts").exists()


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_benchmark_imports_only_guardnet(script: Path) -> None:
    tree = ast.parse(script.read_text())
    modules = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
        for alias in node.names
    } | {
        node.module.split(".")[0] for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
    }  # fmt: skip
    foreign = sorted(
        m for m in modules - sys.stdlib_module_names - {"guardnet"} if m not in THIRD_PARTY
    )
    assert not foreign, f"{script.name} imports {foreign}"
    assert "sys.path" not in script.read_text()


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_benchmark_has_help(script: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(sys, "argv", [str(script), "--help"])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(script), run_name="__main__")
    assert stop.value.code == 0
    assert "usage:" in capsys.readouterr().out


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_benchmark_is_documented(script: Path) -> None:
    assert f"benchmarks/{script.name}" in README, f"benchmarks/README.md never runs {script.name}"


@pytest.mark.parametrize("result", RESULTS)
def test_every_result_has_its_command_in_the_readme(result: Path) -> None:
    rows = [line for line in README.splitlines() if f"`results/{result}" in line]
    assert rows, f"benchmarks/README.md does not list results/{result}"
    assert any(re.search(r"`(bash run.sh )?(guardnet|python) ", row) for row in rows), (
        f"benchmarks/README.md lists results/{result} without the command that writes it"
    )


def test_readme_names_only_existing_results() -> None:
    named = set(re.findall(r"results/([\w.-]+?)(?:/|`|\)|\s)", README))
    missing = sorted(n for n in named if not (BENCHMARKS / "results" / n).exists())
    assert not missing, f"benchmarks/README.md names results that do not exist: {missing}"
