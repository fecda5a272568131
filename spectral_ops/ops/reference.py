"""Pure-torch reference implementations of the fused ops: the test oracle.

Every backend (C++ CPU, CUDA, Triton) is tested against these functions.  They are written for
clarity, batched over the leading dimension B, and are differentiable by plain autograd.  Only
the ops' maths is here; the helpers the backends and the library share (the compute dtype, the
rank tolerance, ritz_step's input and output handling, the sign convention, the loss kinds)
are in common.py.

Shapes: B samples, k vectors, d latent dimensions.  Vectors are stored as rows: V[b, i, :].
"""

from __future__ import annotations

import torch

from .common import (
    LOSS_KINDS,
    WEIGHT_KINDS,
    compute_dtype,
    finite_samples,
    max_abs_scale,
    nan_where,
    rank_tolerance,
    relative_residual,
    ritz_inputs,
    ritz_outputs,
    sign_align,
)


def scaled_norm(x: torch.Tensor) -> torch.Tensor:
    """||x|| over the last dim without overflow or underflow in the squares: m ||x / m||."""
    m = max_abs_scale(x, -1)
    return m.squeeze(-1) * (x / m).norm(dim=-1)


def orthonormalize(W: torch.Tensor) -> torch.Tensor:
    """Orthonormalize the k rows of each W[b] by Gram-Schmidt with re-orthogonalization (CGS2).

    Args:
        W: [B, k, d] with k <= d.
    Returns:
        Q: [B, k, d], orthonormal rows, Q[b] = L^{-1} W[b] with L lower-triangular, positive
        diagonal (so q_i . w_i > 0: a deterministic sign).  A row that is (numerically) in the
        span of the previous rows is replaced by the first coordinate axis e_j (lowest j) that is
        far from that span, orthonormalized, so the result is always orthonormal.
        Scale-invariant: each row is divided by its largest |entry| first (Q does not change), so
        no square overflows or underflows and the rank rule is relative to each row's own scale;
        only all-zero rows count as zero.  A sample with a NaN or Inf entry gives an all-NaN
        Q[b] (and a zero gradient); the other samples are unaffected.
    """
    out_dtype = W.dtype
    W = W.to(compute_dtype(W.dtype))
    B, k, d = W.shape
    finite = finite_samples(W)
    W = torch.where(finite[:, None, None], W, torch.zeros_like(W))
    W = W / max_abs_scale(W, -1)
    tol = rank_tolerance(W.dtype)
    eye = torch.eye(d, dtype=W.dtype, device=W.device)
    rows: list[torch.Tensor] = []
    for i in range(k):
        w = W[:, i, :]
        r = _project_out(w, rows)
        norm_w = w.norm(dim=-1)
        norm_r = r.norm(dim=-1)
        dependent = norm_r <= tol * norm_w
        dependent = dependent | (norm_w == 0)
        if bool(dependent.any()):
            r = torch.where(dependent[:, None], _first_free_axis(rows, eye, B), r)
            norm_r = r.norm(dim=-1)
        rows.append(r / norm_r[:, None])
    return nan_where(~finite, torch.stack(rows, dim=1)).to(out_dtype)


def _project_out(w: torch.Tensor, rows: list[torch.Tensor]) -> torch.Tensor:
    """w minus its projection on the span of `rows`, done twice (CGS2).  w: [B, d]."""
    if not rows:
        return w
    Q = torch.stack(rows, dim=1)  # [B, i, d]
    for _ in range(2):
        w = w - torch.einsum("bi,bid->bd", torch.einsum("bid,bd->bi", Q, w), Q)
    return w


def _first_free_axis(rows: list[torch.Tensor], eye: torch.Tensor, B: int) -> torch.Tensor:
    """For each sample, the residual of the lowest-index axis e_j with residual norm > 1/2."""
    d = eye.shape[0]
    candidates = _project_out(
        eye.expand(B, d, d).reshape(B * d, d), [r.repeat_interleave(d, dim=0) for r in rows]
    ).reshape(B, d, d)
    good = candidates.norm(dim=-1) > 0.5  # [B, d]; at least d - len(rows) axes qualify
    j = torch.argmax(good.to(torch.int8), dim=-1)  # first True
    return candidates[torch.arange(B, device=eye.device), j]


def orthonormalize_backward(grad_Q: torch.Tensor, Q: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """Gradient of orthonormalize: W = L Q with L = W Q^T lower-triangular (the QR of W^T).

    grad_W = L^{-T} (grad_Q + sym(M) Q) with M = -grad_Q Q^T, sym(M) = tril(M,-1) + tril(M,-1)^T
    + diag(M).  Rows the forward replaced (L_ii <= rank_tolerance * ||w_i||, where orthonormalize
    is not differentiable) get a zero gradient, and so do all rows of a sample with NaN or Inf
    (its Q is NaN).  All shapes [B, k, d]; k x k work is batched.
    """
    out_dtype = grad_Q.dtype
    ct = compute_dtype(W.dtype)
    grad_Q, Q, W = grad_Q.to(ct), Q.to(ct), W.to(ct)
    L = torch.tril(W @ Q.transpose(-1, -2))
    M = -(grad_Q @ Q.transpose(-1, -2))
    lower = torch.tril(M, -1)
    sym = lower + lower.transpose(-1, -2) + torch.diag_embed(torch.diagonal(M, dim1=-2, dim2=-1))
    rhs = grad_Q + sym @ Q
    diag = torch.diagonal(L, dim1=-2, dim2=-1)
    replaced = ~(diag > rank_tolerance(ct) * scaled_norm(W))  # [B, k]
    # Solve L^T X = rhs with X_i = 0 on replaced rows: unit diagonal, zero column below it, zero rhs
    # (by where, not by a product with 0, so that a NaN there does not survive).
    keep = ~replaced
    L = torch.where(keep[:, None, :], L, torch.zeros_like(L)) + torch.diag_embed(replaced.to(ct))
    rhs = torch.where(keep[..., None], rhs, torch.zeros_like(rhs))
    return torch.linalg.solve_triangular(L.transpose(-1, -2), rhs, upper=True).to(out_dtype)


def ritz_step(Q: torch.Tensor, MQ: torch.Tensor, V_prev: torch.Tensor | None = None):
    """The power-iteration epilogue: Rayleigh-Ritz on span(Q) with the product MQ = M Q.

    Args:
        Q: [B, k, d] orthonormal rows.
        MQ: [B, k, d], rows M q_i with M = J^T J (symmetric PSD).
        V_prev: optional [B, k, d]; if given, each output vector takes the sign agreeing with it
            (where v_i . v_prev_i is NaN, the sign rule without V_prev; see sign_align).
    Returns:
        V: [B, k, d] Ritz vectors sorted by Ritz value, descending, sign-fixed.
        lam: [B, k] Ritz values (eigenvalue estimates of M), descending.
        res: [B, k] residuals ||M v_i - lam_i v_i|| / lam_1 (0 where lam_1 == 0).
        Q_next: [B, k, d] orthonormalize(M V), the next power-iteration basis.
    The work runs on MQ / max|MQ[b]|, so ritz_step(Q, c MQ) gives c lam and the same V, res and
    Q_next for any c > 0 (lam overflows only where the true values exceed the dtype's range).  A
    sample whose Q or MQ holds NaN or Inf gets NaN in all four outputs (never a small residual,
    never an error); the other samples are unaffected.
    """
    out_dtype = Q.dtype
    finite, Q, MQ, scale = ritz_inputs(Q, MQ)
    H = Q @ MQ.transpose(-1, -2)
    H = 0.5 * (H + H.transpose(-1, -2))
    evals, U = torch.linalg.eigh(H)  # ascending
    evals, U = evals.flip(-1), U.flip(-1)
    V = U.transpose(-1, -2) @ Q
    MV = U.transpose(-1, -2) @ MQ
    signs = sign_align(V, V_prev)
    V, MV = V * signs[..., None], MV * signs[..., None]
    res = relative_residual(MV, V, evals)
    Q_next = orthonormalize(MV)
    return ritz_outputs(finite, scale, V, evals, res, Q_next, out_dtype)


def vector_weights(S: torch.Tensor, weights: str) -> torch.Tensor:
    """Per-vector weights [B, k] that sum to 1: uniform, or S / sum(S) (uniform where sum is 0)."""
    if weights == "uniform":
        return torch.full_like(S, 1.0 / S.shape[-1])
    total = S.sum(-1, keepdim=True)
    uniform = torch.full_like(S, 1.0 / S.shape[-1])
    return torch.where(total > 0, S / torch.where(total > 0, total, torch.ones_like(total)), uniform)


def alignment_loss(V: torch.Tensor, S: torch.Tensor, kind: str = "l1", weights: str = "uniform") -> torch.Tensor:
    """Per-sample axis-alignment loss in [0, 1].

    Args:
        V: [B, k, d] unit rows (right-singular vectors).
        S: [B, k] singular values (>= 0; any scale: the loss reads S / max S per sample).
        kind: "l1" (||v_i||_1 - 1)/(sqrt(d) - 1); "assigned" 1 - v_{i,i}^2; "offdiag" the
            off-diagonal energy share of A = sum_i s_i^2 v_i v_i^T (a per-sample term, so the
            weights do not apply to it).
        weights: "uniform" or "singular" (proportional to S).
    Returns:
        [B] loss per sample.
    """
    out_dtype = V.dtype
    ct = compute_dtype(V.dtype)
    V, S = V.to(ct), S.to(ct)
    B, k, d = V.shape
    # Scale-free in S: read S / max S, so fourth powers neither overflow nor underflow; with the
    # maximum held fixed, autograd gives dL/dS = (dL/dS') / max S, exact by Euler's theorem.
    top = S.detach().amax(-1, keepdim=True)
    S = S / torch.where(top > 0, top, torch.ones_like(top))
    if weights not in WEIGHT_KINDS:
        raise ValueError(f"weights must be one of {WEIGHT_KINDS}, got {weights!r}")
    if kind == "offdiag":
        s2 = S * S
        gram = V @ V.transpose(-1, -2)  # [B, k, k]
        fro2 = (s2[:, :, None] * s2[:, None, :] * gram * gram).sum((-1, -2))
        diag = (s2[:, :, None] * V * V).sum(1)  # [B, d]
        diag2 = (diag * diag).sum(-1)
        safe = torch.where(fro2 > 0, fro2, torch.ones_like(fro2))
        return torch.where(fro2 > 0, (fro2 - diag2) / safe, torch.zeros_like(fro2)).to(out_dtype)
    if kind == "l1":
        # d == 1: every unit vector is an axis; keep the graph so backward gives zero, not an error.
        per_vector = (V.abs().sum(-1) - 1.0) / (d**0.5 - 1.0) if d > 1 else 0.0 * V.sum(-1)
    elif kind == "assigned":
        idx = torch.arange(k, device=V.device)
        per_vector = 1.0 - V[:, idx, idx] ** 2
    else:
        raise ValueError(f"kind must be one of {LOSS_KINDS}, got {kind!r}")
    return (vector_weights(S, weights) * per_vector).sum(-1).to(out_dtype)
