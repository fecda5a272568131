"""Collect benchmark medians and print them as ratios measured in the same run.

Absolute times on shared machines are noise; ratios between cases measured back to back are
what the README quotes.  Usage inside a bench module:

    TABLE = RatioTable("topk")                          # module level
    TABLE.add("iteration", "fwd+bwd", benchmark.stats.stats.median, baseline=True)
    ...
    TABLE.report()                                      # in a module-scoped fixture's teardown
"""
from __future__ import annotations

import json
import os
from collections import defaultdict

RESULTS_DIR = os.path.join(os.path.dirname(__file__), "results")


class RatioTable:
    """Rows grouped by scenario; each group has one baseline row that the others divide by."""

    def __init__(self, name: str):
        self.name = name
        self.rows: dict[str, list[dict]] = defaultdict(list)
        self.notes: list[str] = []

    def add(self, group: str, case: str, seconds: float, baseline: bool = False, **extra) -> None:
        self.rows[group].append(dict(case=case, median_s=float(seconds), baseline=baseline, **extra))

    def note(self, text: str) -> None:
        self.notes.append(text)

    def markdown(self) -> str:
        lines = [f"### {self.name}", "", "| scenario | case | median (ms) | ratio to baseline | notes |",
                 "|---|---|---|---|---|"]
        for group, rows in self.rows.items():
            base = next((r["median_s"] for r in rows if r["baseline"]), None)
            for r in rows:
                ratio = f"{r['median_s'] / base:.2f}x" if base else "-"
                extra = ", ".join(f"{k}={v}" for k, v in r.items() if k not in ("case", "median_s", "baseline"))
                label = f"**{r['case']}** (baseline)" if r["baseline"] else r["case"]
                lines.append(f"| {group} | {label} | {1e3 * r['median_s']:.2f} | {ratio} | {extra} |")
        lines += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines)

    def report(self) -> None:
        if not self.rows:
            return
        text = self.markdown()
        print("\n" + text)
        os.makedirs(RESULTS_DIR, exist_ok=True)
        with open(os.path.join(RESULTS_DIR, f"{self.name}.md"), "w") as f:
            f.write(text + "\n")
        with open(os.path.join(RESULTS_DIR, f"{self.name}.json"), "w") as f:
            json.dump(dict(rows=self.rows, notes=self.notes), f, indent=1)
