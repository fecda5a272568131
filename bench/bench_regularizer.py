"""Benchmark: cost of a regularized generator step against a plain one, measured in one run.

Run:  pytest bench/bench_regularizer.py -s    (BENCH_ROUNDS=n rounds, BENCH_THREADS=n torch threads; 3, 1)

A generator step is: z -> G -> D -> non-saturating loss (+ the regularizer) -> backward -> Adam
step, for the DCGAN-like generator of spectral_ops.lab.models (latent 10, 32x32x1, B=32) and its
discriminator.  Each round runs 8 consecutive steps, so lazy regularization (every=4) is timed
with its skipped steps; the table shows the time per step divided by the plain step's.  Printed,
and written to bench/results/regularizer.md.
"""
from __future__ import annotations

import os

import pytest
import torch

from ratios import RatioTable
from spectral_ops.baselines import PathLengthRegularizer, hessian_penalty, orojar
from spectral_ops.lab.models import Discriminator, Generator
from spectral_ops.regularizer import SpectralRegularizer

TABLE = RatioTable("regularizer")
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
STEPS = 8
LATENT, B = 10, 32
GROUP = f"generator step, DCGAN 32x32x1, latent {LATENT}, B={B} (median of {ROUNDS} rounds of {STEPS} steps)"

CASES = {
    "plain": None,
    "spectral, defaults (every=8, batch_fraction=0.25, iters=2, warm, grad=fast)": dict(),
    "spectral, defaults, cold start": dict(warm_start=False),
    "spectral, defaults, iters=1 (fails the gate)": dict(iters=1),
    "spectral, defaults, implicit (cg_iters=8)": dict(grad="implicit"),
    "spectral, every=4, batch_fraction=0.25, iters=2, warm (the trainer's setting)": dict(every=4),
    "spectral, every=1, batch_fraction=1, iters=2, warm": dict(every=1, batch_fraction=1.0),
    "spectral, every=1, batch_fraction=1, iters=2, cold": dict(every=1, batch_fraction=1.0, warm_start=False),
    "spectral, every=1, batch_fraction=1, iters=2, implicit (cg_iters=8)": dict(every=1, batch_fraction=1.0,
                                                                                grad="implicit"),
    "hessian_penalty (k=2, every step)": "hessian",
    "orojar (k=2, every step)": "orojar",
    "path_length (every step)": "pl1",
    "path_length (every=4, as StyleGAN2)": "pl4",
}


@pytest.fixture(scope="module", autouse=True)
def _report():
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))  # 1: stable ratios on a shared CPU
    yield
    TABLE.note("ratio = time per generator step / plain generator step, same run; the spectral rows use "
               "k=4, loss='offdiag' (rank weights), jvp='auto' (double_backward here)")
    TABLE.report()


def _setup(case):
    torch.manual_seed(0)
    G, D = Generator(LATENT, size=32), Discriminator(size=32)
    opt = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.99))
    spec = CASES[case]
    if spec is None:
        reg = None
    elif spec == "hessian":
        reg = lambda G, z: hessian_penalty(G, z, k=2)  # noqa: E731
    elif spec == "orojar":
        reg = lambda G, z: orojar(G, z, k=2)  # noqa: E731
    elif spec in ("pl1", "pl4"):
        reg = PathLengthRegularizer(every=1 if spec == "pl1" else 4)
    else:
        reg = SpectralRegularizer(LATENT, **spec)
    return G, D, opt, reg


@pytest.mark.parametrize("case", list(CASES))
def test_generator_step_cost(benchmark, case):
    G, D, opt, reg = _setup(case)
    gen = torch.Generator().manual_seed(1)
    zs = [torch.randn(B, LATENT, generator=gen) for _ in range(STEPS)]

    def steps():
        for z in zs:
            loss = torch.nn.functional.softplus(-D(G(z))).mean()
            if reg is not None:
                loss = loss + reg(G, z)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    benchmark.pedantic(steps, rounds=ROUNDS, warmup_rounds=1, iterations=1)
    TABLE.add(GROUP, case, benchmark.stats.stats.median / STEPS, baseline=reg is None)
