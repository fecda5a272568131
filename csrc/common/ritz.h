// Per-sample Rayleigh-Ritz epilogue of one block power iteration, shared by CPU and CUDA.
#pragma once

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
// res_i = ||M v_i - lam_i v_i|| / lam_1 (0 where lam_1 <= 0), Q_next = orthonormalize(M V).
// The work runs on MQ / s, s = max |MQ| (1 if MQ == 0), so that ritz_step(Q, c MQ) gives c lam and
// the same V, res and Q_next for any c > 0 (lam = s lam' overflows only where the true values do).
// A sample whose Q or MQ holds NaN or Inf gets NaN in all four outputs.  V must not alias the
// inputs: it holds MQ / s until the Ritz vectors are formed.
template <typename T, typename Ctx>
SPECTRAL_HD void ritz_step_sample(const Ctx& ctx, const T* Q, const T* MQ, const T* V_prev, T* V, T* lam,
                                  T* res, T* Q_next, int k, int d, RitzScratch<T> scratch) {
  const int n = k * d;
  const T probe = ctx.template sum<T>(n, [&](int idx) { return nonfinite_probe(Q[idx]) + nonfinite_probe(MQ[idx]); });
  if (!(probe == T(0))) {  // the same branch on every thread
    const T nan = quiet_nan<T>();
    ctx.for_each(n, [&](int idx) { V[idx] = nan; Q_next[idx] = nan; });
    ctx.for_each(k, [&](int i) { lam[i] = nan; res[i] = nan; });
    ctx.sync();
    return;
  }
  const T top_mq = ctx.template max_abs<T>(n, [&](int idx) { return MQ[idx]; });
  const T s = top_mq > T(0) ? top_mq : T(1);
  T* MQs = V;  // MQ / s, entries in [-1, 1]
  ctx.for_each(n, [&](int idx) { MQs[idx] = MQ[idx] / s; });
  ctx.sync();
  T* H = scratch.H;
  // H = sym(Q MQs^T)
  for (int i = 0; i < k; ++i) {
    for (int l = 0; l <= i; ++l) {
      const T* qi = Q + (long)i * d;
      const T* ql = Q + (long)l * d;
      const T* mqi = MQs + (long)i * d;
      const T* mql = MQs + (long)l * d;
      const T a = ctx.template sum<T>(d, [&](int j) { return qi[j] * mql[j]; });
      const T b = l == i ? a : ctx.template sum<T>(d, [&](int j) { return ql[j] * mqi[j]; });
      if (ctx.leader()) H[i * k + l] = H[l * k + i] = T(0.5) * (a + b);
    }
  }
  ctx.sync();
  small_eigh(ctx, H, scratch.U, scratch.order, scratch.eig_work, k);
  const T* U = scratch.U;
  const int* order = scratch.order;
  // M v_i / s for every i, built in place of Q_next (then orthonormalized), while MQs is alive.
  for (int i = 0; i < k; ++i) {
    const int col = order[i];
    ctx.template for_each_row_sum<T>(
        d, k, [&](int l, int j) { return U[col * k + l] * MQs[(long)l * d + j]; },
        [&](int j, T mv) { Q_next[(long)i * d + j] = mv; });
  }
  ctx.sync();  // MQs (in V) is dead from here
  for (int i = 0; i < k; ++i) {
    const int col = order[i];
    const T value = H[col * k + col];
    T* vi = V + (long)i * d;
    T* mvi = Q_next + (long)i * d;
    ctx.template for_each_row_sum<T>(
        d, k, [&](int l, int j) { return U[col * k + l] * Q[(long)l * d + j]; }, [&](int j, T v) { vi[j] = v; });
    ctx.sync();
    // v_i . v_prev_i >= 0; without V_prev, or where that product is NaN (a NaN in V_prev), the
    // largest |component| positive.  The same branches on every thread.
    T sign = T(1);
    bool by_lead = V_prev == nullptr;
    if (!by_lead) {
      const T* pi = V_prev + (long)i * d;
      const T dot = ctx.template sum<T>(d, [&](int j) { return vi[j] * pi[j]; });
      sign = dot < T(0) ? T(-1) : T(1);
      by_lead = !(dot < T(0) || dot >= T(0));
    }
    if (by_lead) {
      const int lead = ctx.template argmax_abs<T>(d, [&](int j) { return vi[j]; });
      sign = vi[lead] < T(0) ? T(-1) : T(1);
    }
    ctx.sync();
    if (sign < T(0)) {
      ctx.for_each(d, [&](int j) { vi[j] = -vi[j]; mvi[j] = -mvi[j]; });
      ctx.sync();
    }
    const T r2 = ctx.template sum<T>(d, [&](int j) {
      const T e = mvi[j] - value * vi[j];
      return e * e;
    });
    if (ctx.leader()) { lam[i] = value; res[i] = sqrt_(r2); }
  }
  ctx.sync();
  if (ctx.leader()) {  // relative residuals from the scaled values, then the values scaled back
    const T top = lam[0];
    for (int i = 0; i < k; ++i) {
      res[i] = top > T(0) ? res[i] / top : T(0);
      lam[i] *= s;
    }
  }
  ctx.sync();
  orthonormalize_rows(ctx, Q_next, Q_next, k, d, scratch.coef);
}

}  // namespace spectral_ops
