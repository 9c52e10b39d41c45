"""The command line: it starts without torch, and the offline demo runs on shipped data and
reports what the guard did; the package's public names load on first access."""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import guardnet
from guardnet import __version__
from guardnet.cli import build_parser, main
from guardnet.demo import load_demo_classifier

REPO = Path(guardnet.__file__).resolve().parents[1]


def _python(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run this tree's guardnet in a fresh interpreter (``python ARGS``)."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": path, **(env or {})},
        timeout=300,
    )


def _command_paths(
    parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
) -> list[tuple[str, ...]]:
    """Every subcommand of ``parser``, nested ones included, as argument tuples."""
    paths = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths.append((*prefix, name))
                paths.extend(_command_paths(sub, (*prefix, name)))
    return paths


COMMAND_PATHS = _command_paths(build_parser())


def test_command_paths_cover_the_subcommands() -> None:
    assert {"demo", "models", "train", "bench", "eval"} <= {p[0] for p in COMMAND_PATHS}
    assert ("train", "classifier") in COMMAND_PATHS and ("train", "contranet") in COMMAND_PATHS


# Run in a fresh interpreter: the version, the help and every subcommand's help, then the names
# of the modules they imported (those the interpreter's start-up imported left out).
_HELP_SCRIPT = """
import json, sys
before = set(sys.modules)
from guardnet.cli import main
assert main(["--version"]) == 0
for path in json.loads(sys.argv[1]):
    try:
        main([*path, "--help"])
    except SystemExit as exit:
        assert exit.code == 0, (path, exit.code)
    else:
        raise AssertionError(f"{path} --help did not exit")
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def test_version_and_help_import_only_the_standard_library() -> None:
    result = _python("-c", _HELP_SCRIPT, json.dumps([[], *COMMAND_PATHS]))
    assert result.returncode == 0, result.stderr
    modules = json.loads(result.stdout.splitlines()[-1])
    outside = {
        m.split(".")[0] for m in modules if m.split(".")[0] not in sys.stdlib_module_names
    } - {"guardnet"}
    assert outside == set(), f"--help imports {sorted(outside)}"
    assert "torch" not in modules and "guardnet.cli.eval" in modules
    assert f"guardnet {__version__}" in result.stdout
    # Every subcommand printed its own usage line.
    for path in COMMAND_PATHS:
        assert f"usage: guardnet {' '.join(path)} " in result.stdout, path


def test_version_starts_fast_without_torch() -> None:
    start = time.perf_counter()
    result = _python("-X", "importtime", "-m", "guardnet.cli", "--version")
    elapsed = time.perf_counter() - start
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"guardnet {__version__}"
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()}
    assert "guardnet.cli" in imported and "torch" not in imported
    assert "CUDA" not in result.stderr
    # Importing torch alone takes seconds; Python with the standard library, a fraction of one.
    assert elapsed < 1.5, f"guardnet --version took {elapsed:.2f} s"


def test_commands_print_no_cuda_home_warning(tmp_path: Path) -> None:
    # torch.utils.cpp_extension warns on import when CUDA_HOME names a folder but there is no
    # GPU; `guardnet bench` imports it through torch.utils.benchmark.
    env = {"CUDA_HOME": str(tmp_path), "OMP_NUM_THREADS": "1"}
    control = _python("-c", "import torch.utils.benchmark", env=env)
    if "No CUDA runtime is found" not in control.stderr:
        pytest.skip("torch does not warn here (a GPU is present, or torch changed)")
    args = ("bench", "--model", "mnist-cnn", "--batch-sizes", "1", "--min-run-time", "0.01")
    result = _python("-m", "guardnet.cli", *args, "--threads", "1", env=env)
    assert result.returncode == 0, result.stderr
    assert "| batch |" in result.stdout
    assert "CUDA" not in result.stderr, result.stderr


def test_package_names_resolve_lazily() -> None:
    script = (
        "import sys, guardnet; torch_early = 'torch' in sys.modules; "
        "error = guardnet.GuardnetError; torch_for_error = 'torch' in sys.modules; "
        "from guardnet import GuardedModel; "
        "print(torch_early, torch_for_error, 'torch' in sys.modules, GuardedModel.__module__)"
    )
    result = _python("-c", script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False", "True", "guardnet.guard"]


def test_every_public_name_resolves_and_is_listed() -> None:
    from guardnet.guard import GuardedModel

    assert guardnet.GuardedModel is GuardedModel
    for name in guardnet.__all__:
        value = getattr(guardnet, name)
        assert value is not None, name
        if name != "__version__":
            assert getattr(value, "__name__", name) == name
    assert set(guardnet.__all__) <= set(dir(guardnet))
    with pytest.raises(AttributeError, match="module 'guardnet' has no attribute 'GuardModel'"):
        _ = guardnet.GuardModel  # type: ignore[attr-defined]


def test_public_names_agree_in_all_three_places() -> None:
    # guardnet/__init__.py names every public name three times: the lazy table, the
    # TYPE_CHECKING imports (for type checkers) and __all__.
    tree = ast.parse((REPO / "guardnet" / "__init__.py").read_text())
    block = next(
        node
        for node in tree.body
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING"
    )
    imported = {
        node.module: tuple(alias.name for alias in node.names)
        for node in block.body
        if isinstance(node, ast.ImportFrom)
    }
    lazy = guardnet._EXPORTS
    assert {m: set(n) for m, n in imported.items()} == {m: set(n) for m, n in lazy.items()}
    names = [name for names in lazy.values() for name in names]
    assert len(names) == len(set(names)), "a name is exported by two modules"
    assert sorted(guardnet.__all__) == sorted([*names, "__version__"])


def test_eval_attack_names_match_the_attack_registries() -> None:
    from guardnet.cli.eval import ADAPTIVE_ATTACK_NAMES, STANDARD_ATTACK_NAMES
    from guardnet.eval.attacks import ADAPTIVE_ATTACKS, STANDARD_ATTACKS

    assert STANDARD_ATTACK_NAMES == tuple(sorted(STANDARD_ATTACKS))
    assert ADAPTIVE_ATTACK_NAMES == tuple(sorted(ADAPTIVE_ATTACKS))


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"guardnet {__version__}"


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 1
    assert "demo" in capsys.readouterr().out


def test_demo_classifier_is_accurate_on_the_fixture() -> None:
    import torch

    from guardnet.data import load_fixture

    model = load_demo_classifier()
    images, labels = load_fixture("mnist")
    with torch.no_grad():
        accuracy = float((model((images - 0.1307) / 0.3081).argmax(1) == labels).float().mean())
    assert accuracy > 0.97


def test_demo_runs_offline(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--limit", "64"]) == 0
    out = capsys.readouterr().out
    assert "calibration (joint) on 500 clean images" in out
    clean = re.search(r"^clean\s+64\s+([\d.]+)%\s+([\d.]+)%", out, re.MULTILINE)
    noisy = re.search(r"^uniform noise 0.3\s+64\s+([\d.]+)%\s+([\d.]+)%", out, re.MULTILINE)
    assert clean and noisy, out
    assert float(clean.group(1)) > 90  # accuracy on clean images
    assert float(noisy.group(2)) > 90  # noisy images rejected
    assert "ms/image" in out


@pytest.mark.slow  # a second full demo run: calibration, attacks and the report
def test_demo_runner_up_budget_reports_its_split(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--limit", "32", "--eps", "0.3", "--budget", "runner_up"]) == 0
    out = capsys.readouterr().out
    shares = re.search(r"budget shares: (.+)$", out, re.MULTILINE)
    assert shares, out
    # Every rejecting score gets a share; the shares are a split of the whole budget.
    values = [float(v.split()[-1]) for v in shares.group(1).split(",")]
    assert len(values) >= 4 and all(v >= 0 for v in values) and sum(values) > 0
    assert re.search(r"^clean\s+32\s", out, re.MULTILINE), out


def test_demo_rejects_an_unknown_budget() -> None:
    from guardnet.demo import run_demo

    with pytest.raises(ValueError, match="budget must be 'equal' or 'runner_up', got 'fair'"):
        run_demo(budget="fair", limit=8)
