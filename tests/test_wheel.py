"""The wheel: small, no weights but the data fixtures; installed, it finds weights in a mirror
or a pre-filled Hugging Face cache, and otherwise says how to work offline.

The wheel is built offline from a copy of the repository (setuptools without build isolation), and
"installed" by unpacking it (a pure-Python wheel) into a folder put on ``PYTHONPATH`` of a child
Python started outside the repository.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from weights_helpers import hub_cache

REPO = Path(__file__).resolve().parents[1]
MAX_WHEEL_BYTES = 5_000_000
FIXTURES = "guardnet/assets/fixtures/"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("source") / "guardnet"
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "runs"
        ),
    )
    out = tmp_path_factory.mktemp("dist")
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    command += ["--no-index", "--quiet", "-w", str(out), str(source)]
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=300)
    (built,) = out.glob("guardnet-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    site = tmp_path_factory.mktemp("site-packages")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    return site


def test_wheel_is_small_and_holds_no_weights_but_the_fixtures(wheel: Path) -> None:
    assert wheel.stat().st_size < MAX_WHEEL_BYTES, f"{wheel.name}: {wheel.stat().st_size:,} bytes"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    weights = [n for n in names if n.endswith(".safetensors")]
    assert weights and all(n.startswith(FIXTURES) for n in weights), weights
    assert not [n for n in names if n.startswith("hub/") or "/assets/weights/" in n]
    assert "guardnet/weights/resolve.py" in names


LOAD = """
import os
from pathlib import Path
import guardnet
assert Path(guardnet.__file__).is_relative_to(Path({site!r})), guardnet.__file__
for case, kwargs in (("offline", {{}}), ("cache", {{"cache_dir": {cache!r}}}), ("mirror", {{}})):
    if case == "mirror":
        os.environ["GUARDNET_HUB_MIRROR"] = {mirror!r}
    try:
        model = guardnet.from_pretrained("mnist-cnn", **kwargs)
        print(case, "loaded", type(model).__name__, model.pretrained_config["dataset"])
    except guardnet.WeightsError as error:
        print(case, "error", error)
"""


def test_installed_wheel_loads_from_mirror_or_prefilled_cache_else_says_how(
    installed: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "prefilled"
    hub_cache(cache, "guardnet/mnist-cnn", {"b" * 40: REPO / "hub" / "mnist-cnn"}, main="b" * 40)
    code = LOAD.format(site=str(installed), cache=str(cache), mirror=str(REPO / "hub"))
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,  # outside the repository: the wheel's guardnet, no clone mirror
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith(("GUARDNET_", "HF_"))},
            "PYTHONPATH": str(installed),
            "HF_HUB_OFFLINE": "1",
            "HF_HUB_CACHE": str(tmp_path / "empty-cache"),
        },
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    offline, prefilled, mirrored = result.stdout.strip().splitlines()
    # Neither a mirror nor a cached copy: the error names the repo and the offline switches.
    assert offline.startswith("offline error") and "'guardnet/mnist-cnn'" in offline
    assert "HF_HUB_OFFLINE=1" in offline and "GUARDNET_HUB_MIRROR" in offline
    assert prefilled == "cache loaded MnistCNN mnist"
    assert mirrored == "mirror loaded MnistCNN mnist"


@pytest.mark.slow
def test_installed_wheel_runs_the_demo_from_a_mirror(installed: Path, tmp_path: Path) -> None:
    code = "import sys; from guardnet.cli import main; sys.exit(main(sys.argv[1:]))"
    result = subprocess.run(
        [sys.executable, "-c", code, "demo", "--limit", "8", "--grid", str(tmp_path / "g.png")],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(installed), "GUARDNET_HUB_MIRROR": str(REPO / "hub")},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert "calibration (joint) on 500 clean images" in result.stdout
    assert (tmp_path / "g.png").is_file()
