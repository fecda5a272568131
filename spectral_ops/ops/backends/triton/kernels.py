"""Triton kernels for the fused ops: one program per sample, the whole [k, d] tile in registers.

Inputs arrive contiguous in the compute dtype (float32 or float64).  BLOCK_K and BLOCK_D are
k and d rounded up to powers of two; padded rows and columns are masked to zero.
"""

import triton
import triton.language as tl

from spectral_ops.ops.common import LOSS_KINDS, WEIGHT_KINDS

# A kind's code is its position in common.LOSS_KINDS / WEIGHT_KINDS, as in the C++ kernels.
LOSS_CODES = {kind: code for code, kind in enumerate(LOSS_KINDS)}
WEIGHT_CODES = {kind: code for code, kind in enumerate(WEIGHT_KINDS)}
# The codes the kernels branch on (the KIND and WEIGHTS constexpr arguments).
_L1 = tl.constexpr(LOSS_CODES["l1"])
_OFFDIAG = tl.constexpr(LOSS_CODES["offdiag"])
_SINGULAR = tl.constexpr(WEIGHT_CODES["singular"])


@triton.jit
def _row(tile, rows, i):
    """Row i of a [BLOCK_K, BLOCK_D] tile as a [BLOCK_D] vector."""
    return tl.sum(tl.where(rows[:, None] == i, tile, 0.0), axis=0)


@triton.jit
def _project_out(Q, r):
    """r minus its projection on the rows of Q (rows not yet built are zero), twice (CGS2)."""
    for _ in tl.static_range(2):
        coef = tl.sum(Q * r[None, :], axis=1)
        r = r - tl.sum(coef[:, None] * Q, axis=0)
    return r


@triton.jit
def _scaled_norm(w):
    """||w|| of a [BLOCK_D] vector as m ||w / m||, m = max |w_j| (no overflow or underflow)."""
    top = tl.max(tl.abs(w), axis=0)
    scale = tl.where(top > 0.0, top, 1.0)
    x = w / scale
    return scale * tl.sqrt(tl.sum(x * x, axis=0))


@triton.jit
def _gram_schmidt(X, k, d, tol, rows, cols):
    """orthonormalize one [BLOCK_K, BLOCK_D] tile (see reference.orthonormalize): each row divided
    by its largest |entry| first; a tile holding NaN or Inf gives NaN."""
    top = tl.max(tl.abs(X), axis=1)
    X = X / tl.where(top > 0.0, top, 1.0)[:, None]
    # Entries in [-1, 1]: a finite row has norm^2 <= d, one with NaN or Inf (Inf / Inf) has NaN.
    norms2 = tl.sum(X * X, axis=1)
    finite = tl.sum(tl.where(rows < k, tl.where(norms2 <= d, 0, 1), 0), axis=0) == 0
    Q = tl.zeros_like(X)
    for i in range(k):
        w = _row(X, rows, i)
        norm_w2 = tl.sum(w * w, axis=0)
        r = _project_out(Q, w)
        norm_r2 = tl.sum(r * r, axis=0)
        dependent = (norm_w2 == 0.0) | (norm_r2 <= tol * tol * norm_w2)
        # Lowest axis e_j with ||e_j - P e_j||^2 = 1 - sum_l Q[l, j]^2 > 1/4.
        captured = tl.sum(Q * Q, axis=0)
        free = ((1.0 - captured) > 0.25) & (cols < d)
        axis = tl.min(tl.where(free, cols, d), axis=0)
        axis_residual = _project_out(Q, tl.where(cols == axis, 1.0, 0.0).to(X.dtype))
        r = tl.where(dependent, axis_residual, r)
        q = r / tl.sqrt(tl.sum(r * r, axis=0))
        Q = tl.where(rows[:, None] == i, q[None, :], Q)
    return tl.where(finite, Q, float("nan"))


@triton.jit
def orthonormalize_kernel(W, Q, k, d, tol, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
    sample = tl.program_id(0).to(tl.int64)
    rows = tl.arange(0, BLOCK_K)
    cols = tl.arange(0, BLOCK_D)
    offsets = sample * k * d + rows[:, None] * d + cols[None, :]
    mask = (rows[:, None] < k) & (cols[None, :] < d)
    X = tl.load(W + offsets, mask=mask, other=0.0)
    tl.store(Q + offsets, _gram_schmidt(X, k, d, tol, rows, cols), mask=mask)


@triton.jit
def orthonormalize_backward_kernel(G, Q, W, GW, k, d, tol, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
    """grad_W = L^{-T} (grad_Q + sym(M) Q), back-substitution from the last row (see reference)."""
    sample = tl.program_id(0).to(tl.int64)
    rows = tl.arange(0, BLOCK_K)
    cols = tl.arange(0, BLOCK_D)
    offsets = sample * k * d + rows[:, None] * d + cols[None, :]
    mask = (rows[:, None] < k) & (cols[None, :] < d)
    Gt = tl.load(G + offsets, mask=mask, other=0.0)
    Qt = tl.load(Q + offsets, mask=mask, other=0.0)
    Wt = tl.load(W + offsets, mask=mask, other=0.0)
    X = tl.zeros_like(Gt)
    for step in range(k):
        i = k - 1 - step
        g_i = _row(Gt, rows, i)
        q_i = _row(Qt, rows, i)
        w_i = _row(Wt, rows, i)
        L_col = tl.sum(Wt * q_i[None, :], axis=1)  # L[l, i] = w_l . q_i
        M_row = -tl.sum(Qt * g_i[None, :], axis=1)  # M[i, l] = -g_i . q_l
        M_col = -tl.sum(Gt * q_i[None, :], axis=1)  # M[l, i] = -g_l . q_i
        sym = tl.where(rows < i, M_row, M_col)
        rhs = g_i + tl.sum(sym[:, None] * Qt, axis=0)
        rhs = rhs - tl.sum(tl.where(rows > i, L_col, 0.0)[:, None] * X, axis=0)
        L_ii = tl.sum(w_i * q_i, axis=0)
        kept = L_ii > tol * _scaled_norm(w_i)
        x = tl.where(kept, rhs / tl.where(kept, L_ii, 1.0), 0.0)
        X = tl.where(rows[:, None] == i, x[None, :], X)
    tl.store(GW + offsets, X, mask=mask)


@triton.jit
def ritz_rotate_kernel(
    Q,
    MQ,
    U,
    evals,
    V_prev,
    V,
    res,
    Q_next,
    k,
    d,
    tol,
    HAS_PREV: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Given the k x k eigenvectors U (columns, sorted descending) of sym(Q MQ^T): rotate, fix
    signs, the residual norms ||M v_i - lam_i v_i|| (made relative to lam_1 by the caller,
    common.residual_over_top), and Q_next = orthonormalize(M V)."""
    sample = tl.program_id(0).to(tl.int64)
    rows = tl.arange(0, BLOCK_K)
    cols = tl.arange(0, BLOCK_D)
    offsets = sample * k * d + rows[:, None] * d + cols[None, :]
    mask = (rows[:, None] < k) & (cols[None, :] < d)
    Qt = tl.load(Q + offsets, mask=mask, other=0.0)
    MQt = tl.load(MQ + offsets, mask=mask, other=0.0)
    if HAS_PREV:
        Pt = tl.load(V_prev + offsets, mask=mask, other=0.0)
    lam = tl.load(evals + sample * k + rows, mask=rows < k, other=0.0)
    Vt = tl.zeros_like(Qt)
    MVt = tl.zeros_like(Qt)
    residuals = tl.zeros_like(lam)
    for i in range(k):
        u = tl.load(U + sample * k * k + rows * k + i, mask=rows < k, other=0.0)  # column i
        v = tl.sum(u[:, None] * Qt, axis=0)
        mv = tl.sum(u[:, None] * MQt, axis=0)
        lead = tl.argmax(tl.abs(v), axis=0, tie_break_left=True)
        flip = tl.sum(tl.where(cols == lead, v, 0.0), axis=0) < 0.0
        if HAS_PREV:  # v . v_prev >= 0, unless that product is NaN (then the rule above)
            dot = tl.sum(v * _row(Pt, rows, i), axis=0)
            flip = tl.where((dot < 0.0) | (dot >= 0.0), dot < 0.0, flip)
        sign = tl.where(flip, -1.0, 1.0)
        v = v * sign
        mv = mv * sign
        lam_i = tl.sum(tl.where(rows == i, lam, 0.0), axis=0)
        err = mv - lam_i * v
        residuals = tl.where(rows == i, tl.sqrt(tl.sum(err * err, axis=0)), residuals)
        Vt = tl.where(rows[:, None] == i, v[None, :], Vt)
        MVt = tl.where(rows[:, None] == i, mv[None, :], MVt)
    tl.store(V + offsets, Vt, mask=mask)
    tl.store(res + sample * k + rows, residuals, mask=rows < k)
    tl.store(Q_next + offsets, _gram_schmidt(MVt, k, d, tol, rows, cols), mask=mask)


@triton.jit
def _unit_scale(St):
    """max_i S_i, or 1 where S is all zero: the loss reads S / max S (scale-free; csrc/common/alignment.h
    `UnitScaled`), and dL/dS = (dL/dS') / max S."""
    top = tl.max(St, axis=0)
    return tl.where(top > 0.0, top, 1.0)


@triton.jit
def _vector_weights(S, k, WEIGHTS: tl.constexpr):
    total = tl.sum(S, axis=0)
    uniform = 1.0 / (tl.zeros_like(S) + k)  # in S's dtype (a scalar 1.0 / k would be float32)
    if WEIGHTS == _SINGULAR:
        return tl.where(total > 0.0, S / tl.where(total > 0.0, total, 1.0), uniform), total
    return uniform, total


@triton.jit
def _l1_scale(S, d):
    """1 / (sqrt(d) - 1) (0 for d == 1), per row, in S's dtype."""
    dims = tl.zeros_like(S) + d
    return tl.where(dims > 1.0, 1.0 / tl.where(dims > 1.0, tl.sqrt(dims) - 1.0, 1.0), 0.0)


@triton.jit
def _offdiag_fro2(Vt, s2, rows, k):
    fro2 = tl.sum(tl.zeros_like(s2), axis=0)
    for i in range(k):
        gram_i = tl.sum(Vt * _row(Vt, rows, i)[None, :], axis=1)  # G[i, :]
        s2_i = tl.sum(tl.where(rows == i, s2, 0.0), axis=0)
        fro2 += s2_i * tl.sum(s2 * gram_i * gram_i, axis=0)
    return fro2


@triton.jit
def alignment_loss_kernel(
    V, S, loss, k, d, KIND: tl.constexpr, WEIGHTS: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr
):
    sample = tl.program_id(0).to(tl.int64)
    rows = tl.arange(0, BLOCK_K)
    cols = tl.arange(0, BLOCK_D)
    mask = (rows[:, None] < k) & (cols[None, :] < d)
    Vt = tl.load(V + sample * k * d + rows[:, None] * d + cols[None, :], mask=mask, other=0.0)
    St = tl.load(S + sample * k + rows, mask=rows < k, other=0.0)
    St = St / _unit_scale(St)
    if KIND == _OFFDIAG:
        s2 = St * St
        fro2 = _offdiag_fro2(Vt, s2, rows, k)
        D = tl.sum(s2[:, None] * Vt * Vt, axis=0)
        diag2 = tl.sum(D * D, axis=0)
        value = tl.where(fro2 > 0.0, (fro2 - diag2) / tl.where(fro2 > 0.0, fro2, 1.0), 0.0)
    else:
        if KIND == _L1:
            per_vector = (tl.sum(tl.abs(Vt), axis=1) - 1.0) * _l1_scale(St, d)
        else:
            diag = tl.sum(tl.where(rows[:, None] == cols[None, :], Vt, 0.0), axis=1)
            per_vector = 1.0 - diag * diag
        weight, total = _vector_weights(St, k, WEIGHTS)
        value = tl.sum(tl.where(rows < k, weight * per_vector, 0.0), axis=0)
    tl.store(loss + sample, value)


@triton.jit
def alignment_loss_backward_kernel(
    grad,
    V,
    S,
    grad_V,
    grad_S,
    k,
    d,
    KIND: tl.constexpr,
    WEIGHTS: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    sample = tl.program_id(0).to(tl.int64)
    rows = tl.arange(0, BLOCK_K)
    cols = tl.arange(0, BLOCK_D)
    offsets = sample * k * d + rows[:, None] * d + cols[None, :]
    mask = (rows[:, None] < k) & (cols[None, :] < d)
    Vt = tl.load(V + offsets, mask=mask, other=0.0)
    St = tl.load(S + sample * k + rows, mask=rows < k, other=0.0)
    top = _unit_scale(St)
    St = St / top
    g = tl.load(grad + sample)
    if KIND == _OFFDIAG:
        s2 = St * St
        fro2 = _offdiag_fro2(Vt, s2, rows, k)
        D = tl.sum(s2[:, None] * Vt * Vt, axis=0)
        diag2 = tl.sum(D * D, axis=0)
        live = fro2 > 0.0
        inv_fro2 = tl.where(live, 1.0 / tl.where(live, fro2, 1.0), 0.0)
        ratio = diag2 * inv_fro2 * inv_fro2
        GV = tl.zeros_like(Vt)
        GS = tl.zeros_like(St)
        for i in range(k):
            v_i = _row(Vt, rows, i)
            gram_i = tl.sum(Vt * v_i[None, :], axis=1)
            s_i = tl.sum(tl.where(rows == i, St, 0.0), axis=0)
            mix = tl.sum((s2 * gram_i)[:, None] * Vt, axis=0)
            row_grad = g * 4.0 * s_i * s_i * (-D * v_i * inv_fro2 + ratio * mix)
            GV = tl.where(rows[:, None] == i, row_grad[None, :], GV)
            dv = tl.sum(D * v_i * v_i, axis=0)
            gg = tl.sum(s2 * gram_i * gram_i, axis=0)
            GS = tl.where(rows == i, g * 2.0 * s_i * (-2.0 * dv * inv_fro2 + 2.0 * ratio * gg), GS)
    else:
        weight, total = _vector_weights(St, k, WEIGHTS)
        if KIND == _L1:
            sign = tl.where(Vt > 0.0, 1.0, tl.where(Vt < 0.0, -1.0, 0.0))
            GV = (g * weight * _l1_scale(St, d))[:, None] * sign
            per_vector = (tl.sum(tl.abs(Vt), axis=1) - 1.0) * _l1_scale(St, d)
        else:
            on_diag = rows[:, None] == cols[None, :]
            GV = tl.where(on_diag, (-2.0 * g * weight)[:, None] * Vt, 0.0)
            diag = tl.sum(tl.where(on_diag, Vt, 0.0), axis=1)
            per_vector = 1.0 - diag * diag
        per_vector = tl.where(rows < k, per_vector, 0.0)
        if WEIGHTS == _SINGULAR:
            safe = tl.where(total > 0.0, total, 1.0)
            weighted = tl.sum(St * per_vector, axis=0)
            GS = tl.where(total > 0.0, g * (per_vector / safe - weighted / (safe * safe)), 0.0)
        else:
            GS = tl.zeros_like(St)
    tl.store(grad_V + offsets, GV, mask=mask)
    tl.store(grad_S + sample * k + rows, GS / top, mask=rows < k)
