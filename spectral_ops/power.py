"""Batched top-k right-singular vectors and values of a generator's Jacobian J(z) = dG/dz.

`jacobian_topk` runs block power iteration with Rayleigh-Ritz on M = J^T J, matrix-free, batched
Lanczos on the same products (`krylov.py`), or the exact dense method (the full Jacobian by
chunked forward-mode products, then eigh of J^T J), choosing by a cost model fed with the
product costs timed on the caller's G (`measure_costs`, cached per generator).

Honest flags: `converged` is measured against the exact operator.  With finite differences the
solver's residual is against the differences' operator, so one more product at half the step
estimates the differences' error on M v and adds it to the residual (`TopK.approximate` is True).
An unconverged power or krylov result, or finite differences too inaccurate for tol, warns once
per process and kind (a UserWarning naming the residual and the setting to change).
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from . import ops
from .generator import flatten_latents, measured, prepared, select_rows
from .validation import check_callable, check_choice, check_init, check_int, check_iters_tol, check_k, check_seed
from .jacobian import JVP_MODES, JacobianOperator, name_rows
from .krylov import block_lanczos, default_max_basis, folded_start, krylov_block, residual_target

METHODS = ("auto", "power", "krylov", "dense")

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
# krylov's check that its pairs are the top k (krylov.block_lanczos's second_start): a sample
# whose k pairs pass takes a second random start and this many vectors from it, then must pass
# again.  bench/bench_topk.py test_second_start_cost measures what it costs.
KRYLOV_SECOND_START = 4

# Kinds of unconverged result already warned about in this process (see _warn_once).
_warned: set[str] = set()


@dataclass
class TopK:
    """Result of `jacobian_topk`.

    vectors: [B, k, d] orthonormal rows, the top-k right-singular vectors of J(z_b).
    values: [B, k] singular values, descending.
    residuals: [B, k] ||M v_i - lambda_i v_i|| / lambda_1 with M = J^T J, the exact operator:
        with jvp="finite_difference" the solver's residual against the differences' operator
        plus an estimate of the differences' error on M v_i (|J_h v - J_{h/2} v| at the step h
        and half of it, through J^T, times 4/3), relative to lambda_1.
    converged: [B, k] bool, residuals < tol, for every method (tol=0: never), and for krylov
        only where the pairs were also checked as the top k against a second start (see
        `KRYLOV_SECOND_START`).  The dense method's residuals are those of its eigh on the
        computed J^T J (rounding: about the compute dtype's eps), so a tol below them is not
        met.
    iterations: generator passes used: power iterations, krylov steps (0 for the dense method).
    method: "power", "krylov" or "dense" (what ran).  jvp: the JVP mode that ran.
    approximate: True when the products were finite differences (values and vectors carry their
        error; `converged` then says the estimated total is below tol).
    """

    vectors: torch.Tensor
    values: torch.Tensor
    residuals: torch.Tensor
    converged: torch.Tensor
    iterations: int
    method: str
    jvp: str
    approximate: bool = False


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


def _initial_basis(init, B: int, k: int, d: int, dtype, device, seed) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Orthonormal starting basis [B, k, d], and the previous V used for sign continuity."""
    if init is None:
        gen = torch.Generator(device="cpu").manual_seed(0 if seed is None else int(seed))
        W = torch.randn(B, k, d, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
        return ops.orthonormalize(W), None
    init = check_init(init, B, k, d).detach().to(device=device, dtype=dtype)
    return ops.orthonormalize(init), init


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


def jacobian_topk(
    G: Callable,
    z: torch.Tensor,
    k: int,
    *,
    iters: int = 20,
    tol: float = 1e-4,
    method: str = "auto",
    jvp: str = "auto",
    init: torch.Tensor | None = None,
    seed: int | None = None,
    batchnorm: str = "error",
    chunk_size: int | None = None,
) -> TopK:
    """Top-k right-singular vectors and values of J(z_b) = dG/dz at every row z_b of z.

    Args:
        G: callable with no coupling between rows, deterministic (an nn.Module, a DDP-wrapped
            module, a lambda or partial around one, or a plain function); see `generator`.
        z: [B, d] latent codes, or [B, ...] (e.g. [B, nz, 1, 1]): the latent is the flattened
            trailing dims, d = prod(z.shape[1:]).
        k: how many vectors, 1 <= k <= d.
        iters: maximum power iterations; each is ONE generator pass on B*k rows.  For krylov,
            the same budget in products: at most iters*k vectors per sample, in passes of
            B*krylov_block(B, k) rows (one vector per sample once B >= 16).
        tol: stop when every residual ||M v_i - lambda_i v_i|| / lambda_1 < tol.
        method: "power", "krylov" (Lanczos batched over the samples: on a flat spectrum far
            fewer products than power; a sample whose pairs pass tol is checked against a
            second, seeded start, KRYLOV_SECOND_START more products, so that converged means
            the top k), "dense" (exact: full Jacobian + eigh) or "auto" (dense or
            krylov by `estimated_cost`, with the product costs timed on G once per generator).
        jvp: "double_backward", "forward", "finite_difference" or "auto" (verified choice);
            finite differences give an approximate result (TopK.approximate) whose residuals
            include their estimated error.
        init: warm start, [k, d] or [B, k, d]; the output signs then agree with it.
        seed: seed of the random starting basis (an int; default 0: results are deterministic).
        batchnorm: "error" (refuse train-mode BatchNorm) or "eval" (use running statistics).
        chunk_size: latent axes per batched JVP for method="dense" (bounds its memory).
    Returns:
        TopK with vectors [B, k, d] (flat: `vectors.reshape(B, k, *z.shape[1:])` for G's latent
        shape), values [B, k], residuals [B, k], converged [B, k].  An unconverged power or
        krylov result, or finite differences whose error alone exceeds tol, warns (UserWarning,
        once per process and kind); `converged` reports every call.
    """
    check_callable("G", G)
    flat, _ = flatten_latents(z)
    B, d = flat.shape
    k = check_k(k, d)
    check_iters_tol(iters, tol)
    check_seed(seed)
    check_choice("method", method, METHODS)
    check_choice("jvp", jvp, JVP_MODES)
    if init is not None:
        _initial_basis(init, B, k, d, flat.dtype, flat.device, seed)  # validate before any work
    with prepared(G, z, jvp=jvp, batchnorm=batchnorm) as (G, z, mode):
        if method == "auto":
            with torch.no_grad():
                m = select_rows(G, slice(0, 1))(z[:1].detach()).numel()
            costs = measured(G, z, ("costs", mode, d), lambda: measure_costs(G, z, mode))
            chunk = _dense_chunk(B, d, m, z.element_size(), chunk_size)
            cheaper = DENSE_MARGIN * estimated_cost("dense", B, k, d, m, iters, costs, chunk) < estimated_cost(
                "krylov", B, k, d, m, iters, costs
            )
            method = "dense" if cheaper else "krylov"
        if method == "dense":
            return _dense_topk(G, z, k, mode, chunk_size, init, tol)
        if method == "krylov":
            return _krylov_topk(G, z, k, iters, tol, mode, init, seed)
        return _power_topk(G, z, k, iters, tol, mode, init, seed)


def measure_costs(G: Callable, z: torch.Tensor, mode: str) -> ProductCosts:
    """Time G's products as the methods take them: on z[0] folded to 1 row and to
    COST_PROBE_ROWS rows (best of COST_PROBE_ROUNDS rounds each), the forward graph, the first J v and a later
    J^T J v, then fit fixed + per-row seconds; and the dense work at this d (J J^T, eigh) and
    one krylov step's.  G: the flat callable `prepared` yields; z: [B, d]; mode: an exact or
    finite-difference mode.  Costs about two power iterations on COST_PROBE_ROWS rows and four
    on one row, once per generator (see `generator.measured`).  On CUDA every timer starts and
    stops after torch.cuda.synchronize()."""
    d, dev = z.shape[1], z.device
    cdtype = ops.reference.compute_dtype(z.dtype)
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


def scaled_product(
    op: JacobianOperator, JQ: torch.Tensor, cdtype, c: torch.Tensor | None = None, rows: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(M Q / c^2 [B, k, d], c [B]) with c = max |J Q| per sample (unless given): M Q in units
    that neither overflow nor underflow for any scale of G (the Gram of J^T J squares it).
    Raises naming the rows of z where the products are not finite (`rows`: the rows of z that
    op's samples are, when it was built on a subset)."""
    if c is None:
        c = JQ.detach().abs().flatten(1).amax(1).to(cdtype)
        c = torch.where(c > 0, c, torch.ones_like(c))  # a non-finite c makes MQ non-finite: caught below
    MQ = op.vjp(JQ.detach() / c.to(JQ.dtype)[:, None, None]).detach().to(cdtype) / c[:, None, None]
    # one host read-back per product (the rows must be named before the solver uses them)
    name_rows(
        ~torch.isfinite(MQ).flatten(1).all(1),
        "J(z) v or J(z)^T J(z) v is not finite (G's derivative is infinite or NaN)",
        rows,
    )
    return MQ, c


@dataclass
class PowerResult:
    """What `power_iteration` ends with.  V, Q_next: [B, k, d]; lam, res: [B, k]; c: [B].

    lam are the Ritz values of M / c^2 (so the eigenvalues of M are lam * c^2); JQ [B, k, m] is
    the last iteration's J Q, with a parameter graph when `graph_kept` (V lies in span Q, so
    J V = (V Q^T) J Q costs no extra product)."""

    V: torch.Tensor
    lam: torch.Tensor
    c: torch.Tensor
    res: torch.Tensor
    Q: torch.Tensor
    Q_next: torch.Tensor
    JQ: torch.Tensor
    iterations: int
    graph_kept: bool


def power_iteration(
    op: JacobianOperator,
    Q: torch.Tensor,
    V_prev: torch.Tensor | None,
    iters: int,
    tol: float,
    cdtype,
    keep_last_graph: bool = False,
) -> PowerResult:
    """Block power iteration with Rayleigh-Ritz (`ops.ritz_step`) on scaled products, stopping
    once every residual is below tol.  Q: [B, k, d] orthonormal start; V_prev: signs to follow.
    keep_last_graph: the last iteration's J Q keeps G's parameter graph (the regularizer's)."""
    for it in range(1, iters + 1):
        last = it == iters
        JQ = op.jvp(Q, create_graph=keep_last_graph and last)
        MQ, c = scaled_product(op, JQ, cdtype)
        V, lam, res, Q_next = ops.ritz_step(Q, MQ, V_prev)
        if last or bool((res < tol).all()):
            break
        Q = Q_next
    return PowerResult(
        V=V, lam=lam, c=c, res=res, Q=Q, Q_next=Q_next, JQ=JQ, iterations=it, graph_kept=keep_last_graph and last
    )


def zero_jacobian_axes(lam: torch.Tensor, *blocks: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Where J(z_b) = 0 (lam[b, 0] <= 0) every vector is an eigenvector: return the blocks
    [B, k, d] with those samples' rows replaced by the first k coordinate axes (deterministic)."""
    zero = lam[:, 0] <= 0  # applied to every sample (no host read-back)
    B, k, d = blocks[0].shape
    axes = torch.eye(d, dtype=blocks[0].dtype, device=blocks[0].device)[:k].expand(B, k, d)
    return tuple(torch.where(zero[:, None, None], axes, X) for X in blocks)


def _power_topk(G, z, k, iters, tol, mode, init, seed) -> TopK:
    """Block power iteration.  From a warm start (`init`) the pairs that pass tol are then checked
    as the top k against a second start (`checked_warm_start`); from the seeded random start they
    are not, since a random block of k vectors misses an eigenvector with probability zero."""
    B, d = z.shape
    cdtype = ops.reference.compute_dtype(z.dtype)
    Q, V_prev = _initial_basis(init, B, k, d, cdtype, z.device, seed)
    r = power_iteration(JacobianOperator(G, z, k, mode), Q, V_prev, iters, tol, cdtype)
    if init is None:
        return _finish(G, z, r.V, r.lam, r.c, r.res, tol, r.iterations, "power", mode, iters)
    V, lam, res, passes, settled = checked_warm_start(G, z, r.V, r.lam, r.res, r.c, iters * k, tol, mode, cdtype)
    return _finish(G, z, V, lam, r.c, res, tol, r.iterations + passes, "power", mode, iters, settled)


def checked_warm_start(
    G,
    z,
    V: torch.Tensor,
    lam: torch.Tensor,
    res: torch.Tensor,
    c: torch.Tensor,
    max_vectors: int,
    tol: float,
    mode: str,
    cdtype,
    relative_floor: float | None = None,
):
    """The pairs of a power iteration from a warm start that pass tol, checked as the top k.

    A warm start that spans an invariant subspace skipping an eigenvector of the top k (the
    previous vectors after two values crossed) converges to it with residuals at rounding.  So
    the samples whose pairs V [B, k, d], lam, res [B, k] pass (`krylov.residual_target`) seed
    `krylov.block_lanczos` with its second start: KRYLOV_SECOND_START random vectors, and a
    missed eigenvalue enters the top k and is solved for, within max_vectors products per sample.
    c [B]: the power iteration's scale (lam are the values of M / c^2).  One host read-back (which
    samples passed); none when tol is 0 (nothing can pass).  Returns (V, lam, res, passes,
    settled [B]) in those units, V sign-aligned with the input."""
    B, k, _ = V.shape
    settled = torch.ones(B, dtype=torch.bool, device=V.device)
    passed = (res < residual_target(lam, tol, relative_floor)).all(-1)
    rows = passed.nonzero().flatten() if tol > 0 else passed.new_zeros(0, dtype=torch.long)
    if len(rows) == 0:
        return V, lam, res, 0, settled
    p = krylov_block(len(rows), k)
    products = _ShrinkingProducts(select_rows(G, rows), z[rows], p, mode, cdtype)
    products.c = c[rows].to(cdtype)  # the power iteration's units, so that its values carry over
    X = V[rows].to(cdtype)
    MX = products(X, torch.arange(len(rows), device=z.device))
    s = block_lanczos(
        products,
        X,
        MX,
        k,
        p,
        max(max_vectors, k + KRYLOV_SECOND_START),
        tol,
        relative_floor=relative_floor,
        second_start=KRYLOV_SECOND_START,
    )
    assert s.settled is not None  # block_lanczos always reports it
    V, lam, res = V.clone(), lam.clone(), res.clone()
    V[rows] = (s.V * ops.reference.sign_align(s.V, X)[..., None]).to(V.dtype)
    lam[rows], res[rows], settled[rows] = s.lam.to(lam.dtype), s.res.to(res.dtype), s.settled
    return V, lam, res, s.passes + -(-k // p), settled


class _ShrinkingProducts:
    """Scaled products M Q / c^2 for the samples still running: the forward graph is rebuilt on
    those samples once they are at most half the rows it was built on (a rebuild costs about one
    pass on them, so it pays for itself within two passes); until then the finished samples'
    rows carry zero vectors."""

    def __init__(self, G, z, p, mode, cdtype):
        self.G, self.z, self.p, self.mode, self.cdtype = G, z, p, mode, cdtype
        self.c = None
        self._build(torch.arange(z.shape[0], device=z.device))

    def _build(self, rows):
        self.rows = rows
        self.op = None  # free the old graph first
        self.op = JacobianOperator(select_rows(self.G, rows), self.z[rows], self.p, self.mode)

    def __call__(self, Q: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Q [b, n, d] for the samples `rows` -> M Q / c^2 [b, n, d], in passes of p vectors."""
        if 2 * len(rows) <= len(self.rows):
            self._build(rows)
        at = torch.searchsorted(self.rows, rows)
        out = []
        for start in range(0, Q.shape[1], self.p):
            part = Q[:, start : start + self.p]
            W = Q.new_zeros(len(self.rows), self.p, Q.shape[2])
            W[at, : part.shape[1]] = part
            c = None if self.c is None else self.c[self.rows]
            MW, c = scaled_product(self.op, self.op.jvp(W), self.cdtype, c, self.rows)
            if self.c is None:
                self.c = c
            out.append(MW[at, : part.shape[1]])
        return torch.cat(out, 1)


def _krylov_topk(G, z, k, iters, tol, mode, init, seed) -> TopK:
    """Batched (block) Lanczos (`krylov.block_lanczos`) with every sample in one pass."""
    B, d = z.shape
    cdtype = ops.reference.compute_dtype(z.dtype)
    p = krylov_block(B, k)
    X, V_prev = _initial_basis(init, B, k, d, cdtype, z.device, seed)
    X = (
        ops.orthonormalize(folded_start(X, p)) if init is not None else X[:, :p]
    )  # p start vectors (krylov.folded_start)
    products = _ShrinkingProducts(G, z, p, mode, cdtype)
    MX = products(X, torch.arange(B, device=z.device))
    r = block_lanczos(products, X, MX, k, p, max(iters * k, X.shape[1]), tol, second_start=KRYLOV_SECOND_START)
    V = r.V * ops.reference.sign_align(r.V, V_prev)[..., None]
    passes = r.passes + -(-X.shape[1] // p)
    return _finish(G, z, V, r.lam, products.c, r.res, tol, passes, "krylov", mode, iters, r.settled)


def _finish(G, z, V, lam, c, res, tol, iterations, method, mode, iters=None, settled=None) -> TopK:
    """Singular values sqrt(lam) c from Ritz values of M / c^2; coordinate axes where J is zero;
    with finite differences their estimated error folded into the residuals (`_fd_error`); the
    once-per-process warning of an unconverged result (iters: the budget, for its message).
    settled [B] bool (krylov): False where the pairs were not checked as the top k (the budget
    ran out first): those samples are not converged whatever their residuals."""
    values = lam.clamp_min(0).sqrt() * c[:, None]
    (V,) = zero_jacobian_axes(lam, V)
    fd_err = None
    if mode == "finite_difference":
        fd_res, fd_err = _fd_residuals(G, z, V, values)
        res = torch.where(lam[:, :1] > 0, fd_res.to(res.dtype), res)  # J = 0: exact axes, residual 0
        fd_err = fd_err.to(res.dtype)
    residuals = res if fd_err is None else res + fd_err
    converged = residuals < tol if settled is None else (residuals < tol) & settled[:, None]
    top = TopK(
        vectors=V,
        values=values,
        residuals=residuals,
        converged=converged,
        iterations=iterations,
        method=method,
        jvp=mode,
        approximate=fd_err is not None,
    )
    _warn_unconverged(top, res, fd_err, tol, iters)
    return top


def _fd_residuals(G, z, V, values) -> tuple[torch.Tensor, torch.Tensor]:
    """([B, k] ||J^T (J_h v) - sigma^2 v|| / sigma_1^2, [B, k] estimated ||(M - M_h) v|| / sigma_1^2)
    for M_h v = J^T (J_h v), the central difference J_h v at the operator's step h (J^T is an
    exact backward): the first is the residual against M_h (power's and krylov's operator; the
    dense method's J_h^T J_h differs, so it is recomputed for every method), the second
    4/3 ||J^T (J_h v - J_{h/2} v)|| (the h^2 term of J_h - J_{h/2} is 3/4 of J_h's, rounding
    makes it larger).  Costs a forward graph, four graph-free forwards and two backwards on B*k
    rows.  V: [B, k, d]; values: [B, k]."""
    B, k, d = V.shape
    op = JacobianOperator(G, z, k, "finite_difference")
    h, z0 = op._fd_step(), op.z_rep.detach()
    v = V.reshape(B * k, d).to(z.dtype)
    with torch.no_grad():

        def jv(step):
            return ((op.G(z0 + step * v) - op.G(z0 - step * v)) / (2 * step)).reshape(B, k, -1)

        JhV = jv(h)
        delta = JhV - jv(h / 2)
    sigma = values[:, :1].detach().to(torch.float64)
    live = sigma > 0
    scale = torch.where(live, sigma, torch.ones_like(sigma))

    def JT(U):  # J^T (U / scale) / scale, in float64
        return (
            op.vjp((U.to(torch.float64) / scale[..., None]).to(U.dtype)).detach().to(torch.float64) / scale[..., None]
        )

    lam = (values.detach().to(torch.float64) / scale) ** 2
    res = (JT(JhV) - lam[..., None] * V.detach().to(torch.float64)).norm(dim=-1)
    err = (4.0 / 3.0) * JT(delta).norm(dim=-1)
    zero = torch.zeros_like(err)
    return (
        torch.where(live, res, zero).nan_to_num(posinf=math.inf),
        torch.where(live, err, zero).nan_to_num(posinf=math.inf),
    )


def _warn_once(kind: str, message: str) -> None:
    """A UserWarning, once per process and kind (the message names figures of the call, so
    Python's registry would not dedupe it)."""
    if kind not in _warned:
        _warned.add(kind)
        warnings.warn(
            message + " (warned once per process; TopK.converged reports every call)", UserWarning, stacklevel=6
        )


def _warn_unconverged(top: TopK, res: torch.Tensor, fd_err: torch.Tensor | None, tol: float, iters) -> None:
    if bool(top.converged.all()):
        return
    worst, missed = float(top.residuals.max()), int((~top.converged).sum())
    what = f"{missed} of {top.converged.numel()} vectors"
    if fd_err is not None and float(fd_err.max()) >= tol:
        _warn_once(
            "finite_difference",
            (
                f"jacobian_topk(jvp='finite_difference', method={top.method!r}): the finite differences' estimated "
                f"error reaches {float(fd_err.max()):.1e} of lambda_1 (largest residual {worst:.1e}), above "
                f"tol={tol:g} on {what}: the result is approximate; use an exact jvp ('double_backward' or "
                "'forward') or a larger tol"
            ),
        )
    elif top.method == "power":
        _warn_once(
            "power",
            (
                f"jacobian_topk(method='power') did not converge in iters={iters}: largest residual {worst:.1e} > "
                f"tol={tol:g} on {what}; raise iters, or use method='krylov' (Lanczos: far fewer products on a "
                "flat spectrum)"
            ),
        )
    elif top.method == "krylov":
        _warn_once(
            "krylov",
            (
                f"jacobian_topk(method='krylov') spent its budget (iters={iters}: {iters}*k products per sample) "
                f"unconverged: largest residual {worst:.1e} (tol={tol:g}) on {what}, or pairs that passed tol "
                "before their check against a second start; raise iters"
            ),
        )
    elif top.method == "dense":
        _warn_once(
            "dense",
            (
                f"jacobian_topk(method='dense'): the eigendecomposition's residuals reach {worst:.1e} > tol={tol:g} on "
                f"{what}: tol is below the rounding of J^T J in {top.values.dtype}; raise tol or use float64 latents"
            ),
        )


def _dense_chunk(B: int, d: int, m: int, itemsize: int, chunk_size: int | None) -> int:
    if chunk_size is not None:
        return min(check_int("chunk_size", chunk_size, 1), d)
    budget = 256 * 2**20  # bytes of output tangents per chunk; activations scale alike
    return max(1, min(d, budget // max(1, B * m * itemsize)))


def _dense_topk(G, z, k, mode, chunk_size, init, tol=1e-4) -> TopK:
    """Exact: J^T [B, d, m] column block by column block with the JVP mode, then eigh of J^T J.
    converged compares the residuals ||M v - lam v|| / lam_1 of the eigh (on the computed
    M = J^T J) to tol; with finite differences the columns are approximate and the residuals
    carry the differences' estimated error."""
    B, d = z.shape
    cdtype = ops.reference.compute_dtype(z.dtype)
    with torch.no_grad():
        m = select_rows(G, slice(0, 1))(z[:1].detach()).numel()
    chunk = _dense_chunk(B, d, m, z.element_size(), chunk_size)
    eye = torch.eye(d, dtype=cdtype, device=z.device)
    Jt = torch.empty(B, d, m, dtype=cdtype, device=z.device)
    for start in range(0, d, chunk):
        stop = min(d, start + chunk)
        op = JacobianOperator(G, z, stop - start, mode)
        Jt[:, start:stop] = op.jvp(eye[start:stop].expand(B, -1, -1)).detach().to(cdtype)
        del op
    c = Jt.abs().flatten(1).amax(1)  # per-sample scale: J^T J / c^2 neither overflows nor underflows
    name_rows(~torch.isfinite(c), "J(z) is not finite (G's derivative is infinite or NaN)")
    c = torch.where(c > 0, c, torch.ones_like(c))
    Jt = Jt / c[:, None, None]
    Mfull = Jt @ Jt.transpose(1, 2)
    del Jt
    lam, U = torch.linalg.eigh(Mfull)
    lam, V = lam.flip(-1)[:, :k], U.flip(-1)[..., :k].transpose(1, 2).contiguous()
    V_prev = None if init is None else _initial_basis(init, B, k, d, cdtype, z.device, None)[1]
    V = V * ops.reference.sign_align(V, V_prev)[..., None]
    MV = (Mfull @ V.transpose(1, 2)).transpose(1, 2)
    res = (MV - lam[..., None] * V).norm(dim=-1)
    res = torch.where(lam[:, :1] > 0, res / lam[:, :1].clamp_min(torch.finfo(cdtype).tiny), torch.zeros_like(res))
    return _finish(G, z, V, lam, c, res, tol, 0, "dense", mode)
