"""The command line: the offline demo runs on shipped data and reports what the guard did."""

from __future__ import annotations

import re

import pytest

from guardnet import __version__
from guardnet.cli import main
from guardnet.demo import load_demo_classifier


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
