// Per-sample axis-alignment loss and its gradient, shared by CPU and CUDA.
#pragma once

#include "batch.h"
#include "macros.h"

namespace spectral_ops {

enum LossKind : int { kLossL1 = 0, kLossAssigned = 1, kLossOffdiag = 2 };
enum WeightKind : int { kWeightsUniform = 0, kWeightsSingular = 1 };

// The loss is scale-free in S (singular weights S_i / sum S, offdiag a ratio of degree-8 terms), so
// every formula reads S / max_i S_i: a sample's fourth powers of S then neither overflow nor
// underflow for any scale of S.  By Euler's theorem (a degree-0 function's gradient is orthogonal
// to S), dL/dS = (dL/dS') / max S exactly, with the maximum held fixed.
template <typename T>
struct UnitScaled {
  const T* S;
  T top;  // max_i S_i, or 1 where S is all zero
  SPECTRAL_HD T operator[](int i) const { return S[i] / top; }
};

template <typename T>
SPECTRAL_HD UnitScaled<T> unit_scaled(const T* S, int k) {
  T top = T(0);
  for (int i = 0; i < k; ++i) top = S[i] > top ? S[i] : top;
  return UnitScaled<T>{S, top > T(0) ? top : T(1)};
}

// Sum of S (used for singular weights); every thread computes it.
template <typename T, typename SV>
SPECTRAL_HD T total_of(const SV& S, int k) {
  T total = T(0);
  for (int i = 0; i < k; ++i) total += S[i];
  return total;
}

// Weight of vector i: 1/k (uniform, or singular with sum(S) <= 0), else S_i / sum(S).
template <typename T, typename SV>
SPECTRAL_HD T vector_weight(const SV& S, int i, int k, int weights, T total) {
  if (weights == kWeightsSingular && total > T(0)) return S[i] / total;
  return T(1) / T(k);
}

// The l1 per-vector loss (||v||_1 - 1) / (sqrt(d) - 1) from l1 = ||v||_1 (0 when d == 1).
template <typename T>
SPECTRAL_HD T l1_loss_of(T l1, int d) {
  return d > 1 ? (l1 - T(1)) / (sqrt_(T(d)) - T(1)) : T(0);
}

// Per-sample statistics the forward saves for the backward (alignment_loss_forward), so that the
// backward does not recompute them.  Width per sample:
//   l1, assigned: k         the per-vector losses (before weighting)
//   offdiag:      2 + k*k + d  fro2, diag2, the Gram matrix V V^T (k x k), and D = diag(A) (d),
//                             with A built from S / max S (`UnitScaled`)
SPECTRAL_HD int saved_width(int kind, int k, int d) { return kind == kLossOffdiag ? 2 + k * k + d : k; }

// offdiag: fro2 = ||A||_F^2 = sum_il s_i^2 s_l^2 (v_i.v_l)^2 and diag2 = ||diag A||^2,
// A = sum_i s_i^2 v_i v_i^T.  If gram != nullptr the leader also stores G = V V^T (k x k); if
// diag != nullptr, D_j = A_jj is stored too (each j by the thread that computes it).
template <typename T, typename Ctx, typename SV>
SPECTRAL_HD void offdiag_terms(const Ctx& ctx, const T* V, const SV& S, int k, int d, T* gram, T* diag, T& fro2,
                               T& diag2) {
  fro2 = T(0);
  // The Gram matrix, batched over its lower triangle (fro2 summed in the same row order).
  triangle_sums<1, T>(
      ctx, k, d,
      [&](int i, int l, int) {
        const T *vi = V + (long)i * d, *vl = V + (long)l * d;
        return [=](int j) { return vi[j] * vl[j]; };
      },
      [&](int i, int l, int, T g) {
        const T s2s2 = S[i] * S[i] * S[l] * S[l];
        fro2 += (l == i ? T(1) : T(2)) * s2s2 * g * g;
        if (gram != nullptr && ctx.leader()) gram[i * k + l] = gram[l * k + i] = g;
      });
  // D_j = A_jj = sum_i s_i^2 V_ij^2, summed over rows column by column.
  // Two calls rather than a null test inside the vectorized column loop (that test cost ~25% of
  // the plain forward at (256, 8, 128)).
  const auto term = [&](int i, int j) { return S[i] * S[i] * V[(long)i * d + j] * V[(long)i * d + j]; };
  if (diag != nullptr) {
    diag2 = ctx.template sum_row_sums<T>(d, k, term, [&](int j, T dj) {
      diag[j] = dj;
      return dj * dj;
    });
  } else {
    diag2 = ctx.template sum_row_sums<T>(d, k, term, [&](int, T dj) { return dj * dj; });
  }
}

// Loss of one sample (returned to every thread).  V: [k, d], S_raw: [k] (any scale: read as
// S / max S, `UnitScaled`).  If saved != nullptr, the statistics of saved_width() are written there
// for the backward.
template <typename T, typename Ctx>
SPECTRAL_HD T alignment_loss_sample(const Ctx& ctx, const T* V, const T* S_raw, int k, int d, int kind, int weights,
                                    T* saved) {
  const UnitScaled<T> S = unit_scaled(S_raw, k);
  if (kind == kLossOffdiag) {
    T fro2, diag2;
    offdiag_terms(ctx, V, S, k, d, saved ? saved + 2 : nullptr, saved ? saved + 2 + k * k : nullptr, fro2, diag2);
    if (saved != nullptr && ctx.leader()) {
      saved[0] = fro2;
      saved[1] = diag2;
    }
    return fro2 > T(0) ? (fro2 - diag2) / fro2 : T(0);
  }
  const T total = total_of<T>(S, k);
  T loss = T(0);
  const int width = batched_sums_width(k);
  for (int i0 = 0; i0 < k; i0 += width) {
    const int m = k - i0 < width ? k - i0 : width;
    const auto add = [&](int c, T pv) {  // the per-vector loss of row i0 + c
      if (saved != nullptr && ctx.leader()) saved[i0 + c] = pv;
      loss += vector_weight(S, i0 + c, k, weights, total) * pv;
    };
    if (kind == kLossL1 && d > 1) {  // (||v_i||_1 - 1) / (sqrt(d) - 1), batched over the rows
      ctx.template sums<T>(
          m, d,
          [&](int c) {
            const T* vi = V + (long)(i0 + c) * d;
            return [=](int j) { return abs_(vi[j]); };
          },
          [&](int c, T l1) { add(c, l1_loss_of(l1, d)); });
    } else {
      for (int c = 0; c < m; ++c) {
        const T* vi = V + (long)(i0 + c) * d;
        add(c, kind == kLossAssigned ? T(1) - vi[i0 + c] * vi[i0 + c] : T(0));
      }
    }
  }
  return loss;
}

// Gradients of grad * loss wrt V ([k, d]) and S_raw ([k], written by the leader), from the
// sample's saved statistics (alignment_loss_sample).  The S formulas are those of S' = S / max S;
// dL/dS = (dL/dS') / max S (`UnitScaled`).  mix: per-thread scratch of k entries.
template <typename T, typename Ctx>
SPECTRAL_HD void alignment_loss_backward_sample(const Ctx& ctx, T grad, const T* V, const T* S_raw, const T* saved,
                                                T* grad_V, T* grad_S, int k, int d, int kind, int weights, T* mix) {
  const UnitScaled<T> S = unit_scaled(S_raw, k);
  if (kind == kLossOffdiag) {
    const T fro2 = saved[0], diag2 = saved[1];
    const T* gram = saved + 2;
    const T* D = saved + 2 + k * k;
    if (!(fro2 > T(0))) {
      ctx.for_each(k * d, [&](int idx) { grad_V[idx] = T(0); });
      if (ctx.leader())
        for (int i = 0; i < k; ++i) grad_S[i] = T(0);
      ctx.sync();
      return;
    }
    const T inv_fro2 = T(1) / fro2;
    const T ratio = diag2 * inv_fro2 * inv_fro2;
    // dL/dS_i = 2 S_i [ -2 sum_j D_j V_ij^2 / fro2 + 2 ratio sum_l s2_l G_il^2 ], the sums over j
    // batched over the rows.
    const int width = batched_sums_width(k);
    for (int i0 = 0; i0 < k; i0 += width) {
      const int m = k - i0 < width ? k - i0 : width;
      ctx.template sums<T>(
          m, d,
          [&](int c) {
            const T* vi = V + (long)(i0 + c) * d;
            return [=](int j) { return D[j] * vi[j] * vi[j]; };
          },
          [&](int c, T dv) {
            if (!ctx.leader()) return;
            const int i = i0 + c;
            T gg = T(0);  // sum_l s2_l G_il^2
            for (int l = 0; l < k; ++l) gg += S[l] * S[l] * gram[i * k + l] * gram[i * k + l];
            grad_S[i] = grad * T(4) * S[i] * (ratio * gg - dv * inv_fro2) / S.top;
          });
    }
    for (int i = 0; i < k; ++i) {
      const T* vi = V + (long)i * d;
      T* gi = grad_V + (long)i * d;
      const T s2 = S[i] * S[i];
      for (int l = 0; l < k; ++l) mix[l] = S[l] * S[l] * gram[i * k + l];
      // dL/dV_ij = 4 s2_i [ -D_j V_ij / fro2 + ratio * sum_l s2_l G_il V_lj ]
      const T scale = grad * T(4) * s2;
      ctx.template for_each_row_sum<T>(
          d, k, [&](int l, int j) { return mix[l] * V[(long)l * d + j]; },
          [&](int j, T mix) { gi[j] = scale * (ratio * mix - D[j] * vi[j] * inv_fro2); });
    }
    ctx.sync();
    return;
  }
  const T total = total_of<T>(S, k);
  const T l1_scale = d > 1 ? T(1) / (sqrt_(T(d)) - T(1)) : T(0);
  const bool singular = weights == kWeightsSingular && total > T(0);
  for (int i = 0; i < k; ++i) {
    const T w = grad * vector_weight(S, i, k, weights, total);
    const T* vi = V + (long)i * d;
    T* gi = grad_V + (long)i * d;
    if (kind == kLossL1) {
      const T coef = w * l1_scale;
      ctx.for_each(d, [&](int j) { gi[j] = coef * sign_(vi[j]); });
    } else {
      ctx.for_each(d, [&](int j) { gi[j] = j == i ? T(-2) * w * vi[i] : T(0); });
    }
  }
  if (ctx.leader()) {
    T weighted = T(0);  // sum_l S_l pv_l
    for (int i = 0; i < k; ++i) weighted += S[i] * saved[i];
    for (int i = 0; i < k; ++i)
      grad_S[i] = singular ? grad * (saved[i] / total - weighted / (total * total)) / S.top : T(0);
  }
  ctx.sync();
}

}  // namespace spectral_ops
