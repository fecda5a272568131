// Per-sample Gram-Schmidt (CGS2) and its backward, shared by the CPU and CUDA backends.
// Rows are contiguous: row i of a [k, d] sample starts at i * d.  See serial_context.h for Ctx.
#pragma once

#include "batch.h"
#include "macros.h"

namespace spectral_ops {

// q <- q - P q, twice (CGS2), where P projects on the first `count` rows of Q (orthonormal).
// coef: per-thread scratch of at least `count` entries.  Each pass is one batched reduction of
// the `count` coefficients and one update; q is read and written only at this thread's columns
// (the same split in sums and for_each_row_sum), so neither needs a barrier of its own.
template <typename T, typename Ctx>
SPECTRAL_HD void project_out_rows(const Ctx& ctx, const T* Q, int count, T* q, int d, T* coef) {
  if (count == 0) return;
  for (int pass = 0; pass < 2; ++pass) {
    for (int l0 = 0; l0 < count; l0 += kMaxBatchedSums) {  // one chunk for k <= kMaxBatchedSums + 1
      const int m = count - l0 < kMaxBatchedSums ? count - l0 : kMaxBatchedSums;
      ctx.template sums<T>(
          m, d,
          [&](int c) {
            const T* ql = Q + (long)(l0 + c) * d;
            return [=](int j) { return ql[j] * q[j]; };
          },
          [&](int c, T value) { coef[l0 + c] = value; });
    }
    ctx.template for_each_row_sum<T>(
        d, count, [&](int l, int j) { return coef[l] * Q[(long)l * d + j]; },
        [&](int j, T projection) { q[j] -= projection; });
  }
}

// The norm of row w (d entries) without overflow or underflow in its squares: m ||w / m|| with
// m = max_j |w_j|.  NaN if w holds NaN or Inf.  Every thread gets the value.
template <typename T, typename Ctx>
SPECTRAL_HD T scaled_norm(const Ctx& ctx, const T* w, int d) {
  const T top = ctx.template max_abs<T>(d, [&](int j) { return w[j]; });
  const T scale = top > T(0) ? top : T(1);
  return scale * sqrt_(ctx.template sum<T>(d, [&](int j) {
           const T x = w[j] / scale;
           return x * x;
         }));
}

// Q = orthonormalize(W) for one sample: CGS2 in row order, q_i . w_i > 0.  Each row is first
// divided by its largest |entry| (Q does not change), so that its squares neither overflow nor
// underflow at any scale of W and the rule below is relative to the row's own scale: a row whose
// residual is below rank_tolerance * ||w_i|| (or w_i == 0) is replaced by the lowest coordinate
// axis e_j with ||e_j - P e_j|| > 1/2, orthonormalized.  A sample holding NaN or Inf gives an
// all-NaN Q.  W and Q are [k, d]; Q may alias W.
template <typename T, typename Ctx>
SPECTRAL_HD void orthonormalize_rows(const Ctx& ctx, const T* W, T* Q, int k, int d, T* coef) {
  const T tol = rank_tolerance<T>();
  for (int i = 0; i < k; ++i) {
    T* q = Q + (long)i * d;
    const T* w = W + (long)i * d;
    const T top = ctx.template max_abs<T>(d, [&](int j) { return w[j]; });
    const T scale = top > T(0) ? top : T(1);
    // Each thread writes the entries it read (the same split as max_abs), so q may alias w; and
    // from here on every thread reads and writes only its own columns of Q outside the
    // reductions, so only the reductions synchronise.
    ctx.for_each(d, [&](int j) { q[j] = w[j] / scale; });
    const T norm_w2 = ctx.template sum<T>(d, [&](int j) { return q[j] * q[j]; });
    // Entries in [-1, 1]: norm_w2 <= d when the row is finite; NaN when it held NaN or Inf
    // (Inf / Inf).  The same branch on every thread.
    if (!(norm_w2 <= T(d))) {
      const T nan = quiet_nan<T>();
      ctx.for_each(k * d, [&](int idx) { Q[idx] = nan; });
      ctx.sync();
      return;
    }
    project_out_rows(ctx, Q, i, q, d, coef);
    T norm_r2 = ctx.template sum<T>(d, [&](int j) { return q[j] * q[j]; });
    if (norm_w2 == T(0) || norm_r2 <= tol * tol * norm_w2) {
      // ||e_j - P e_j||^2 = 1 - sum_l Q[l, j]^2 for orthonormal rows.
      const int axis = ctx.first_index(d, [&](int j) {
        T captured = T(0);
        for (int l = 0; l < i; ++l) captured += Q[(long)l * d + j] * Q[(long)l * d + j];
        return T(1) - captured > T(0.25);
      });
      ctx.for_each(d, [&](int j) { q[j] = j == axis ? T(1) : T(0); });
      project_out_rows(ctx, Q, i, q, d, coef);
      norm_r2 = ctx.template sum<T>(d, [&](int j) { return q[j] * q[j]; });
    }
    const T inv_norm = T(1) / sqrt_(norm_r2);
    ctx.for_each(d, [&](int j) { q[j] *= inv_norm; });
  }
  ctx.sync();  // Q is complete for every thread
}

// grad_W = L^{-T} (grad_Q + sym(M) Q) for one sample, where L = W Q^T (lower-triangular),
// M = -grad_Q Q^T and sym(M) = tril(M, -1) + tril(M, -1)^T + diag(M).  Rows that the forward
// replaced (L_ii <= rank_tolerance * ||w_i||, ||w_i|| by scaled_norm) get a zero gradient:
// orthonormalize is not differentiable there; so do all rows of a sample holding NaN or Inf
// (its Q is NaN, so no L_ii passes the test).  All row blocks are [k, d]; L and M are k x k scratch visible to all
// threads (written by the leader).
template <typename T, typename Ctx>
SPECTRAL_HD void orthonormalize_backward_rows(const Ctx& ctx, const T* grad_Q, const T* Q, const T* W, T* grad_W, int k,
                                              int d, T* L, T* M) {
  const T tol = rank_tolerance<T>();
  // Only the lower triangles are used: M_il = -g_i . q_l and L_il = w_i . q_l for l <= i, two
  // sums per entry, batched over the triangle; the leader writes M symmetrically (sym(M)).
  // Sum 0 of entry (i, l) is -M_il (grad_Q row . Q row), sum 1 is L_il (W row . Q row).
  triangle_sums<2, T>(
      ctx, k, d,
      [&](int i, int l, int r) {
        const T* a = (r ? W : grad_Q) + (long)i * d;
        const T* b = Q + (long)l * d;
        return [=](int j) { return a[j] * b[j]; };
      },
      [&](int i, int l, int r, T value) {
        if (!ctx.leader()) return;
        if (r == 0) {
          M[i * k + l] = M[l * k + i] = -value;
        } else {
          L[i * k + l] = value;
        }
      });
  for (int i = 0; i < k; ++i) {
    const T norm_w = scaled_norm(ctx, W + (long)i * d, d);
    // Keep the dependency test next to L so the solve below reads one flag per row.
    if (ctx.leader() && !(L[i * k + i] > tol * norm_w)) L[i * k + i] = T(0);
  }
  ctx.sync();
  // Back substitution, last row first: x_i = (rhs_i - sum_{l>i} L_li x_l) / L_ii.  Column j of
  // every row is solved by the thread that owns j, so the rows need no barrier between them.
  for (int i = k - 1; i >= 0; --i) {
    const T diag = L[i * k + i];
    T* xi = grad_W + (long)i * d;
    if (diag == T(0)) {  // the same branch on every thread
      ctx.for_each(d, [&](int j) { xi[j] = T(0); });
      continue;
    }
    const T inv_diag = T(1) / diag;
    const T* gi = grad_Q + (long)i * d;
    const T* Mi = M + i * k;
    ctx.template for_each_row_sum<T>(
        d, k, [&](int l, int j) { return Mi[l] * Q[(long)l * d + j]; },
        [&](int j, T projection) { xi[j] = gi[j] + projection; });
    // Rows l > i of grad_W are final; term index m stands for row l = i + 1 + m.
    const T* Xb = grad_W + (long)(i + 1) * d;
    ctx.template for_each_row_sum<T>(
        d, k - 1 - i, [&](int m, int j) { return L[(i + 1 + m) * k + i] * Xb[(long)m * d + j]; },
        [&](int j, T solved) { xi[j] = (xi[j] - solved) * inv_diag; });
  }
  ctx.sync();  // grad_W is complete for every thread
}

}  // namespace spectral_ops
