"""Benchmark: cost of one trajectory step, warm-started power iteration vs a cold start per step.

Run:  pytest bench/bench_trajectory.py -s        (BENCH_ROUNDS=n to change the rounds)

Both cases trace the same RK4 trajectory (4 top-k evaluations per step) with power iteration
stopped at the same tolerance; the only difference is the starting basis of every evaluation:
the previous step's vectors (warm) or a fresh random basis (cold).  Prints, and writes to
bench/results/trajectory.md, the per-step time ratio measured in one run, with the power
iterations used per evaluation and the largest distance between the two paths.
"""

from __future__ import annotations

import os

import pytest
import torch

from generators import DCGAN, gapped_scales
from ratios import RatioTable
from spectral_ops import trace_trajectory

TABLE = RatioTable("trajectory")
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
CFG = dict(B=8, d=64, k=3, steps=4, step_size=0.1, iters=30, tol=1e-3)
_paths: dict[str, torch.Tensor] = {}


@pytest.fixture(scope="module", autouse=True)
def _report():
    torch.set_num_threads(os.cpu_count() or 1)
    yield
    if len(_paths) == 2:
        TABLE.note(f"max |z_warm - z_cold| over the path: {(_paths['warm'] - _paths['cold']).abs().max().item():.2e}")
    TABLE.report()


def _setup():
    torch.manual_seed(0)
    G = DCGAN(CFG["d"], size=32, latent_scales=gapped_scales(CFG["d"], ratio=0.6))
    z0 = torch.randn(CFG["B"], CFG["d"])
    return G, z0


@pytest.mark.parametrize("case", ["warm", "cold"])
def test_trajectory_step_cost(benchmark, case):
    G, z0 = _setup()
    out = {}

    def fn():
        out["tr"] = trace_trajectory(
            G,
            z0,
            1,
            steps=CFG["steps"],
            step_size=CFG["step_size"],
            method="rk4",
            k=CFG["k"],
            topk_method="power",
            jvp="double_backward",
            iters=CFG["iters"],
            tol=CFG["tol"],
            warm_start=case == "warm",
        )

    benchmark.pedantic(fn, rounds=ROUNDS, warmup_rounds=1, iterations=1)
    tr = out["tr"]
    _paths[case] = tr.z
    per_step = benchmark.stats.stats.median / CFG["steps"]
    group = (
        f"one RK4 step, DCGAN 32x32, B={CFG['B']}, d={CFG['d']}, k={CFG['k']}, tol={CFG['tol']} "
        f"(median over {ROUNDS} rounds of {CFG['steps']} steps)"
    )
    TABLE.add(
        group,
        f"{case} start",
        per_step,
        baseline=case == "warm",
        iters_per_eval=round(tr.iterations / tr.evaluations, 2),
    )
