"""Shared pytest-benchmark helpers: ratios measured in one run, printed at the end of the session.

Use the session fixture `ratio_report` in any bench file:

    def test_x(benchmark, ratio_report):
        benchmark(fn)
        ratio_report.add("orthonormalize (32,4,32)", "cpp", benchmark)              # a contender
        ratio_report.add("orthonormalize (32,4,32)", "reference", benchmark, baseline=True)

At session end each group is printed with every entry's median time and its speedup against the
group's baseline (baseline median / median: > 1 means faster than the baseline), plus any pair
ratios registered with `ratio_report.compare(numerator, denominator)` (by entry name).
"""
from __future__ import annotations

import pytest


class RatioReport:
    def __init__(self):
        self.medians: dict[str, dict[str, float]] = {}
        self.baselines: dict[str, str] = {}
        self.pairs: list[tuple[str, str]] = []

    def add(self, group: str, name: str, benchmark, baseline: bool = False) -> None:
        stats = getattr(benchmark, "stats", None)
        if stats is None:  # --benchmark-disable
            return
        self.medians.setdefault(group, {})[name] = stats.stats.median
        if baseline:
            self.baselines[group] = name

    def compare(self, numerator: str, denominator: str) -> None:
        """Also print median(numerator) / median(denominator) in every group holding both."""
        if (numerator, denominator) not in self.pairs:
            self.pairs.append((numerator, denominator))

    def lines(self) -> list[str]:
        if not self.medians:
            return []
        names = sorted({name for group in self.medians.values() for name in group})
        g = max(len("group"), *(len(group) for group in self.medians)) + 2  # column widths
        w = max(14, *(len(name) + 5 for name in names))
        p = max(16, *(len(a) + len(b) + 3 for a, b in self.pairs)) if self.pairs else 16
        header = f"{'group':<{g}}" + "".join(f"{name + ' ms':>{w}}" for name in names)
        header += "".join(f"{name + ' x':>{w}}" for name in names)
        header += "".join(f"{a + '/' + b:>{p}}" for a, b in self.pairs)
        out = [header, "-" * len(header)]
        for group, medians in self.medians.items():
            base = medians.get(self.baselines.get(group, ""))
            row = f"{group:<{g}}"
            row += "".join(f"{medians[n] * 1e3:>{w}.3f}" if n in medians else f"{'':>{w}}" for n in names)
            row += "".join(f"{base / medians[n]:>{w}.2f}" if n in medians and base else f"{'':>{w}}" for n in names)
            row += "".join(f"{medians[a] / medians[b]:>{p}.2f}" if a in medians and b in medians else f"{'':>{p}}"
                           for a, b in self.pairs)
            out.append(row)
        out.append("x = speedup against the group's baseline (baseline median / median), one run.")
        return out


_REPORT = RatioReport()


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", help="device for the bench suites: cpu or cuda")


@pytest.fixture(scope="session")
def ratio_report() -> RatioReport:
    return _REPORT


def pytest_terminal_summary(terminalreporter):
    lines = _REPORT.lines()
    if lines:
        terminalreporter.section("ratios measured in this run")
        for line in lines:
            terminalreporter.write_line(line)
