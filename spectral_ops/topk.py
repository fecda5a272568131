"""Batched top-k right-singular vectors and values of a generator's Jacobian J(z) = dG/dz.

`jacobian_topk` runs block power iteration with Rayleigh-Ritz on M = J^T J, matrix-free
(`power.py`), batched Lanczos on the same products (`krylov.py`), or the exact dense method (the
full Jacobian by chunked forward-mode products, then eigh of J^T J, `dense.py`), choosing by a
cost model fed with the product costs timed on the caller's G (`cost.py`: `measure_costs`,
cached per generator).  Each solver hands back a `solver_common.Solved` (what they share is in
solver_common.py, below them all); `_finish` here turns it into the `TopK`.

Honest flags: `converged` is measured against the exact operator.  With finite differences the
solver's residual is against the differences' operator, so one more product at half the step
estimates the differences' error on M v and adds it to the residual (`TopK.approximate` is True).
An unconverged power or krylov result, or finite differences too inaccurate for tol, warns once
per process and kind (a UserWarning naming the residual and the setting to change).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from . import ops
from .cost import DENSE_MARGIN, estimated_cost, measure_costs
from .dense import _dense_chunk, _dense_topk
from .generator import prepared
from .latents import flatten_latents, select_rows
from .probes import measured
from .jacobian import JVP_MODES, JacobianOperator
from .krylov import _krylov_topk
from .power import _power_topk, zero_jacobian_axes
from .solver_common import Solved, _initial_basis
from .validation import check_callable, check_choice, check_iters_tol, check_k, check_seed

METHODS = ("auto", "power", "krylov", "dense")

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
            solved = _dense_topk(G, z, k, mode, chunk_size, init)
        elif method == "krylov":
            solved = _krylov_topk(G, z, k, iters, tol, mode, init, seed)
        else:
            solved = _power_topk(G, z, k, iters, tol, mode, init, seed)
        return _finish(G, z, solved, tol, method, mode, iters)


def _finish(G, z, solved: Solved, tol, method, mode, iters) -> TopK:
    """The TopK of a solver's answer: singular values sqrt(lam) c from the values of M / c^2;
    coordinate axes where J is zero; with finite differences their estimated error folded into
    the residuals (`_fd_residuals`); the once-per-process warning of an unconverged result
    (iters: the budget, for its message).  Where `solved.settled` is False (krylov, power from a
    warm start) the pairs were not checked as the top k (the budget ran out first): those
    samples are not converged whatever their residuals."""
    V, lam, c, res, settled = solved.V, solved.lam, solved.c, solved.res, solved.settled
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
        iterations=solved.iterations,
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

    lam = (values.detach().to(torch.float64) / scale) ** 2  # lam_1 = 1 where live, 0 where J = 0
    res = ops.common.relative_residual(JT(JhV), V.detach().to(torch.float64), lam)
    err = (4.0 / 3.0) * JT(delta).norm(dim=-1)
    return (
        res.nan_to_num(posinf=math.inf),
        torch.where(live, err, torch.zeros_like(err)).nan_to_num(posinf=math.inf),
    )


def _warn_once(kind: str, message: str) -> None:
    """A UserWarning, once per process and kind (the message names figures of the call, so
    Python's registry would not dedupe it)."""
    if kind not in _warned:
        _warned.add(kind)
        # stacklevel: _warn_once, _warn_unconverged, _finish, jacobian_topk, then its caller
        warnings.warn(
            message + " (warned once per process; TopK.converged reports every call)", UserWarning, stacklevel=5
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
