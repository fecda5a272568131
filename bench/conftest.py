"""Shared pytest-benchmark options and the session ratio table (bench/ratios.py).

The session fixture `ratio_report` is a RatioTable; what the bench files add to it is printed at
the end of the session as speedups against each group's baseline (see ratios.py for usage).
"""

from __future__ import annotations

import pytest

from ratios import RatioTable

_REPORT = RatioTable("session")


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", help="device for the bench suites: cpu or cuda")


@pytest.fixture(scope="session")
def ratio_report() -> RatioTable:
    return _REPORT


def pytest_terminal_summary(terminalreporter):
    lines = _REPORT.speedup_lines()
    if lines:
        terminalreporter.section("ratios measured in this run")
        for line in lines:
            terminalreporter.write_line(line)
