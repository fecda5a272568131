"""One ratio table for the benchmarks: medians measured in one run, shown as ratios to a baseline.

Absolute times on shared machines are noise; ratios between cases measured back to back are
what the README quotes.  Every bench file uses `RatioTable`, in one of two ways:

- a module's own table, written to bench/results/<name>.md and .json (median / baseline):

      TABLE = RatioTable("topk")                                  # module level
      TABLE.add("iteration", "fwd+bwd", median_seconds, baseline=True)
      TABLE.note("...")
      TABLE.report()                        # in a module-scoped fixture's teardown

- the session table of the fixture `ratio_report` (bench/conftest.py), printed at the end of the
  session as speedups (baseline median / median: > 1 means faster than the baseline):

      def test_x(benchmark, ratio_report):
          benchmark(fn)
          ratio_report.add("orthonormalize (32,4,32)", "cpp", benchmark)            # a contender
          ratio_report.add("orthonormalize (32,4,32)", "reference", benchmark, baseline=True)
          ratio_report.compare("triton", "cuda")    # also median(triton) / median(cuda) per group

`add` takes seconds or a pytest-benchmark fixture (its median; nothing under --benchmark-disable).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict

RESULTS_DIR = os.path.join(os.path.dirname(__file__), "results")


class RatioTable:
    """Rows grouped by scenario; each group has one baseline row that the others are compared to."""

    def __init__(self, name: str):
        self.name = name
        self.rows: dict[str, list[dict]] = defaultdict(list)
        self.notes: list[str] = []
        self.pairs: list[tuple[str, str]] = []

    def add(self, group: str, case: str, seconds, baseline: bool = False, **extra) -> None:
        """One row: `seconds` is a median in seconds, or a pytest-benchmark fixture."""
        if hasattr(seconds, "stats"):  # a pytest-benchmark fixture
            if seconds.stats is None:  # --benchmark-disable: nothing measured
                return
            seconds = seconds.stats.stats.median
        self.rows[group].append(dict(case=case, median_s=float(seconds), baseline=baseline, **extra))

    def note(self, text: str) -> None:
        self.notes.append(text)

    def compare(self, numerator: str, denominator: str) -> None:
        """Also show median(numerator) / median(denominator) in every group holding both cases."""
        if (numerator, denominator) not in self.pairs:
            self.pairs.append((numerator, denominator))

    @staticmethod
    def _baseline(rows: list[dict]) -> float | None:
        return next((r["median_s"] for r in rows if r["baseline"]), None)

    def markdown(self) -> str:
        """The bench/results/<name>.md table: one line per row, ratio = median / baseline median."""
        lines = [
            f"### {self.name}",
            "",
            "| scenario | case | median (ms) | ratio to baseline | notes |",
            "|---|---|---|---|---|",
        ]
        for group, rows in self.rows.items():
            base = self._baseline(rows)
            for r in rows:
                ratio = f"{r['median_s'] / base:.2f}x" if base else "-"
                extra = ", ".join(f"{k}={v}" for k, v in r.items() if k not in ("case", "median_s", "baseline"))
                label = f"**{r['case']}** (baseline)" if r["baseline"] else r["case"]
                lines.append(f"| {group} | {label} | {1e3 * r['median_s']:.2f} | {ratio} | {extra} |")
        lines += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines)

    def speedup_lines(self) -> list[str]:
        """A wide text table, one line per group: every case's median (ms), its speedup against the
        group's baseline (baseline median / median) and the `compare` pairs."""
        if not self.rows:
            return []
        medians = {group: {r["case"]: r["median_s"] for r in rows} for group, rows in self.rows.items()}
        names = sorted({name for group in medians.values() for name in group})
        g = max(len("group"), *(len(group) for group in medians)) + 2  # column widths
        w = max(14, *(len(name) + 5 for name in names))
        p = max(16, *(len(a) + len(b) + 3 for a, b in self.pairs)) if self.pairs else 16
        header = f"{'group':<{g}}" + "".join(f"{name + ' ms':>{w}}" for name in names)
        header += "".join(f"{name + ' x':>{w}}" for name in names)
        header += "".join(f"{a + '/' + b:>{p}}" for a, b in self.pairs)
        out = [header, "-" * len(header)]
        for group, med in medians.items():
            base = self._baseline(self.rows[group])
            row = f"{group:<{g}}"
            row += "".join(f"{med[n] * 1e3:>{w}.3f}" if n in med else f"{'':>{w}}" for n in names)
            row += "".join(f"{base / med[n]:>{w}.2f}" if n in med and base else f"{'':>{w}}" for n in names)
            row += "".join(
                f"{med[a] / med[b]:>{p}.2f}" if a in med and b in med else f"{'':>{p}}" for a, b in self.pairs
            )
            out.append(row)
        out.append("x = speedup against the group's baseline (baseline median / median), one run.")
        return out

    def report(self) -> None:
        """Print the markdown table and write bench/results/<name>.md and .json."""
        if not self.rows:
            return
        text = self.markdown()
        print("\n" + text)
        os.makedirs(RESULTS_DIR, exist_ok=True)
        with open(os.path.join(RESULTS_DIR, f"{self.name}.md"), "w") as f:
            f.write(text + "\n")
        with open(os.path.join(RESULTS_DIR, f"{self.name}.json"), "w") as f:
            json.dump(dict(rows=self.rows, notes=self.notes), f, indent=1)
