"""Batched top-k right-singular vectors and values of a generator's Jacobian J(z) = dG/dz.

`jacobian_topk` runs block power iteration with Rayleigh-Ritz on M = J^T J, matrix-free, batched
Lanczos on the same products (`krylov.py`), or the exact dense method (the full Jacobian by
chunked forward-mode products, then eigh of J^T J), choosing by a cost model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from . import ops
from .generator import flatten_latents, prepared, select_rows
from .validation import check_callable, check_choice, check_init, check_int, check_iters_tol, check_k, check_seed
from .jacobian import JVP_MODES, JacobianOperator, name_rows
from .krylov import block_lanczos, default_max_basis, krylov_block

METHODS = ("auto", "power", "krylov", "dense")

# Cost model, in units of one generator forward on one row, fitted to bench/bench_topk.py (a
# DCGAN on a CPU): one power iteration folds k vectors and costs about POWER_PAIR_COST forwards
# per vector (a double-backward and a backward); the dense method costs about DENSE_JVP_COST
# forwards per latent axis (each column J e_j is a JVP on a batch folded d times: the forward
# graph, then the double-backward), plus the d x d products and eigh.  Krylov takes the same
# products as power (iters*k vectors per sample at most, krylov_block(B, k) per pass), but once
# its space may fill R^d it needs at most d + p - 1 of them, and each pass adds about
# KRYLOV_PASS_COST forwards of fixed cost (Rayleigh-Ritz, orthogonalization, the pass's own
# overhead).  Fitted to the sweep of bench/bench_topk.py (a DCGAN, B=1, 4, 16, d=8-512): auto
# runs within 3% of the fastest method in 9 of its 10 cases; at B=4, d=32, where the model
# puts krylov and dense within 0.3%, it ran krylov, 1.17x slower than dense.  Power only runs
# when asked for: at the same budget krylov never costs more.
KRYLOV_PASS_COST = 30.0
POWER_PAIR_COST = 3.0
POWER_SETUP_COST = 3.0
DENSE_JVP_COST = 6.0
DENSE_FLOP_COST = 2e-7  # forwards per flop of J^T J and eigh, for a small generator on a CPU


@dataclass
class TopK:
    """Result of `jacobian_topk`.

    vectors: [B, k, d] orthonormal rows, the top-k right-singular vectors of J(z_b).
    values: [B, k] singular values, descending.
    residuals: [B, k] ||M v_i - lambda_i v_i|| / lambda_1 with M = J^T J.
    converged: [B, k] bool, residuals < tol.
    iterations: generator passes used: power iterations, krylov steps (0 for the dense method).
    method: "power", "krylov" or "dense" (what ran).  jvp: the JVP mode that ran.
    """

    vectors: torch.Tensor
    values: torch.Tensor
    residuals: torch.Tensor
    converged: torch.Tensor
    iterations: int
    method: str
    jvp: str


def _initial_basis(init, B: int, k: int, d: int, dtype, device, seed) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Orthonormal starting basis [B, k, d], and the previous V used for sign continuity."""
    if init is None:
        gen = torch.Generator(device="cpu").manual_seed(0 if seed is None else int(seed))
        W = torch.randn(B, k, d, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
        return ops.orthonormalize(W), None
    init = check_init(init, B, k, d).detach().to(device=device, dtype=dtype)
    return ops.orthonormalize(init), init


def estimated_cost(method: str, B: int, k: int, d: int, m: int, iters: int) -> float:
    """Cost model used by method="auto", in forwards of one row (see constants above); `iters`
    is the iteration budget (an upper bound for power and krylov)."""
    if method == "power":
        return B * k * (POWER_SETUP_COST + POWER_PAIR_COST * iters)
    if method == "krylov":
        p = krylov_block(B, k)
        vectors = iters * k if d > default_max_basis(d, k) else min(iters * k, d + p - 1)
        passes = 1 + -(-vectors // p)
        return KRYLOV_PASS_COST * passes + B * (POWER_SETUP_COST * p + POWER_PAIR_COST * vectors)
    flops = B * (2.0 * m * d * d + 10.0 * d ** 3)
    return B * d * DENSE_JVP_COST + DENSE_FLOP_COST * flops


def jacobian_topk(G: Callable, z: torch.Tensor, k: int, *, iters: int = 20, tol: float = 1e-4,
                  method: str = "auto", jvp: str = "auto", init: torch.Tensor | None = None,
                  seed: int | None = None, batchnorm: str = "error", chunk_size: int | None = None) -> TopK:
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
            fewer products than power), "dense" (exact: full Jacobian + eigh) or "auto" (cost
            model: dense or krylov).
        jvp: "double_backward", "forward", "finite_difference" or "auto" (verified choice).
        init: warm start, [k, d] or [B, k, d]; the output signs then agree with it.
        seed: seed of the random starting basis (an int; default 0: results are deterministic).
        batchnorm: "error" (refuse train-mode BatchNorm) or "eval" (use running statistics).
        chunk_size: latent axes per batched JVP for method="dense" (bounds its memory).
    Returns:
        TopK with vectors [B, k, d] (flat: `vectors.reshape(B, k, *z.shape[1:])` for G's latent
        shape), values [B, k], residuals [B, k], converged [B, k].
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
            cheaper = estimated_cost("dense", B, k, d, m, iters) < estimated_cost("krylov", B, k, d, m, iters)
            method = "dense" if cheaper else "krylov"
        if method == "dense":
            return _dense_topk(G, z, k, mode, chunk_size, init)
        if method == "krylov":
            return _krylov_topk(G, z, k, iters, tol, mode, init, seed)
        return _power_topk(G, z, k, iters, tol, mode, init, seed)


def scaled_product(op: JacobianOperator, JQ: torch.Tensor, cdtype, c: torch.Tensor | None = None,
                   rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(M Q / c^2 [B, k, d], c [B]) with c = max |J Q| per sample (unless given): M Q in units
    that neither overflow nor underflow for any scale of G (the Gram of J^T J squares it).
    Raises naming the rows of z where the products are not finite (`rows`: the rows of z that
    op's samples are, when it was built on a subset)."""
    if c is None:
        c = JQ.detach().abs().flatten(1).amax(1).to(cdtype)
        name_rows(~torch.isfinite(c), "J(z) v is not finite (G's derivative is infinite or NaN)", rows)
        c = torch.where(c > 0, c, torch.ones_like(c))
    MQ = op.vjp(JQ.detach() / c.to(JQ.dtype)[:, None, None]).detach().to(cdtype) / c[:, None, None]
    name_rows(~torch.isfinite(MQ).flatten(1).all(1), "J(z)^T J(z) v is not finite (G's derivative is infinite or NaN)",
              rows)
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


def power_iteration(op: JacobianOperator, Q: torch.Tensor, V_prev: torch.Tensor | None, iters: int, tol: float,
                    cdtype, keep_last_graph: bool = False) -> PowerResult:
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
    return PowerResult(V=V, lam=lam, c=c, res=res, Q=Q, Q_next=Q_next, JQ=JQ, iterations=it,
                       graph_kept=keep_last_graph and last)


def zero_jacobian_axes(lam: torch.Tensor, *blocks: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Where J(z_b) = 0 (lam[b, 0] <= 0) every vector is an eigenvector: return the blocks
    [B, k, d] with those samples' rows replaced by the first k coordinate axes (deterministic)."""
    zero = lam[:, 0] <= 0
    if not bool(zero.any()):
        return blocks
    B, k, d = blocks[0].shape
    axes = torch.eye(d, dtype=blocks[0].dtype, device=blocks[0].device)[:k].expand(B, k, d)
    return tuple(torch.where(zero[:, None, None], axes, X) for X in blocks)


def _power_topk(G, z, k, iters, tol, mode, init, seed) -> TopK:
    B, d = z.shape
    cdtype = ops.reference.compute_dtype(z.dtype)
    Q, V_prev = _initial_basis(init, B, k, d, cdtype, z.device, seed)
    r = power_iteration(JacobianOperator(G, z, k, mode), Q, V_prev, iters, tol, cdtype)
    return _finish(r.V, r.lam, r.c, r.res, tol, r.iterations, "power", mode)


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
            part = Q[:, start:start + self.p]
            W = Q.new_zeros(len(self.rows), self.p, Q.shape[2])
            W[at, :part.shape[1]] = part
            c = None if self.c is None else self.c[self.rows]
            MW, c = scaled_product(self.op, self.op.jvp(W), self.cdtype, c, self.rows)
            if self.c is None:
                self.c = c
            out.append(MW[at, :part.shape[1]])
        return torch.cat(out, 1)


def _krylov_topk(G, z, k, iters, tol, mode, init, seed) -> TopK:
    """Batched (block) Lanczos (`krylov.block_lanczos`) with every sample in one pass."""
    B, d = z.shape
    cdtype = ops.reference.compute_dtype(z.dtype)
    p = krylov_block(B, k)
    X, V_prev = _initial_basis(init, B, k, d, cdtype, z.device, seed)
    X = X if init is not None else X[:, :p]  # a cold start needs one block, a warm start all k
    products = _ShrinkingProducts(G, z, p, mode, cdtype)
    MX = products(X, torch.arange(B, device=z.device))
    r = block_lanczos(products, X, MX, k, p, max(iters * k, X.shape[1]), tol)
    V = r.V * ops.reference.sign_align(r.V, V_prev)[..., None]
    passes = r.passes + -(-X.shape[1] // p)
    return _finish(V, r.lam, products.c, r.res, tol, passes, "krylov", mode)


def _finish(V, lam, c, res, tol, iterations, method, mode) -> TopK:
    """Singular values sqrt(lam) c from Ritz values of M / c^2; coordinate axes where J is zero."""
    values = lam.clamp_min(0).sqrt() * c[:, None]
    (V,) = zero_jacobian_axes(lam, V)
    return TopK(vectors=V, values=values, residuals=res, converged=res < tol,
                iterations=iterations, method=method, jvp=mode)


def _dense_chunk(B: int, d: int, m: int, itemsize: int, chunk_size: int | None) -> int:
    if chunk_size is not None:
        return min(check_int("chunk_size", chunk_size, 1), d)
    budget = 256 * 2 ** 20  # bytes of output tangents per chunk; activations scale alike
    return max(1, min(d, budget // max(1, B * m * itemsize)))


def _dense_topk(G, z, k, mode, chunk_size, init) -> TopK:
    """Exact: J^T [B, d, m] column block by column block with the JVP mode, then eigh of J^T J."""
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
    return _finish(V, lam, c, res, float("inf"), 0, "dense", mode)
