"""Shared pytest configuration: the ``slow`` marker runs only with ``--run-slow``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def flush_denormals() -> Iterator[None]:
    """Flush denormal floats for the test, then restore the default.

    Untrained MobileNetV2 activations shrink towards denormal floats, which are very slow on the
    CPU; other tests (histogram range checks) rely on denormals, hence the restore.
    """
    torch.set_flush_denormal(True)
    yield
    torch.set_flush_denormal(False)
