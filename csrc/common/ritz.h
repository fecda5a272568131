// Per-sample Rayleigh-Ritz epilogue of one block power iteration, shared by CPU and CUDA.
#pragma once

#include "batch.h"
#include "gram_schmidt.h"
#include "jacobi.h"
#include "macros.h"
#include "tridiagonal_eigh.h"

namespace spectral_ops {

// Scratch a ritz_step sample needs: H and U are k x k, order is k, eig_work is 2k + 1 (all
// visible to every thread); coef is per-thread, k entries.
template <typename T>
struct RitzScratch {
  T* H;
  T* U;
  int* order;
  T* eig_work;
  T* coef;
};

// The residual of a Ritz pair (lambda, v) of M, relative to the top Ritz value lambda_1:
// ||M v - lambda v|| / lambda_1, 0 where lambda_1 <= 0.  The squared norm is a sum over j of
// residual_term((M v)_j, lambda, v_j); relative_residual turns it into the reported value.  The one
// definition for the CPU and CUDA kernels (both run ritz_step_sample below).
template <typename T>
SPECTRAL_HD T residual_term(T mv, T lambda, T v) {
  const T e = mv - lambda * v;
  return e * e;
}

template <typename T>
SPECTRAL_HD T relative_residual(T squared_norm, T lambda_1) {
  return lambda_1 > T(0) ? sqrt_(squared_norm) / lambda_1 : T(0);
}

// The k x k eigensolve: tridiagonal QL on one CPU thread (fewer operations), round-robin Jacobi
// on a GPU thread block (its k / 2 rotations per round run in parallel).  Same contract.
template <typename T, typename Ctx>
SPECTRAL_HD void small_eigh(const Ctx& ctx, T* A, T* U, int* order, T* work, int k) {
  if constexpr (Ctx::kSerial) {
    tridiagonal_eigh(A, U, order, work, k);
  } else {
    jacobi_eigh(ctx, A, U, order, work, k);
  }
}

// One sample: Q, MQ, V_prev (nullable), V, Q_next are [k, d]; lam, res are [k].
// V = sorted Ritz vectors of span(Q) (sign-fixed), lam = Ritz values descending,
// res_i = ||M v_i - lam_i v_i|| / lam_1 (relative_residual), Q_next = orthonormalize(M V).
// The work runs on MQ / s, s = max |MQ| (1 if MQ == 0), so that ritz_step(Q, c MQ) gives c lam and
// the same V, res and Q_next for any c > 0 (lam = s lam' overflows only where the true values do).
// A sample whose Q or MQ holds NaN or Inf gets NaN in all four outputs.  V must not alias the
// inputs: it holds MQ / s until the Ritz vectors are formed.
template <typename T, typename Ctx>
SPECTRAL_HD void ritz_step_sample(const Ctx& ctx, const T* Q, const T* MQ, const T* V_prev, T* V, T* lam, T* res,
                                  T* Q_next, int k, int d, RitzScratch<T> scratch) {
  const int n = k * d;
  const T probe = ctx.template sum<T>(n, [&](int idx) { return nonfinite_probe(Q[idx]) + nonfinite_probe(MQ[idx]); });
  if (!(probe == T(0))) {  // the same branch on every thread
    const T nan = quiet_nan<T>();
    ctx.for_each(n, [&](int idx) {
      V[idx] = nan;
      Q_next[idx] = nan;
    });
    ctx.for_each(k, [&](int i) {
      lam[i] = nan;
      res[i] = nan;
    });
    ctx.sync();
    return;
  }
  const T top_mq = ctx.template max_abs<T>(n, [&](int idx) { return MQ[idx]; });
  const T s = top_mq > T(0) ? top_mq : T(1);
  T* MQs = V;  // MQ / s, entries in [-1, 1]
  ctx.for_each(n, [&](int idx) { MQs[idx] = MQ[idx] / s; });
  ctx.sync();
  T* H = scratch.H;
  const int width = batched_sums_width(k);
  // H = sym(Q MQs^T): one sum per entry of the lower triangle, batched (the leader mirrors it).
  triangle_sums<1, T>(
      ctx, k, d,
      [&](int i, int l, int) {
        const T *qi = Q + (long)i * d, *ql = Q + (long)l * d;
        const T *mqi = MQs + (long)i * d, *mql = MQs + (long)l * d;
        return [=](int j) { return qi[j] * mql[j] + ql[j] * mqi[j]; };
      },
      [&](int i, int l, int, T value) {
        if (ctx.leader()) H[i * k + l] = H[l * k + i] = T(0.5) * value;
      });
  ctx.sync();
  small_eigh(ctx, H, scratch.U, scratch.order, scratch.eig_work, k);
  const T* U = scratch.U;
  const int* order = scratch.order;
  // From here on each thread reads and writes only its own columns of V, Q_next and MQs (the
  // same split in for_each_row_sum, the reductions and for_each): only the reductions synchronise.
  // M v_i / s for every i, built in place of Q_next (then orthonormalized), while MQs is alive.
  for (int i = 0; i < k; ++i) {
    const int col = order[i];
    ctx.template for_each_row_sum<T>(
        d, k, [&](int l, int j) { return U[col * k + l] * MQs[(long)l * d + j]; },
        [&](int j, T mv) { Q_next[(long)i * d + j] = mv; });
  }
  // V over MQs (this thread's columns of MQs were all read above).
  for (int i = 0; i < k; ++i) {
    const int col = order[i];
    ctx.template for_each_row_sum<T>(
        d, k, [&](int l, int j) { return U[col * k + l] * Q[(long)l * d + j]; },
        [&](int j, T v) { V[(long)i * d + j] = v; });
  }
  // r_i^2 = ||M v_i - lam_i v_i||^2 (the sign flip below keeps it) and, with V_prev, the dots
  // v_i . v_prev_i (in sign, per-thread), each batched over the rows.
  T* sign = scratch.coef;
  const T top = H[order[0] * (k + 1)];
  for (int i0 = 0; i0 < k; i0 += width) {
    const int m = k - i0 < width ? k - i0 : width;
    ctx.template sums<T>(
        m, d,
        [&](int c) {
          const T *mvi = Q_next + (long)(i0 + c) * d, *vi = V + (long)(i0 + c) * d;
          const T value = H[order[i0 + c] * (k + 1)];
          return [=](int j) { return residual_term(mvi[j], value, vi[j]); };
        },
        [&](int c, T r2) {
          if (ctx.leader()) {  // relative residuals from the scaled values, then the values scaled back
            lam[i0 + c] = H[order[i0 + c] * (k + 1)] * s;
            res[i0 + c] = relative_residual(r2, top);
          }
        });
    if (V_prev != nullptr) {
      ctx.template sums<T>(
          m, d,
          [&](int c) {
            const T *vi = V + (long)(i0 + c) * d, *pi = V_prev + (long)(i0 + c) * d;
            return [=](int j) { return vi[j] * pi[j]; };
          },
          [&](int c, T dot) { sign[i0 + c] = dot; });
    }
  }
  // v_i . v_prev_i >= 0; without V_prev, or where that product is NaN (a NaN in V_prev), the
  // largest |component| positive.  The same branches on every thread.
  for (int i = 0; i < k; ++i) {
    const T* vi = V + (long)i * d;
    const T dot = V_prev != nullptr ? sign[i] : T(0);
    const bool by_lead = V_prev == nullptr || !(dot < T(0) || dot >= T(0));
    if (by_lead) {
      const int lead = ctx.template argmax_abs<T>(d, [&](int j) { return vi[j]; });
      sign[i] = vi[lead] < T(0) ? T(-1) : T(1);  // vi[lead] was written before argmax's barriers
    } else {
      sign[i] = dot < T(0) ? T(-1) : T(1);
    }
  }
  ctx.sync();  // every thread has read its vi[lead] before any row is flipped
  for (int i = 0; i < k; ++i) {
    if (sign[i] < T(0)) {
      T* vi = V + (long)i * d;
      T* mvi = Q_next + (long)i * d;
      ctx.for_each(d, [&](int j) {
        vi[j] = -vi[j];
        mvi[j] = -mvi[j];
      });
    }
  }
  orthonormalize_rows(ctx, Q_next, Q_next, k, d, scratch.coef);
}

}  // namespace spectral_ops
