"""Block power iteration with Rayleigh-Ritz on the scaled products M Q / c^2, M = J^T J:
`power_iteration` (shared with the regularizer), `jacobian_topk(method="power")` (`_power_topk`)
and the check of a warm start's pairs as the top k (`checked_warm_start`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import ops
from .latents import select_rows
from .jacobian import JacobianOperator
from .krylov import KRYLOV_SECOND_START, _ShrinkingProducts, block_lanczos, krylov_block, residual_target
from .solver_common import Solved, _initial_basis, scaled_product


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


def _power_topk(G, z, k, iters, tol, mode, init, seed) -> Solved:
    """Block power iteration.  From a warm start (`init`) the pairs that pass tol are then checked
    as the top k against a second start (`checked_warm_start`); from the seeded random start they
    are not, since a random block of k vectors misses an eigenvector with probability zero."""
    B, d = z.shape
    cdtype = ops.compute_dtype(z.dtype)
    Q, V_prev = _initial_basis(init, B, k, d, cdtype, z.device, seed)
    r = power_iteration(JacobianOperator(G, z, k, mode), Q, V_prev, iters, tol, cdtype)
    if init is None:
        return Solved(r.V, r.lam, r.c, r.res, r.iterations)
    V, lam, res, passes, settled = checked_warm_start(G, z, r.V, r.lam, r.res, r.c, iters * k, tol, mode, cdtype)
    return Solved(V, lam, r.c, res, r.iterations + passes, settled)


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
    V[rows] = (s.V * ops.common.sign_align(s.V, X)[..., None]).to(V.dtype)
    lam[rows], res[rows], settled[rows] = s.lam.to(lam.dtype), s.res.to(res.dtype), s.settled
    return V, lam, res, s.passes + -(-k // p), settled
