"""The suite's own options: tests marked ``slow`` run only with ``--run-slow``."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

CONFTEST = Path(__file__).with_name("conftest.py")


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makeini("[pytest]\nmarkers = slow: long-running tests\naddopts = -ra\n")
    pytester.makepyfile(
        test_inner="""
        import pytest

        def test_fast():
            pass

        @pytest.mark.slow
        def test_long():
            pass

        @pytest.mark.slow
        class TestLong:
            def test_in_class(self):
                pass
        """
    )
    return pytester


def test_slow_tests_are_skipped_with_a_reason_by_default(suite: pytest.Pytester) -> None:
    result = suite.runpytest_inprocess()
    result.assert_outcomes(passed=1, skipped=2)
    skipped = [line for line in result.outlines if line.startswith("SKIPPED")]
    assert len(skipped) == 2 and all(line.endswith("slow: run with --run-slow") for line in skipped)


def test_run_slow_runs_them(suite: pytest.Pytester) -> None:
    suite.runpytest_inprocess("--run-slow").assert_outcomes(passed=3)
