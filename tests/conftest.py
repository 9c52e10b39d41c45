"""Shared pytest configuration: the ``slow`` marker runs only with ``--run-slow``; hypothesis
profiles; fixtures used by several test files."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest
import torch
from hypothesis import HealthCheck, settings

# Property-based tests (test_properties.py): by default a few examples, the same on every run;
# HYPOTHESIS_PROFILE=thorough (or --hypothesis-profile=thorough) draws many fresh ones (minutes).
_PROPERTY_CHECKS = dict(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile("guardnet", max_examples=25, derandomize=True, **_PROPERTY_CHECKS)
settings.register_profile("thorough", max_examples=500, **_PROPERTY_CHECKS)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "guardnet"))


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


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Offline mode as huggingface_hub sees it, and a record of (failed) socket use."""
    import huggingface_hub.constants

    attempts: list[str] = []

    def refuse(*args: object, **kwargs: object) -> None:
        attempts.append(repr(args[:2]))
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads HF_HUB_OFFLINE once, at import: set the flag it actually consults.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert huggingface_hub.constants.is_offline_mode()
    yield attempts
    assert attempts == [], f"the Hub path tried the network: {attempts}"
