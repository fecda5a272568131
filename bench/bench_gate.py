"""The known-answer gate as a grid: where users are (latents of 64-512, directions G ignores or
barely uses, sensitivities that vary across latent space), every (loss, grad, weights) and the
defaults.

Run:  python bench/bench_gate.py [--quick] [--filter REGEX] [--seeds N] [--label NAME]
      nohup python bench/bench_gate.py > gate.log 2>&1 &      (the full grid, in the background)

Writes bench/results/gate.json after every cell and gate.md at the end.  Resumable: a cell
(label, d, rank, profile, setting) already in gate.json with as many seeds is skipped, so a
rerun finishes an interrupted grid.  --label keeps runs of different library versions apart
("before" / "after" a regularizer change); the table shows every label.

Generator (spectral_ops.testing.known_answer.GateGenerator): G(z) = f(Rz), R a learnable rotation
started at random; Adam (lr 0.05, batch 16) on the regularizer alone.  Axes of the grid:
- d: 8, 64, 256;
- rank: "k=F" (4 factors, sensitivities 2, 1, 0.5, 0.25, k = 4), "unused" (3 factors 2, 1, 0.5,
  the other d - 3 directions exactly unused: rank J = 3 < k = 4), "weak" (the same 3 factors, the
  other d - 3 directions each with singular value 0.01, 1/50 of the weakest factor);
- profile: "constant" or "varying" (wobble a = 0.75, frequency 2: factor f's singular value
  s_f (1 + 0.75 cos(2 u_f + 2 pi f / F)), which reorders the factors across z);
- setting: spectral_penalty(G, z, k=4, iters=20, loss, grad, weights) for 200 calls, each of the
  3 x 2 x 2 (loss, grad, weights); SpectralRegularizer(d) as a user writes it (every=8, 1600
  calls, 200 computed), with k = d (every direction aligned) and with the global term
  (`global_alignment_penalty`, weight 1, lab.train.losses.LocalAndGlobal), and with offdiag's
  geometric rank weights (weights="geometric"); the floor (no regularizer:
  where a random rotation leaves the factors)
  and the ceiling (Adam on the offdiag loss of the true singular vectors, the rows of R:
  what the optimizer and budget reach with perfect vectors).
Alignment of factor f = max_j R_fj^2; a cell passes when every used factor reaches >= 0.95 on a
distinct axis, on every seed (a rotation R0 and a latent stream per seed).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from spectral_ops import RegularizerConfig, SpectralRegularizer, spectral_penalty
from spectral_ops.lab.io import atomic_write_text
from spectral_ops.lab.train.losses import LocalAndGlobal
from spectral_ops.testing.known_answer import GATE_PROFILES, GATE_RANKS, oracle_penalty, run_gate
from spectral_ops.regularizer import GRADS, LOSSES, WEIGHTS

RESULTS = os.path.join(os.path.dirname(__file__), "results")
GATE = 0.95
DIMS = (8, 64, 256)
RANKS, PROFILES = GATE_RANKS, GATE_PROFILES
PAIR_STEPS, DEFAULT_CALLS = 200, 1600


def settings():
    """[(name, make_reg(d) -> callable, calls)] in table order."""
    out = [
        ("floor: no regularizer", lambda d: lambda G, z: 0.0 * G(z).sum(), PAIR_STEPS),
        ("ceiling: offdiag on the true vectors", lambda d: oracle_penalty, PAIR_STEPS),
        ("defaults: SpectralRegularizer(d)", lambda d: SpectralRegularizer(d), DEFAULT_CALLS),
        # a candidate for latents G barely uses: every direction aligned, not only the top 4
        ("candidate: SpectralRegularizer(d, k=d)", lambda d: SpectralRegularizer(d, k=d), DEFAULT_CALLS),
        # a candidate for factors mixed where their local sensitivities meet: the defaults plus the
        # global term (off-diagonal share of the batch's mean J^T J) on the same rows and schedule
        (
            "candidate: SpectralRegularizer(d) + global",
            lambda d: LocalAndGlobal(SpectralRegularizer(d), 1.0, RegularizerConfig().batch_fraction),
            DEFAULT_CALLS,
        ),
        # a candidate against polar codes (bench/codes_known_answer.py): offdiag's rank weights
        # 1, 1/2, 1/4, ... instead of 1, 3/4, 1/2, ..., so a mixed pair among the top vectors costs more
        (
            "candidate: SpectralRegularizer(d, weights='geometric')",
            lambda d: SpectralRegularizer(d, weights="geometric"),
            DEFAULT_CALLS,
        ),
    ]
    for loss in LOSSES:
        for grad in GRADS:
            for weights in WEIGHTS:
                out.append(
                    (
                        f"penalty {loss} {grad} {weights}",
                        lambda d, loss=loss, grad=grad, weights=weights: (
                            lambda G, z: spectral_penalty(G, z, k=4, iters=20, loss=loss, grad=grad, weights=weights)
                        ),
                        PAIR_STEPS,
                    )
                )
    return out


def cell_key(label: str, d: int, rank: str, profile: str, setting: str) -> str:
    return f"{label} | d={d} | {rank} | {profile} | {setting}"


def run_cell(d: int, rank: str, profile: str, make_reg, calls: int, seeds) -> dict:
    """One cell over `seeds`: per-seed min alignment, distinct axes, calls, seconds."""
    runs = []
    for seed in seeds:
        gen = dict(latent_dim=d, **RANKS[rank], **PROFILES[profile])
        try:
            r = run_gate(make_reg(d), generator=gen, seed=seed, steps=calls)
        except Exception as exc:  # a setting that raises is a failing cell, recorded with its error
            runs.append(dict(seed=seed, error=f"{type(exc).__name__}: {exc}"[:300]))
            continue
        runs.append(
            dict(
                seed=seed,
                min_alignment=r.min_alignment,
                alignment=r.alignment,
                distinct=r.distinct_axes,
                calls=r.calls,
                computed_calls=r.computed_calls,
                seconds=r.seconds,
            )
        )
    ok = [x for x in runs if "error" not in x]
    mins = [x["min_alignment"] for x in ok]
    return dict(
        seeds=list(seeds),
        runs=runs,
        min_alignment=min(mins) if len(ok) == len(runs) else None,
        passes=len(ok) == len(runs) and min(mins) >= GATE and all(x["distinct"] for x in ok),
        calls=ok[0]["calls"] if ok else None,
        computed_calls=ok[0]["computed_calls"] if ok else None,
        seconds=sum(x["seconds"] for x in ok) / len(ok) if ok else None,
    )


def load(path: str) -> dict:
    if os.path.exists(path):
        with open(path) as f:
            data = json.load(f)
        if "cells" in data:
            return data
    return dict(labels={}, cells={})


def save(data: dict, path: str) -> None:
    atomic_write_text(json.dumps(data, indent=1), path)


def _fmt(cell: dict | None) -> str:
    if cell is None:
        return "."
    if cell["min_alignment"] is None:
        return "error"
    mark = "" if cell["passes"] else " **x**"
    return f"{cell['min_alignment']:.2f}{mark}"


def markdown(data: dict) -> str:
    cells = data["cells"]
    labels = sorted({k.split(" | ")[0] for k in cells}, key=lambda s: (s != "before", s))
    names = [n for n, _, _ in settings()]
    cols = [(rank, profile) for rank in RANKS for profile in PROFILES]
    lines = [
        "### known-answer gate: where users are",
        "",
        "`python bench/bench_gate.py` (module docstring: the generators, the grid and the settings), one "
        "CPU thread per run.  Each entry is the minimum over seeds of the weakest used factor's "
        "alignment max_j R_fj^2; **x** marks a cell that fails the gate (< 0.95 on some seed, or two "
        "factors on one axis); `.` a cell not run.  rank: k=F (4 factors, k = 4), unused (3 factors, "
        "the other d - 3 directions exactly unused), weak (3 factors, the other directions at "
        "singular value 0.01).  profile: constant, or varying (s_f (1 + 0.75 cos(2 u_f + c_f))).  "
        "penalty rows: spectral_penalty(k=4, iters=20, loss, grad, weights), 200 calls; defaults: "
        "SpectralRegularizer(d), 1600 calls (200 computed).",
        "",
    ]
    for label in labels:
        if label in data.get("labels", {}):
            lines += [f"**{label}**: {data['labels'][label]}", ""]
        for d in DIMS:
            keyed = {tuple(k.split(" | ")[1:]): v for k, v in cells.items() if k.startswith(label + " | ")}
            if not any(k[0] == f"d={d}" for k in keyed):
                continue
            seeds = sorted({len(v["seeds"]) for k, v in keyed.items() if k[0] == f"d={d}"})
            lines += [
                f"#### {label}: d = {d} ({'/'.join(map(str, seeds))} seeds per cell)",
                "",
                "| setting | " + " | ".join(f"{r}, {p}" for r, p in cols) + " | s per run |",
                "|---|" + "---|" * (len(cols) + 1),
            ]
            for name in names:
                row = [keyed.get((f"d={d}", r, p, name)) for r, p in cols]
                secs = [c["seconds"] for c in row if c and c["seconds"] is not None]
                mean = f"{sum(secs) / len(secs):.1f}" if secs else "."
                lines.append(f"| {name} | " + " | ".join(_fmt(c) for c in row) + f" | {mean} |")
            lines.append("")
    errors = [(k, x["error"]) for k, v in cells.items() for x in v["runs"] if "error" in x]
    if errors:
        lines += ["Errors:", ""] + [f"- {k}, seed {e}" for k, e in sorted({(k, e) for k, e in errors})[:20]] + [""]
    total = sum((v["seconds"] or 0) * len(v["seeds"]) for v in cells.values())
    lines.append(f"Total run time of the cells: {total / 60:.0f} min.")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="d = 8 only, one seed")
    ap.add_argument("--filter", default=None, help="regex on the cell key 'label | d=D | rank | profile | setting'")
    ap.add_argument("--seeds", type=int, default=3, help="rotations (seeds) per cell")
    ap.add_argument("--label", default="after", help="the library version the cells are recorded under")
    ap.add_argument("--describe", default=None, help="what the label stands for (e.g. the commit), shown in gate.md")
    ap.add_argument("--results", default=RESULTS, help="folder of gate.json and gate.md")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    os.makedirs(args.results, exist_ok=True)
    path = os.path.join(args.results, "gate.json")
    data = load(path)
    if args.describe:
        data.setdefault("labels", {})[args.label] = args.describe
    dims, seeds = ((8,), (0,)) if args.quick else (DIMS, tuple(range(args.seeds)))
    pattern = re.compile(args.filter) if args.filter else None
    t0 = time.perf_counter()
    for d in dims:
        for rank in RANKS:
            for profile in PROFILES:
                for name, make_reg, calls in settings():
                    key = cell_key(args.label, d, rank, profile, name)
                    if pattern is not None and not pattern.search(key):
                        continue
                    done = data["cells"].get(key)
                    if done is not None and len(done["seeds"]) >= len(seeds):
                        continue
                    cell = run_cell(d, rank, profile, make_reg, calls, seeds)
                    data["cells"][key] = cell
                    save(data, path)
                    print(
                        f"{key:90s} {_fmt(cell):10s} {cell['seconds'] or 0:6.1f} s/run  "
                        f"[{time.perf_counter() - t0:.0f} s]",
                        flush=True,
                    )
    atomic_write_text(markdown(data), os.path.join(args.results, "gate.md"))
    print(markdown(data))


if __name__ == "__main__":
    main()
