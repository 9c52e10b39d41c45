"""Installing guardnet never downgrades a user's packages: its requirements set lower bounds only
(no torchattacks, whose pin of ``requests~=2.25.1`` did), and, marked slow because it asks the
package index, pip resolves ``guardnet[eval]`` beside a current ``requests`` without lowering
any installed version."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def requirement_groups() -> dict[str, list[Requirement]]:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    groups = {"dependencies": project["dependencies"], **project["optional-dependencies"]}
    return {name: [Requirement(r) for r in reqs] for name, reqs in groups.items()}


def test_requirements_set_lower_bounds_only() -> None:
    groups = requirement_groups()
    assert "eval" in groups
    for group, requirements in groups.items():
        for requirement in requirements:
            assert canonicalize_name(requirement.name) != "torchattacks", group
            for spec in requirement.specifier:
                assert spec.operator in (">=", ">", "!="), (
                    f"{group}: {requirement} caps or pins a version; a user's newer "
                    "installed version would be downgraded"
                )


def test_eval_extra_holds_what_the_attacks_and_plots_import() -> None:
    names = {canonicalize_name(r.name) for r in requirement_groups()["eval"]}
    assert {"foolbox", "matplotlib"} <= names


@pytest.mark.slow
def test_pip_resolves_the_eval_extra_without_downgrades(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    command = [
        sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", str(report),
        f"{ROOT}[eval]", "requests>=2.32",
    ]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    if run.returncode and "ResolutionImpossible" not in run.stderr:
        pytest.skip(f"pip could not resolve from an index: {run.stderr[-400:]}")
    assert run.returncode == 0, run.stderr
    planned = {
        canonicalize_name(item["metadata"]["name"]): Version(item["metadata"]["version"])
        for item in json.loads(report.read_text())["install"]
    }
    assert "torchattacks" not in planned
    assert planned.get("requests", Version("2.32")) >= Version("2.32")
    for name, version in planned.items():
        if name == "guardnet":
            continue
        try:
            installed = Version(importlib.metadata.version(name))
        except importlib.metadata.PackageNotFoundError:
            continue
        assert version >= installed, f"guardnet[eval] downgrades {name} {installed} to {version}"
