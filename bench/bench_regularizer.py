"""Benchmark: cost of a regularized generator step against a plain one, measured in one run.

Run:  pytest bench/bench_regularizer.py -s    (BENCH_ROUNDS=n rounds, BENCH_THREADS=n torch threads; 3, 1)

A generator step is: z -> G -> D -> non-saturating loss (+ the regularizer) -> backward -> Adam
step, for the DCGAN-like generator of spectral_ops.lab.models (32x32x1, B=32) and its
discriminator.  Each round runs 8 consecutive steps, so lazy regularization (every=8 by default,
every=4 in the trainer) is timed with its skipped steps; the table shows the time per step divided
by the plain step's in the same group.  Groups: latent 10 (every case below), and latent 64 and
128 (plain, the defaults, the old defaults, implicit).  "old defaults" is the regularizer before
the krylov solver: dict(solver="power", iters=2, tol=1e-4) ("solver" only where RegularizerConfig
has that field).  Printed, and written to bench/results/regularizer.md/json.
"""

from __future__ import annotations

import os

import pytest
import torch

from ratios import RatioTable
from spectral_ops.baselines import PathLengthRegularizer, hessian_penalty, jacobian_l1, orojar
from spectral_ops.config import RegularizerConfig
from spectral_ops.lab.models import Discriminator, Generator
from spectral_ops.lab.train.losses import LocalAndGlobal
from spectral_ops.regularizer import SpectralRegularizer

TABLE = RatioTable("regularizer")
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
STEPS = 8
B = 32
HAS_SOLVER = "solver" in RegularizerConfig.__dataclass_fields__
OLD_DEFAULTS = dict(solver="power", iters=2, tol=1e-4) if HAS_SOLVER else dict(iters=2, tol=1e-4)


def _describe(config: RegularizerConfig) -> str:
    """'solver=krylov, iters=8, tol=0.001, every=8, batch_fraction=0.25, warm, grad=fast'."""
    head = f"solver={config.solver}, " if HAS_SOLVER else ""
    return (
        head + f"iters={config.iters}, tol={config.tol:g}, every={config.every}, "
        f"batch_fraction={config.batch_fraction}, {'warm' if config.warm_start else 'cold'}, grad={config.grad}"
    )


DEFAULTS = f"spectral, defaults ({_describe(RegularizerConfig())})"
OLD = (
    "spectral, old defaults ("
    + ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in OLD_DEFAULTS.items())
    + ")"
)
IMPLICIT = "spectral, defaults, implicit (cg_iters=8)"

CASES = {
    "plain": None,
    DEFAULTS: dict(),
    OLD: OLD_DEFAULTS,
    "spectral, defaults, cold start": dict(warm_start=False),
    "spectral, defaults, iters=1": dict(iters=1),
    IMPLICIT: dict(grad="implicit"),
    "spectral, defaults, every=4 (the trainer's setting)": dict(every=4),
    "spectral, defaults, weights=geometric (the polar-code candidate)": dict(weights="geometric"),
    "spectral, defaults + global term (weight 1, global_alignment_penalty)": "global",
    "spectral, defaults, every=1, batch_fraction=1, warm": dict(every=1, batch_fraction=1.0),
    "spectral, defaults, every=1, batch_fraction=1, cold": dict(every=1, batch_fraction=1.0, warm_start=False),
    "spectral, defaults, every=1, batch_fraction=1, implicit (cg_iters=8)": dict(
        every=1, batch_fraction=1.0, grad="implicit"
    ),
    "hessian_penalty (k=2, every step)": "hessian",
    "orojar (k=2, every step)": "orojar",
    "jacobian_l1 (eps=1e-3, every step)": "jacobian_l1",
    "path_length (every step)": "pl1",
    "path_length (every=4, as StyleGAN2)": "pl4",
}
#: (latent size, case): every case at latent 10, the defaults against the old ones at 64 and 128
RUNS = [(10, c) for c in CASES] + [(d, c) for d in (64, 128) for c in ("plain", DEFAULTS, OLD, IMPLICIT)]


def group(latent: int) -> str:
    return f"generator step, DCGAN 32x32x1, latent {latent}, B={B} (median of {ROUNDS} rounds of {STEPS} steps)"


@pytest.fixture(scope="module", autouse=True)
def _report():
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))  # 1: stable ratios on a shared CPU
    yield
    TABLE.note(
        "ratio = time per generator step / plain generator step, same run; the spectral rows use "
        "k=4, loss='offdiag' (rank weights), jvp='auto' (double_backward here); RegularizerConfig "
        f"has `solver`: {HAS_SOLVER}"
    )
    TABLE.report()


def _setup(latent, case):
    torch.manual_seed(0)
    G, D = Generator(latent, size=32), Discriminator(size=32)
    opt = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.99))
    spec = CASES[case]
    if spec is None:
        reg = None
    elif spec == "hessian":
        reg = lambda G, z: hessian_penalty(G, z, k=2)
    elif spec == "orojar":
        reg = lambda G, z: orojar(G, z, k=2)
    elif spec == "jacobian_l1":
        reg = jacobian_l1
    elif spec == "global":
        reg = LocalAndGlobal(SpectralRegularizer(latent), 1.0, RegularizerConfig().batch_fraction)
    elif spec in ("pl1", "pl4"):
        reg = PathLengthRegularizer(every=1 if spec == "pl1" else 4)
    else:
        reg = SpectralRegularizer(latent, **spec)
    return G, D, opt, reg


@pytest.mark.parametrize("latent,case", RUNS, ids=[f"d{d}-{c}" for d, c in RUNS])
def test_generator_step_cost(benchmark, latent, case):
    G, D, opt, reg = _setup(latent, case)
    gen = torch.Generator().manual_seed(1)
    zs = [torch.randn(B, latent, generator=gen) for _ in range(STEPS)]

    def steps():
        for z in zs:
            loss = torch.nn.functional.softplus(-D(G(z))).mean()
            if reg is not None:
                loss = loss + reg(G, z)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    benchmark.pedantic(steps, rounds=ROUNDS, warmup_rounds=1, iterations=1)
    TABLE.add(group(latent), case, benchmark.stats.stats.median / STEPS, baseline=reg is None)
