"""The cost model of `jacobian_topk(method="auto")`: the fitted fallback (`estimated_cost` without
measured costs) and the product costs timed on the caller's G (`measure_costs`, `ProductCosts`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import torch

from . import ops
from .dense import _dense_chunk
from .latents import select_rows
from .jacobian import JacobianOperator
from .krylov import KRYLOV_SECOND_START, block_lanczos, default_max_basis, krylov_block

# Fallback cost model (estimated_cost without measured costs), in units of one generator forward on
# one row, fitted to bench/bench_topk.py (a DCGAN on a CPU); method="auto" uses the costs timed on
# the caller's G instead (`measure_costs`).  One power iteration folds k vectors and costs about
# POWER_PAIR_COST forwards per vector (a double-backward and a backward); the dense method costs
# about DENSE_JVP_COST forwards per latent axis (each column J e_j is a JVP on a batch folded d
# times: the forward graph, then the double-backward), plus the d x d products and eigh.  Krylov
# takes the same products as power (iters*k vectors per sample at most, krylov_block(B, k) per
# pass), but once its space may fill R^d it needs at most d + p - 1 of them, and each pass adds
# about KRYLOV_PASS_COST forwards of fixed cost (Rayleigh-Ritz, orthogonalization, the pass's own
# overhead).  Fitted to the sweep of bench/bench_topk.py (a DCGAN, B=1, 4, 16, d=8-512): auto runs
# within 3% of the fastest method in 9 of its 10 cases; at B=4, d=32, where the model puts krylov
# and dense within 0.3%, it ran krylov, 1.17x slower than dense.  Power only runs when asked for:
# at the same budget krylov never costs more.
KRYLOV_PASS_COST = 30.0
POWER_PAIR_COST = 3.0
POWER_SETUP_COST = 3.0
DENSE_JVP_COST = 6.0
DENSE_FLOP_COST = 2e-7  # forwards per flop of J^T J and eigh, for a small generator on a CPU
# Rows of the wider pass `measure_costs` times (with a pass of 1 row), and its rounds: at least
# COST_PROBE_ROUNDS[0], more (up to [1]) while a size's rounds took under COST_PROBE_SECONDS, so a
# cheap G is timed often enough that a shared machine's load (which only adds time) drops out.
COST_PROBE_ROWS = 8
COST_PROBE_ROUNDS, COST_PROBE_SECONDS = (2, 8), 0.05
# Products per sample krylov is expected to take (the measured cost model): its bound (the budget,
# or d + p - 1 once its space may fill R^d), or 2k + 2 sqrt(d) where that is less.  Observed at
# k=4, tol=1e-3 (bench/bench_topk.py sweep, an untrained DCGAN, B=16): d=32: 24, d=64: 28,
# d=128: 36, d=512: 42 (the bound: 32, 64, 80, 80); a StyleGAN2-like G at d=64, B=3: 20.
KRYLOV_EXPECTED_PER_K, KRYLOV_EXPECTED_PER_SQRT_D = 2.0, 2.0
# auto runs dense only when the measured model puts it this much below krylov: near a tie (a
# DCGAN at B=16, d=8: 40 ms each) the timed costs' noise would otherwise flip the choice per run.
DENSE_MARGIN = 1.1


@dataclass(frozen=True)
class ProductCosts:
    """Seconds measured on one generator by `measure_costs`; each (fixed, per_row) pair is a line
    fixed + per_row * n over the n rows of a pass.

    build: the forward graph on n rows (a JacobianOperator); first_jvp: its first J v
    (double_backward also builds J^T u's graph then); product: a later J^T J v (jvp + vjp);
    matmul_flop: seconds per flop of J J^T (d x m by m x d); eigh: one d x d eigh;
    step: krylov's own dense work per pass (new directions, projected matrix, Rayleigh-Ritz).
    """

    build: tuple[float, float]
    first_jvp: tuple[float, float]
    product: tuple[float, float]
    matmul_flop: float
    eigh: float
    step: float

    @staticmethod
    def line(pair: tuple[float, float], rows: int) -> float:
        return pair[0] + pair[1] * rows


def _krylov_vectors(B: int, k: int, d: int, iters: int) -> tuple[int, int]:
    """(block p, products per sample at most) of krylov on this budget."""
    p = krylov_block(B, k)
    return p, (iters * k if d > default_max_basis(d, k) else min(iters * k, d + p - 1))


def estimated_cost(
    method: str, B: int, k: int, d: int, m: int, iters: int, costs: ProductCosts | None = None, chunk: int | None = None
) -> float:
    """Cost model used by method="auto"; `iters` is the iteration budget.  With `costs` (timed on
    the caller's G, `measure_costs`): seconds, from the passes each method makes (rows per pass:
    power B*k for iters passes, krylov B*krylov_block(B, k) for the products it is expected to
    take (KRYLOV_EXPECTED_*), dense B*chunk for d/chunk passes) and the dense work; chunk: the
    dense method's latent axes per pass (default: as `_dense_topk` picks for float32).  Without:
    the fitted fallback, in forwards of one row of a small DCGAN on a CPU (constants above),
    with the budgets as upper bounds."""
    if costs is not None:
        line = ProductCosts.line
        if method == "power":
            rows = B * k
            return line(costs.build, rows) + line(costs.first_jvp, rows) + iters * line(costs.product, rows)
        if method == "krylov":
            p, bound = _krylov_vectors(B, k, d, iters)
            expected = (
                KRYLOV_EXPECTED_PER_K * k + KRYLOV_EXPECTED_PER_SQRT_D * math.sqrt(d) + KRYLOV_SECOND_START
            )  # the vectors of the check against a second start
            rows, passes = B * p, -(-min(bound, math.ceil(expected)) // p)
            return (
                line(costs.build, rows)
                + line(costs.first_jvp, rows)
                + passes * (line(costs.product, rows) + costs.step)
            )
        c = _dense_chunk(B, d, m, 4, None) if chunk is None else min(chunk, d)
        widths = [c] * (d // c) + ([d % c] if d % c else [])  # latent axes per pass
        products = sum(line(costs.build, B * n) + line(costs.first_jvp, B * n) for n in widths)
        return products + B * (costs.matmul_flop * 2.0 * m * d * d + costs.eigh)
    if method == "power":
        return B * k * (POWER_SETUP_COST + POWER_PAIR_COST * iters)
    if method == "krylov":
        p, vectors = _krylov_vectors(B, k, d, iters)
        passes = 1 + -(-vectors // p)
        return KRYLOV_PASS_COST * passes + B * (POWER_SETUP_COST * p + POWER_PAIR_COST * vectors)
    flops = B * (2.0 * m * d * d + 10.0 * d**3)
    return B * d * DENSE_JVP_COST + DENSE_FLOP_COST * flops


def measure_costs(G: Callable, z: torch.Tensor, mode: str) -> ProductCosts:
    """Time G's products as the methods take them: on z[0] folded to 1 row and to
    COST_PROBE_ROWS rows (best of COST_PROBE_ROUNDS rounds each), the forward graph, the first J v and a later
    J^T J v, then fit fixed + per-row seconds; and the dense work at this d (J J^T, eigh) and
    one krylov step's.  G: the flat callable `prepared` yields; z: [B, d]; mode: an exact or
    finite-difference mode.  Costs about two power iterations on COST_PROBE_ROWS rows and four
    on one row, once per generator (see `probes.measured`).  On CUDA every timer starts and
    stops after torch.cuda.synchronize()."""
    d, dev = z.shape[1], z.device
    cdtype = ops.compute_dtype(z.dtype)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)

    def timed(fn):
        sync()
        start = time.perf_counter()
        out = fn()
        sync()
        return time.perf_counter() - start, out

    G1, z1 = select_rows(G, slice(0, 1)), z[:1].detach()
    gen = torch.Generator(device="cpu").manual_seed(0)
    seconds = {}
    for n in (1, COST_PROBE_ROWS):
        V = torch.randn(1, n, d, generator=gen, dtype=torch.float64).to(device=dev, dtype=z.dtype)
        best, spent, rounds = [math.inf] * 3, 0.0, 0
        while rounds < COST_PROBE_ROUNDS[0] or (rounds < COST_PROBE_ROUNDS[1] and spent < COST_PROBE_SECONDS):
            t_build, op = timed(lambda: JacobianOperator(G1, z1, n, mode))
            t_jvp, _ = timed(lambda: op.jvp(V))
            t_product, _ = timed(lambda: op.matvec(V))
            best = [min(b, t) for b, t in zip(best, (t_build, t_jvp, t_product))]
            spent, rounds = spent + t_build + t_jvp + t_product, rounds + 1
            del op
        seconds[n] = best
    wide = COST_PROBE_ROWS
    lines = []
    for one, many in zip(seconds[1], seconds[wide]):
        per_row = max(0.0, (many - one) / (wide - 1))
        lines.append((max(0.0, one - per_row), per_row))
    with torch.no_grad():
        m = min(G1(z1).numel(), 4096)
        A = torch.randn(1, d, m, generator=gen, dtype=torch.float64).to(device=dev, dtype=cdtype)
        t_mm = min(timed(lambda: A @ A.transpose(1, 2))[0] for _ in range(3))
        S = A @ A.transpose(1, 2)
        t_eigh = min(timed(lambda: torch.linalg.eigh(S))[0] for _ in range(3))
        # krylov's own work per pass: block_lanczos on a diagonal operator (products nearly free),
        # one vector per pass, unconverged (tol=0) for `passes` passes
        scale = torch.linspace(2, 1, d, dtype=cdtype, device=dev)
        X = ops.orthonormalize(torch.randn(1, 1, d, generator=gen, dtype=torch.float64).to(device=dev, dtype=cdtype))
        passes = min(d, 12) - 1

        def run():
            return block_lanczos(lambda Q, rows: Q * scale, X, X * scale, min(4, d), 1, passes + 1, 0.0).passes

        t_step = min(timed(run)[0] for _ in range(3)) / passes if passes > 0 else 0.0
    build, first_jvp, product = lines  # one line per probed product
    return ProductCosts(build, first_jvp, product, matmul_flop=t_mm / (2.0 * m * d * d), eigh=t_eigh, step=t_step)
